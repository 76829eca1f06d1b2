"""Every backend by name, loaded on first use: what ``backend=`` accepts and what the planner chooses from.

A backend is a module with the kernels of the ops it runs, under the op's name (``conv2d``,
``conv2d_grad_input``, ``max_pool2d``, ...; signatures in ``reference``). A backend with several
algorithms for its convolution kernels lists them in ``ALGORITHMS``; those kernels then take
``algorithm=`` and run the one they are handed (they decide nothing), and ``supports(op, spec, dtype,
algorithm)`` says where each one can run. ``NONFINITE_CHECKS[algorithm][op]`` names the operands whose
NaN or inf the algorithm does not turn into the reference's outputs (the planner checks those, see
``plan``; tests/test_nonfinite.py finds them).

A backend whose kernels also take 3-D specs (5-D arrays) lists those kernels in ``DEPTH_OPS``; the
planner runs every other backend's on 3-D specs through ``depth``.

Names: ``"cython"`` (a backend) or ``"cython:blocked"`` (one of its algorithms).
"""
import functools
import importlib

MODULES = {
    "numpy": "fastconv.backends.reference",
    "numba": "fastconv.backends.numba_cpu",
    "cython": "fastconv.backends.cython_cpu",
    "fft": "fastconv.backends.fft",
    "winograd": "fastconv.backends.winograd",
    "cuda": "fastconv.gpu.backend",
}
#: More kernels of a backend, in modules of their own: the tiled and locally-connected convolutions.
MORE_KERNELS = {
    "numpy": ("fastconv.backends.tiled",),
    "numba": ("fastconv.backends.tiled_numba",),
    "cuda": ("fastconv.gpu.tiled",),
}
#: The kernels of one convolution layer (forward, input gradient, weight gradient).
CONV_OPS = ("conv2d", "conv2d_grad_input", "conv2d_grad_weight")
#: The kernels of a tiled (or locally-connected) convolution layer.
TILED_OPS = ("tiled_conv2d", "tiled_conv2d_grad_input", "tiled_conv2d_grad_weight")
#: The array arguments of each convolution kernel, by position.
OPERANDS = {"conv2d": ("x", "w", "b"), "conv2d_grad_input": ("gy", "w"), "conv2d_grad_weight": ("gy", "x")}
_loaded = {}


class BackendUnavailable(RuntimeError):
    """A backend that exists but cannot run here."""


def parse(name):
    """``"cython:blocked"`` -> ``("cython", "blocked")``; ``"fft"`` -> ``("fft", None)``. ValueError for
    names that are not a known backend (and one of its algorithms)."""
    if not isinstance(name, str):
        raise TypeError(f"backend must be a string such as 'auto', 'cython' or 'cython:blocked', got {name!r}")
    backend, _, algorithm = name.partition(":")
    if backend not in MODULES:
        raise ValueError(f"backend must be 'auto' or one of {sorted(MODULES)} (optionally with ':algorithm'),"
                         f" got {name!r}")
    if not algorithm:
        return backend, None
    known = load(backend).__dict__.get("ALGORITHMS", ())
    if algorithm not in known:
        raise ValueError(f"backend {backend!r} has no algorithm {algorithm!r}; its algorithms: "
                         f"{', '.join(known) or 'none'}")
    return backend, algorithm


def load(name):
    """The module of backend ``name``; ValueError for unknown names, BackendUnavailable if it can't run."""
    module = _loaded.get(name)
    if module is not None:
        return module
    if name not in MODULES:
        raise ValueError(f"backend must be 'auto' or one of {sorted(MODULES)}, got {name!r}")
    try:
        module = importlib.import_module(MODULES[name])
    except ImportError as err:
        raise BackendUnavailable(f"backend {name!r} is not available here: {err}") from err
    check = getattr(module, "check_available", None)
    if check is not None:
        check()
    _loaded[name] = module
    return module


def usable(name):
    """The module of ``name``, or None when it cannot run here."""
    try:
        return load(name)
    except (BackendUnavailable, ImportError, RuntimeError):
        return None


def available():
    """Names of the backends that can run on this machine."""
    return [name for name in MODULES if usable(name) is not None]


def _function(name, op):
    """The function of kernel ``op`` in backend ``name``'s module or in its :data:`MORE_KERNELS`, or None."""
    module = usable(name)
    if module is None:
        return None
    found = getattr(module, op, None)
    for extra in MORE_KERNELS.get(name, ()):
        if found is None:
            found = getattr(importlib.import_module(extra), op, None)
    return found if callable(found) else None


def runs(name, op):
    """Whether backend ``name`` has a kernel for ``op``."""
    return _function(name, op) is not None


def runs_depth(name, op):
    """Whether backend ``name`` (``"numpy"`` or ``"numpy:..."``) runs 3-D specs of ``op`` itself (its
    ``DEPTH_OPS``); the planner runs the others' through ``depth``."""
    module = usable(parse(name)[0])
    return module is not None and op in getattr(module, "DEPTH_OPS", ())


def algorithms(name, op):
    """The algorithms of backend ``name`` for ``op``: its ``ALGORITHMS`` for convolution kernels, else
    ``(None,)`` (one kernel, no choice)."""
    found = getattr(load(name), "ALGORITHMS", ())
    return tuple(found) if op in CONV_OPS and found else (None,)


def supports(name, op, spec, dtype, algorithm=None):
    """Whether ``name`` (with ``algorithm``) can run ``op`` on ``spec`` in ``dtype``."""
    if not runs(name, op):
        return False
    check = getattr(load(name), "supports", None)
    if check is None or spec is None or op not in CONV_OPS:
        return True
    return bool(check(op, spec, dtype, algorithm))


#: In ``NONFINITE_CHECKS``: the kernel's result is checked after the call instead of its operands before.
RESULT = "result"
#: In ``NONFINITE_CHECKS``: the kernel checks its result itself as it writes it and raises ``NonFinite``
#: where it is not finite (as ``RESULT``, without a pass over the result).
CHECKED = "checked"


class NonFinite(ArithmeticError):
    """A kernel's result holds a NaN or inf, which its algorithm may have spread differently from the
    reference's (the plan then runs the reference)."""


def nonfinite_checks(name, op, algorithm, spec=None):
    """Positions of the arguments of ``op`` whose NaN or inf ``name:algorithm`` would not turn into the
    reference's outputs (empty: it always gives the reference's), or ``(RESULT,)`` or ``(CHECKED,)``.

    A backend lists ``RESULT`` where every NaN or inf the reference would give makes its own result
    non-finite: a weight gradient that sums every product of a read input value and an output's
    gradient (its result is small, cheaper to read than both large operands), or Winograd's transforms,
    which carry each value to every output that depends on it (the result, just written, is cheaper to
    read than operands that come from memory; ``CHECKED``: the kernel checks it as it writes it). That
    holds where no window lies wholly in the padding (``spec.windows_read_input``); elsewhere the
    operands listed beside the mark are checked (none listed: all of them)."""
    checks = getattr(load(name), "NONFINITE_CHECKS", {}).get(algorithm, {}).get(op, ())
    for mark in (RESULT, CHECKED):
        if mark in checks:
            if spec is not None and spec.windows_read_input:
                return (mark,)
            checks = tuple(c for c in checks if c != mark) or OPERANDS[op]
    return tuple(OPERANDS[op].index(operand) for operand in checks)


def kernel(name, op, algorithm=None):
    """The callable that runs ``op`` with ``algorithm`` on backend ``name``."""
    load(name)
    fn = _function(name, op)
    if fn is None:
        raise ValueError(f"backend {name!r} has no {op} kernel")
    return fn if algorithm is None else functools.partial(fn, algorithm=algorithm)


def clear():
    """Forget the loaded modules (tests that change ``MODULES``)."""
    _loaded.clear()
