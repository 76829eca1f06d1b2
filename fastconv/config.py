"""Threads and build facts: ``fc.set_num_threads``, ``fc.show_config()`` (``fastconv info``)."""
import ctypes
import os
import platform
import sys

import numpy as np


def _cython_omp():
    try:
        from ._cy import _omp
        return _omp
    except ImportError:
        return None


def set_num_threads(n):
    """Use ``n`` threads in the Numba and Cython kernels (default: ``NUMBA_NUM_THREADS`` /
    ``OMP_NUM_THREADS``, else every core)."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    import numba
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    omp = _cython_omp()
    if omp is not None:
        omp.set_num_threads(n)


_BLAS_SETTERS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                 "openblas_set_num_threads64_", "openblas_set_num_threads", "MKL_Set_Num_Threads")


def set_blas_threads(n):
    """Set the thread count of every OpenBLAS or MKL this process loaded (NumPy's and SciPy's copies are
    separate libraries; found in /proc/self/maps). PyTorch's own BLAS follows ``torch.set_num_threads``.

    Training loops set it to 1: their GEMMs are small, and an idle BLAS pool spinning beside the compiled
    kernels' own threads takes their cores (LeNet-5 steps ran 3x slower with 2 BLAS threads on 2 cores).
    Returns ``n``, or None where no known BLAS could be told (then ``OPENBLAS_NUM_THREADS`` rules).
    """
    try:
        import scipy.linalg  # noqa: F401  (load SciPy's BLAS too, so that it is found and set)
    except ImportError:
        pass
    try:
        with open("/proc/self/maps") as maps:
            libs = {line.split()[-1] for line in maps if "blas" in line.lower() or "mkl_rt" in line}
    except OSError:
        return None
    done = False
    for path in sorted(libs):
        if "torch" in path or not os.path.exists(path):
            continue
        lib = ctypes.CDLL(path)
        for symbol in _BLAS_SETTERS:
            setter = getattr(lib, symbol, None)
            if setter is not None:
                setter(ctypes.c_int(n))
                done = True
                break
    return n if done else None


def get_num_threads():
    import numba
    return numba.get_num_threads()


def _blas():
    """Name of the BLAS numpy calls, from numpy's build configuration."""
    try:
        info = np.show_config(mode="dicts")
        blas = info["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version', '')}".strip()
    except Exception:
        return "unknown"


def _simd(omp):
    """The Cython kernels' vector instructions and register tile (pixels x channels)."""
    if omp is None:
        return "n/a"
    from .backends.cython_cpu import _blocked
    pixels, channels = _blocked.tile_shape()
    return f"{omp.simd()}, register tile {pixels} px x {channels} ch ({_blocked.isa()})"


def config():
    """The facts ``show_config`` prints, as a dict."""
    import numba
    import scipy

    from . import __version__, cuda
    from .backends import plan, registry
    omp = _cython_omp()
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet: say what Numba will pick
        layer = f"not started (NUMBA_THREADING_LAYER={numba.config.THREADING_LAYER})"
    return {
        "fastconv": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "numba": numba.__version__,
        "blas": _blas(),
        "cython extension": "built" if omp is not None else "missing (reinstall with a C compiler)",
        "cython openmp": (("yes" if omp.openmp_enabled() else "NO: serial build, kernels use one thread")
                          if omp is not None else "n/a"),
        "cython threads": omp.max_threads() if omp is not None else "n/a",
        "cython simd": _simd(omp),
        "numba threads": numba.get_num_threads(),
        "numba threading layer": layer,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "unset"),
        "NUMBA_NUM_THREADS": os.environ.get("NUMBA_NUM_THREADS", "unset"),
        "cuda": (f"available ({cuda.device_name()})" if cuda.is_available() else "not available"),
        "backends": ", ".join(registry.available()),
        "default backend": plan.get_backend(),
    }


def show_config(file=None):
    """Print versions, OpenMP and thread counts, Numba's threading layer, the BLAS, and CUDA."""
    facts = config()
    width = max(map(len, facts))
    for key, value in facts.items():
        print(f"{key:<{width}}  {value}", file=file or sys.stdout)
