"""The NumPy reference: the definition every faster backend is tested against.

Vectorised, no loops over pixels: the only Python loops run over kernel taps. One mechanism serves
convolution and pooling alike: :func:`unfold` gathers, for every kernel tap ``(i, j)`` (``(k, i, j)`` in a
volume), the strided, dilated slice of the padded input that tap sees (im2col); :func:`fold` is its
adjoint and adds such slices back (col2im). Convolution is then one matrix product per group, max/avg pooling a reduction over
the tap axes, and every gradient a ``fold`` of a product.

The kernels run 2-D specs on NCHW arrays and 3-D specs (``dims == 3``) on NCDHW arrays alike: every
loop runs over the spatial axes the spec has (a 2-D op is a 3-D one with a unit depth); the other backends
run 3-D specs through ``depth``.

Kernel signatures (shared by all backends; arrays are C-contiguous NCHW, geometry in the spec):
``conv2d(x, w, b, spec)``, ``conv2d_grad_input(gy, w, spec)``, ``conv2d_grad_weight(gy, x, spec)``,
``max_pool2d(x, spec) -> (y, indices)``, ``max_pool2d_grad(gy, indices, spec)``, ``avg_pool2d(x, spec)``,
``avg_pool2d_grad(gy, spec)``, ``max_unpool2d(x, indices, out_hw)``, ``max_unpool2d_grad(gy, indices)``.
"""
import dataclasses
import itertools
import math

import numpy as np

#: Every kernel here takes 3-D specs too (see ``registry.runs_depth``).
DEPTH_OPS = ("conv2d", "conv2d_grad_input", "conv2d_grad_weight", "max_pool2d", "max_pool2d_grad", "avg_pool2d",
             "avg_pool2d_grad")


# ------------------------------------------------------------------------ unfold / fold
def _tap_slices(tap, out, stride, dilation):
    """The slice of each padded input axis that kernel tap ``tap`` (one index per axis) sees at every
    output position."""
    return tuple(slice(t * d, t * d + s * (o - 1) + 1, s) for t, o, s, d in zip(tap, out, stride, dilation))


def pad(x, top, bottom, left, right, value=0.0):
    """Pad the two spatial axes of an NCHW array."""
    return pad_axes(x, ((top, bottom), (left, right)), value)


def pad_axes(x, pads, value=0.0):
    """Pad the spatial axes of an array: ``pads`` holds one ``(before, after)`` pair per axis."""
    if not any(p for pair in pads for p in pair):
        return x
    return np.pad(x, ((0, 0), (0, 0)) + tuple(pads), constant_values=value)


def unfold(xpad, kh, kw, oh, ow, stride, dilation):
    """im2col of an already padded input: ``(N, C, H, W) -> (N, C, kh, kw, oh, ow)``."""
    return unfold_axes(xpad, (kh, kw), (oh, ow), stride, dilation)


def unfold_axes(xpad, kernel, out, stride, dilation):
    """im2col over every spatial axis: ``(N, C, *padded) -> (N, C, *kernel, *out)``."""
    cols = np.empty(xpad.shape[:2] + tuple(kernel) + tuple(out), dtype=xpad.dtype)
    for tap in itertools.product(*map(range, kernel)):
        cols[(slice(None), slice(None)) + tap] = xpad[(..., *_tap_slices(tap, out, stride, dilation))]
    return cols


def fold(cols, padded_hw, stride, dilation):
    """col2im, the adjoint of :func:`unfold`: add every column back where it came from."""
    return fold_axes(cols, padded_hw, stride, dilation)


def fold_axes(cols, padded, stride, dilation):
    """The adjoint of :func:`unfold_axes`: ``(N, C, *kernel, *out) -> (N, C, *padded)``."""
    axes = len(padded)
    kernel, out = cols.shape[2:2 + axes], cols.shape[2 + axes:]
    summed = np.zeros(cols.shape[:2] + tuple(padded), dtype=cols.dtype)
    for tap in itertools.product(*map(range, kernel)):
        summed[(..., *_tap_slices(tap, out, stride, dilation))] += cols[(slice(None), slice(None)) + tap]
    return summed


@dataclasses.dataclass(frozen=True)
class _Axes:
    """A spec's loop nest per spatial axis of its arrays (depth, then height and width, for a 3-D op)."""
    size: tuple
    kernel: tuple
    out: tuple
    stride: tuple
    pads: tuple  # (before, after) per axis
    dilation: tuple


def _axes(spec):
    pt, pb, pl, pr = spec.padding
    axes = _Axes((spec.h, spec.w), (spec.kh, spec.kw), (spec.oh, spec.ow), spec.stride, ((pt, pb), (pl, pr)),
                 spec.dilation)
    if spec.dims != 3:
        return axes
    return _Axes((spec.d,) + axes.size, (spec.kd,) + axes.kernel, (spec.od,) + axes.out,
                 (spec.depth_stride,) + axes.stride, (spec.depth_padding,) + axes.pads,
                 (spec.depth_dilation,) + axes.dilation)


def _crop(xpad, a):
    """Remove the padding of ``pads`` (the ``before`` share of each axis)."""
    return xpad[(slice(None), slice(None)) + tuple(slice(p[0], p[0] + n) for p, n in zip(a.pads, a.size))]


def im2col(x, spec):
    """Columns of a convolution's input, ``(N, C_in, *kernel, *out)`` (the Cython kernel's contract)."""
    a = _axes(spec)
    return unfold_axes(pad_axes(x, a.pads), a.kernel, a.out, a.stride, a.dilation)


def col2im(cols, spec):
    """Input-shaped sum of columns: the adjoint of :func:`im2col`."""
    a = _axes(spec)
    padded = fold_axes(cols, tuple(n + p + q for n, (p, q) in zip(a.size, a.pads)), a.stride, a.dilation)
    return np.ascontiguousarray(_crop(padded, a))


# --------------------------------------------------------------------------- convolution
def _grouped_cols(x, spec):
    """``(N, groups, C_in/groups * taps, outputs)`` view of the columns."""
    a = _axes(spec)
    per_group = spec.c_in // spec.groups * math.prod(a.kernel)  # explicit: -1 is ambiguous for an empty batch
    return im2col(x, spec).reshape(spec.n, spec.groups, per_group, math.prod(a.out))


def _grouped_weight(w, spec):
    """``(groups, C_out/groups, C_in/groups * taps)`` view of the weight."""
    return w.reshape(spec.groups, spec.c_out // spec.groups, -1)


def _grouped_grad(gy, spec):
    """``(N, groups, C_out/groups, outputs)`` view of an output gradient."""
    return gy.reshape(spec.n, spec.groups, spec.c_out // spec.groups, math.prod(_axes(spec).out))


def conv2d(x, w, b, spec):
    y = np.matmul(_grouped_weight(w, spec), _grouped_cols(x, spec)).reshape(spec.y_shape)
    if b is not None:
        y += b.reshape((1, -1) + (1,) * (y.ndim - 2))
    return y


def conv2d_grad_input(gy, w, spec):
    cols = np.matmul(_grouped_weight(w, spec).transpose(0, 2, 1), _grouped_grad(gy, spec))
    a = _axes(spec)
    return col2im(cols.reshape((spec.n, spec.c_in) + a.kernel + a.out), spec)


def conv2d_grad_weight(gy, x, spec):
    gw = np.matmul(_grouped_grad(gy, spec), _grouped_cols(x, spec).transpose(0, 1, 3, 2)).sum(axis=0)
    return gw.reshape(spec.w_shape)


def conv2d_grad_bias(gy):
    return gy.sum(axis=(0,) + tuple(range(2, gy.ndim)))


# -------------------------------------------------------------------------------- pooling
def _pool_padding(a):
    """``(before, after)`` padding per axis that holds every window, the ceil_mode overhang included."""
    return tuple((p, max(0, (o - 1) * s + d * (k - 1) + 1 - n - p))
                 for n, k, o, s, (p, _), d in zip(a.size, a.kernel, a.out, a.stride, a.pads, a.dilation))


def _windows(x, spec, fill):
    """Every pooling window: ``(N, C, taps, *out)``."""
    a = _axes(spec)
    cols = unfold_axes(pad_axes(x, _pool_padding(a), fill), a.kernel, a.out, a.stride, a.dilation)
    return cols.reshape((spec.n, spec.c, math.prod(a.kernel)) + a.out)


def _unwindow(cols, spec):
    """Adjoint of :func:`_windows`: add window entries back into an input-shaped array."""
    a = _axes(spec)
    pads = _pool_padding(a)
    cols = cols.reshape((spec.n, spec.c) + a.kernel + a.out)
    padded = fold_axes(cols, tuple(n + p + q for n, (p, q) in zip(a.size, pads)), a.stride, a.dilation)
    return np.ascontiguousarray(_crop(padded, dataclasses.replace(a, pads=pads)))


def max_pool2d(x, spec):
    """Max over each window, and the flat index of the winner in its (n, c) plane (``row * W + col``;
    ``(depth * H + row) * W + col`` in a volume)."""
    win = _windows(x, spec, -np.inf)
    tap = np.argmax(win, axis=2)
    y = np.take_along_axis(win, tap[:, :, None], axis=2)[:, :, 0]
    # A window whose values are all -inf points at its first real pixel (as PyTorch), never at padding.
    one = dataclasses.replace(spec, n=1, c=1)
    inside = _windows(np.ones(one.x_shape, dtype=np.int8), one, 0)
    tap = np.where(y == -np.inf, np.argmax(inside, axis=2), tap)
    a = _axes(spec)
    flat = np.zeros((), np.int64)
    for axis, (t, n, o, s, (p, _), d) in enumerate(zip(np.unravel_index(tap, a.kernel), a.size, a.out, a.stride,
                                                        a.pads, a.dilation)):
        start = np.arange(o).reshape((o,) + (1,) * (len(a.out) - axis - 1)) * s - p
        flat = flat * n + start + t * d
    return y, flat.astype(np.int64)


def _plane(a):
    """Elements per (n, c) plane (explicit, as ``reshape(n, c, -1)`` fails for an empty batch)."""
    return int(np.prod(a.shape[2:]))


def _scatter_add(values, indices, n, c, size):
    """``out[n, c, indices[n, c, k]] += values[n, c, k]`` over flattened planes of ``size`` pixels."""
    planes = np.arange(n * c, dtype=np.int64).reshape(n, c, 1) * size
    flat = (indices.reshape(n, c, _plane(indices)) + planes).ravel()
    out = np.bincount(flat, weights=values.ravel(), minlength=n * c * size)
    return out.astype(values.dtype)


def max_pool2d_grad(gy, indices, spec):
    return _scatter_add(gy, indices, spec.n, spec.c, math.prod(_axes(spec).size)).reshape(spec.x_shape)


def _divisors(spec, dtype):
    return spec.divisors5(dtype) if spec.dims == 3 else spec.divisors(dtype)


def avg_pool2d(x, spec):
    return _windows(x, spec, 0.0).sum(axis=2) / _divisors(spec, x.dtype)


def avg_pool2d_grad(gy, spec):
    g = gy / _divisors(spec, gy.dtype)
    cols = np.broadcast_to(g[:, :, None], (spec.n, spec.c, math.prod(_axes(spec).kernel)) + g.shape[2:])
    return _unwindow(cols, spec)


def max_unpool2d(x, indices, out_hw):
    """Place each value at its index in a zero plane of ``out_hw``."""
    n, c = x.shape[:2]
    size = out_hw[0] * out_hw[1]
    out = np.zeros((n, c, size), dtype=x.dtype)
    k = _plane(x)
    np.put_along_axis(out, indices.reshape(n, c, k), x.reshape(n, c, k), axis=2)
    return out.reshape((n, c) + tuple(out_hw))


def max_unpool2d_grad(gy, indices):
    n, c = gy.shape[:2]
    picked = np.take_along_axis(gy.reshape(n, c, _plane(gy)), indices.reshape(n, c, _plane(indices)), axis=2)
    return picked.reshape(indices.shape)
