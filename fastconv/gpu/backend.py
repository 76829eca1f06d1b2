"""``backend="cuda"``: the op table ``backends/registry.py`` loads, on GPU arrays.

The ops take the reference's arguments; ``FUSES_EPILOGUES`` says they also take an activation (``act``)
and, in the gradients, the forward output (``y``) and ``bias=True`` (see ``conv.py``), so a layer with a
bias and an activation runs as one launch forward and two backward.
"""
from .. import cuda
from ..backends.registry import BackendUnavailable
from .conv import conv2d, conv2d_grad_input, conv2d_grad_weight, use_direct  # noqa: F401
from .pool import (avg_pool2d, avg_pool2d_grad, max_pool2d, max_pool2d_grad, max_unpool2d,  # noqa: F401
                   max_unpool2d_grad)

FUSES_EPILOGUES = True


def check_available():
    """Raise BackendUnavailable unless CUDA kernels can run here (a GPU or the simulator)."""
    if not cuda.is_available():
        raise BackendUnavailable("backend 'cuda' needs an NVIDIA GPU with a working driver "
                                 "(numba.cuda.is_available() is False), or NUMBA_ENABLE_CUDASIM=1")
