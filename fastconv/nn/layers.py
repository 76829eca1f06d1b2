"""Layers with PyTorch's names, arguments, weight shapes and default initialisation.

Each layer is a thin holder of its parameters and arguments around one op of ``fastconv.functional``.
Layers that run a convolution or pooling kernel take ``backend`` (default ``"auto"``) and pass it on.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .. import functional as F
from .. import shapes
from . import init
from .module import Module, Parameter

__all__ = ["Conv1d", "Conv2d", "ConvTranspose1d", "ConvTranspose2d", "Linear", "MaxPool1d", "MaxPool2d",
           "AvgPool1d", "AvgPool2d", "AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "ReLU", "Tanh", "Sigmoid",
           "Flatten", "Dropout", "Identity", "Sequential", "ModuleList", "CrossEntropyLoss", "MSELoss",
           "Conv3d", "ConvTranspose3d", "MaxPool3d", "AvgPool3d", "AdaptiveAvgPool3d", "Upsample",
           "LocallyConnected1d", "LocallyConnected2d", "TiledConv1d", "TiledConv2d"]


def _channels(in_channels, out_channels, groups):
    for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
        shapes.integer(name, value, 1)
    if in_channels % groups or out_channels % groups:
        raise ValueError(f"in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible "
                         f"by groups ({groups})")


def _window_args(layer, kernel_size, stride, padding, dilation):
    """Set a convolution-like layer's ``kernel_size``, ``stride``, ``padding``, ``dilation`` (normalised)."""
    layer.kernel_size = shapes.ints("kernel_size", kernel_size, layer.dims, 1)
    layer.stride = shapes.ints("stride", stride, layer.dims, 1)
    layer.dilation = shapes.ints("dilation", dilation, layer.dims, 1)
    if isinstance(padding, str) and not layer.transposed:  # "valid" or "same", checked here
        shapes.conv_padding(padding, layer.dims, layer.kernel_size, layer.dilation, layer.stride)
        layer.padding = padding
    else:
        layer.padding = shapes.ints("padding", padding, layer.dims, 0)


# ----------------------------------------------------------------------------- convolutions
class _ConvNd(Module):
    """Shared body of the convolution layers (1-, 2- and 3-D, transposed or not): arguments, parameters,
    initialisation."""
    dims = 2
    transposed = False
    takes_activation = "after"  # Sequential runs a following ReLU/Tanh/Sigmoid inside it (see Sequential)

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, output_padding=0, dtype=np.float32, backend="auto"):
        _channels(in_channels, out_channels, groups)
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        _window_args(self, kernel_size, stride, padding, dilation)
        self.output_padding = shapes.ints("output_padding", output_padding, self.dims, 0)
        self.backend = backend
        dtype = shapes.float_dtype("dtype", dtype)
        bias = shapes.flag("bias", bias)
        lead = (in_channels, out_channels // groups) if self.transposed else (out_channels, in_channels // groups)
        shapes.check_memory("the weight", lead + self.kernel_size, "the channels and kernel_size", dtype.itemsize)
        self.weight = Parameter(np.empty(lead + self.kernel_size, dtype=dtype))
        self.bias = Parameter(np.empty(out_channels, dtype=dtype)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        init.default_init_(self.weight, self.bias)

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}, padding={self.padding}")
        if self.dilation != (1,) * self.dims:
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        return s + ("" if self.bias is not None else ", bias=False")


class _Conv(_ConvNd):
    """A convolution layer of ``dims`` spatial axes: ``F.conv{dims}d`` with its parameters."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, dtype=np.float32, backend="auto"):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         dtype=dtype, backend=backend)

    def forward(self, x, activation=None):
        return getattr(F, f"conv{self.dims}d")(x, self.weight, self.bias, self.stride, self.padding,
                                               self.dilation, self.groups, backend=self.backend,
                                               activation=activation)


class _ConvTranspose(_ConvNd):
    """A transposed convolution layer of ``dims`` spatial axes: ``F.conv_transpose{dims}d``."""
    transposed, takes_activation = True, None

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0,
                 groups=1, bias=True, dilation=1, dtype=np.float32, backend="auto"):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         output_padding, dtype, backend)

    def forward(self, x):
        return getattr(F, f"conv_transpose{self.dims}d")(x, self.weight, self.bias, self.stride, self.padding,
                                                         self.output_padding, self.groups, self.dilation,
                                                         backend=self.backend)


class Conv1d(_Conv):
    """1-D convolution of ``(N, C_in, L)``; weight ``(C_out, C_in/groups, K)``."""
    dims = 1


class Conv2d(_Conv):
    """2-D convolution of ``(N, C_in, H, W)``; weight ``(C_out, C_in/groups, KH, KW)``."""


class Conv3d(_Conv):
    """3-D convolution of ``(N, C_in, D, H, W)``; weight ``(C_out, C_in/groups, KD, KH, KW)``."""
    dims = 3


class ConvTranspose1d(_ConvTranspose):
    """Transposed 1-D convolution; weight ``(C_in, C_out/groups, K)``."""
    dims = 1


class ConvTranspose2d(_ConvTranspose):
    """Transposed 2-D convolution; weight ``(C_in, C_out/groups, KH, KW)``."""


class ConvTranspose3d(_ConvTranspose):
    """Transposed 3-D convolution; weight ``(C_in, C_out/groups, KD, KH, KW)``."""
    dims = 3


class Linear(Module):
    """``x @ weight.T + bias``; weight ``(out_features, in_features)``."""
    takes_activation = "after"

    def __init__(self, in_features, out_features, bias=True, dtype=np.float32):
        self.in_features = shapes.integer("in_features", in_features, 1)
        self.out_features = shapes.integer("out_features", out_features, 1)
        dtype = shapes.float_dtype("dtype", dtype)
        bias = shapes.flag("bias", bias)
        shapes.check_memory("the weight", (out_features, in_features), "in_features and out_features", dtype.itemsize)
        self.weight = Parameter(np.empty((out_features, in_features), dtype=dtype))
        self.bias = Parameter(np.empty(out_features, dtype=dtype)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        init.default_init_(self.weight, self.bias)

    def forward(self, x, activation=None):
        return F.linear(x, self.weight, self.bias, activation)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


# ---------------------------------------------------------------------------------- pooling
class _MaxPool(Module):
    # op: the name of the op in fastconv.functional, looked up at call time (so tracing sees it)
    op, dims = None, 2
    takes_activation = "before"  # Sequential runs a preceding ReLU/Tanh/Sigmoid inside it

    @property
    def relu_after(self):
        """Whether a ReLU given to this pool runs on its output (fewer pixels, the same numbers: see
        ``fastconv.fusion``), so that Sequential should give it one over the layer before."""
        return not self.return_indices

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False,
                 backend="auto"):
        shapes.pool_args(kernel_size, stride, padding, dilation, self.dims)
        ceil_mode, return_indices = shapes.flag("ceil_mode", ceil_mode), shapes.flag("return_indices", return_indices)
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.dilation, self.ceil_mode, self.return_indices = dilation, ceil_mode, return_indices
        self.backend = backend

    def forward(self, x, activation=None):
        return getattr(F, self.op)(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode,
                                   self.return_indices, backend=self.backend, activation=activation)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class MaxPool1d(_MaxPool):
    op, dims = "max_pool1d", 1


class MaxPool2d(_MaxPool):
    op = "max_pool2d"


class _AvgPool(Module):
    op, dims = None, 2
    takes_activation = "before"

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                 backend="auto"):
        shapes.pool_args(kernel_size, stride, padding, 1, self.dims)
        ceil_mode = shapes.flag("ceil_mode", ceil_mode)
        count_include_pad = shapes.flag("count_include_pad", count_include_pad)
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.ceil_mode, self.count_include_pad = ceil_mode, count_include_pad
        self.backend = backend

    def forward(self, x, activation=None):
        return getattr(F, self.op)(x, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                                   self.count_include_pad, backend=self.backend, activation=activation)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AvgPool1d(_AvgPool):
    op, dims = "avg_pool1d", 1


class AvgPool2d(_AvgPool):
    op = "avg_pool2d"


class AdaptiveAvgPool1d(Module):
    """Average pooling to a fixed length; ``AdaptiveAvgPool1d(1)`` is global average pooling."""
    dims = 1

    def __init__(self, output_size):
        shapes.ints("output_size", output_size, self.dims, 1)
        self.output_size = output_size

    def forward(self, x):
        return F.adaptive_avg_pool1d(x, self.output_size)

    def extra_repr(self):
        return f"output_size={self.output_size}"


class AdaptiveAvgPool2d(AdaptiveAvgPool1d):
    """Average pooling to a fixed size; ``AdaptiveAvgPool2d(1)`` is global average pooling."""
    dims = 2

    def forward(self, x):
        return F.adaptive_avg_pool2d(x, self.output_size)


# ------------------------------------------------------------------------- elementwise and glue
class ReLU(Module):
    activation = "relu"  # the name a neighbouring layer takes it by (see Sequential)

    def forward(self, x):
        return F.relu(x)


class Tanh(Module):
    activation = "tanh"

    def forward(self, x):
        return F.tanh(x)


class Sigmoid(Module):
    activation = "sigmoid"

    def forward(self, x):
        return F.sigmoid(x)


class Identity(Module):
    def forward(self, x):
        return x


class Flatten(Module):
    """Merge every dimension from ``start_dim`` on: ``(N, C, H, W) -> (N, C*H*W)``."""

    def __init__(self, start_dim=1):
        self.start_dim = shapes.integer("start_dim", start_dim, None, None)

    def forward(self, x):
        return F.flatten(x, self.start_dim)


class Dropout(Module):
    """Zero each element with probability ``p`` in training mode (scaling the rest by ``1/(1-p)``)."""

    def __init__(self, p=0.5):
        self.p = shapes.real("p", p, 0, 1)

    def forward(self, x):
        return F.dropout(x, self.p, training=self.training)

    def extra_repr(self):
        return f"p={self.p}"


# -------------------------------------------------------------------------------- containers
class Sequential(Module):
    """Run modules in order. ``Sequential(a, b)`` names them "0", "1"; an OrderedDict gives names."""
    fuses = True  # activations run inside their neighbours (see forward); tracing turns it off

    def __init__(self, *modules):
        items = modules[0].items() if len(modules) == 1 and isinstance(modules[0], OrderedDict) \
            else ((str(i), m) for i, m in enumerate(modules))
        for name, module in items:
            if not isinstance(module, Module):
                raise TypeError(f"modules of a Sequential must be Modules, got {type(module).__name__} for {name!r}")
            setattr(self, name, module)

    def __iter__(self):
        return iter(self.children())

    def __len__(self):
        return sum(1 for _ in self.children())

    def __getitem__(self, index):
        if isinstance(index, slice):
            return Sequential(*list(self.children())[index])
        return list(self.children())[index]

    def forward(self, x):
        """Run the modules in order. An activation module right after a layer that takes it after
        (``takes_activation = "after"``: convolutions, linear) or right before one that takes it before
        (pooling) runs inside that layer: one GPU launch where there were two, the same numbers. A ReLU
        between a layer and a max pool goes to the pool, which runs it on its output (``relu_after``)."""
        modules = list(self.children())
        if not self.fuses:
            for module in modules:
                x = module(x)
            return x
        i = 0
        while i < len(modules):
            first, second, third = (modules[i:i + 3] + [None, None])[:3]
            after, before = getattr(second, "activation", None), getattr(first, "activation", None)
            if after and getattr(third, "relu_after", False) and after == "relu":
                x, i = third(first(x), activation=after), i + 3
            elif after and getattr(first, "takes_activation", None) == "after":
                x, i = first(x, activation=after), i + 2
            elif before and getattr(second, "takes_activation", None) == "before":
                x, i = second(x, activation=before), i + 2
            else:
                x, i = first(x), i + 1
        return x


class ModuleList(Module):
    """A list of modules whose parameters belong to the owner (names "0", "1", ...)."""

    def __init__(self, modules=()):
        self._count = 0
        if not hasattr(modules, "__iter__"):
            raise TypeError(f"modules must be an iterable of Modules, got {type(modules).__name__}")
        for module in modules:
            self.append(module)

    def append(self, module):
        if not isinstance(module, Module):
            raise TypeError(f"modules of a ModuleList must be Modules, got {type(module).__name__}")
        setattr(self, str(self._count), module)
        self._count += 1
        return self

    def __iter__(self):
        return iter(self.children())

    def __len__(self):
        return self._count

    def __getitem__(self, index):
        return list(self.children())[index]


# ------------------------------------------------------------------------------------ losses
class CrossEntropyLoss(Module):
    def __init__(self, reduction="mean"):
        self.reduction = shapes.choice("reduction", reduction, ("mean", "sum", "none"))

    def forward(self, logits, target):
        return F.cross_entropy(logits, target, self.reduction)


class MSELoss(Module):
    def __init__(self, reduction="mean"):
        self.reduction = shapes.choice("reduction", reduction, ("mean", "sum", "none"))

    def forward(self, input, target):
        return F.mse_loss(input, target, self.reduction)



# ------------------------------------------------------------------------------------ volumes
class MaxPool3d(_MaxPool):
    op, dims = "max_pool3d", 3


class AvgPool3d(_AvgPool):
    op, dims = "avg_pool3d", 3


class AdaptiveAvgPool3d(AdaptiveAvgPool1d):
    """Average pooling to a fixed size; ``AdaptiveAvgPool3d(1)`` is global average pooling."""
    dims = 3

    def forward(self, x):
        return F.adaptive_avg_pool3d(x, self.output_size)


class Upsample(Module):
    """Resize ``(N, C, L)``, ``(N, C, H, W)`` or ``(N, C, D, H, W)`` to ``size`` or by ``scale_factor``
    (:func:`fastconv.functional.interpolate`): modes ``nearest``, ``linear``, ``bilinear``, ``trilinear``."""

    def __init__(self, size=None, scale_factor=None, mode="nearest", align_corners=None):
        shapes.resize_args(size, scale_factor, mode, align_corners)
        self.size, self.scale_factor, self.mode, self.align_corners = size, scale_factor, mode, align_corners

    def forward(self, x):
        return F.interpolate(x, self.size, self.scale_factor, self.mode, self.align_corners)

    def extra_repr(self):
        what = f"size={self.size}" if self.size is not None else f"scale_factor={self.scale_factor}"
        return f"{what}, mode={self.mode!r}"


# ------------------------------------------------------------------- tiled and locally-connected
class _TiledNd(Module):
    """Shared body of the tiled and locally-connected layers: arguments, the weight ``(*tiles, C_out,
    C_in/groups, *kernel)``, the bias, and PyTorch's default initialisation for a convolution's fan-in
    (``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for weight and bias)."""
    dims = 2
    local = transposed = False

    def __init__(self, in_channels, out_channels, kernel_size, tiles, stride, padding, dilation, groups, bias_shape,
                 dtype, backend):
        _channels(in_channels, out_channels, groups)
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        _window_args(self, kernel_size, stride, padding, dilation)
        self.tiles, self.backend = tiles, backend
        dtype = shapes.float_dtype("dtype", dtype)
        shape = tiles + (out_channels, in_channels // groups) + self.kernel_size
        shapes.check_memory("the weight", shape, "the channels, kernel_size and tiles (or input_size)", dtype.itemsize)
        self.weight = Parameter(np.empty(shape, dtype))
        self.bias = Parameter(np.empty(bias_shape, dtype)) if bias_shape else None
        self.reset_parameters()

    def reset_parameters(self):
        bound = 1.0 / np.sqrt(self.in_channels // self.groups * np.prod(self.kernel_size))
        for p in (self.weight, self.bias):
            if p is not None:
                init.uniform_(p, -bound, bound)

    def forward(self, x):
        op = getattr(F, f"conv{self.dims}d_{'local' if self.local else 'tiled'}")
        extra = {} if self.local else {"tiles": self.tiles}
        return op(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups,
                  backend=self.backend, **extra)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"{'output_size' if self.local else 'tiles'}={self.tiles}, stride={self.stride}, "
                f"padding={self.padding}" + (f", groups={self.groups}" if self.groups != 1 else "")
                + ("" if self.bias is not None else ", bias=False"))


class _LocallyConnected(_TiledNd):
    """A convolution whose every output position has its own kernel (and, by default, its own bias)."""
    local = True

    def __init__(self, in_channels, out_channels, kernel_size, input_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, position_bias=True, dtype=np.float32, backend="auto"):
        _channels(in_channels, out_channels, groups)
        size = shapes.ints("input_size", input_size, self.dims, 1)
        kernel = shapes.ints("kernel_size", kernel_size, self.dims, 1)
        spec = shapes.conv_spec((1, in_channels) + size, (out_channels, in_channels // groups) + kernel, None,
                                stride, padding, dilation, groups, self.dims)
        out = (spec.oh, spec.ow)[2 - self.dims:]
        bias_shape = ((out_channels,) + (out if shapes.flag("position_bias", position_bias) else ())) \
            if shapes.flag("bias", bias) else None
        super().__init__(in_channels, out_channels, kernel, out, stride, padding, dilation, groups, bias_shape,
                         dtype, backend)


class LocallyConnected1d(_LocallyConnected):
    """Locally-connected 1-D layer on inputs of length ``input_size``: weight ``(OL, C_out, C_in/groups,
    K)``, bias ``(C_out, OL)`` (``(C_out,)`` with ``position_bias=False``)."""
    dims = 1


class LocallyConnected2d(_LocallyConnected):
    """Locally-connected 2-D layer (unshared convolution) on inputs of size ``input_size`` ``(H, W)``:
    weight ``(OH, OW, C_out, C_in/groups, KH, KW)``, bias ``(C_out, OH, OW)`` (``(C_out,)`` with
    ``position_bias=False``)."""


class _Tiled(_TiledNd):
    def __init__(self, in_channels, out_channels, kernel_size, tiles, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, dtype=np.float32, backend="auto"):
        super().__init__(in_channels, out_channels, kernel_size, shapes.ints("tiles", tiles, self.dims, 1), stride,
                         padding, dilation, groups, (out_channels,) if shapes.flag("bias", bias) else None, dtype,
                         backend)


class TiledConv1d(_Tiled):
    """Tiled 1-D convolution: ``tiles`` kernels used in turn along the output (which they divide); weight
    ``(T, C_out, C_in/groups, K)``, bias ``(C_out,)``."""
    dims = 1


class TiledConv2d(_Tiled):
    """Tiled 2-D convolution: output ``(oy, ox)`` uses kernel ``(oy % TH, ox % TW)`` of ``tiles`` ``(TH,
    TW)`` (which divide the output size); weight ``(TH, TW, C_out, C_in/groups, KH, KW)``, bias ``(C_out,)``."""
