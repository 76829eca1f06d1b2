"""GPU availability: ``fc.cuda.is_available()``, and a clear error where a GPU is asked for but absent."""
import functools


@functools.lru_cache(maxsize=None)
def is_available():
    """True when Numba can launch CUDA kernels here (a GPU, or Numba's CUDA simulator)."""
    try:
        from numba import cuda
        return bool(cuda.is_available())
    except Exception:  # numba without a CUDA target, broken driver, ...
        return False


def is_simulator():
    """True when CUDA kernels run under Numba's simulator (``NUMBA_ENABLE_CUDASIM=1``)."""
    from numba import config
    return bool(getattr(config, "ENABLE_CUDASIM", False))


def require():
    """Raise a RuntimeError that says what to do when no GPU is usable."""
    if not is_available():
        raise RuntimeError(
            "device='cuda' was requested but no CUDA GPU is available (numba.cuda.is_available() is "
            "False). Install the GPU extra (pip install 'fastconv[gpu]') on a machine with an NVIDIA GPU "
            "and driver, or set NUMBA_ENABLE_CUDASIM=1 to run the CUDA kernels in Numba's simulator, "
            "or use device='cpu'.")


def device_name():
    """The GPU's name, 'simulator', or None."""
    if not is_available():
        return None
    if is_simulator():
        return "simulator"
    from numba import cuda
    name = cuda.get_current_device().name
    return name.decode() if isinstance(name, bytes) else str(name)
