"""Where an array lives ("cpu" or "cuda"), its array namespace, and moves between devices.

CPU arrays are NumPy arrays and use the ``numpy`` namespace. CUDA arrays are Numba device arrays; their
namespace (``fastconv.backends.cuda_array``) implements the subset of NumPy's functions that ``Tensor`` and
the glue ops use, under the same names, so one piece of code serves both devices.
"""
import numpy as np

DEVICES = ("cpu", "cuda")


def check_device(device):
    """Normalise a device argument ("cpu", "cuda", "cuda:0") and make sure it can be used."""
    name = str(device).split(":")[0] if device is not None else "cpu"
    if name not in DEVICES:
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if name == "cuda":
        from . import cuda
        cuda.require()
    return name


def device_of(data):
    """'cpu' for NumPy arrays and scalars, 'cuda' for arrays that live on the GPU."""
    if isinstance(data, (np.ndarray, np.generic, int, float)):
        return "cpu"
    return "cuda" if hasattr(data, "__cuda_array_interface__") or _is_cuda_array(data) else "cpu"


def _is_cuda_array(data):
    from .backends import cuda_array  # CudaArray (also under the simulator), Numba device arrays
    return cuda_array.is_device_array(data)


def array_module(device):
    """The NumPy-like namespace for arrays on ``device``."""
    if device == "cpu":
        return np
    from .backends import cuda_array
    return cuda_array


def to_device(data, device):
    """Copy ``data`` to ``device`` (no copy when it is already there)."""
    device = check_device(device)
    if device_of(data) == "cpu" and device == "cpu":
        return data
    from .backends import cuda_array  # device arrays are wrapped as CudaArrays without a copy
    return cuda_array.asarray(data) if device == "cuda" else cuda_array.asarray(data).copy_to_host()
