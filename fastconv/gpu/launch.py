"""The one launch path of the GPU kernels: launch shapes, the kernel cache, resolved launches, profiling.

A kernel is built by a *factory* (a function of a key: operation, rank, dtype, ...; see ``kernels/``) and
compiled by Numba on its first launch. :func:`launch` resolves ``(factory, key, grid, block, argument
types)`` once - the kernel, its Numba specialisation for those types (no type dispatch afterwards) and its
launch configuration - and reuses the result, so a repeated launch costs a dict lookup and the driver call.

While a :class:`Profile` is active (``fastconv.cuda.profile()``) every launch is recorded: kernel, category,
grid, block, bytes of its array arguments, host time of the launch call and, on a GPU, the kernel's time
(CUDA events). In counting mode launches are recorded and not run (the outputs hold whatever memory held),
with the launch shapes of a GPU, so that CI can count the launches of a training step under the simulator.

Launch shapes are small under the simulator (:func:`config`), where every GPU thread is a Python thread.
"""
from __future__ import annotations

import math
import time
import warnings
from collections import Counter, namedtuple

import numba
import numpy as np
from numba import cuda

if not hasattr(np, "row_stack"):  # numba-cuda 0.2x overloads np.row_stack as its typing loads, on a
    np.row_stack = np.vstack      # kernel's first compile; NumPy 2.5 removed that alias of vstack

# ------------------------------------------------------------------------------ configuration
Config = namedtuple("Config", "threads max_blocks red_threads gemm direct")
Config.__doc__ = """Launch shapes. ``gemm`` is ``(BM, BN, BK, TM, TN)``: a block computes a BM x BN output tile
with (BM/TM) x (BN/TN) threads, each accumulating a TM x TN micro-tile in registers over K in steps of BK.
``direct`` is ``(TW, TH, COB)`` for the direct convolution kernel (``kernels/conv.py``)."""
GPU = Config(threads=256, max_blocks=16384, red_threads=256, gemm=(64, 64, 16, 4, 4), direct=(16, 8, 4))
SIMULATOR = Config(threads=32, max_blocks=2, red_threads=8, gemm=(8, 8, 4, 2, 2), direct=(4, 4, 2))
MAX_GRID_Z = 65535  # blocks along grid z (batches, groups x splits)

_profile = None  # the active Profile, or None


def simulated():
    """True under Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``)."""
    return bool(getattr(numba.config, "ENABLE_CUDASIM", False))


def config():
    """Launch shapes: full-size blocks on a GPU and in counting mode, tiny ones under the simulator."""
    if simulated() and not (_profile is not None and _profile.count_only):
        _lock_simulated_shared_arrays()
        return SIMULATOR
    return GPU


def grid_1d(n):
    """(blocks, threads) for a grid-stride loop over ``n`` items."""
    cfg = config()
    return max(1, min(cfg.max_blocks, -(-n // cfg.threads))), cfg.threads


def threads_for(n):
    """Block size for a block-wide reduction over ``n`` elements: a power of two, at most the width."""
    width, threads = config().red_threads, 1
    while threads < min(n, width):
        threads *= 2
    return threads


_locked = False


def _lock_simulated_shared_arrays():
    """Make the simulator's ``cuda.shared.array`` thread-safe (numba-cuda 0.30 checks and fills its table
    of a block's arrays without a lock: two simulated threads entering together could get two different
    arrays, and a block-wide reduction then loses partial sums, rarely and only under load)."""
    global _locked
    if _locked:
        return
    import sys
    import threading
    from numba.cuda.simulator import kernelapi
    shared = kernelapi.FakeCUDAShared
    unlocked, lock = shared.array, threading.Lock()

    def array(self, shape, dtype, alignment=None):
        if alignment is not None or shape == 0:
            return unlocked(self, shape, dtype, alignment)
        if isinstance(dtype, kernelapi.types.Type):
            dtype = kernelapi.numpy_support.as_dtype(dtype)
        frame = sys._getframe(1)  # one array per call site, as the simulator keys them
        caller = (frame.f_code.co_filename, frame.f_lineno)
        with lock:
            found = self._allocations.get(caller)
            if found is None:
                found = self._allocations[caller] = np.empty(shape, dtype)
        return found

    shared.array = array
    _locked = True


# ---------------------------------------------------------------------------- kernel factories
def category(name):
    """Decorator of a kernel factory: the category its launches are counted under (elementwise,
    reduction, gemm, conv, pool, loss, optimizer, gather)."""
    def mark(factory):
        factory.category = name
        return factory
    return mark


_kernels = {}


def kernel(factory, key):
    """The kernel ``factory(*key)`` builds for the current launch shapes, built once (compiled lazily)."""
    cfg = config()
    k = _kernels.get((factory, key, cfg))
    if k is None:
        k = _kernels[(factory, key, cfg)] = factory(*key)
    return k


def _arg_key(a):
    """What decides Numba's type of a kernel argument, cheaply: dtype and rank of arrays, the element
    types of tuples, the type of scalars."""
    if isinstance(a, tuple):
        return tuple(type(v) for v in a)
    dtype = getattr(a, "dtype", None)
    if dtype is not None and not isinstance(a, np.generic):
        return dtype, len(a.shape)
    return type(a)


_resolved = {}


def _resolve(factory, key, grid, block, args):
    """The launch-ready kernel: on a GPU specialised for the argument types (so later launches skip
    Numba's type dispatch) and configured for ``grid`` x ``block`` once; the simulator's kernels keep
    one configuration at a time, so they are configured at every launch."""
    k = kernel(factory, key)
    if simulated():
        return lambda *args: k[grid, block](*args)
    with warnings.catch_warnings():  # small grids are what small nets need, not a mistake
        warnings.filterwarnings("ignore", message="Grid size")  # Numba's low-occupancy warning
        return k.specialize(*args)[grid, block]


def launch(factory, key, grid, block, *args, nbytes=None):
    """Launch ``factory(*key)`` on ``grid`` x ``block`` with ``args`` (flat device arrays, ints, floats and
    tuples of ints). ``nbytes``: bytes the launch reads and writes, for the profile (default: the sizes
    of its array arguments)."""
    cfg = config()
    signature = (factory, key, cfg, grid, block, tuple(_arg_key(a) for a in args))
    run = _resolved.get(signature)
    if run is None:
        if _profile is not None and _profile.count_only:
            run = None  # counting: nothing is built or compiled
        else:
            run = _resolved[signature] = _resolve(factory, key, grid, block, args)
    if _profile is None:
        run(*args)
    else:
        _profile.record(factory, key, grid, block, args, run, nbytes)


def synchronize():
    """Wait for every kernel launched so far (launches are asynchronous)."""
    cuda.synchronize()


# ------------------------------------------------------------------------------------ profile
Launch = namedtuple("Launch", "name category grid block nbytes host_us gpu_us")
Launch.__doc__ = """One recorded launch: kernel name (factory and first key item), category, grid, block,
bytes of its array arguments, microseconds the host spent launching it, and on a GPU the kernel's
microseconds (None elsewhere)."""


def _nbytes(args):
    """Bytes of the distinct array arguments (a buffer passed twice, as a placeholder, counts once)."""
    arrays = {id(a): a for a in args if hasattr(a, "shape") and hasattr(a, "dtype") and not isinstance(a, np.generic)}
    return sum(math.prod(a.shape) * a.dtype.itemsize for a in arrays.values())


def _name(factory, key):
    """``factory`` without ``_kernel``, and the operation its key starts with (not a dtype)."""
    base = factory.__name__.lstrip("_").removesuffix("_kernel")
    first = key[0] if key else None
    return f"{base}:{first}" if isinstance(first, str) and first[:1] not in "<>|=" else base


class Profile:
    """The launches made while it is active (see ``fastconv.cuda.profile``).

    ``launches``: the :class:`Launch` records in order; ``len(profile)``; :meth:`counts` by category or
    name; :meth:`table` a Markdown table per kernel; :meth:`summary` one line.
    ``count_only``: record launches without running them. ``signatures``: also keep ``(factory, key,
    Numba argument types)`` of every launch (``bench/gpu_check.py --ptx`` compiles them for real GPUs).
    """

    def __init__(self, count_only=False, signatures=False):
        self.count_only, self.keep_signatures = bool(count_only), bool(signatures)
        self.launches, self.signatures = [], []
        self._events = []  # (index, start, end) CUDA events on a GPU, read when the profile closes
        self._timed = not count_only and not simulated()

    def __len__(self):
        return len(self.launches)

    def record(self, factory, key, grid, block, args, run, nbytes):
        start = end = None
        if self._timed:
            start, end = cuda.event(), cuda.event()
            start.record()
        t0 = time.perf_counter()
        if not self.count_only:
            run(*args)
        host_us = (time.perf_counter() - t0) * 1e6
        if end is not None:
            end.record()
            self._events.append((len(self.launches), start, end))
        self.launches.append(Launch(_name(factory, key), getattr(factory, "category", "other"), grid, block,
                                    _nbytes(args) if nbytes is None else int(nbytes), host_us, None))
        if self.keep_signatures:
            types = tuple(numba.typeof(getattr(a, "_ary", a)) for a in args)
            self.signatures.append((factory.__module__, factory.__name__, key, types))

    def close(self):
        """Read the kernels' GPU times (waits for the GPU)."""
        if self._events:
            cuda.synchronize()
            for i, start, end in self._events:
                self.launches[i] = self.launches[i]._replace(gpu_us=cuda.event_elapsed_time(start, end) * 1e3)
            self._events = []

    def counts(self, by="category"):
        """Launches per ``category`` or per kernel ``name`` (a Counter)."""
        return Counter(getattr(launch, by) for launch in self.launches)

    def summary(self):
        """One line: launches, by category, host microseconds per launch, and GPU time where measured."""
        n = len(self.launches)
        host = sum(launch.host_us for launch in self.launches)
        gpu = [launch.gpu_us for launch in self.launches if launch.gpu_us is not None]
        parts = [f"{n} launches (" + ", ".join(f"{k} {v}" for k, v in self.counts().most_common()) + ")"]
        if n and not self.count_only:
            parts.append(f"{host / n:.1f} us host per launch")
        if gpu:
            parts.append(f"{sum(gpu):.1f} us on the GPU")
        return "; ".join(parts)

    def table(self):
        """A Markdown table per kernel: launches, MB moved, host and GPU microseconds in all."""
        rows = {}
        for launch in self.launches:
            row = rows.setdefault(launch.name, [launch.category, 0, 0, 0.0, None])
            row[1] += 1
            row[2] += launch.nbytes
            row[3] += launch.host_us
            if launch.gpu_us is not None:
                row[4] = (row[4] or 0.0) + launch.gpu_us
        lines = ["| kernel | category | launches | MB | host us | GPU us |", "|---|---|--:|--:|--:|--:|"]
        for name, (cat, n, nbytes, host, gpu) in sorted(rows.items(), key=lambda kv: (kv[1][0], kv[0])):
            host = "-" if self.count_only else f"{host:.0f}"
            lines.append(f"| {name} | {cat} | {n} | {nbytes / 1e6:.3f} | {host} | "
                         f"{'-' if gpu is None else f'{gpu:.0f}'} |")
        return "\n".join(lines)


def start_profile(profile):
    """Make ``profile`` the active one; returns the previous (for :func:`stop_profile`)."""
    global _profile
    previous, _profile = _profile, profile
    return previous


def stop_profile(previous):
    global _profile
    current, _profile = _profile, previous
    if current is not None:
        current.close()
