"""What this fastconv is built with and how it runs: ``fc.show_config()`` and ``fastconv info``.

Versions, whether the Cython kernels are built (and with OpenMP), their vector instructions, the thread
counts of every pool and BLAS, OpenMP's wait policy, the backends that load here, the GPU, and where the
planner keeps its measurements. A serial build or a source tree without compiled kernels is a
performance bug nobody sees unless something says it: this module says it.
"""
import os
import platform
import sys

import numpy as np

from . import cuda, runtime
from ._version import __version__
from .backends import plan, registry, tune, workspaces


def _blas():
    """Name of the BLAS NumPy calls, from NumPy's build configuration."""
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version', '')}".strip()
    except Exception:
        return "unknown"


def _blas_threads():
    """Thread count of every BLAS the process loaded, by file name."""
    found = runtime.blas_libraries()
    return ", ".join(f"{os.path.basename(path)}: {'?' if n is None else n}" for path, n in found.items()) or "none"


def _extension():
    """``(omp module or None, status in words)``."""
    try:
        from ._cy import _omp
    except ImportError as err:  # not built, or a source tree without compiled kernels: say which
        try:
            from ._cy import not_built
        except ImportError:
            return None, f"missing ({err})"
        return None, not_built(err)
    return _omp, "built"


def _simd(omp):
    """The Cython kernels' vector instructions and register tile (pixels x channels)."""
    if omp is None:
        return "n/a"
    from .backends.cython_cpu import _blocked  # the build for the widest vectors this CPU has
    pixels, channels = _blocked.tile_shape()
    return f"{omp.simd()}, register tile {pixels} px x {channels} ch ({_blocked.isa()})"


def _numba_layer():
    import numba
    try:
        return numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet: say what Numba will pick
        return f"not started (NUMBA_THREADING_LAYER={numba.config.THREADING_LAYER})"


def config():
    """The facts ``show_config`` prints, as a dict. Loads every backend, so the pools start."""
    import numba  # here, not at the top: ``import fastconv`` loads neither Numba nor SciPy
    import scipy
    backends = registry.available()  # loads the backends first: the wait policy is in force from here on
    omp, extension = _extension()
    return {
        "fastconv": f"{__version__} ({os.path.dirname(os.path.abspath(__file__))})",
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": f"{runtime.cpu_name()}, {os.cpu_count()} logical cores",
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "numba": numba.__version__,
        "cython extension": extension,
        "cython openmp": (("yes" if omp.openmp_enabled() else "NO: serial build, kernels use one thread")
                          if omp is not None else "n/a"),
        "cython simd": _simd(omp),
        "threads": f"{runtime.threads()} (from {runtime.threads_source()}; {runtime.usable_cores()} usable cores)",
        "cython threads": omp.max_threads() if omp is not None else "n/a",
        "numba threads": numba.get_num_threads(),
        "numba threading layer": _numba_layer(),
        "openmp wait policy": runtime.wait_policy() or "not set (no compiled backend loaded)",
        "blas": _blas(),
        "blas threads": _blas_threads(),
        "cuda": (f"available ({cuda.device_name()})" if cuda.is_available() else "not available"),
        "backends": ", ".join(backends),
        "default backend": plan.get_backend(),
        "planner cache": _measured(),
        "memory reuse": _reuse(),
    }


def _reuse():
    """How much memory of freed results fastconv keeps for the next ones (``set_memory_reuse``)."""
    limit, held = workspaces.get_memory_reuse()
    return f"up to {limit / 2**20:.0f} MB of freed results ({held / 2**20:.1f} MB held now)"


def _measured():
    """Where the planner keeps the kernels measured here, and how many of them fit this process."""
    mine = tune.entries_here(runtime.threads())
    return (f"{tune.cache_path()} ({len(mine)} shape classes measured on this machine at {runtime.threads()} "
            f"threads; fastconv tune measures the reference models' layers)")


def show_config(file=None):
    """Print versions, build facts, threads and wait policy, BLAS, CUDA, backends and the planner cache."""
    facts = config()
    width = max(map(len, facts))
    for key, value in facts.items():
        print(f"{key:<{width}}  {value}", file=file or sys.stdout)
