"""Argument normalisation, output sizes, receptive fields and validation.

Every op turns its user-facing arguments (ints, tuples, ``"same"``, ``"valid"``) into one explicit,
immutable description here, before any work is done: a :class:`ConvSpec` for convolutions and a
:class:`PoolSpec` for pooling. Every backend reads the loop nest from these, so the geometry is computed
in one place. 1-D ops are 2-D ops with a unit height (``h == kh == oh == 1``).

The compiled kernels read one integer layout, :data:`GEOMETRY` (``spec.geometry()``): a pooling op is
laid out as the depthwise convolution it walks like (one channel per group). Padding is
``(top, bottom, left, right)`` in both specs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
#: The integer layout every compiled kernel reads (``spec.geometry()``): sizes, then the window. Output
#: ``(oy, ox)`` of group ``g`` reads input ``(oy*sh - pt + i*dh, ox*sw - pl + j*dw)`` for kernel tap
#: ``(i, j)``, channels ``g*c_in/groups ...``. The Cython ``Geo`` struct (``src_cython/_loops.pxi``)
#: holds these fields in this order (tests/test_shapes.py checks it).
GEOMETRY = ("n", "c_in", "h", "w", "c_out", "kh", "kw", "oh", "ow", "sh", "sw", "pt", "pl", "dh", "dw", "groups")
#: The part of :data:`GEOMETRY` that describes the window: ``spec.window``.
WINDOW = slice(GEOMETRY.index("sh"), GEOMETRY.index("dw") + 1)


# ----------------------------------------------------------------------------------------- sizes
def conv_output_size(length, kernel, stride=1, padding=0, dilation=1):
    """Output length of a convolution: ``floor((L + 2P - D(K-1) - 1) / S) + 1``.

    ``padding`` is the padding of each side, or a ``(before, after)`` pair.
    """
    total = 2 * padding if isinstance(padding, int) else padding[0] + padding[1]
    return (length + total - dilation * (kernel - 1) - 1) // stride + 1


def conv_transpose_output_size(length, kernel, stride=1, padding=0, output_padding=0, dilation=1):
    """Output length of a transposed convolution: ``(L-1)S - 2P + D(K-1) + output_padding + 1``."""
    return (length - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1


def pool_output_size(length, kernel, stride, padding=0, dilation=1, ceil_mode=False):
    """Output length of a pooling window, with PyTorch's ``ceil_mode`` rule.

    With ``ceil_mode`` the last window may hang over the end, but it must start inside the input or its
    left padding.
    """
    span = length + 2 * padding - dilation * (kernel - 1) - 1
    if ceil_mode:
        out = -(-span // stride) + 1
        if (out - 1) * stride >= length + padding:
            out -= 1
        return out
    return span // stride + 1


def receptive_field(layers):
    """Receptive field and jump (input pixels between neighbouring outputs) of a stack of layers.

    ``layers`` is a sequence of ``(kernel, stride)`` or ``(kernel, stride, dilation)`` tuples, first layer
    first. Returns ``(field, jump)``: e.g. two 3x3 stride-1 convolutions see 5 pixels.
    """
    field, jump = 1, 1
    for layer in layers:
        kernel, stride, dilation = (tuple(layer) + (1,))[:3]
        field += dilation * (kernel - 1) * jump
        jump *= stride
    return field, jump


# ------------------------------------------------------------------------------ normalisation
def _ints(name, value, n, minimum):
    """``value`` as a tuple of ``n`` ints, each ``>= minimum``; a clear error otherwise."""
    items = (value,) * n if isinstance(value, (int, np.integer)) else value
    try:
        items = tuple(items)
    except TypeError:
        raise TypeError(f"{name} must be an int or a tuple of {n} ints, got {value!r}") from None
    if len(items) != n or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                  for v in items):
        raise TypeError(f"{name} must be an int or a tuple of {n} ints, got {value!r}")
    if any(v < minimum for v in items):
        bound = "positive" if minimum == 1 else "non-negative"
        raise ValueError(f"{name} must be {bound}, got {value!r}")
    return tuple(int(v) for v in items)


def _check_rank(name, shape, rank, layout):
    if len(shape) != rank:
        raise ValueError(f"{name} must be {rank}-D ({layout}), got shape {tuple(shape)}")


def check_float(**arrays):
    """Every array is float32 or float64, and all share one dtype; TypeError naming the culprit."""
    dtype = None
    for name, dt in arrays.items():
        if dt is None:
            continue
        dt = np.dtype(dt)
        if dt not in FLOAT_DTYPES:
            raise TypeError(f"{name} must be float32 or float64, got {dt}")
        if dtype is not None and dt != dtype:
            first = next(iter(arrays))
            raise TypeError(f"{name} has dtype {dt} but {first} has {dtype}: convert one of them")
        dtype = dt
    return dtype


# ------------------------------------------------------------------------------- convolution
@dataclass(frozen=True)
class ConvSpec:
    """The loop nest of one 2-D convolution (cross-correlation), shared by all backends.

    ``y[n, g*cog + o, oy, ox] = sum_{c, i, j} x[n, g*cig + c, oy*sh - pt + i*dh, ox*sw - pl + j*dw]
    * w[g*cog + o, c, i, j]`` with ``cig = c_in // groups``, ``cog = c_out // groups``.
    """
    n: int
    c_in: int
    h: int
    w: int
    c_out: int
    kh: int
    kw: int
    oh: int
    ow: int
    stride: tuple   # (sh, sw)
    padding: tuple  # (top, bottom, left, right)
    dilation: tuple  # (dh, dw)
    groups: int
    dims: int = 2   # 1 for conv1d: h == kh == oh == 1

    @property
    def x_shape(self):
        return (self.n, self.c_in, self.h, self.w)

    @property
    def w_shape(self):
        return (self.c_out, self.c_in // self.groups, self.kh, self.kw)

    @property
    def y_shape(self):
        return (self.n, self.c_out, self.oh, self.ow)

    @property
    def flops(self):
        """Multiply-adds times two of the forward pass."""
        return 2 * self.n * self.c_out * self.oh * self.ow * (self.c_in // self.groups) * self.kh * self.kw

    def user_shape(self, shape4):
        """A 4-D (N, C, H, W) shape as the user sees it: (N, C, L) for 1-D ops."""
        return (shape4[0], shape4[1], shape4[3]) if self.dims == 1 else tuple(shape4)

    def geometry(self):
        """The ints of :data:`GEOMETRY`, the layout the compiled kernels read."""
        return (self.n, self.c_in, self.h, self.w, self.c_out, self.kh, self.kw, self.oh, self.ow,
                *self.stride, self.padding[0], self.padding[2], *self.dilation, self.groups)

    @property
    def window(self):
        """``(sh, sw, pt, pl, dh, dw)``: where each output's window starts and how it steps."""
        return self.geometry()[WINDOW]


def _conv_padding(padding, dims, kernel, dilation, stride):
    """Explicit (before, after) padding per spatial dim from an int, a tuple, "valid" or "same"."""
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0),) * dims
        if padding == "same":
            if any(s != 1 for s in stride):
                raise ValueError(f"padding='same' needs stride 1, got stride={stride}")
            pads = []
            for k, d in zip(kernel, dilation):
                total = d * (k - 1)
                pads.append((total // 2, total - total // 2))
            return tuple(pads)
        raise ValueError(f"padding must be an int, a tuple, 'valid' or 'same', got {padding!r}")
    return tuple((p, p) for p in _ints("padding", padding, dims, 0))


def conv_spec(x_shape, w_shape, bias_shape=None, stride=1, padding=0, dilation=1, groups=1, dims=2):
    """Validate the arguments of ``conv{dims}d`` and return its :class:`ConvSpec`."""
    layout = "N, C, L" if dims == 1 else "N, C, H, W"
    _check_rank("input", x_shape, dims + 2, layout)
    _check_rank("weight", w_shape, dims + 2, "C_out, C_in/groups, " + layout[6:])
    stride = _ints("stride", stride, dims, 1)
    dilation = _ints("dilation", dilation, dims, 1)
    if not isinstance(groups, (int, np.integer)) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    n, c_in = x_shape[:2]
    c_out, c_per_group = w_shape[:2]
    kernel = tuple(w_shape[2:])
    if any(k < 1 for k in kernel):
        raise ValueError(f"weight must have a positive kernel size, got shape {tuple(w_shape)}")
    if c_in % groups:
        raise ValueError(f"input channels ({c_in}) must be divisible by groups ({groups})")
    if c_out % groups:
        raise ValueError(f"weight.shape[0] (out channels, {c_out}) must be divisible by groups ({groups})")
    if c_per_group * groups != c_in:
        raise ValueError(f"weight.shape[1] * groups must equal the input channels: expected weight.shape[1]"
                         f" = {c_in // groups} for {c_in} input channels and groups={groups},"
                         f" got {c_per_group}")
    if bias_shape is not None and tuple(bias_shape) != (c_out,):
        raise ValueError(f"bias must have shape ({c_out},), got {tuple(bias_shape)}")
    pads = _conv_padding(padding, dims, kernel, dilation, stride)
    spatial = tuple(x_shape[2:])
    out = []
    for axis, (size, k, s, p, d) in enumerate(zip(spatial, kernel, stride, pads, dilation)):
        if size + p[0] + p[1] < d * (k - 1) + 1:
            raise ValueError(f"kernel size {k} (dilation {d}) is larger than the padded input "
                             f"({size} + padding {p[0] + p[1]}) along spatial dim {axis}")
        out.append(conv_output_size(size, k, s, p, d))
    if dims == 1:
        return ConvSpec(n, c_in, 1, spatial[0], c_out, 1, kernel[0], 1, out[0], (1, stride[0]),
                        (0, 0) + pads[0], (1, dilation[0]), groups, dims=1)
    return ConvSpec(n, c_in, spatial[0], spatial[1], c_out, kernel[0], kernel[1], out[0], out[1],
                    stride, pads[0] + pads[1], dilation, groups)


def is_pointwise(spec):
    """1x1, stride 1, no padding: a convolution that is a plain matrix product."""
    return spec.kh == spec.kw == 1 and spec.stride == (1, 1) and not any(spec.padding)


def adjoint_spec(spec):
    """The stride-1 convolution whose forward pass is the input gradient of stride-1 ``spec``: ``gy``
    correlated with the flipped kernels (in and out channels swapped, :func:`adjoint_weight`), padded by
    the kernel's reach minus the padding. None when ``spec`` is strided or padded beyond that reach."""
    reach_h, reach_w = spec.dilation[0] * (spec.kh - 1), spec.dilation[1] * (spec.kw - 1)
    pt, pl = reach_h - spec.padding[0], reach_w - spec.padding[2]
    pb, pr = spec.h - spec.oh + reach_h - pt, spec.w - spec.ow + reach_w - pl
    if spec.stride != (1, 1) or min(pt, pb, pl, pr) < 0:
        return None
    return ConvSpec(spec.n, spec.c_out, spec.oh, spec.ow, spec.c_in, spec.kh, spec.kw, spec.h, spec.w,
                    (1, 1), (pt, pb, pl, pr), spec.dilation, spec.groups, spec.dims)


def adjoint_weight(w, spec):
    """``w`` flipped in space with in and out channels swapped per group: the weights of
    :func:`adjoint_spec`."""
    g, cog, cig = spec.groups, spec.c_out // spec.groups, spec.c_in // spec.groups
    flipped = w.reshape(g, cog, cig, spec.kh, spec.kw)[..., ::-1, ::-1].transpose(0, 2, 1, 3, 4)
    return np.ascontiguousarray(flipped).reshape(spec.c_in, cog, spec.kh, spec.kw)


def adjoint_padding(spec):
    """The share of padding in the input of the adjoint convolution (zeros an input gradient computed as
    the adjoint's forward pass reads)."""
    rh, rw = spec.dilation[0] * (spec.kh - 1), spec.dilation[1] * (spec.kw - 1)
    return 1 - spec.oh * spec.ow / ((spec.oh + 2 * rh) * (spec.ow + 2 * rw))


def conv_transpose_spec(x_shape, w_shape, bias_shape=None, stride=1, padding=0, output_padding=0,
                        groups=1, dilation=1, dims=2):
    """Validate ``conv_transpose{dims}d`` and return the spec of the convolution it is the adjoint of.

    A transposed convolution of ``x`` is the input gradient of the convolution whose *output* has
    ``x``'s shape; the returned spec describes that convolution (its input is the transposed conv's output).
    The weight is ``(C_in, C_out/groups, *kernel)``, as in PyTorch.
    """
    layout = "N, C, L" if dims == 1 else "N, C, H, W"
    _check_rank("input", x_shape, dims + 2, layout)
    _check_rank("weight", w_shape, dims + 2, "C_in, C_out/groups, " + layout[6:])
    stride = _ints("stride", stride, dims, 1)
    dilation = _ints("dilation", dilation, dims, 1)
    if isinstance(padding, str):
        raise ValueError(f"padding must be an int or a tuple for transposed convolution, got {padding!r}")
    pads = _ints("padding", padding, dims, 0)
    out_pads = _ints("output_padding", output_padding, dims, 0)
    if not isinstance(groups, (int, np.integer)) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    n, c_in = x_shape[:2]
    if w_shape[0] != c_in:
        raise ValueError(f"weight.shape[0] must equal the input channels ({c_in}), got {w_shape[0]}")
    if c_in % groups:
        raise ValueError(f"input channels ({c_in}) must be divisible by groups ({groups})")
    kernel = tuple(w_shape[2:])
    if any(k < 1 for k in kernel):
        raise ValueError(f"weight must have a positive kernel size, got shape {tuple(w_shape)}")
    c_out = w_shape[1] * groups
    if bias_shape is not None and tuple(bias_shape) != (c_out,):
        raise ValueError(f"bias must have shape ({c_out},), got {tuple(bias_shape)}")
    spatial = tuple(x_shape[2:])
    out = []
    for size, k, s, p, op, d in zip(spatial, kernel, stride, pads, out_pads, dilation):
        if op >= s and op >= d:
            raise ValueError(f"output_padding must be smaller than stride or dilation, got "
                             f"output_padding={out_pads}, stride={stride}, dilation={dilation}")
        length = conv_transpose_output_size(size, k, s, p, op, d)
        if length < 1:
            raise ValueError(f"transposed convolution output would be empty (length {length}): "
                             f"padding={pads} is too large for the input and kernel")
        out.append(length)
    if dims == 1:
        return ConvSpec(n, c_out, 1, out[0], c_in, 1, kernel[0], 1, spatial[0], (1, stride[0]),
                        (0, 0, pads[0], pads[0]), (1, dilation[0]), groups, dims=1)
    return ConvSpec(n, c_out, out[0], out[1], c_in, kernel[0], kernel[1], spatial[0], spatial[1],
                    stride, (pads[0], pads[0], pads[1], pads[1]), dilation, groups)



# ------------------------------------------------------------------- tiled and locally-connected
@dataclass(frozen=True)
class TiledSpec(ConvSpec):
    """A tiled convolution: the loop nest of a :class:`ConvSpec` with ``th x tw`` kernels used in turn.

    Output ``(oy, ox)`` is computed with kernel ``(oy % th, ox % tw)`` of the weight ``(th, tw, C_out,
    C_in/groups, KH, KW)``: tiles ``(1, 1)`` is a convolution, tiles equal to the output size a
    locally-connected layer (every output position has its own kernel). The tiles divide the output size.
    """
    tiles: tuple = (1, 1)  # (th, tw)

    @property
    def w_shape(self):
        return self.tiles + (self.c_out, self.c_in // self.groups, self.kh, self.kw)

    @property
    def weight_layout(self):
        """The layout of the weight as the user sees it (1-D ops: without the unit height)."""
        kernel = "KH, KW" if self.dims == 2 else "K"
        return ("TH, TW" if self.dims == 2 else "T") + ", C_out, C_in/groups, " + kernel

    def user_weight_shape(self, shape6):
        """A 6-D tiled weight shape as the user sees it: ``(T, C_out, C_in/groups, K)`` for 1-D ops."""
        return (shape6[1],) + tuple(shape6[2:4]) + (shape6[5],) if self.dims == 1 else tuple(shape6)

    def bias_shape(self, per_position):
        """The bias a layer holds: one per output channel, or one per output channel and position."""
        if not per_position:
            return (self.c_out,)
        return (self.c_out, self.ow) if self.dims == 1 else (self.c_out, self.oh, self.ow)


def tiled_spec(x_shape, w_shape, bias_shape=None, stride=1, padding=0, dilation=1, groups=1, dims=2,
               tiles=None, local=False):
    """Validate a tiled (or, with ``local``, locally-connected) convolution and return its
    :class:`TiledSpec`.

    The weight is ``(TH, TW, C_out, C_in/groups, KH, KW)`` (1-D: ``(T, C_out, C_in/groups, K)``); its
    leading dims are the tiles (``tiles``, where given, must match them), and for a locally-connected
    layer the output size. ``bias_shape``: ``(C_out,)`` or one bias per output position, ``(C_out, OH, OW)``
    (1-D: ``(C_out, OL)``).
    """
    spatial = "KH, KW" if dims == 2 else "K"
    layout = ("OH, OW" if local else "TH, TW") if dims == 2 else ("OL" if local else "T")
    _check_rank("weight", w_shape, 2 * dims + 2, f"{layout}, C_out, C_in/groups, {spatial}")
    if not isinstance(groups, (int, np.integer)) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    lead, (c_out, c_per_group), kernel = tuple(w_shape[:dims]), w_shape[dims:dims + 2], tuple(w_shape[dims + 2:])
    if min(lead, default=1) < 1 or min(kernel, default=1) < 1:
        raise ValueError(f"weight ({layout}, C_out, C_in/groups, {spatial}) must have positive sizes, "
                         f"got shape {tuple(w_shape)}")
    if c_out % groups:
        raise ValueError(f"weight.shape[{dims}] (out channels, {c_out}) must be divisible by groups ({groups})")
    if len(x_shape) == dims + 2 and c_per_group * groups != x_shape[1]:
        raise ValueError(f"weight.shape[{dims + 1}] * groups must equal the input channels: expected "
                         f"{x_shape[1] // groups} for {x_shape[1]} input channels and groups={groups}, "
                         f"got {c_per_group}")
    spec = conv_spec(x_shape, (c_out, c_per_group) + kernel, None, stride, padding, dilation, groups, dims)
    out = (spec.oh, spec.ow)[2 - dims:]
    if local and lead != out:
        raise ValueError(f"weight.shape[:{dims}] must be the output size {out} of this input, stride, "
                         f"padding and dilation (one kernel per output position), got {lead}")
    if tiles is not None:
        tiles = _ints("tiles", tiles, dims, 1)
        if tiles != lead:
            raise ValueError(f"tiles={tiles} must match the weight's leading dims weight.shape[:{dims}] = {lead}")
    if any(size % t for size, t in zip(out, lead)):
        raise ValueError(f"tiles {lead} (weight.shape[:{dims}]) must divide the output size {out}")
    spec = TiledSpec(**{f.name: getattr(spec, f.name) for f in spec.__dataclass_fields__.values()},
                     tiles=(1,) + lead if dims == 1 else lead)
    if bias_shape is not None and tuple(bias_shape) not in (spec.bias_shape(False), spec.bias_shape(True)):
        raise ValueError(f"bias must have shape {spec.bias_shape(False)} (one per output channel) or "
                         f"{spec.bias_shape(True)} (one per output channel and position), got {tuple(bias_shape)}")
    return spec


def separable_spec(x_shape, rows_shape, cols_shape, bias_shape=None, stride=1, padding=0, dilation=1, groups=1):
    """Validate a separable 2-D convolution and return the :class:`ConvSpec` of its full kernel.

    ``rows_shape`` ``(C_out, C_in/groups, KW)`` and ``cols_shape`` ``(C_out, C_in/groups, KH)`` (each with a
    leading rank ``R`` for a sum of ``R`` separable kernels) are the row and column factors of the weight
    ``(C_out, C_in/groups, KH, KW)``.
    """
    rows_shape, cols_shape = tuple(rows_shape), tuple(cols_shape)
    for name, shape in (("row_kernels", rows_shape), ("col_kernels", cols_shape)):
        if len(shape) not in (3, 4):
            raise ValueError(f"{name} must be 3-D (C_out, C_in/groups, K) or 4-D (rank, C_out, C_in/groups, K), "
                             f"got shape {shape}")
    if rows_shape[:-1] != cols_shape[:-1]:
        raise ValueError(f"row_kernels and col_kernels must agree in all but their last dim (the kernel "
                         f"length), got shapes {rows_shape} and {cols_shape}")
    weight = rows_shape[-3:-1] + (cols_shape[-1], rows_shape[-1])
    if len(x_shape) == 4 and not isinstance(groups, bool) and isinstance(groups, (int, np.integer)) and groups > 0 \
            and weight[1] * groups != x_shape[1]:
        raise ValueError(f"row_kernels.shape[-2] * groups must equal the input channels: expected "
                         f"{x_shape[1] // groups} for {x_shape[1]} input channels and groups={groups}, got {weight[1]}")
    return conv_spec(x_shape, weight, bias_shape, stride, padding, dilation, groups)

# ----------------------------------------------------------------------------------- pooling
@dataclass(frozen=True)
class PoolSpec:
    """The windows of one 2-D pooling op: ``y[n, c, oy, ox]`` reduces
    ``x[n, c, oy*sh - pt + i*dh, ox*sw - pl + j*dw]`` over ``0 <= i < kh, 0 <= j < kw``."""
    n: int
    c: int
    h: int
    w: int
    kh: int
    kw: int
    oh: int
    ow: int
    stride: tuple   # (sh, sw)
    padding: tuple  # (top, bottom, left, right): symmetric, as in PyTorch
    dilation: tuple  # (dh, dw)
    ceil_mode: bool = False
    count_include_pad: bool = True
    dims: int = 2

    @property
    def x_shape(self):
        return (self.n, self.c, self.h, self.w)

    @property
    def y_shape(self):
        return (self.n, self.c, self.oh, self.ow)

    def user_shape(self, shape4):
        return (shape4[0], shape4[1], shape4[3]) if self.dims == 1 else tuple(shape4)

    def geometry(self):
        """The ints of :data:`GEOMETRY`: the depthwise convolution the windows walk like."""
        return (self.n, self.c, self.h, self.w, self.c, self.kh, self.kw, self.oh, self.ow, *self.stride,
                self.padding[0], self.padding[2], *self.dilation, max(self.c, 1))

    @property
    def window(self):
        """``(sh, sw, pt, pl, dh, dw)``: where each output's window starts and how it steps."""
        return self.geometry()[WINDOW]

    def divisors(self, dtype=np.float64):
        """What average pooling divides each output by, ``(oh, ow)``, PyTorch's rule: the window clipped
        to the padded input (``count_include_pad``) or to the input itself; the ``ceil_mode`` overhang past
        the padding never counts."""
        def one_axis(out, size, k, s, p):
            start = np.arange(out) * s - p
            end = np.minimum(start + k, size + p)
            return end - start if self.count_include_pad else np.minimum(end, size) - np.maximum(start, 0)
        rows = one_axis(self.oh, self.h, self.kh, self.stride[0], self.padding[0])
        cols = one_axis(self.ow, self.w, self.kw, self.stride[1], self.padding[2])
        return np.ascontiguousarray(np.outer(rows, cols), dtype=dtype)


def pool_spec(x_shape, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
              count_include_pad=True, dims=2):
    """Validate the arguments of a pooling op and return its :class:`PoolSpec`."""
    _check_rank("input", x_shape, dims + 2, "N, C, L" if dims == 1 else "N, C, H, W")
    kernel = _ints("kernel_size", kernel_size, dims, 1)
    stride = kernel if stride is None or stride == () else _ints("stride", stride, dims, 1)
    pads = _ints("padding", padding, dims, 0)
    dilation = _ints("dilation", dilation, dims, 1)
    for k, p in zip(kernel, pads):
        if p > k // 2:
            raise ValueError(f"padding must be at most half the kernel size, got padding={pads}"
                             f" for kernel_size={kernel}")
    spatial = tuple(x_shape[2:])
    out = []
    for axis, (size, k, s, p, d) in enumerate(zip(spatial, kernel, stride, pads, dilation)):
        length = pool_output_size(size, k, s, p, d, ceil_mode)
        if length < 1:
            raise ValueError(f"kernel_size {k} (dilation {d}) is larger than the padded input "
                             f"({size} + padding {2 * p}) along spatial dim {axis}")
        out.append(length)
    n, c = x_shape[:2]
    if dims == 1:
        return PoolSpec(n, c, 1, spatial[0], 1, kernel[0], 1, out[0], (1, stride[0]), (0, 0, pads[0], pads[0]),
                        (1, dilation[0]), bool(ceil_mode), bool(count_include_pad), dims=1)
    return PoolSpec(n, c, spatial[0], spatial[1], kernel[0], kernel[1], out[0], out[1], stride,
                    (pads[0], pads[0], pads[1], pads[1]), dilation, bool(ceil_mode), bool(count_include_pad))


def unpool_output_size(x_shape, kernel, stride, padding, output_size, dims):
    """Spatial output size of ``max_unpool``: ``(L-1)S - 2P + K`` unless ``output_size`` says otherwise."""
    default = tuple((length - 1) * s - 2 * p + k
                    for length, k, s, p in zip(x_shape[2:], kernel, stride, padding))
    if output_size is None:
        return default
    size = tuple(output_size)[-dims:]
    if len(size) != dims or any(not isinstance(v, (int, np.integer)) or v < 1 for v in size):
        raise ValueError(f"output_size must hold {dims} positive ints, got {output_size!r}")
    for d, (s, k) in enumerate(zip(size, default)):
        lo = k - stride[d]
        if not lo < s < k + stride[d]:
            raise ValueError(f"output_size {size} is out of range: dim {d} must lie in ({lo}, "
                             f"{k + stride[d]})")
    return tuple(int(v) for v in size)


def as_4d(shape, dims):
    """(N, C, L) -> (N, C, 1, L) for 1-D ops; 2-D shapes pass through."""
    shape = tuple(shape)
    return shape[:2] + (1,) + shape[2:] if dims == 1 else shape


def ints(name, value, n, minimum=0):
    """Public form of the int-tuple normaliser, for ops outside this module."""
    return _ints(name, value, n, minimum)


__all__ = ["GEOMETRY", "conv_output_size", "conv_transpose_output_size", "pool_output_size", "receptive_field",
           "ConvSpec", "PoolSpec", "conv_spec", "conv_transpose_spec", "pool_spec", "check_float",
           "unpool_output_size", "as_4d", "ints", "is_pointwise", "adjoint_spec", "adjoint_weight",
           "adjoint_padding", "TiledSpec", "tiled_spec", "separable_spec"]
