"""Measured choices: time the candidate kernels of a spec on this machine and remember the fastest.

Winners are kept in memory and in a JSON file (``$FASTCONV_CACHE_DIR/autotune.json``, else
``~/.cache/fastconv/autotune.json``, written atomically), keyed by op, shape class, dtype, machine,
thread count and fastconv version; the shape class is the spec with its batch rounded up to a power of
two (the last, smaller batch of an epoch is the same class). The planner uses a winner whenever one is
known; ``fc.autotune(True)`` makes it measure the classes it meets without one, and ``fastconv tune``
(:func:`calibrate`) measures a model's layers ahead of time. Measuring is what the cost model cannot do:
see the speed of this machine's cores, caches and BLAS.

How a candidate is timed, and why: one warm-up call (JIT compilation, scratch buffers), then the best
of ``REPEAT`` calls, each on *fresh* random inputs. Fresh inputs matter: kernels keep caches keyed by
content (the FFT's spectra, a rank-1 kernel's factors), and timing one input over and over measures
those caches, not the kernel a training step runs (its weights change every step).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import tempfile
import threading
import time
import warnings

import numpy as np

from .._version import __version__
from .. import runtime
from . import registry

#: Each candidate is timed in ``REPEAT`` blocks of back-to-back calls lasting about ``BLOCK_SECONDS`` (at
#: most ``MAX_CALLS``; a call over ``LONG_CALL`` seconds is a block by itself), the best block counting.
#: Single calls with pauses between them time the waking of idle worker threads instead of the kernel: on
#: a 2-core virtual machine that took 0.5-0.8 ms a call and made the NumPy reference (one thread, none to
#: wake) the measured winner of 13 of LeNet-5's and the MNIST-1D net's 20 passes, at 1.0-6.6x their time.
REPEAT = 3
BLOCK_SECONDS = 0.005
MAX_CALLS = 1000
LONG_CALL = 0.05

_enabled = False
_warned_busy = False
_memory = {}   # key -> winner name ("backend:algorithm"), as read from the file or measured here
_disk = {}     # cache file path -> {key: name} as last read
_lock = threading.Lock()


def enable(flag=True):
    """Measure specs the planner meets (``True``) or use the cost model only (``False``)."""
    global _enabled
    _enabled = bool(flag)


def enabled():
    return _enabled


def reset():
    """Forget every measurement held in memory and what was read from the file."""
    with _lock:
        _memory.clear()
        _disk.clear()


def cache_path():
    """The measurements file: ``$FASTCONV_CACHE_DIR/autotune.json``, else ``~/.cache/fastconv/autotune.json``."""
    folder = os.environ.get("FASTCONV_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "fastconv")
    return os.path.join(folder, "autotune.json")


def shape_class(spec):
    """The spec with its batch rounded up to a power of two: specs that share a measurement."""
    return dataclasses.replace(spec, n=1 << max(0, spec.n - 1).bit_length())


def key(op, spec, dtype, threads):
    """The cache key: what the winner depends on."""
    shape = None if spec is None else shape_class(spec)
    return (f"{op}|{shape!r}|{np.dtype(dtype).name}|{platform.node()}|{runtime.cpu_name()}"
            f"|cpus={os.cpu_count()}|threads={threads}|fastconv={__version__}")


def entries_here(threads):
    """The cached winners that apply to this machine, thread count and version: ``{key: name}``."""
    suffix = key("", None, "float32", threads).split("|", 3)[3]  # machine, cores, threads, version
    return {k: v for k, v in _entries(cache_path()).items() if k.endswith(suffix)}


def known(op, spec, dtype, threads):
    """The measured winner's name for this key (memory, else the file), or None."""
    k = key(op, spec, dtype, threads)
    with _lock:
        name = _memory.get(k)
        if name is None:
            name = _entries(cache_path()).get(k)
            if name is not None:
                _memory[k] = name
    return name


def busy():
    """Whether other work keeps this machine's cores busy (load average above the core count): then
    parallel kernels wait for descheduled threads and measurements favour single-threaded ones."""
    try:
        return os.getloadavg()[0] > (os.cpu_count() or 1)
    except OSError:
        return False


def measure(op, spec, dtype, threads, candidates):
    """Time each ``(name, kernel)`` of ``candidates`` on fresh random inputs of ``spec``; remember and
    return the fastest name, with every ``(name, seconds)`` measured (failures are skipped with a
    warning). On a busy machine it warns once: those winners describe the load, not the machine."""
    global _warned_busy
    if not _warned_busy and busy():
        _warned_busy = True
        warnings.warn(f"fastconv autotune: the machine is busy (load average {os.getloadavg()[0]:.1f} on "
                      f"{os.cpu_count()} cores); kernels measured now favour single-threaded ones. Measure on "
                      f"a quiet machine, or delete {cache_path()} afterwards.", RuntimeWarning, stacklevel=3)
    rng = np.random.default_rng(0)
    times = []
    for name, kernel in candidates:
        try:
            times.append((name, time_kernel(kernel, op, spec, dtype, rng)))
        except Exception as err:  # a candidate that fails here is simply not a candidate
            warnings.warn(f"fastconv autotune: {name} failed on {op} ({err}); skipped", RuntimeWarning,
                          stacklevel=3)
    if not times:
        raise RuntimeError(f"fastconv autotune: no kernel could run {op} on {spec}")
    winner = min(times, key=lambda t: t[1])[0]
    k = key(op, spec, dtype, threads)
    with _lock:
        _memory[k] = winner
        _write(cache_path(), k, winner)
    return winner, times


def time_kernel(kernel, op, spec, dtype, rng, repeat=REPEAT):
    """Seconds per call of ``kernel``: the best of ``repeat`` blocks of back-to-back calls (see
    ``BLOCK_SECONDS``), every call on inputs of its own (kernels that cache by content, the FFT's spectra,
    cannot win by it) made before the block, and every block after an untimed call, so that the threads
    idle while the inputs were made are awake when it starts."""
    def fresh():
        return example_args(op, spec, dtype, rng)
    kernel(*fresh())  # compiles
    args = fresh()
    start = time.perf_counter()
    kernel(*args)
    once = time.perf_counter() - start
    if once > LONG_CALL:
        return once
    number = max(1, min(MAX_CALLS, math.ceil(BLOCK_SECONDS / max(once, 1e-7))))
    best = math.inf
    for _ in range(repeat):
        inputs = [fresh() for _ in range(number)]
        kernel(*fresh())
        start = time.perf_counter()
        for args in inputs:
            kernel(*args)
        best = min(best, (time.perf_counter() - start) / number)
    return best


def example_args(op, spec, dtype, rng):
    """Random arguments of kernel ``op`` for ``spec`` (valid indices for the max-pool gradient)."""
    def normal(shape):
        return rng.standard_normal(shape).astype(dtype)
    if op == "conv2d":
        return normal(spec.x_shape), normal(spec.w_shape), normal(spec.c_out), spec
    if op == "tiled_conv2d":
        return normal(spec.x_shape), normal(spec.w_shape), normal((spec.c_out, 1, 1)), spec
    if op in ("conv2d_grad_input", "tiled_conv2d_grad_input"):
        return normal(spec.y_shape), normal(spec.w_shape), spec
    if op in ("conv2d_grad_weight", "tiled_conv2d_grad_weight"):
        return normal(spec.y_shape), normal(spec.x_shape), spec
    if op in ("max_pool2d", "avg_pool2d"):
        return normal(spec.x_shape), spec
    if op == "avg_pool2d_grad":
        return normal(spec.y_shape), spec
    if op == "max_pool2d_grad":
        from . import reference
        return normal(spec.y_shape), reference.max_pool2d(normal(spec.x_shape), spec)[1], spec
    raise ValueError(f"no example arguments for {op!r}")


# ------------------------------------------------------------------------------- the cache file
def _read(path, quiet=False):
    """The entries of the cache file; a missing file is empty, an unreadable one is ignored with a warning."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        entries = data["entries"]
        if not isinstance(entries, dict) or not all(isinstance(v, str) for v in entries.values()):
            raise ValueError("'entries' is not a mapping of keys to kernel names")
        return dict(entries)
    except (FileNotFoundError, NotADirectoryError):
        return {}
    except (OSError, ValueError, KeyError, TypeError) as err:
        if not quiet:
            warnings.warn(f"fastconv: ignoring the autotune cache {path}, which cannot be read ({err})",
                          RuntimeWarning, stacklevel=4)
        return {}


def _entries(path):
    entries = _disk.get(path)
    if entries is None:
        entries = _disk[path] = _read(path)
    return entries


def _write(path, k, name):
    """Add one entry to the cache file atomically (temp file, fsync, ``os.replace``), keeping the
    entries other processes added meanwhile."""
    folder = os.path.dirname(path)
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        entries = _read(path, quiet=True)
        entries.update(_disk.get(path, {}))
        entries[k] = name
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".autotune-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"format": 2, "entries": entries}, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _disk[path] = entries
    except OSError as err:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        warnings.warn(f"fastconv: cannot write the autotune cache {path} ({err}); results stay in memory",
                      RuntimeWarning, stacklevel=4)
