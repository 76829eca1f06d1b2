"""The ``"auto"`` backend on the CPU: a cost model per op and spec, or measurements (``autotune``).

``best(op, spec, dtype)`` returns the backend module that runs kernel ``op`` (``"conv2d"``,
``"max_pool2d"``, ...). By default a cost model decides: convolutions whose FFT cost (transforms plus
per-frequency channel products) undercuts the direct cost (multiply-adds) go to ``"fft"``, which in
practice means big kernels on enough pixels; everything else goes to the first backend of
:data:`PREFERENCE` that loads here, seen through ``separable.Passes`` where a rank-1 kernel would run
faster as two 1-D passes. Decisions are cached per ``(op, spec, dtype)`` (specs are frozen
dataclasses), so the per-call cost is one dict lookup.

``autotune(True)`` replaces the model by measurement: the first call of each ``(op, spec, dtype)`` times
every available backend once on copies of its inputs, keeps the fastest, and returns that backend's
result. Winners are kept in memory and in a JSON file (``$FASTCONV_CACHE_DIR/autotune.json``, else
``~/.cache/fastconv/autotune.json``) keyed by op, spec, dtype, machine, thread count and fastconv version.
"""
from __future__ import annotations

import json
import math
import os
import platform
import tempfile
import threading
import time
import warnings

import numpy as np

from . import dispatch, separable

#: Direct (non-FFT) backends in order of preference, per op; ops not listed use ``DEFAULT_PREFERENCE``.
#: Retune from ``bench/`` results: this table and the constants below are the whole model.
#: Measured with ``bench/compare.py`` (2 threads): the Cython kernels won most shapes (LeNet layers, 1-D,
#: pooling, most backward passes); Numba won the large 3x3 forwards and large average pooling by less.
DEFAULT_PREFERENCE = ("cython", "numba", "numpy")
PREFERENCE = {"avg_pool2d": ("numba", "cython", "numpy")}
#: Wide GEMMs (>= 128 output channels per group over a reduction of >= 256) ran faster on Numba's per-task
#: GEMM path (resnet_s2, pointwise: 0.81 -> 0.84 and 0.86 -> 0.97 of PyTorch's speed, forward), except
#: the float32 passes that Cython runs register-blocked (see ``cython_cpu.conv_algorithm``).
WIDE_GEMM_PREFERENCE = ("numba", "cython", "numpy")
WIDE_GEMM_OUT, WIDE_GEMM_REDUCTION = 128, 256
FFT_OPS = ("conv2d", "conv2d_grad_input", "conv2d_grad_weight")
#: Kernels with fewer taps never go to the FFT, whatever the model says (its error is largest there).
FFT_MIN_TAPS = 25
#: The FFT must be predicted this many times faster than the direct backend to be chosen.
FFT_MARGIN = 1.25
# Model constants: seconds on one core (single-thread CPU time on the 2-core test machine; only their
# ratios matter). Retune from bench/ results.
#: Seconds per multiply-add of a direct convolution kernel, per backend.
SECONDS_PER_MAC = {"numba": 6e-11, "cython": 6e-11, "numpy": 2e-10}
#: Rank-1 kernels run as two 1-D passes (``separable``) on the direct backends for specs with at least
#: this many taps and at most this many channel pairs per group (the passes' intermediate holds that
#: many planes per input image); ``SEPARABLE = False`` turns the check off.
SEPARABLE = True
SEPARABLE_MIN_TAPS = 25
SEPARABLE_MAX_PAIRS = 16
#: Backends that autotune times, when they load here and implement the op.
CANDIDATES = ("numba", "cython", "fft", "numpy")

_decisions = {}     # (op, spec, dtype) -> module, from the model
_usable = {}        # backend name -> module, or None when it cannot load here
_tuned = {}         # autotune key -> backend name (memory copy of the disk cache and of new results)
_disk = {}          # cache file path -> {key: backend name} as last read
_winners = {}       # (op, spec, dtype, threads) -> module, once tuned (the fast path of ``best``)
_lock = threading.Lock()
_autotune = False
_passes = {}        # backend name -> separable.Passes over it


# --------------------------------------------------------------------------------- the model
def _module(name):
    """The backend module ``name``, or None when it cannot load here (remembered until ``reset``)."""
    if name not in _usable:
        try:
            _usable[name] = dispatch.load(name)
        except Exception:
            _usable[name] = None
    return _usable[name]


def _first(names, op):
    for name in names:
        module = _module(name)
        if module is not None and hasattr(module, op):
            return name
    return "numpy"


def direct_seconds(spec, backend):
    """Model time of a direct convolution kernel (forward and both gradients cost the same)."""
    return SECONDS_PER_MAC.get(backend, SECONDS_PER_MAC["numpy"]) * spec.flops / 2


def fft_seconds(spec):
    """Model time of one FFT convolution kernel, as it runs (whole planes, or blocks of a long signal)."""
    from . import fft
    return fft.seconds(spec, "overlap" if fft.long_signal(spec) else "whole")


def _blocked(op, spec, dtype):
    """Whether Cython's register-blocked kernel would run ``op`` (see ``cython_cpu.conv_algorithm``)."""
    cython = _module("cython") if op in FFT_OPS and dtype is not None else None
    return cython is not None and cython.conv_algorithm(spec, dtype, op) == "blocked"


def _preference(op, spec, dtype=None):
    """Direct backends in order of preference for ``op`` on ``spec``."""
    if (op in FFT_OPS and spec is not None and spec.c_out // spec.groups >= WIDE_GEMM_OUT
            and (spec.c_in // spec.groups) * spec.kh * spec.kw >= WIDE_GEMM_REDUCTION
            and not _blocked(op, spec, dtype)):
        return WIDE_GEMM_PREFERENCE
    return PREFERENCE.get(op, DEFAULT_PREFERENCE)


def model_choice(op, spec, dtype=None):
    """The backend name the cost model picks for ``op`` on ``spec`` (``spec`` may be None) and ``dtype``
    (None: unknown)."""
    direct = _first(_preference(op, spec, dtype), op)
    if (op in FFT_OPS and spec is not None and spec.kh * spec.kw >= FFT_MIN_TAPS
            and _module("fft") is not None and FFT_MARGIN * fft_seconds(spec) < direct_seconds(spec, direct)):
        return "fft"
    return direct


def best(op, spec, dtype=None):
    """The backend module that runs ``op`` for ``spec`` (and ``dtype``, when known) under ``"auto"``."""
    if _autotune and spec is not None:
        return _tuned_or_tuner(op, spec, dtype)
    key = (op, spec, dtype)
    module = _decisions.get(key)
    if module is None:
        name = model_choice(op, spec, dtype)
        module = _separable_front(name) if _separable_spec(op, spec, name) else _module(name)
        _decisions[key] = module
    return module


def _separable_spec(op, spec, name):
    """Whether ``op`` on ``spec`` should check for a rank-1 kernel (direct backends, big enough kernels)."""
    if not SEPARABLE or name == "fft" or op not in ("conv2d", "conv2d_grad_input") or spec is None:
        return False
    pairs = (spec.c_in // spec.groups) * (spec.c_out // spec.groups)
    return (spec.kh * spec.kw >= SEPARABLE_MIN_TAPS and pairs <= SEPARABLE_MAX_PAIRS
            and separable.worthwhile(spec))


def _separable_front(name):
    if name not in _passes:
        _passes[name] = separable.Passes(_module(name))
    return _passes[name]


def reset():
    """Forget every decision, which backends load, and what was read from the autotune file."""
    with _lock:
        _decisions.clear()
        _usable.clear()
        _tuned.clear()
        _disk.clear()
        _winners.clear()
        _passes.clear()


# ------------------------------------------------------------------------------------ autotune
def autotune(enabled=True):
    """Choose ``"auto"`` backends by timing them (see the module docstring); ``False`` returns to the model."""
    global _autotune
    _autotune = bool(enabled)


def cache_path():
    """The autotune file: ``$FASTCONV_CACHE_DIR/autotune.json``, else ``~/.cache/fastconv/autotune.json``."""
    folder = os.environ.get("FASTCONV_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "fastconv")
    return os.path.join(folder, "autotune.json")


def tune_key(op, spec, dtype):
    """The autotune cache key: what the winner depends on."""
    from .. import __version__
    from ..config import get_num_threads
    return (f"{op}|{spec!r}|{np.dtype(dtype).name}|{platform.node()}|cpus={os.cpu_count()}"
            f"|threads={get_num_threads()}|fastconv={__version__}")


def _read(path, quiet=False):
    """The entries of the cache file; a missing file is empty, an unreadable one is ignored with a warning."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        entries = data["entries"]
        if not isinstance(entries, dict) or not all(isinstance(v, str) for v in entries.values()):
            raise ValueError("'entries' is not a mapping of keys to backend names")
        return dict(entries)
    except (FileNotFoundError, NotADirectoryError):
        return {}
    except (OSError, ValueError, KeyError, TypeError) as err:
        if not quiet:
            warnings.warn(f"fastconv: ignoring the autotune cache {path}, which cannot be read ({err})",
                          RuntimeWarning, stacklevel=4)
        return {}


def _disk_entries(path):
    entries = _disk.get(path)
    if entries is None:
        entries = _disk[path] = _read(path)
    return entries


def _write(path, key, name):
    """Add one entry to the cache file atomically (temp file + ``os.replace``), keeping other entries."""
    folder = os.path.dirname(path)
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        entries = _read(path, quiet=True)  # entries other processes added meanwhile
        entries.update(_disk.get(path, {}))
        entries[key] = name
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".autotune-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"format": 1, "entries": entries}, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
        _disk[path] = entries
    except OSError as err:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        warnings.warn(f"fastconv: cannot write the autotune cache {path} ({err}); results stay in memory",
                      RuntimeWarning, stacklevel=4)


def _known(op, spec, dtype):
    """The tuned backend name for this key, from memory or the cache file, or None."""
    key = tune_key(op, spec, dtype)
    with _lock:
        name = _tuned.get(key)
        if name is None:
            name = _disk_entries(cache_path()).get(key)
            if name is not None:
                _tuned[key] = name
    if name is not None and _module(name) is not None and hasattr(_module(name), op):
        return name
    return None


def _tuned_or_tuner(op, spec, dtype):
    if dtype is None:
        return _Tuner(op, spec, dtype)
    from ..config import get_num_threads
    memo = (op, spec, np.dtype(dtype), get_num_threads())
    module = _winners.get(memo)
    if module is None:
        name = _known(op, spec, dtype)
        if name is None:
            return _Tuner(op, spec, dtype)
        module = _winners[memo] = _module(name)
    return module


class _Tuner:
    """Stands for a backend module until the first call has measured which one is fastest."""

    def __init__(self, op, spec, dtype):
        self._op, self._spec, self._dtype = op, spec, dtype

    def __getattr__(self, name):
        if name != self._op:
            raise AttributeError(name)
        return self._run

    def _run(self, *args):
        op, spec = self._op, self._spec
        dtype = self._dtype or next(a.dtype for a in args if isinstance(a, np.ndarray) and a.dtype.kind == "f")
        name = _known(op, spec, dtype)
        if name is not None:
            return getattr(_module(name), op)(*args)
        names = [n for n in CANDIDATES if _module(n) is not None and hasattr(_module(n), op)]
        name, result = _race(op, names, args)
        key = tune_key(op, spec, dtype)
        with _lock:
            _tuned[key] = name
            _write(cache_path(), key, name)
        return result


def _copies(args):
    return [a.copy() if isinstance(a, np.ndarray) else a for a in args]


def measure(fn, args, repeat=3):
    """``(seconds, result)``: a warm-up call (JIT compilation), then the best of up to ``repeat`` runs
    (one when a run takes over 50 ms)."""
    fn(*args)
    best, result = math.inf, None
    for i in range(repeat):
        start = time.perf_counter()
        result = fn(*args)
        elapsed = time.perf_counter() - start
        best = min(best, elapsed)
        if elapsed > 0.05:
            break
    return best, result


def _race(op, names, args):
    """The fastest of ``names`` on copies of ``args``, and its result."""
    winner, fastest, result = None, math.inf, None
    for name in names:
        try:
            seconds, out = measure(getattr(_module(name), op), _copies(args))
        except Exception as err:  # a backend that fails here is simply not a candidate
            warnings.warn(f"fastconv autotune: backend {name!r} failed on {op} ({err}); skipped",
                          RuntimeWarning, stacklevel=3)
            continue
        if seconds < fastest:
            winner, fastest, result = name, seconds, out
    if winner is None:
        raise RuntimeError(f"fastconv autotune: no backend could run {op}")
    return winner, result
