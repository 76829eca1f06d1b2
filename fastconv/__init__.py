"""fastconv: convolution for Python, with a NumPy reference, compiled CPU kernels, CUDA kernels and autograd.

    import fastconv as fc
    import fastconv.functional as F
    x = fc.tensor(array, requires_grad=True)
    y = F.conv2d(x, w, b, stride=1, padding="same")
    y.backward(grad); x.grad
"""
from . import cuda, functional, shapes
from . import data, models, nn, optim  # noqa: E402  (need functional and tensor first)
from ._version import __version__
from .backends.dispatch import available as available_backends
from .backends.dispatch import get_backend, set_backend
from .backends.choose import autotune
from .info import show_config
from .runtime import get_num_threads, set_num_threads
from .random import manual_seed
from .tensor import Tensor, is_grad_enabled, no_grad, tensor

__all__ = ["Tensor", "tensor", "no_grad", "is_grad_enabled", "functional", "shapes", "cuda",
           "set_backend", "get_backend", "available_backends", "set_num_threads", "get_num_threads",
           "show_config", "manual_seed", "autotune", "__version__", "nn", "optim", "data", "models"]
