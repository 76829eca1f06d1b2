"""fastconv: convolution for Python, with a NumPy reference, compiled CPU kernels, CUDA kernels and autograd.

    import fastconv as fc
    import fastconv.functional as F
    x = fc.tensor(array, requires_grad=True)
    y = F.conv2d(x, w, b, stride=1, padding="same")
    y.backward(grad); x.grad
"""
from . import cuda, functional, shapes
from . import data, models, nn, optim  # noqa: E402  (need functional and tensor first)
from . import onnx, viz  # their optional packages (onnx, matplotlib) load on first use
from ._version import __version__
from .backends.plan import get_backend, get_exact, set_backend, set_exact
from .backends.registry import available as available_backends
from .backends.separable import separate
from .backends.tune import enable as autotune
from .backends.workspaces import get_memory_reuse, set_memory_reuse
from .explain import explain
from .info import show_config
from .matrix import conv_matrix
from .random import manual_seed
from .runtime import get_num_threads, set_num_threads
from .summary import summary
from .tensor import Tensor, from_dlpack, is_grad_enabled, no_grad, tensor

__all__ = ["Tensor", "tensor", "from_dlpack", "no_grad", "is_grad_enabled", "functional", "shapes", "cuda",
           "set_backend", "get_backend", "available_backends", "set_num_threads", "get_num_threads",
           "show_config", "manual_seed", "autotune", "explain", "set_exact", "get_exact", "summary",
           "set_memory_reuse", "get_memory_reuse",
           "__version__", "nn", "optim", "data", "models", "onnx", "viz", "conv_matrix", "separate"]
