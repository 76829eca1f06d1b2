"""Convolution as a sparse matrix: ``fc.conv_matrix``.

A convolution is linear in its input, so it is a matrix ``M`` with ``y.ravel() = M @ x.ravel()`` for one
sample. Row ``(o, oy, ox)`` holds the kernel of output ``(oy, ox)`` at the columns of the input pixels its
window reads: a convolution repeats one kernel along the rows (a block-Toeplitz matrix with shared
entries), a tiled convolution cycles through its kernels, and a locally-connected layer has a kernel of
its own in every row. The transpose ``M.T`` is the transposed convolution, and the input gradient
``M.T @ gy.ravel()``.

The matrix is built in CSR form by one parallel pass (Numba) that writes every nonzero once, rows in
order and columns sorted within a row; its size is known beforehand, and a matrix that would not fit in
memory is refused before anything is allocated.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import shapes

__all__ = ["conv_matrix"]


def conv_matrix(weight, input_shape, stride=1, padding=0, dilation=1, groups=1, *, max_bytes=None):
    """The ``scipy.sparse.csr_array`` ``M`` of a convolution of one sample of shape ``input_shape``.

    ``M @ x.ravel()`` is ``conv2d(x[None], weight, ...)[0].ravel()`` (``conv1d`` for 1-D), and ``M.T @
    y.ravel()`` the transposed convolution of ``y`` (conv2d's input gradient). ``input_shape`` is
    ``(C_in, H, W)`` or, for 1-D, ``(C_in, L)``. ``weight`` may be a convolution's ``(C_out, C_in/groups,
    KH, KW)`` (1-D: ``(C_out, C_in/groups, K)``), or a tiled or locally-connected layer's ``(TH, TW,
    C_out, C_in/groups, KH, KW)`` (1-D: ``(T, C_out, C_in/groups, K)``): its leading dims are the tiles,
    the output size for a locally-connected layer. Stride, padding (ints, tuples, ``"valid"``,
    ``"same"``), dilation and groups as in ``F.conv2d``. ``max_bytes``: the most memory the matrix may
    take (default: this machine's memory); a larger one is a ValueError that says its size.

    The kernel ``(-1, 0, 1)`` (a derivative) on 7 samples, then with stride 2, and its transpose:

    >>> import numpy as np, fastconv as fc
    >>> w = np.array([[[-1.0, 0.0, 1.0]]])        # (C_out, C_in, K)
    >>> fc.conv_matrix(w, (1, 7)).toarray()
    array([[-1.,  0.,  1.,  0.,  0.,  0.,  0.],
           [ 0., -1.,  0.,  1.,  0.,  0.,  0.],
           [ 0.,  0., -1.,  0.,  1.,  0.,  0.],
           [ 0.,  0.,  0., -1.,  0.,  1.,  0.],
           [ 0.,  0.,  0.,  0., -1.,  0.,  1.]])
    >>> m = fc.conv_matrix(w, (1, 7), stride=2)   # every other row
    >>> m.toarray()
    array([[-1.,  0.,  1.,  0.,  0.,  0.,  0.],
           [ 0.,  0., -1.,  0.,  1.,  0.,  0.],
           [ 0.,  0.,  0.,  0., -1.,  0.,  1.]])
    >>> m.T.toarray()                             # the transposed convolution, stride 2
    array([[-1.,  0.,  0.],
           [ 0.,  0.,  0.],
           [ 1., -1.,  0.],
           [ 0.,  0.,  0.],
           [ 0.,  1., -1.],
           [ 0.,  0.,  0.],
           [ 0.,  0.,  1.]])
    >>> m.nnz, m.shape                            # 3 rows of 3 entries, sharing 3 values
    (9, (3, 7))
    """
    import scipy.sparse

    w = np.asarray(weight.numpy() if hasattr(weight, "numpy") else weight)
    spec = _spec(w, input_shape, stride, padding, dilation, groups)
    rows_valid, cols_valid = _window_sizes(spec)  # taps inside the input, per output row and column
    cig, n_cols = spec.c_in // spec.groups, spec.c_in * spec.h * spec.w
    nnz = spec.c_out * cig * int(rows_valid.sum()) * int(cols_valid.sum())
    index = np.int32 if max(nnz, n_cols) < 2**31 else np.int64
    _check_size(spec, w, nnz, np.dtype(index).itemsize, max_bytes)
    indptr = np.zeros(spec.c_out * spec.oh * spec.ow + 1, np.int64)
    np.cumsum(np.tile(cig * np.outer(rows_valid, cols_valid).ravel(), spec.c_out), out=indptr[1:])
    indices, data = np.empty(nnz, index), np.empty(nnz, w.dtype)
    if nnz:
        w6 = np.ascontiguousarray(w).reshape(spec.tiles + (spec.c_out, spec.c_in // spec.groups, spec.kh, spec.kw))
        _fill(w6, indptr, indices, data, spec.c_in, spec.h, spec.w, spec.oh, spec.ow, *spec.window, spec.groups)
    matrix = scipy.sparse.csr_array((data, indices, indptr.astype(index, copy=False)),
                                    shape=(len(indptr) - 1, n_cols), copy=False)
    matrix.has_sorted_indices = True
    return matrix


def _spec(w, input_shape, stride, padding, dilation, groups):
    """The :class:`~fastconv.shapes.TiledSpec` of one sample (tiles ``(1, 1)`` for a convolution)."""
    try:
        input_shape = tuple(int(s) for s in input_shape)
    except TypeError:
        raise TypeError(f"input_shape must be a tuple (C_in, H, W) or (C_in, L), got {input_shape!r}") from None
    dims = len(input_shape) - 1
    if dims not in (1, 2):
        raise ValueError(f"input_shape must be (C_in, H, W) or (C_in, L) (one sample), got {input_shape}")
    if w.dtype not in shapes.FLOAT_DTYPES:
        raise TypeError(f"weight must be float32 or float64, got {w.dtype}")
    x_shape = (1,) + input_shape
    if w.ndim == dims + 2:
        conv = shapes.conv_spec(x_shape, w.shape, None, stride, padding, dilation, groups, dims)
        return shapes.TiledSpec(**{f: getattr(conv, f) for f in conv.__dataclass_fields__})
    if w.ndim == 2 * dims + 2:
        return shapes.tiled_spec(x_shape, w.shape, None, stride, padding, dilation, groups, dims)
    raise ValueError(f"weight must be {dims + 2}-D (a convolution's) or {2 * dims + 2}-D (a tiled or "
                     f"locally-connected layer's) for a {dims}-D input_shape {input_shape}, got shape {w.shape}")


def _window_sizes(spec):
    """Taps of each output row and column that fall inside the input (the rest read padding)."""
    def inside(out, size, k, s, p, d):
        at = np.arange(out)[:, None] * s - p + np.arange(k)[None, :] * d
        return ((at >= 0) & (at < size)).sum(axis=1)
    sh, sw, pt, pl, dh, dw = spec.window
    return (inside(spec.oh, spec.h, spec.kh, sh, pt, dh), inside(spec.ow, spec.w, spec.kw, sw, pl, dw))


def _check_size(spec, w, nnz, index_bytes, max_bytes):
    """ValueError, with the sizes, when the matrix would take more than ``max_bytes`` (default: more than
    this machine's memory, ``shapes.memory_limit``)."""
    rows, cols = spec.c_out * spec.oh * spec.ow, spec.c_in * spec.h * spec.w
    need = nnz * (w.itemsize + index_bytes) + (rows + 1) * (8 + index_bytes)
    limit = shapes.memory_limit() if max_bytes is None else max_bytes
    if need > limit:
        what = "this machine's memory" if max_bytes is None else "max_bytes"
        raise ValueError(f"conv_matrix: weight {w.shape} on input_shape {spec.user_shape(spec.x_shape)[1:]} "
                         f"gives a {rows} x {cols} matrix with {nnz} nonzeros ({need:.3g} bytes, "
                         f"{need / 2**30:.3g} GiB), more than {what} ({limit:.3g} bytes); use a smaller "
                         f"input_shape or fewer channels")


@njit(parallel=True, cache=True)
def _fill(w6, indptr, indices, data, c_in, h, w, oh, ow, sh, sw, pt, pl, dh, dw, groups):
    """The column and the value of every nonzero, row ``(o, oy, ox)`` by row, columns ascending."""
    th, tw, c_out, cig, kh, kw = w6.shape
    cog = c_out // groups
    for line in prange(c_out * oh):  # the rows of one output channel and output row
        o, oy = line // oh, line % oh
        first = (o // cog) * cig
        for ox in range(ow):
            at = indptr[line * ow + ox]
            kernel = w6[oy % th, ox % tw, o]
            for c in range(cig):
                for i in range(kh):
                    iy = oy * sh - pt + i * dh
                    if iy < 0 or iy >= h:
                        continue
                    for j in range(kw):
                        ix = ox * sw - pl + j * dw
                        if 0 <= ix < w:
                            indices[at] = ((first + c) * h + iy) * w + ix
                            data[at] = kernel[c, i, j]
                            at += 1
