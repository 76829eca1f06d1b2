"""Argument normalisation, output sizes, receptive fields and validation.

Every op turns its user-facing arguments (ints, tuples, ``"same"``, ``"valid"``) into one explicit,
immutable description here, before any work is done: a :class:`ConvSpec` for convolutions and a
:class:`PoolSpec` for pooling. Every backend reads the loop nest from these, so the geometry is computed
in one place. 1-D ops are 2-D ops with a unit height (``h == kh == oh == 1``), and 2-D ops are 3-D ops
with a unit depth (``d == kd == od == 1``, the defaults of the depth fields): ``dims`` says which the user
called. A spec's ``x_shape``, ``w_shape`` and ``y_shape`` are the arrays its kernels take: 4-D (NCHW) for
1-D and 2-D ops, 5-D (NCDHW) for 3-D ones; ``x_shape5`` and friends are always 5-D.

The compiled kernels read one integer layout, :data:`GEOMETRY` (``spec.geometry()``): a pooling op is
laid out as the depthwise convolution it walks like (one channel per group). Padding is
``(top, bottom, left, right)`` in both specs.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
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
#: The integer layout of a 3-D spec (``spec.geometry3()``), for kernels that walk the depth axis
#: themselves: :data:`GEOMETRY` with the depth before each pair (size, kernel, output, stride, front
#: padding, dilation). Output ``(oz, oy, ox)`` reads input depth ``oz*sd - pf + k*dd`` for depth tap ``k``.
GEOMETRY3 = ("n", "c_in", "d", "h", "w", "c_out", "kd", "kh", "kw", "od", "oh", "ow", "sd", "sh", "sw",
             "pf", "pt", "pl", "dd", "dh", "dw", "groups")
#: The part of :data:`GEOMETRY3` that describes the window: ``spec.window3``.
WINDOW3 = slice(GEOMETRY3.index("sd"), GEOMETRY3.index("dw") + 1)


# ----------------------------------------------------------------------------------------- sizes
def _sizes(minimum, **named):
    """Each named size is an int ``>= minimum`` (no upper bound: these are formulas, not kernels)."""
    for name, value in named.items():
        integer(name, value, minimum, None)


def conv_output_size(length, kernel, stride=1, padding=0, dilation=1):
    """Output length of a convolution: ``floor((L + 2P - D(K-1) - 1) / S) + 1``.

    ``padding`` is the padding of each side, or a ``(before, after)`` pair.
    """
    _sizes(0, length=length)
    _sizes(1, kernel=kernel, stride=stride, dilation=dilation)
    return _conv_length(length, kernel, stride, _ints("padding", padding, 2, 0, None), dilation)


def conv_transpose_output_size(length, kernel, stride=1, padding=0, output_padding=0, dilation=1):
    """Output length of a transposed convolution: ``(L-1)S - 2P + D(K-1) + output_padding + 1``."""
    _sizes(0, length=length, padding=padding, output_padding=output_padding)
    _sizes(1, kernel=kernel, stride=stride, dilation=dilation)
    return _conv_transpose_length(length, kernel, stride, padding, output_padding, dilation)


def pool_output_size(length, kernel, stride, padding=0, dilation=1, ceil_mode=False):
    """Output length of a pooling window, with PyTorch's ``ceil_mode`` rule.

    With ``ceil_mode`` the last window may hang over the end, but it must start inside the input or its
    left padding.
    """
    _sizes(0, length=length, padding=padding)
    _sizes(1, kernel=kernel, stride=stride, dilation=dilation)
    return _pool_length(length, kernel, stride, padding, dilation, flag("ceil_mode", ceil_mode))


# The formulas themselves, for arguments already checked (the specs below).
def _conv_length(length, kernel, stride, pads, dilation):
    return (length + pads[0] + pads[1] - dilation * (kernel - 1) - 1) // stride + 1


def _conv_transpose_length(length, kernel, stride, padding, output_padding, dilation):
    return (length - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1


def _pool_length(length, kernel, stride, padding, dilation, ceil_mode):
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
    if isinstance(layers, (str, bytes)) or not hasattr(layers, "__iter__"):
        raise TypeError(f"layers must be a sequence of (kernel, stride[, dilation]) tuples, got {_describe(layers)}")
    field, jump = 1, 1
    for i, layer in enumerate(layers):
        if not isinstance(layer, (tuple, list)) or len(layer) not in (2, 3):
            raise TypeError(f"layers[{i}] must be a (kernel, stride) or (kernel, stride, dilation) tuple, "
                            f"got {_describe(layer)}")
        kernel, stride, dilation = (tuple(layer) + (1,))[:3]
        _sizes(1, **{f"layers[{i}] kernel": kernel, f"layers[{i}] stride": stride,
                     f"layers[{i}] dilation": dilation})
        field += dilation * (kernel - 1) * jump
        jump *= stride
    return field, jump


# --------------------------------------------------------------------------------- arguments
INT_MAX = 2 ** 31 - 1  # sizes reach the compiled kernels as C ints


def _describe(value):
    """A bad value as a message shows it: its repr (cut short) and its type."""
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def is_int(value):
    """An int or NumPy integer, not a bool."""
    return type(value) is int or (isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)))


def _bounds(name, value, minimum, maximum):
    if minimum is not None and value < minimum:
        bound = {0: "non-negative", 1: "positive"}.get(minimum, f">= {minimum}")
        raise ValueError(f"{name} must be {bound}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be at most {maximum}, got {value!r}")


def integer(name, value, minimum=None, maximum=INT_MAX):
    """``value`` as an int in ``[minimum, maximum]``; TypeError/ValueError naming ``name`` otherwise."""
    if not is_int(value):
        raise TypeError(f"{name} must be an int, got {_describe(value)}")
    _bounds(name, value, minimum, maximum)
    return int(value)


def _ints(name, value, n, minimum, maximum=INT_MAX):
    """``value`` as a tuple of ``n`` ints in ``[minimum, maximum]``; a clear error otherwise."""
    if type(value) is int and minimum <= value and (maximum is None or value <= maximum):
        return (value,) * n  # the common case, fast
    items = (value,) * n if is_int(value) else value
    try:
        items = tuple(items)
    except TypeError:
        raise TypeError(f"{name} must be an int or a tuple of {n} ints, got {_describe(value)}") from None
    if len(items) != n or not all(is_int(v) for v in items):
        raise TypeError(f"{name} must be an int or a tuple of {n} ints, got {_describe(value)}")
    for v in items:
        _bounds(name, v, minimum, maximum)
    return tuple(int(v) for v in items)


def ints(name, value, n, minimum=0, maximum=INT_MAX):
    """Public form of the int-tuple normaliser, for ops outside this module."""
    return _ints(name, value, n, minimum, maximum)


def real(name, value, low=None, high=None, low_open=False, high_open=False):
    """``value`` as a finite float in the interval ``low..high`` (ends closed unless ``*_open``)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {_describe(value)}")
    value = float(value)
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open else value > high)
    if not math.isfinite(value) or below or above:
        interval = ("(" if low_open else "[") + ("-inf" if low is None else f"{low:g}") + ", " \
            + ("inf" if high is None else f"{high:g}") + (")" if high_open or high is None else "]")
        raise ValueError(f"{name} must be a finite number in {interval}, got {value}")
    return value


def reals(name, value, n, low=None, high=None, low_open=False):
    """``value`` (a number or ``n`` of them) as a tuple of ``n`` floats, each checked by :func:`real`."""
    items = (value,) * n if not isinstance(value, (tuple, list)) else tuple(value)
    if len(items) != n:
        raise ValueError(f"{name} must be a number or a tuple of {n} numbers, got {_describe(value)}")
    return tuple(real(name, v, low, high, low_open) for v in items)


def flag(name, value):
    """``value`` as a bool: True, False (or a NumPy bool, or the ints 0 and 1)."""
    if isinstance(value, (bool, np.bool_)) or (is_int(value) and value in (0, 1)):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {_describe(value)}")


def choice(name, value, options):
    """``value``, which must be one of ``options`` (strings)."""
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}, got {_describe(value)}")
    return value


def as_array(name, value):
    """``value`` (an array, a number or a nested list of numbers) as a NumPy array of numbers.

    None, strings, ragged lists and arbitrary objects are a TypeError naming ``name``, instead of an
    object array that fails somewhere later.
    """
    if value is None or isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be an array or a Tensor, got {_describe(value)}")
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be an array or a Tensor, got {type(value).__name__} ({err})") from None
    if array.dtype.kind not in "biufc":
        raise TypeError(f"{name} must be an array of numbers, got {_describe(value)} of dtype {array.dtype}")
    return array


def dtype_arg(name, value, kinds="biufc"):
    """``value`` as a NumPy dtype of one of ``kinds`` (bool, int, uint, float, complex by default)."""
    try:
        dtype = np.dtype(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a NumPy dtype, got {_describe(value)}") from None
    if value is None or dtype.kind not in kinds:
        raise TypeError(f"{name} must be a numeric dtype, got {_describe(value)}")
    return dtype


def float_dtype(name, value):
    """``value`` as float32 or float64, the dtypes every op computes in."""
    dtype = dtype_arg(name, value)
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {dtype}")
    return dtype


def axes(name, value, ndim):
    """``value`` (None: every axis, an int or a tuple of ints, negative from the end) as a tuple of
    distinct axes of an ``ndim``-D array."""
    if value is None:
        return tuple(range(ndim))
    items = (value,) if is_int(value) else value
    if not isinstance(items, (tuple, list)) or not all(is_int(a) for a in items):
        raise TypeError(f"{name} must be None, an int or a tuple of ints, got {_describe(value)}")
    if any(not -ndim <= a < ndim for a in items) or (ndim == 0 and items):
        raise ValueError(f"{name} {value!r} is out of range for a {ndim}-D tensor")
    out = tuple(int(a) % ndim for a in items)
    if len(set(out)) != len(out):
        raise ValueError(f"{name} {value!r} repeats an axis")
    return out


def axis(name, value, ndim):
    """``value`` as one axis of an ``ndim``-D array (negative counts from the end)."""
    value = integer(name, value, None, None)
    if not -ndim <= value < ndim:
        raise ValueError(f"{name}={value} is out of range for a {ndim}-D tensor")
    return value % ndim


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


LAYOUTS = {1: "N, C, L", 2: "N, C, H, W", 3: "N, C, D, H, W"}


def _check_rank(name, shape, rank, layout):
    """``shape`` is a shape (a tuple of non-negative ints) of ``rank`` dims."""
    if not isinstance(shape, (tuple, list)) or not all(is_int(v) for v in shape) or min(shape, default=0) < 0:
        raise TypeError(f"{name} shape must be a tuple of non-negative ints, got {_describe(shape)}")
    if len(shape) != rank:
        raise ValueError(f"{name} must be {rank}-D ({layout}), got shape {tuple(shape)}")


# ------------------------------------------------------------------------------ memory
@functools.lru_cache(maxsize=1)
def memory_limit():
    """Bytes of physical memory: the rule for an array no op may plan (it could never be allocated)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): 1 TiB
        return 2 ** 40


def check_memory(what, shape, culprits, itemsize=4):
    """An array of ``shape`` (``itemsize`` bytes per element: float32's by default, the smallest dtype
    an op computes in) fits in this machine's memory; else a ValueError naming ``culprits``, raised
    before anything is allocated."""
    nbytes = itemsize
    for size in shape:
        nbytes *= int(size)
    limit = memory_limit()
    if nbytes > limit:
        raise ValueError(f"{what} would have shape {tuple(shape)} ({nbytes:.3g} bytes), more than this "
                         f"machine's memory ({limit:.3g} bytes): check {culprits}")


# ------------------------------------------------------------------------------- convolution
DEPTH_FIELDS = ("d", "kd", "od", "depth_stride", "depth_padding", "depth_dilation")


def _repr(spec):
    """A spec as its constructor call, without the depth fields of a 1-D or 2-D op (their defaults)."""
    names = [f.name for f in dataclasses.fields(spec) if spec.dims == 3 or f.name not in DEPTH_FIELDS]
    return f"{type(spec).__name__}({', '.join(f'{k}={getattr(spec, k)!r}' for k in names)})"


@dataclass(frozen=True)
class ConvSpec:
    """The loop nest of one convolution (cross-correlation), shared by all backends.

    ``y[n, g*cog + o, oz, oy, ox] = sum_{c, k, i, j} x[n, g*cig + c, oz*sd - pf + k*dd, oy*sh - pt + i*dh,
    ox*sw - pl + j*dw] * w[g*cog + o, c, k, i, j]`` with ``cig = c_in // groups``, ``cog = c_out // groups``;
    the depth terms (``d``, ``kd``, ``od``, ``depth_*``) default to a unit depth, which is a 2-D
    convolution.
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
    dims: int = 2   # 1 for conv1d: h == kh == oh == 1; 3 for conv3d
    d: int = 1
    kd: int = 1
    od: int = 1
    depth_stride: int = 1
    depth_padding: tuple = (0, 0)  # (front, back)
    depth_dilation: int = 1

    __repr__ = _repr

    @property
    def x_shape5(self):
        return (self.n, self.c_in, self.d, self.h, self.w)

    @property
    def w_shape5(self):
        return (self.c_out, self.c_in // self.groups, self.kd, self.kh, self.kw)

    @property
    def y_shape5(self):
        return (self.n, self.c_out, self.od, self.oh, self.ow)

    @property
    def x_shape(self):
        return self.x_shape5 if self.dims == 3 else (self.n, self.c_in, self.h, self.w)

    @property
    def w_shape(self):
        return self.w_shape5 if self.dims == 3 else (self.c_out, self.c_in // self.groups, self.kh, self.kw)

    @property
    def y_shape(self):
        return self.y_shape5 if self.dims == 3 else (self.n, self.c_out, self.oh, self.ow)

    @property
    def flops(self):
        """Multiply-adds times two of the forward pass."""
        return (2 * self.n * self.c_out * self.od * self.oh * self.ow * (self.c_in // self.groups)
                * self.kd * self.kh * self.kw)

    def user_shape(self, shape4):
        """A kernel's array shape as the user sees it: (N, C, L) for 1-D ops."""
        return (shape4[0], shape4[1], shape4[3]) if self.dims == 1 else tuple(shape4)

    def geometry(self):
        """The ints of :data:`GEOMETRY`, the layout the compiled kernels read."""
        return (self.n, self.c_in, self.h, self.w, self.c_out, self.kh, self.kw, self.oh, self.ow,
                *self.stride, self.padding[0], self.padding[2], *self.dilation, self.groups)

    def geometry3(self):
        """The ints of :data:`GEOMETRY3`, the layout of kernels that walk the depth axis."""
        return _geometry3(self, self.c_in, self.c_out, self.groups)

    @property
    def windows_read_input(self):
        """Whether every output's window reads at least one input pixel (none lies wholly in the padding):
        then any input value a window reads, times any output's gradient, reaches the weight gradient."""
        axes = ((self.d, self.od, self.kd, self.depth_stride, self.depth_padding[0], self.depth_dilation),
                (self.h, self.oh, self.kh, self.stride[0], self.padding[0], self.dilation[0]),
                (self.w, self.ow, self.kw, self.stride[1], self.padding[2], self.dilation[1]))
        for size, out, taps, stride, pad, dilation in axes:
            read = np.arange(out)[:, None] * stride - pad + np.arange(taps) * dilation
            if not ((read >= 0) & (read < size)).any(axis=1).all():
                return False
        return True

    @property
    def window(self):
        """``(sh, sw, pt, pl, dh, dw)``: where each output's window starts and how it steps."""
        return self.geometry()[WINDOW]

    @property
    def window3(self):
        """``(sd, sh, sw, pf, pt, pl, dd, dh, dw)``: :attr:`window` with the depth."""
        return self.geometry3()[WINDOW3]


def _geometry3(spec, c_in, c_out, groups):
    return (spec.n, c_in, spec.d, spec.h, spec.w, c_out, spec.kd, spec.kh, spec.kw, spec.od, spec.oh, spec.ow,
            spec.depth_stride, *spec.stride, spec.depth_padding[0], spec.padding[0], spec.padding[2],
            spec.depth_dilation, *spec.dilation, groups)


def _depth(out, spatial, kernel, stride, pads, dilation):
    """The depth fields of a 3-D spec (the first of each per-axis tuple), as keyword arguments."""
    return dict(d=spatial[0], kd=kernel[0], od=out[0], depth_stride=stride[0], depth_padding=tuple(pads[0]),
                depth_dilation=dilation[0])


def conv_padding(padding, dims, kernel, dilation, stride):
    """Explicit (before, after) padding per spatial dim from an int, a tuple, "valid" or "same" (which
    needs stride 1)."""
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
    """Validate the arguments of ``conv{dims}d`` and return its :class:`ConvSpec`.

    A layer calls this with the same arguments on every step: arguments of plain ints, tuples of them and
    strings are answered from a cache (7 us of validation a call, a fifth of a small 1-D layer's time),
    others (NumPy integers, lists, bools: whose errors or conversions depend on their type) validated
    each time."""
    args = (x_shape, w_shape, bias_shape, stride, padding, dilation, groups, dims)  # shapes: tuples of ints
    if all(_plain(a) for a in args):
        return _cached_conv_spec(memory_limit(), *args)  # (the limit in the key: its check is part of it)
    return _conv_spec(*args)


def _plain(value):
    """None, an int, a string, or a tuple of ints: a cache key that means what it says (a bool or a
    NumPy integer would hash like an int)."""
    kind = type(value)
    return value is None or kind is int or kind is str or (kind is tuple and all(type(v) is int for v in value))


@functools.lru_cache(maxsize=1024)
def _cached_conv_spec(_limit, *args):
    return _conv_spec(*args)


def _conv_spec(x_shape, w_shape, bias_shape, stride, padding, dilation, groups, dims):
    layout = LAYOUTS[dims]
    _check_rank("input", x_shape, dims + 2, layout)
    _check_rank("weight", w_shape, dims + 2, "C_out, C_in/groups, " + layout[6:])
    stride = _ints("stride", stride, dims, 1)
    dilation = _ints("dilation", dilation, dims, 1)
    groups = integer("groups", groups, 1)
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
    pads = conv_padding(padding, dims, kernel, dilation, stride)
    spatial = tuple(x_shape[2:])
    out = []
    for axis, (size, k, s, p, d) in enumerate(zip(spatial, kernel, stride, pads, dilation)):
        if size + p[0] + p[1] < d * (k - 1) + 1:
            raise ValueError(f"kernel size {k} (dilation {d}) is larger than the padded input "
                             f"({size} + padding {p[0] + p[1]}) along spatial dim {axis}")
        out.append(_conv_length(size, k, s, p, d))
    check_memory("the padded input", (n, c_in) + tuple(size + p[0] + p[1] for size, p in zip(spatial, pads)),
                 "padding")
    check_memory("the output", (n, c_out) + tuple(out), "padding")
    if dims == 1:
        return ConvSpec(n, c_in, 1, spatial[0], c_out, 1, kernel[0], 1, out[0], (1, stride[0]),
                        (0, 0) + pads[0], (1, dilation[0]), groups, dims=1)
    depth = _depth(out, spatial, kernel, stride, pads, dilation) if dims == 3 else {}
    i = dims - 2  # the first plane axis
    return ConvSpec(n, c_in, spatial[i], spatial[i + 1], c_out, kernel[i], kernel[i + 1], out[i], out[i + 1],
                    stride[i:], pads[i] + pads[i + 1], dilation[i:], groups, dims, **depth)


def is_pointwise(spec):
    """1x1, stride 1, no padding, every input pixel read (a transposed convolution's output padding adds
    pixels no output reads): a convolution that is a plain matrix product of the input planes."""
    return (spec.kh == spec.kw == 1 and spec.stride == (1, 1) and not any(spec.padding)
            and (spec.oh, spec.ow) == (spec.h, spec.w)
            and spec.kd == spec.depth_stride == 1 and not any(spec.depth_padding) and spec.od == spec.d)


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


@dataclass(frozen=True)
class Phase:
    """One phase of a strided convolution's input gradient: the input pixels ``(ph + a*sh, pw + b*sw)``,
    ``a < rows``, ``b < cols``, are the stride-1 convolution ``spec`` (``rows x cols`` outputs: its bottom
    or right padding is negative where the phase leaves the gradient's last rows or columns unread) of
    the output gradient with the kernel taps ``kh_taps x kw_taps`` (slices of the kernel, reversed:
    ``w[:, :, kh_taps, kw_taps]``, in and out channels swapped), the only taps that reach them."""
    ph: int
    pw: int
    rows: int
    cols: int
    kh_taps: slice
    kw_taps: slice
    spec: "ConvSpec | None"  # None: no tap reaches these pixels (their gradient is zero)


def _phase_taps(p, pad, k, s, d):
    """``(taps, offset, count)``: the kernel taps of one axis that reach input phase ``p`` (a slice, in
    reverse order), the output offset the first of them reads and how many there are, or None where
    none does."""
    taps = [t for t in range(k - 1, -1, -1) if (p + pad - t * d) % s == 0]
    if not taps:
        return None
    step = s // math.gcd(s, d)
    return slice(taps[0], taps[-1] - 1 if taps[-1] else None, -step), (p + pad - taps[0] * d) // s, len(taps)


@functools.lru_cache(maxsize=256)
def input_phases(spec):
    """The input gradient of strided ``spec`` as ``sh * sw`` stride-1 convolutions (:class:`Phase`), one per
    input phase, or None where a phase would read output rows before the first (padding beyond the
    kernel's reach: no adjoint exists for it either)."""
    (sh, sw), (dh, dw) = spec.stride, spec.dilation
    phases = []
    for ph in range(sh):
        for pw in range(sw):
            rows, cols = len(range(ph, spec.h, sh)), len(range(pw, spec.w, sw))
            th = _phase_taps(ph, spec.padding[0], spec.kh, sh, dh)
            tw = _phase_taps(pw, spec.padding[2], spec.kw, sw, dw)
            if th is None or tw is None or not rows or not cols:
                phases.append(Phase(ph, pw, rows, cols, slice(0, 0), slice(0, 0), None))
                continue
            (kh_taps, top, nh), (kw_taps, left, nw) = th, tw
            if top > 0 or left > 0:
                return None
            top, left = -top, -left
            dil = (dh // math.gcd(sh, dh), dw // math.gcd(sw, dw))  # taps of a phase: this far apart
            bottom = rows - 1 + (nh - 1) * dil[0] - top - (spec.oh - 1)
            right = cols - 1 + (nw - 1) * dil[1] - left - (spec.ow - 1)
            phase = ConvSpec(spec.n, spec.c_out, spec.oh, spec.ow, spec.c_in, nh, nw, rows, cols,
                             (1, 1), (top, bottom, left, right), dil, spec.groups, spec.dims)
            phases.append(Phase(ph, pw, rows, cols, kh_taps, kw_taps, phase))
    return tuple(phases)


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
    layout = LAYOUTS[dims]
    _check_rank("input", x_shape, dims + 2, layout)
    _check_rank("weight", w_shape, dims + 2, "C_in, C_out/groups, " + layout[6:])
    stride = _ints("stride", stride, dims, 1)
    dilation = _ints("dilation", dilation, dims, 1)
    if isinstance(padding, str):
        raise ValueError(f"padding must be an int or a tuple for transposed convolution, got {padding!r}")
    pads = _ints("padding", padding, dims, 0)
    out_pads = _ints("output_padding", output_padding, dims, 0)
    groups = integer("groups", groups, 1)
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
        length = _conv_transpose_length(size, k, s, p, op, d)
        if length < 1:
            raise ValueError(f"transposed convolution output would be empty (length {length}): "
                             f"padding={pads} is too large for the input and kernel")
        out.append(length)
    check_memory("the output", (n, c_out) + tuple(out), "stride and dilation")
    if dims == 1:
        return ConvSpec(n, c_out, 1, out[0], c_in, 1, kernel[0], 1, spatial[0], (1, stride[0]),
                        (0, 0, pads[0], pads[0]), (1, dilation[0]), groups, dims=1)
    # the convolution's input is this op's output and its output this op's input
    depth = _depth(spatial, out, kernel, stride, [(p, p) for p in pads], dilation) if dims == 3 else {}
    i = dims - 2
    return ConvSpec(n, c_out, out[i], out[i + 1], c_in, kernel[i], kernel[i + 1], spatial[i], spatial[i + 1],
                    stride[i:], (pads[i], pads[i], pads[i + 1], pads[i + 1]), dilation[i:], groups, dims, **depth)



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
    """The windows of one pooling op: ``y[n, c, oz, oy, ox]`` reduces
    ``x[n, c, oz*sd - pf + k*dd, oy*sh - pt + i*dh, ox*sw - pl + j*dw]`` over ``0 <= k < kd,
    0 <= i < kh, 0 <= j < kw``; the depth terms default to a unit depth (a 2-D pooling)."""
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
    d: int = 1
    kd: int = 1
    od: int = 1
    depth_stride: int = 1
    depth_padding: tuple = (0, 0)  # (front, back): symmetric
    depth_dilation: int = 1

    __repr__ = _repr

    @property
    def x_shape5(self):
        return (self.n, self.c, self.d, self.h, self.w)

    @property
    def y_shape5(self):
        return (self.n, self.c, self.od, self.oh, self.ow)

    @property
    def x_shape(self):
        return self.x_shape5 if self.dims == 3 else (self.n, self.c, self.h, self.w)

    @property
    def y_shape(self):
        return self.y_shape5 if self.dims == 3 else (self.n, self.c, self.oh, self.ow)

    def user_shape(self, shape4):
        return (shape4[0], shape4[1], shape4[3]) if self.dims == 1 else tuple(shape4)

    def geometry(self):
        """The ints of :data:`GEOMETRY`: the depthwise convolution the windows walk like."""
        return (self.n, self.c, self.h, self.w, self.c, self.kh, self.kw, self.oh, self.ow, *self.stride,
                self.padding[0], self.padding[2], *self.dilation, max(self.c, 1))

    def geometry3(self):
        """The ints of :data:`GEOMETRY3`: the depthwise 3-D convolution the windows walk like."""
        return _geometry3(self, self.c, self.c, max(self.c, 1))

    @property
    def window(self):
        """``(sh, sw, pt, pl, dh, dw)``: where each output's window starts and how it steps."""
        return self.geometry()[WINDOW]

    @property
    def window3(self):
        """``(sd, sh, sw, pf, pt, pl, dd, dh, dw)``: :attr:`window` with the depth."""
        return self.geometry3()[WINDOW3]

    def _counts(self, out, size, k, s, p):
        """What average pooling divides by along one axis, PyTorch's rule: the window clipped to the
        padded input (``count_include_pad``) or to the input itself; the ``ceil_mode`` overhang past the
        padding never counts."""
        start = np.arange(out) * s - p
        end = np.minimum(start + k, size + p)
        return end - start if self.count_include_pad else np.minimum(end, size) - np.maximum(start, 0)

    def divisors(self, dtype=np.float64):
        """What average pooling divides each output of a plane by, ``(oh, ow)``: the product of each
        axis's count (:meth:`_counts`)."""
        rows = self._counts(self.oh, self.h, self.kh, self.stride[0], self.padding[0])
        cols = self._counts(self.ow, self.w, self.kw, self.stride[1], self.padding[2])
        return np.ascontiguousarray(np.outer(rows, cols), dtype=dtype)

    def depth_divisors(self, dtype=np.float64):
        """The depth axis's share of the divisors, ``(od,)``."""
        return self._counts(self.od, self.d, self.kd, self.depth_stride, self.depth_padding[0]).astype(dtype)

    def divisors5(self, dtype=np.float64):
        """The divisors of every output of a volume, ``(od, oh, ow)``."""
        return np.ascontiguousarray(self.depth_divisors()[:, None, None] * self.divisors(), dtype=dtype)


def pool_args(kernel_size, stride, padding, dilation, dims):
    """``(kernel, stride, padding, dilation)`` of a pooling window as tuples of ``dims`` ints, checked
    (the stride defaults to the kernel size; the padding is at most half the kernel)."""
    kernel = _ints("kernel_size", kernel_size, dims, 1)
    stride = kernel if stride is None or (isinstance(stride, (tuple, list)) and not stride) \
        else _ints("stride", stride, dims, 1)
    pads = _ints("padding", padding, dims, 0)
    dilation = _ints("dilation", dilation, dims, 1)
    for k, p in zip(kernel, pads):
        if p > k // 2:
            raise ValueError(f"padding must be at most half the kernel size, got padding={pads}"
                             f" for kernel_size={kernel}")
    return kernel, stride, pads, dilation


def pool_spec(x_shape, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
              count_include_pad=True, dims=2):
    """Validate the arguments of a pooling op and return its :class:`PoolSpec` (plain arguments from a
    cache, as :func:`conv_spec`; the two flags must then be bools)."""
    args = (x_shape, kernel_size, stride, padding, dilation, ceil_mode, count_include_pad, dims)
    if (all(_plain(a) for a in args[:5] + args[7:]) and type(ceil_mode) is bool
            and type(count_include_pad) is bool):
        return _cached_pool_spec(memory_limit(), *args)
    return _pool_spec(*args)


@functools.lru_cache(maxsize=1024)
def _cached_pool_spec(_limit, *args):
    return _pool_spec(*args)


def _pool_spec(x_shape, kernel_size, stride, padding, dilation, ceil_mode, count_include_pad, dims):
    _check_rank("input", x_shape, dims + 2, LAYOUTS[dims])
    kernel, stride, pads, dilation = pool_args(kernel_size, stride, padding, dilation, dims)
    ceil_mode, count_include_pad = flag("ceil_mode", ceil_mode), flag("count_include_pad", count_include_pad)
    spatial = tuple(x_shape[2:])
    out = []
    for axis, (size, k, s, p, d) in enumerate(zip(spatial, kernel, stride, pads, dilation)):
        length = _pool_length(size, k, s, p, d, ceil_mode)
        if length < 1:
            raise ValueError(f"kernel_size {k} (dilation {d}) is larger than the padded input "
                             f"({size} + padding {2 * p}) along spatial dim {axis}")
        out.append(length)
    n, c = x_shape[:2]
    check_memory("the padded input", (n, c) + tuple(size + 2 * p for size, p in zip(spatial, pads)),
                 "kernel_size and padding")
    if dims == 1:
        return PoolSpec(n, c, 1, spatial[0], 1, kernel[0], 1, out[0], (1, stride[0]), (0, 0, pads[0], pads[0]),
                        (1, dilation[0]), ceil_mode, count_include_pad, dims=1)
    depth = _depth(out, spatial, kernel, stride, [(p, p) for p in pads], dilation) if dims == 3 else {}
    i = dims - 2
    return PoolSpec(n, c, spatial[i], spatial[i + 1], kernel[i], kernel[i + 1], out[i], out[i + 1], stride[i:],
                    (pads[i], pads[i], pads[i + 1], pads[i + 1]), dilation[i:], ceil_mode, count_include_pad,
                    dims, **depth)


def unpool_output_size(x_shape, kernel, stride, padding, output_size, dims):
    """Spatial output size of ``max_unpool``: ``(L-1)S - 2P + K`` unless ``output_size`` (``dims`` ints,
    or a full shape whose last ``dims`` entries count) says otherwise."""
    default = tuple((length - 1) * s - 2 * p + k
                    for length, k, s, p in zip(x_shape[2:], kernel, stride, padding))
    if output_size is None:
        size = default
        if min(size, default=1) < 1:
            raise ValueError(f"max_unpool output would be empty (size {size}): padding={padding} is too "
                             f"large for kernel_size={kernel} and stride={stride}")
    else:
        if isinstance(output_size, (tuple, list)) and len(output_size) in (dims + 1, dims + 2):
            output_size = tuple(output_size)[-dims:]  # PyTorch also takes (N, C, *spatial)
        size = _ints("output_size", output_size, dims, 1)
        for d, (s, k) in enumerate(zip(size, default)):
            lo = k - stride[d]
            if not lo < s < k + stride[d]:
                raise ValueError(f"output_size {size} is out of range: dim {d} must lie in ({lo}, "
                                 f"{k + stride[d]})")
    check_memory("the output", tuple(x_shape[:2]) + size, "kernel_size, stride and output_size")
    return size


# ------------------------------------------------------------------------------- resampling
def adaptive_size(x_shape, output_size, dims):
    """Output size of ``adaptive_avg_pool{dims}d``, checked (with the memory of its averaging matrices)."""
    _check_rank("input", x_shape, dims + 2, LAYOUTS[dims])
    out = _ints("output_size", output_size, dims, 1)
    _check_resample(x_shape, out, "output_size")
    return out


RESIZE_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}  # the linear mode of each dims


def resize_args(size, scale_factor, mode, align_corners, modes=("nearest",) + tuple(RESIZE_MODES.values())):
    """Check the arguments of a resize that do not depend on the input: ``mode`` one of ``modes``,
    ``align_corners`` only with a linear mode, exactly one of ``size`` and ``scale_factor``."""
    choice("mode", mode, modes)
    if align_corners is not None:
        flag("align_corners", align_corners)
        if mode == "nearest":
            raise ValueError("align_corners can only be set with a linear mode")
    if (size is None) == (scale_factor is None):
        raise ValueError("give exactly one of size and scale_factor")


def interpolate_size(x_shape, size=None, scale_factor=None, mode="nearest", align_corners=None):
    """``(output size, scale per axis)`` of ``interpolate``, every argument checked.

    The scale is PyTorch's source step per output cell: ``input / size``, or ``1 / scale_factor``.
    """
    dims = len(x_shape) - 2 if isinstance(x_shape, (tuple, list)) else 0
    if dims not in (1, 2, 3):
        raise ValueError(f"input must be 3-D (N, C, L), 4-D (N, C, H, W) or 5-D (N, C, D, H, W), got shape "
                         f"{tuple(x_shape)}")
    _check_rank("input", x_shape, dims + 2, LAYOUTS[dims])
    resize_args(size, scale_factor, mode, align_corners, ("nearest", RESIZE_MODES[dims]))
    in_sizes = tuple(x_shape[2:])
    if size is not None:
        out = _ints("size", size, dims, 1)
        scales = tuple(s / o for s, o in zip(in_sizes, out))
        culprit = "size"
    else:
        factors = reals("scale_factor", scale_factor, dims, 0, None, low_open=True)
        out = tuple(int(np.floor(s * f)) for s, f in zip(in_sizes, factors))
        if min(out) < 1:
            raise ValueError(f"scale_factor {scale_factor!r} makes the output empty for input size {in_sizes}")
        scales = tuple(1.0 / f for f in factors)
        culprit = "scale_factor"
    _check_resample(x_shape, out, culprit)
    return out, scales


def _check_resample(x_shape, out, culprit):
    """The output of a resampling op and its dense (out, in) float64 matrices fit in memory."""
    check_memory("the output", tuple(x_shape[:2]) + tuple(int(o) for o in out), culprit)
    for o, s in zip(out, x_shape[2:]):
        check_memory("a resampling matrix", (int(o), s), culprit, itemsize=8)


# ---------------------------------------------------------------------------- tensor shapes
def _broadcast(name, a, b):
    """NumPy's broadcasting rule for two shapes (in Python: np.broadcast_shapes costs ~10 us a call)."""
    a, b = tuple(a), tuple(b)
    n = max(len(a), len(b))
    out = []
    for x, y in zip((1,) * (n - len(a)) + a, (1,) * (n - len(b)) + b):
        if x != y and x != 1 and y != 1:
            raise ValueError(f"{name} has shape {b}, which does not broadcast with {a}")
        out.append(x if y == 1 else y)
    return tuple(out)


def broadcast_shape(name, a, b, itemsize=4):
    """The shape that shapes ``a`` and ``b`` broadcast to (a ValueError naming ``name``, the second
    operand, where they do not), which must fit in memory."""
    shape = _broadcast(name, a, b)
    check_memory("the result", shape, f"the shape of {name}, {tuple(b)}, against {tuple(a)}", itemsize)
    return shape


def matmul_shape(name, a, b, itemsize=4):
    """The shape of ``A @ B`` for operands of shapes ``a`` and ``b`` (each at least 2-D), checked."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"matmul needs operands of at least 2 dims, got {tuple(a)} and {name} {tuple(b)}")
    if a[-1] != b[-2]:
        raise ValueError(f"{name} has shape {tuple(b)}: its rows ({b[-2]}) must match the columns "
                         f"({a[-1]}) of the left operand {tuple(a)}")
    shape = _broadcast(name, a[:-2], b[:-2]) + (a[-2], b[-1])
    check_memory("the result", shape, f"the shape of {name}, {tuple(b)}, against {tuple(a)}", itemsize)
    return shape


def reshape_shape(name, shape, size):
    """``shape`` (ints, at most one -1) as the shape of ``size`` elements."""
    if not isinstance(shape, (tuple, list)) or not all(is_int(v) for v in shape):
        raise TypeError(f"{name} must be a tuple of ints, got {_describe(shape)}")
    shape = tuple(int(v) for v in shape)
    if shape.count(-1) > 1 or min(shape, default=0) < -1:
        raise ValueError(f"{name} {shape} may hold non-negative sizes and at most one -1")
    known = math.prod(v for v in shape if v != -1)
    if -1 in shape and known and size % known == 0:
        shape = tuple(size // known if v == -1 else v for v in shape)
    if -1 in shape or math.prod(shape) != size:
        raise ValueError(f"{name} {shape} does not hold the tensor's {size} elements")
    return shape


def as_4d(shape, dims):
    """(N, C, L) -> (N, C, 1, L) for 1-D ops; 2-D shapes pass through; (N, C, D, H, W) -> (N, C, D*H, W)
    (the planes of a volume stacked, for ops that see each (n, c) plane as flat)."""
    shape = tuple(shape)
    if dims == 3:
        return shape[:2] + (shape[2] * shape[3], shape[4])
    return shape[:2] + (1,) + shape[2:] if dims == 1 else shape


__all__ = ["GEOMETRY", "GEOMETRY3", "LAYOUTS", "conv_output_size", "conv_transpose_output_size", "pool_output_size", "receptive_field",
           "ConvSpec", "PoolSpec", "conv_spec", "conv_transpose_spec", "pool_spec", "check_float",
           "unpool_output_size", "as_4d", "ints", "is_pointwise", "adjoint_spec", "adjoint_weight",
           "adjoint_padding", "integer", "real", "reals", "flag", "choice", "as_array", "dtype_arg",
           "float_dtype", "axis", "axes", "pool_args", "memory_limit", "check_memory", "conv_padding",
           "adaptive_size", "interpolate_size", "resize_args", "broadcast_shape", "matmul_shape", "reshape_shape",
           "INT_MAX", "TiledSpec", "tiled_spec", "separable_spec"]
