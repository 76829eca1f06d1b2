"""Where an array lives ("cpu" or "cuda"), its array namespace, and moves between devices.

CPU arrays are NumPy arrays and use ``fastconv.numpy_xp`` (NumPy plus the fused ops). GPU arrays are
:class:`~fastconv.gpu.array.CudaArray`s; their namespace (``fastconv.gpu.xp``) implements the subset of
NumPy's functions that ``Tensor`` and the glue ops use and the same fused ops, under the same names, so
one piece of code serves both devices.
"""
import numpy as np

from . import numpy_xp

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
    from .gpu import array  # imported on first use: CPU-only work never loads the GPU code
    return array.is_device_array(data)


def array_module(device):
    """The NumPy-like namespace for arrays on ``device``."""
    if device == "cpu":
        return numpy_xp
    from .gpu import xp
    return xp


def to_device(data, device):
    """Copy ``data`` to ``device`` (no copy when it is already there)."""
    device = check_device(device)
    if device_of(data) == "cpu" and device == "cpu":
        return data
    from .gpu import array  # device arrays are wrapped as CudaArrays without a copy
    return array.asarray(data) if device == "cuda" else array.asarray(data).copy_to_host()
