"""The planner: which backend and algorithm run each kernel, decided once per spec, with the reason.

``plan(op, spec, dtype, device, backend)`` returns a :class:`Plan`: a backend, one of its algorithms,
the reason (a forced name, a rule of ``model``, or a measurement of ``tune``) and the kernel to call.
Plans are made once per (op, spec, dtype, device, backend, threads, settings) and cached, so a call
costs one dict lookup; backends run the algorithm they are handed and decide nothing.
``layer(...)`` plans every kernel of one layer at once (a convolution's forward pass and both
gradients), which is what the ops in ``functional`` use and what :func:`recording` (``fc.explain``)
sees.

Where the choice comes from, in order:

1. ``backend="cython:blocked"`` (or ``"fft"``, ``"numba"``...): forced by the user. A backend without
   the op, or an algorithm that cannot run the spec, is a clear error, never a silent fall back.
2. The fastest candidate measured on this machine for the spec's shape class (``tune``: by
   ``fastconv tune`` or an earlier ``fc.autotune(True)``), or measured now with ``fc.autotune(True)``.
3. The cost model and the measured rules of ``model``.

3-D specs: a backend whose kernels take them (``DEPTH_OPS``: the reference; Numba's max pooling) runs them
when forced, or when the model says it beats the decomposition (``model.native_volume``); every other plan
runs them on the plan of a 2-D spec (``depth``: the depth taps folded into the channels), so that
``backend="cython:blocked"`` or ``"cuda"`` runs a 3-D convolution on its 2-D kernels.

Rank-1 kernels: where ``model.separable_worthwhile`` holds, the plan runs the weight as two 1-D passes
when its values are rank 1 (``separable``), else as planned. ``set_exact(True)`` leaves out the
algorithms with larger rounding error (``model.INEXACT``). Where an algorithm's NaN and inf outputs
could differ from the reference's (an FFT spreads one NaN over a whole plane; direct loops skip the
padding the reference multiplies), the plan checks those operands (one compiled pass over their bits) and
runs the reference for non-finite ones, so that the semantics never depend on the plan; a weight
gradient that every operand value reaches is checked by its small result instead
(``registry.RESULT``), and Winograd's results by the kernel as it writes them (``registry.CHECKED``).
"""
from __future__ import annotations

import contextlib
import functools
import threading
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .. import runtime
from . import depth, model, registry, separable, tune

#: Backends the automatic choice considers on the CPU (the model orders them).
AUTO = ("numpy", "numba", "cython", "fft", "winograd")
#: Every kernel the ops plan.
OPS = registry.CONV_OPS + ("max_pool2d", "max_pool2d_grad", "avg_pool2d", "avg_pool2d_grad", "max_unpool2d",
                           "max_unpool2d_grad") + registry.TILED_OPS

_default = "auto"
_exact = False
_plans = {}
_lock = threading.Lock()
_recorders = []


@dataclass(frozen=True, eq=False)
class Plan:
    """One kernel's plan: call it with the kernel's arguments."""
    op: str
    backend: str
    algorithm: str | None
    reason: str
    kernel: Callable = field(repr=False)
    seconds: float | None = None      # the model's time for one call on one core, where it has one
    fallback: Plan | None = None      # what a separable plan runs for weights that are not rank 1
    guard: Callable | None = field(default=None, repr=False)  # the reference, for non-finite inputs ...
    checked: tuple = ()                                         # ... in these argument positions

    @property
    def name(self):
        return self.backend if self.algorithm is None else f"{self.backend}:{self.algorithm}"

    def __call__(self, *args):
        if self.guard is None:
            return self.kernel(*args)
        if self.checked == (registry.CHECKED,):
            try:
                return self.kernel(*args)
            except registry.NonFinite:
                return self.guard(*args)
        if self.checked == (registry.RESULT,):
            out = self.kernel(*args)
            return out if _finite((out,)) else self.guard(*args)
        if not _finite(args[i] for i in self.checked):
            return self.guard(*args)
        return self.kernel(*args)


def _finite(arrays):
    """Whether the arrays are free of NaN and inf: the compiled check (one parallel pass over the bits),
    else each array's largest and smallest value (a NaN anywhere makes both NaN)."""
    return all(_finite_one(a) for a in arrays)


def _finite_one(a):
    found = _compiled_check()(a)
    if found is None:
        return a.size == 0 or bool(np.isfinite(a.max()) and np.isfinite(a.min()))
    return found


@functools.lru_cache(maxsize=None)
def _compiled_check():
    """The compiled check, loaded on the first call (importing fastconv loads no extension and no
    OpenMP), or a stand-in that declines every array where it is not built."""
    try:
        from .._cy._finite import all_finite
    except ImportError:
        return lambda a: None
    return all_finite


# ------------------------------------------------------------------------------------ settings
def set_backend(name):
    """Make ``name`` (``"cython"``, ``"cython:blocked"``, ...) the default of every op; ``"auto"``
    restores the automatic choice."""
    global _default
    if name != "auto":
        backend, _ = registry.parse(name)
        registry.load(backend)
    _default = name


def get_backend():
    return _default


def set_exact(flag=True):
    """Leave the algorithms with larger rounding error (FFT) out of the automatic choice (``True``)."""
    global _exact
    _exact = bool(flag)


def get_exact():
    return _exact


def forget():
    """Forget every plan made (later calls plan again: after new measurements, say)."""
    with _lock:
        _plans.clear()


def reset():
    """Forget every plan and what ``tune`` holds in memory."""
    forget()
    tune.reset()


def _threads():
    return runtime.threads()


# ------------------------------------------------------------------------------------ planning
def plan(op, spec, dtype, device="cpu", backend=None):
    """The :class:`Plan` of kernel ``op`` for ``spec`` (None for unpooling) in ``dtype`` on ``device``,
    under ``backend`` (None or ``"auto"``: the default)."""
    name = _default if backend is None or backend == "auto" else backend
    if not isinstance(name, str):
        registry.parse(name)  # a TypeError naming the argument (a list would fail as a key below)
    dtype = None if dtype is None else np.dtype(dtype)
    key = (op, spec, dtype, device, name, tune.enabled(), _exact, _threads() if device == "cpu" else 0)
    found = _plans.get(key)
    if found is None:
        found = _make(op, spec, dtype, device, name)
        with _lock:
            _plans[key] = found
    return found


@dataclass(frozen=True)
class Layer:
    """The plans of the kernels of one layer, by kernel name (``layer.conv2d(...)``); a kernel planned
    later (a gradient nobody needed at first) is planned on first use."""
    label: str
    spec: object
    dtype: object
    device: str
    backend: str | None
    plans: dict

    def __getattr__(self, op):
        if op not in self.plans:
            self.plans[op] = plan(op, self.spec, self.dtype, self.device, self.backend)
        return self.plans[op]


def layer(label, ops, spec, dtype, device="cpu", backend=None):
    """The plans of the kernels ``ops`` of one layer (its forward kernel and the gradients it will need),
    made together; ``label`` names the op for :func:`recording`."""
    made = Layer(label, spec, dtype, device, backend, {op: plan(op, spec, dtype, device, backend) for op in ops})
    for record in _recorders:
        record.append(made)
    return made


@contextlib.contextmanager
def recording():
    """Collect the :class:`Layer` plans the ops make inside the block (what ``fc.explain`` prints)."""
    layers = []
    _recorders.append(layers)
    try:
        yield layers
    finally:
        _recorders.remove(layers)


def _make(op, spec, dtype, device, name):
    if getattr(spec, "dims", 2) == 3:
        native = model.native_volume(op, _auto(op)) if device == "cpu" and name == "auto" else None
        if native is not None:
            return _plan(native, op, None, f"model: {native} runs volumes itself, faster than through depth",
                         spec, dtype)
        if not (device == "cpu" and name != "auto" and registry.runs_depth(name, op)):
            return _depth(op, spec, dtype, device, name)
    if device == "cuda":
        if name not in ("auto", "cuda"):
            raise ValueError(f"backend {name!r} runs on the CPU but the tensors are on the GPU; use "
                             f"backend='cuda' or 'auto', or move the tensors with .to('cpu')")
        return _plan("cuda", op, None, "the tensors are on the GPU", spec, dtype, guard=False)
    if name == "cuda":
        raise ValueError("backend='cuda' needs tensors on the GPU: create them with device='cuda' "
                         "or move them with .to('cuda')")
    if name != "auto":
        return _forced(op, spec, dtype, name)
    candidates = _auto(op)
    if not candidates:
        raise ValueError(f"no backend can run {op} here")
    made = _measured(op, spec, dtype, candidates) if spec is not None else None
    if made is None:
        choice = model.choose(op, spec, dtype, candidates)
        made = _plan(choice.backend, op, choice.algorithm, choice.reason, spec, dtype, choice.seconds)
    if made.backend != "fft" and model.separable_worthwhile(op, spec):
        return _separable(made, spec, dtype)
    return made


def _auto(op):
    """The backends the automatic choice considers for ``op``."""
    return [b for b in AUTO if registry.runs(b, op) and not (_exact and b in model.INEXACT)]


def _forced(op, spec, dtype, name):
    backend, algorithm = registry.parse(name)
    registry.load(backend)  # BackendUnavailable, with its reason, for a backend that cannot run here
    if not registry.runs(backend, op):
        have = [o for o in OPS if registry.runs(backend, o)]
        raise ValueError(f"backend {backend!r} has no {op} kernel (it runs {', '.join(have)}); use "
                         f"backend='auto' or one that has it")
    if registry.algorithms(backend, op) == (None,):  # the algorithm names a convolution algorithm
        algorithm = None
    if algorithm is None:
        choice = model.choose(op, spec, dtype, [backend])
        algorithm, why = choice.algorithm, f"forced backend={name!r}; {choice.reason}"
    else:
        why = f"forced backend={name!r}"
    if not registry.supports(backend, op, spec, dtype, algorithm):
        raise ValueError(f"backend {name!r} cannot run {op} on this input ({np.dtype(dtype).name}, {spec}); "
                         f"use backend={backend!r} or 'auto'")
    return _plan(backend, op, algorithm, why, spec, dtype, model.seconds(backend, op, spec, dtype, algorithm))


def _plan(backend, op, algorithm, reason, spec, dtype, seconds=None, guard=True):
    checked = registry.nonfinite_checks(backend, op, algorithm, spec) if guard else ()
    return Plan(op, backend, algorithm, reason, registry.kernel(backend, op, algorithm), seconds,
                guard=registry.kernel("numpy", op) if checked else None, checked=checked)


def _candidates(op, spec, dtype, backends):
    """``{name: (backend, algorithm)}`` of every algorithm of ``backends`` that can run ``op`` on ``spec``."""
    return {(b if a is None else f"{b}:{a}"): (b, a) for b in backends for a in registry.algorithms(b, op)
            if registry.supports(b, op, spec, dtype, a)}


def _measured(op, spec, dtype, candidates):
    """The plan of the fastest candidate measured earlier, or now when tuning is on (None otherwise, and
    where ``op`` cannot be timed)."""
    names = _candidates(op, spec, dtype, candidates)
    winner = tune.known(op, spec, dtype, _threads())
    if winner in names:
        backend, algorithm = names[winner]
        return _plan(backend, op, algorithm, "measured earlier on this machine (autotune cache)", spec, dtype,
                     model.seconds(backend, op, spec, dtype, algorithm))
    if not tune.enabled():
        return None
    return measure(op, spec, dtype, candidates)[0]


def measure(op, spec, dtype, backends=AUTO):
    """Time every candidate of ``op`` on ``spec`` now and remember the fastest for its shape class:
    ``(its plan, [(name, seconds), ...] fastest first)``, or ``(None, [])`` where ``op`` cannot be timed."""
    try:
        tune.example_args(op, spec, dtype, np.random.default_rng(0))
    except ValueError:
        return None, []
    names = _candidates(op, spec, dtype, [b for b in backends if registry.runs(b, op)
                                          and not (_exact and b in model.INEXACT)])
    winner, times = tune.measure(op, spec, dtype, _threads(),
                                 [(n, registry.kernel(b, op, a)) for n, (b, a) in names.items()])
    times = sorted(times, key=lambda t: t[1])
    backend, algorithm = names[winner]
    reason = "measured now: " + ", ".join(f"{n} {1e3 * s:.3g} ms" for n, s in times)
    return _plan(backend, op, algorithm, reason, spec, dtype, model.seconds(backend, op, spec, dtype, algorithm)), times


def _depth(op, spec, dtype, device, name):
    """A plan that runs the 3-D ``spec`` on the 2-D plan of ``depth.inner_spec(spec)``, made as any other
    (forced, measured or modelled)."""
    inner = plan(op, depth.inner_spec(spec), dtype, device, name)
    return Plan(op, "depth", inner.name, f"{depth.describe(spec)}; {inner.reason}",
                depth.kernel(op, inner), inner.seconds)


def _separable(inner, spec, dtype):
    """A plan that runs rank-1 weights as two 1-D passes (planned on ``inner``'s backend) and other
    weights with ``inner``."""
    def passes(op, pass_spec):
        return plan(op, pass_spec, dtype, "cpu", inner.backend)
    kernel = separable.kernel(inner.op, inner, passes)
    return Plan(inner.op, "separable", None, f"rank-1 weights as two 1-D passes, else {inner.name} "
                f"({inner.reason})", kernel, inner.seconds, fallback=inner)
