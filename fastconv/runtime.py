"""Threads: how many the compiled kernels use, how OpenMP's idle threads wait, and every BLAS's count.

fastconv runs on three kinds of thread pools: Numba's (its ``omp`` threading layer is GNU libgomp), the
OpenMP threads of the Cython kernels (the same libgomp), and the BLAS libraries of the process (NumPy's
and SciPy's OpenBLAS are two separate copies, each with its own threads). This module is the one place
that sets them:

- :func:`set_num_threads` / :func:`threads`: one thread count for Numba and OpenMP (default:
  ``NUMBA_NUM_THREADS``, else ``OMP_NUM_THREADS``, else every usable core).
- The wait policy: after a parallel loop, libgomp's threads spin before they sleep (300,000 spins by
  default, milliseconds). On an idle machine that saves a wake-up before the next loop; beside other
  busy processes the spinning threads take the cores that the working ones wait for, and every step
  stalls (LeNet-5 training ran 40-60x slower than idle on a loaded 2-core machine). libgomp reads
  ``GOMP_SPINCOUNT`` only when it loads, so :func:`start_pools` sets it then, from the load it sees
  (:func:`spin_count`), unless the user chose a policy (``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``);
  the variable is removed again afterwards.
- :func:`blas_threads`: the BLAS that the compiled kernels call (SciPy's) held to ``n`` threads for a
  block, :func:`numpy_blas_threads` NumPy's (its ``matmul``: the linear layers); :func:`set_blas_threads`:
  every BLAS the process loaded.

Importing this module does nothing: no pool starts, no BLAS loads, no environment variable changes.
The compiled backends call :func:`start_pools` before they load their kernels. It imports nothing from
fastconv but the compiled ``fastconv._cy._omp``, on demand.
"""
import contextlib
import ctypes
import functools
import os
import re
import threading
import time

# ``GOMP_SPINCOUNT``: spins before an idle OpenMP thread sleeps. Measured on 2 cores (AMD EPYC, AVX-512),
# training steps (ms) of MNIST-1D / LeNet-5 with libgomp's 300,000, 10,000 and 1,000 spins:
# - idle (run at real-time priority on a shared machine): MNIST-1D 0.66-0.69 / 0.66-0.68 / 0.77-0.84,
#   LeNet-5 8.8-9.1 / 9.2-9.5 / 9.0-9.5 (medians): 10,000 spins lose nothing, 1,000 lose 15-25%;
# - beside a busy process, on a machine loaded by others: MNIST-1D 124-203 / 28-43 / 1.6-6.6,
#   LeNet-5 374-552 / 88-144 / 36-80 (means): the fewer spins, the better.
SPIN_COUNT = 10000
"""``GOMP_SPINCOUNT`` where the cores are free for the kernels' threads when OpenMP loads."""
SPIN_COUNT_LOADED = 1000
"""``GOMP_SPINCOUNT`` where other processes' tasks already wait for the cores."""

_BLAS_API = [(f"{prefix}_get_num_threads{suffix}", f"{prefix}_set_num_threads{suffix}")
             for prefix in ("scipy_openblas", "openblas") for suffix in ("64_", "")]
_BLAS_API.append(("MKL_Get_Max_Threads", "MKL_Set_Num_Threads"))
_BLAS_FILE = re.compile(r"/lib[^/]*(blas|mkl_rt)[^/]*$", re.IGNORECASE)  # libopenblas*.so, libmkl_rt.so.2
_USER_POLICY = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")

_lock = threading.RLock()
_requested = None   # set_num_threads' count, None for the default
_started = False    # start_pools has run
_policy = None      # what start_pools found or set, for wait_policy()


# ----------------------------------------------------------------------------------- the machine
@functools.lru_cache(maxsize=None)
def cpu_name():
    """The CPU's model name (Linux: ``/proc/cpuinfo``), else what ``platform`` knows."""
    import platform
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ----------------------------------------------------------------------------------- threads
def usable_cores():
    """Cores this process may run on (its CPU affinity), else every core."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _env_threads():
    """``(count, variable)`` from ``NUMBA_NUM_THREADS`` or ``OMP_NUM_THREADS``, or None."""
    for name in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS"):
        first = os.environ.get(name, "").split(",")[0].strip()
        if first.isdigit() and int(first) > 0:
            return int(first), name
    return None


def threads():
    """Threads of the compiled kernels: :func:`set_num_threads`' count, else ``NUMBA_NUM_THREADS``, else
    ``OMP_NUM_THREADS``, else :func:`usable_cores`. Numba runs at most its pool's size of them."""
    if _requested is not None:
        return _requested
    env = _env_threads()
    return env[0] if env else usable_cores()


def threads_source():
    """Where :func:`threads` comes from, in words."""
    if _requested is not None:
        return "fastconv.set_num_threads"
    env = _env_threads()
    return env[1] if env else "usable cores"


def set_num_threads(n):
    """Run the Numba and Cython kernels on ``n`` threads (Numba on at most ``NUMBA_NUM_THREADS``).

    Takes effect at once where the pools run, else when they start; applies to the calling Python
    thread (Numba's and OpenMP's counts are per thread), like ``torch.set_num_threads``."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"n must be a positive int, got {n}")
    global _requested
    with _lock:
        _requested = n
        if _started:
            _apply(n)


def get_num_threads():
    """Threads of the compiled kernels (see :func:`threads`)."""
    return threads()


def _apply(n):
    import numba
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    omp = openmp()
    if omp is not None:
        omp.set_num_threads(n)


# ------------------------------------------------------------------------------- wait policy
def openmp():
    """The Cython kernels' OpenMP facts (``fastconv._cy._omp``), or None where they are not built.
    Importing it loads libgomp: call :func:`start_pools` first, so that the wait policy applies."""
    try:
        from ._cy import _omp
    except ImportError:
        return None
    return _omp


def _libgomp_loaded():
    """True when this process already mapped a GNU libgomp (it then ignores new environment values)."""
    with contextlib.suppress(OSError), open("/proc/self/maps") as maps:
        return any(re.search(r"/libgomp\.so", line) for line in maps)
    return False


def other_tasks():
    """Tasks of other processes running or waiting for a core now: the median of a few samples of the
    runnable count in /proc/loadavg less this process's running threads (0 where /proc is missing)."""
    samples = []
    for _ in range(5):
        try:
            with open("/proc/loadavg") as f:
                runnable = int(f.read().split()[3].split("/")[0])
            tasks = os.listdir("/proc/self/task")
        except (OSError, ValueError, IndexError):
            return 0
        own = 0
        for task in tasks:
            with contextlib.suppress(OSError), open(f"/proc/self/task/{task}/stat") as f:
                own += f.read().rpartition(")")[2].split()[0] == "R"
        samples.append(max(0, runnable - own))
        time.sleep(0.001)
    return sorted(samples)[len(samples) // 2]


def spin_count(others, threads, cores):
    """The spin count for ``threads`` kernel threads on ``cores`` usable cores beside ``others`` runnable
    tasks of other processes: :data:`SPIN_COUNT_LOADED` where they do not all fit, else :data:`SPIN_COUNT`."""
    return SPIN_COUNT_LOADED if others + threads > cores else SPIN_COUNT


@contextlib.contextmanager
def _wait_policy():
    """``GOMP_SPINCOUNT`` for the block (see :func:`spin_count`), unless the user chose a policy or
    libgomp runs already."""
    global _policy
    chosen = {name: os.environ[name] for name in _USER_POLICY if name in os.environ}
    if chosen:
        _policy = " ".join(f"{k}={v}" for k, v in chosen.items()) + " (environment)"
    elif _libgomp_loaded():
        _policy = "libgomp's default (it was loaded before fastconv's kernels)"
    else:
        others = other_tasks()
        spins = spin_count(others, threads(), usable_cores())
        _policy = (f"GOMP_SPINCOUNT={spins} (fastconv's choice: {others} tasks of other processes were "
                   f"runnable when OpenMP loaded)")
        os.environ["GOMP_SPINCOUNT"] = str(spins)
    try:
        yield
    finally:
        if not chosen:
            os.environ.pop("GOMP_SPINCOUNT", None)


def start_pools():
    """Load OpenMP under the wait policy, start Numba's pool and give both :func:`threads`, once.

    The compiled backends call it before they load their kernels: libgomp reads its wait policy when it
    loads, and the Cython extension loads it. Nothing else starts threads early: OpenMP starts its own at
    the first parallel loop."""
    global _started
    if _started:
        return
    with _lock:
        if _started:
            return
        import numba
        with _wait_policy():
            openmp()
            numba.get_num_threads()  # launches Numba's threading layer (libgomp for "omp")
        _started = True
        _apply(threads())


def pools_started():
    """True once :func:`start_pools` has run."""
    return _started


def wait_policy():
    """The OpenMP wait policy in force, in words (None before the pools start)."""
    return _policy


# --------------------------------------------------------------------------------------- BLAS
@functools.lru_cache(maxsize=None)
def _blas_library(path):
    """``(get, set)`` of the thread count of the BLAS at ``path``, or None where it has no known API."""
    try:
        lib = ctypes.CDLL(path)
    except OSError:
        return None
    for get_name, set_name in _BLAS_API:
        get, set_ = getattr(lib, get_name, None), getattr(lib, set_name, None)
        if get is not None and set_ is not None:
            get.restype, set_.argtypes = ctypes.c_int, [ctypes.c_int]
            return get, set_
    return None


@functools.lru_cache(maxsize=None)
def _kernel_blas():
    """``(get, set)`` of the BLAS the compiled kernels call (SciPy's, through ``scipy.linalg.cython_blas``,
    whose own symbols lead to the library it links), or None."""
    try:
        import scipy.linalg.cython_blas as cython_blas
    except ImportError:
        return None
    return _blas_library(cython_blas.__file__)


def blas_controllable():
    """True when the kernels' BLAS (SciPy's) can be held to a thread count (OpenBLAS or MKL)."""
    return _kernel_blas() is not None


@functools.lru_cache(maxsize=None)
def _numpy_blas():
    """``(get, set)`` of the BLAS that NumPy's ``matmul`` calls (through the libraries its core module
    links), or None."""
    import numpy as np
    core = getattr(np, "_core", None) or np.core
    return _blas_library(core._multiarray_umath.__file__)


def blas_threads(n):
    """Run the block with the kernels' BLAS (SciPy's) on ``n`` threads, restored afterwards (a no-op
    where its thread count cannot be set)."""
    return _held(_kernel_blas(), n)


def numpy_blas_threads(n):
    """Run the block with NumPy's BLAS on ``n`` threads, restored afterwards (a no-op where its thread
    count cannot be set)."""
    return _held(_numpy_blas(), n)


@contextlib.contextmanager
def _held(control, n):
    old = control[0]() if control is not None else n
    if old != n:
        control[1](n)
    try:
        yield
    finally:
        if old != n:
            control[1](old)


def blas_libraries():
    """``{path: threads}`` of every BLAS this process loaded (from /proc/self/maps; empty elsewhere),
    ``None`` for a library whose count cannot be read. PyTorch's own follows ``torch.set_num_threads``."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if _BLAS_FILE.search(line)}
    except OSError:
        return {}
    found = {}
    for path in sorted(paths):
        if "torch" not in path and os.path.exists(path):
            control = _blas_library(path)
            found[path] = control[0]() if control is not None else None
    return found


def set_blas_threads(n):
    """Set the thread count of every OpenBLAS or MKL this process loaded, and of the kernels' BLAS
    (SciPy's, loaded here if it was not). Returns ``n``, or None where no BLAS could be told (then
    ``OPENBLAS_NUM_THREADS`` rules).

    Training loops set it to 1: their GEMMs are small, and an idle BLAS pool spinning beside the compiled
    kernels' own threads takes their cores (LeNet-5 steps ran 3x slower with 2 BLAS threads on 2 cores).
    """
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"n must be a positive int, got {n}")
    setters = {}  # by address: the kernels' BLAS is also among the libraries loaded
    for control in [_kernel_blas()] + [_blas_library(path) for path in blas_libraries()]:
        if control is not None:
            setters[ctypes.cast(control[1], ctypes.c_void_p).value] = control[1]
    for set_ in setters.values():
        set_(n)
    return n if setters else None
