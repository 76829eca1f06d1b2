"""The NumPy reference: the definition every faster backend is tested against.

Vectorised, no loops over pixels: the only Python loops run over kernel taps. One mechanism serves
convolution and pooling alike: :func:`unfold` gathers, for every kernel tap ``(i, j)``, the strided,
dilated slice of the padded input that tap sees (im2col); :func:`fold` is its adjoint and adds such
slices back (col2im). Convolution is then one matrix product per group, max/avg pooling a reduction over
the tap axes, and every gradient a ``fold`` of a product.

Kernel signatures (shared by all backends; arrays are C-contiguous NCHW, geometry in the spec):
``conv2d(x, w, b, spec)``, ``conv2d_grad_input(gy, w, spec)``, ``conv2d_grad_weight(gy, x, spec)``,
``max_pool2d(x, spec) -> (y, indices)``, ``max_pool2d_grad(gy, indices, spec)``, ``avg_pool2d(x, spec)``,
``avg_pool2d_grad(gy, spec)``, ``max_unpool2d(x, indices, out_hw)``, ``max_unpool2d_grad(gy, indices)``.
"""
import dataclasses

import numpy as np


# ------------------------------------------------------------------------ unfold / fold
def _tap_slices(i, j, oh, ow, stride, dilation):
    """Rows and columns of the padded input that kernel tap (i, j) sees at every output position."""
    (sh, sw), (dh, dw) = stride, dilation
    return (slice(i * dh, i * dh + sh * (oh - 1) + 1, sh), slice(j * dw, j * dw + sw * (ow - 1) + 1, sw))


def pad(x, top, bottom, left, right, value=0.0):
    """Pad the two spatial axes of an NCHW array."""
    if not (top or bottom or left or right):
        return x
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=value)


def unfold(xpad, kh, kw, oh, ow, stride, dilation):
    """im2col of an already padded input: ``(N, C, H, W) -> (N, C, kh, kw, oh, ow)``."""
    cols = np.empty(xpad.shape[:2] + (kh, kw, oh, ow), dtype=xpad.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = xpad[(..., *_tap_slices(i, j, oh, ow, stride, dilation))]
    return cols


def fold(cols, padded_hw, stride, dilation):
    """col2im, the adjoint of :func:`unfold`: add every column back where it came from."""
    n, c, kh, kw, oh, ow = cols.shape
    out = np.zeros((n, c) + tuple(padded_hw), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            out[(..., *_tap_slices(i, j, oh, ow, stride, dilation))] += cols[:, :, i, j]
    return out


def _crop(xpad, spec):
    """Remove the padding :func:`pad` added (the top/left amounts of ``spec``)."""
    top, left = spec.padding[0], spec.padding[-2]
    return xpad[:, :, top:top + spec.h, left:left + spec.w]


def im2col(x, spec):
    """Columns of a convolution's input, ``(N, C_in, kh, kw, oh, ow)`` (the Cython kernel's contract)."""
    pt, pb, pl, pr = spec.padding
    return unfold(pad(x, pt, pb, pl, pr), spec.kh, spec.kw, spec.oh, spec.ow, spec.stride, spec.dilation)


def col2im(cols, spec):
    """Input-shaped sum of columns: the adjoint of :func:`im2col`."""
    pt, pb, pl, pr = spec.padding
    padded = fold(cols, (spec.h + pt + pb, spec.w + pl + pr), spec.stride, spec.dilation)
    return np.ascontiguousarray(_crop(padded, spec))


# --------------------------------------------------------------------------- convolution
def _grouped_cols(x, spec):
    """``(N, groups, C_in/groups * kh * kw, oh * ow)`` view of the columns."""
    per_group = spec.c_in // spec.groups * spec.kh * spec.kw  # explicit: -1 is ambiguous for an empty batch
    return im2col(x, spec).reshape(spec.n, spec.groups, per_group, spec.oh * spec.ow)


def _grouped_weight(w, spec):
    """``(groups, C_out/groups, C_in/groups * kh * kw)`` view of the weight."""
    return w.reshape(spec.groups, spec.c_out // spec.groups, -1)


def conv2d(x, w, b, spec):
    y = np.matmul(_grouped_weight(w, spec), _grouped_cols(x, spec)).reshape(spec.y_shape)
    if b is not None:
        y += b.reshape(1, -1, 1, 1)
    return y


def conv2d_grad_input(gy, w, spec):
    g = gy.reshape(spec.n, spec.groups, spec.c_out // spec.groups, spec.oh * spec.ow)
    cols = np.matmul(_grouped_weight(w, spec).transpose(0, 2, 1), g)
    return col2im(cols.reshape(spec.n, spec.c_in, spec.kh, spec.kw, spec.oh, spec.ow), spec)


def conv2d_grad_weight(gy, x, spec):
    g = gy.reshape(spec.n, spec.groups, spec.c_out // spec.groups, spec.oh * spec.ow)
    gw = np.matmul(g, _grouped_cols(x, spec).transpose(0, 1, 3, 2)).sum(axis=0)
    return gw.reshape(spec.w_shape)


def conv2d_grad_bias(gy):
    return gy.sum(axis=(0, 2, 3))


# -------------------------------------------------------------------------------- pooling
def _pool_padding(spec):
    """(top, bottom, left, right) padding that holds every window, the ceil_mode overhang included."""
    (pt, _, pl, _), (sh, sw), (dh, dw) = spec.padding, spec.stride, spec.dilation
    bottom = max(0, (spec.oh - 1) * sh + dh * (spec.kh - 1) + 1 - spec.h - pt)
    right = max(0, (spec.ow - 1) * sw + dw * (spec.kw - 1) + 1 - spec.w - pl)
    return pt, bottom, pl, right


def _windows(x, spec, fill):
    """Every pooling window: ``(N, C, kh * kw, oh, ow)``."""
    pads = _pool_padding(spec)
    cols = unfold(pad(x, *pads, value=fill), spec.kh, spec.kw, spec.oh, spec.ow, spec.stride, spec.dilation)
    return cols.reshape(spec.n, spec.c, spec.kh * spec.kw, spec.oh, spec.ow)


def _unwindow(cols, spec):
    """Adjoint of :func:`_windows`: add window entries back into an input-shaped array."""
    pt, pb, pl, pr = _pool_padding(spec)
    cols = cols.reshape(spec.n, spec.c, spec.kh, spec.kw, spec.oh, spec.ow)
    padded = fold(cols, (spec.h + pt + pb, spec.w + pl + pr), spec.stride, spec.dilation)
    return np.ascontiguousarray(padded[:, :, pt:pt + spec.h, pl:pl + spec.w])


def max_pool2d(x, spec):
    """Max over each window, and the flat index ``row * W + col`` of the winner in its (n, c) plane."""
    win = _windows(x, spec, -np.inf)
    tap = np.argmax(win, axis=2)
    y = np.take_along_axis(win, tap[:, :, None], axis=2)[:, :, 0]
    # A window whose values are all -inf points at its first real pixel (as PyTorch), never at padding.
    inside = _windows(np.ones((1, 1, spec.h, spec.w), dtype=np.int8), dataclasses.replace(spec, n=1, c=1), 0)
    tap = np.where(y == -np.inf, np.argmax(inside, axis=2), tap)
    sh, sw, pt, pl, dh, dw = spec.window
    rows = np.arange(spec.oh)[:, None] * sh - pt + (tap // spec.kw) * dh
    cols = np.arange(spec.ow)[None, :] * sw - pl + (tap % spec.kw) * dw
    return y, (rows * spec.w + cols).astype(np.int64)


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
    return _scatter_add(gy, indices, spec.n, spec.c, spec.h * spec.w).reshape(spec.x_shape)


def avg_pool2d(x, spec):
    divisor = spec.divisors(x.dtype)
    return _windows(x, spec, 0.0).sum(axis=2) / divisor


def avg_pool2d_grad(gy, spec):
    g = gy / spec.divisors(gy.dtype)
    cols = np.broadcast_to(g[:, :, None], (spec.n, spec.c, spec.kh * spec.kw, spec.oh, spec.ow))
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
