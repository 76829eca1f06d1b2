"""Tiled and locally-connected convolution on the CPU with Numba: small GEMMs, each on its own thread.

The kernels of ``tiled`` (same signatures), for a :class:`~fastconv.shapes.TiledSpec`. Output ``ox = q*tw
+ b`` of row ``oy`` uses kernel ``(a, b)``, ``a = oy % th``. A *block* is a run of positions of one row
(``q0 <= q < q0 + cq``, ``b0 <= b < b0 + cb``) for a run of samples. Per group, a block's columns are
gathered into a buffer of the thread, ordered by kernel (``cols[b, q, m, k]``), and the outputs that share
a kernel are one GEMM with BLAS on that thread (``np.dot``; BLAS is held to one thread meanwhile): a run
of a row for a convolution (tiles ``(1, 1)``), one position over every sample for a locally-connected
layer, whose kernels are then read once each. Outputs go back as contiguous runs of a row. Blocks keep
their columns within ``TASK_BYTES``, holding as many samples as fit first (:func:`_blocking`).

- Forward: a task is a row's block; each writes outputs of its own.
- Input gradient: the GEMMs transposed, then the columns added back into the input gradient (col2im).
  Rows whose windows overlap must not run at once: with a sample per thread or more, a task takes every
  row of its own samples; else rows go in bands tall enough that the windows of bands two apart are
  disjoint, the even bands first, then the odd ones.
- Weight gradient: ``gw[a, b] += gy_rows[b]^T cols[b]``. A task is a kernel row ``a`` (its kernels are its
  own); with fewer kernel rows than threads, a kernel row's blocks are split into parts that add into
  partial sums of their own.

Nothing compiles at import; each kernel compiles on its first call per dtype and is cached.
"""
import numba
import numpy as np
from numba import get_thread_id, njit, prange

from .numba_cpu import _on_one_blas_thread
from .workspaces import result, workspace

#: Columns of one block, at most (bytes): about half the L2 cache of a core.
TASK_BYTES = 512 << 10


# ---------------------------------------------------------------------------- block helpers
# Loops run position by position (no division per element) and read the window of a position from the
# few input rows it spans; windows wholly inside the input skip the bounds checks. ``_columns`` is inlined
# with constant kernel sizes into ``_gather`` and ``_add_back``, so that its loops unroll.
@njit(inline="always")
def _columns(a, n0, oy, q0, b0, tw, g, cols, adjoint, kh, kw, sh, sw, pt, pl, dh, dw):
    """Gather a block's columns, ``cols[bb, qq, m, (c, i, j)] = a[n0 + m, g*cig + c, oy*sh - pt + i*dh,
    ox*sw - pl + j*dw]`` for output ``ox = (q0 + qq)*tw + b0 + bb``, zero in the padding; or, with
    ``adjoint``, add them back into ``a`` (col2im: the padding's share is dropped)."""
    cb, cq, nb = cols.shape[0], cols.shape[1], cols.shape[2]
    cig = cols.shape[3] // (kh * kw)
    h, w = a.shape[2], a.shape[3]
    iy0 = oy * sh - pt
    rows_inside = iy0 >= 0 and iy0 + (kh - 1) * dh < h
    for m in range(nb):
        for qq in range(cq):
            for bb in range(cb):
                ix0 = ((q0 + qq) * tw + b0 + bb) * sw - pl
                inside = rows_inside and ix0 >= 0 and ix0 + (kw - 1) * dw < w
                col = cols[bb, qq, m]
                k = 0
                for c in range(cig):
                    plane = a[n0 + m, g * cig + c]
                    for i in range(kh):
                        iy = iy0 + i * dh
                        for j in range(kw):
                            ix = ix0 + j * dw
                            if inside or (0 <= iy < h and 0 <= ix < w):
                                if adjoint:
                                    plane[iy, ix] += col[k + j]
                                else:
                                    col[k + j] = plane[iy, ix]
                            elif not adjoint:
                                col[k + j] = 0
                        k += kw


# Output rows live in ``rows[bb, (qq*nb + m)*cog + o]``: one row of the buffer per kernel (``bb``), padded by
# ``ROW_PAD`` elements so that the same element of successive positions does not fall 4 KB apart (a
# multiple of 4 KB conflicts in the L1 cache, and these loops visit one position after the other).
ROW_PAD = 16


@njit(cache=True)
def _gather_rows(gy, n0, oy, q0, b0, tw, g, rows, cq, nb, cog):
    """``rows[bb, (qq*nb + m)*cog + o] = gy[n0 + m, g*cog + o, oy, (q0 + qq)*tw + b0 + bb]``."""
    for m in range(nb):
        for o in range(cog):
            line = gy[n0 + m, g * cog + o, oy]
            for qq in range(cq):
                at = (qq * nb + m) * cog + o
                for bb in range(rows.shape[0]):
                    rows[bb, at] = line[(q0 + qq) * tw + b0 + bb]


@njit(cache=True)
def _scatter_rows(rows, n0, oy, q0, b0, tw, g, bias, y, cq, nb, cog):
    """The adjoint of :func:`_gather_rows`, plus the bias: ``bias[oc, oy, ox]`` (one per position) or
    ``bias[oc, 0, 0]`` (one per channel)."""
    per_position = bias.shape[1] * bias.shape[2] > 1
    for m in range(nb):
        for o in range(cog):
            oc = g * cog + o
            line = y[n0 + m, oc, oy]
            shift = bias[oc, oy if per_position else 0]
            for qq in range(cq):
                at = (qq * nb + m) * cog + o
                for bb in range(rows.shape[0]):
                    ox = (q0 + qq) * tw + b0 + bb
                    line[ox] = rows[bb, at] + shift[ox if per_position else 0]


@njit(cache=True)
def _block(item, n, nb, nq, cq, tw, cb):
    """Block ``item`` of a row: ``(n0, samples, q0, cq, b0, cb)``; a row has ``blocks(...)`` of them."""
    per_q = (tw + cb - 1) // cb
    chunks = (nq + cq - 1) // cq * per_q
    n0, chunk = (item // chunks) * nb, item % chunks
    q0, b0 = (chunk // per_q) * cq, (chunk % per_q) * cb
    return n0, min(nb, n - n0), q0, min(cq, nq - q0), b0, min(cb, tw - b0)


@njit(cache=True)
def _blocks(n, nb, nq, cq, tw, cb):
    """Blocks of one row."""
    return (n + nb - 1) // nb * ((nq + cq - 1) // cq) * ((tw + cb - 1) // cb)


@njit(cache=True)
def _views(cols_ws, rows_ws, cb, cq, count):
    """This thread's columns ``(cb, cq, count, k)`` and output rows ``(cb, row length)``."""
    t = get_thread_id()
    cols = cols_ws[t, :cb * cq * count].reshape((cb, cq, count, cols_ws.shape[2]))
    return cols, rows_ws[t, :cb]


@njit(cache=True)
def _rows_of(rows, bb, cq, count, cog):
    """The ``(cq * count, cog)`` outputs of kernel ``bb`` (a GEMM's operand)."""
    return rows[bb, :cq * count * cog].reshape((cq * count, cog))


# ---------------------------------------------------------------------------------- kernels
#: Kernel sizes whose column loops are compiled with the size as a constant: the window loops unroll
#: (LeNet-5's 5x5 locally-connected C1, forward: the column gathers 1.2 -> 0.4 ms on one thread). Other
#: sizes share loops that read it at run time.
CONSTANT_SIZES = ((3, 3), (5, 5))


def _sized_columns(adjoint):
    """``_columns`` with ``adjoint`` fixed, as a function of its own with a copy of the loops per size of
    ``CONSTANT_SIZES`` (keep the two in step), called from the parallel loops: inlined into a parallel
    loop, the loops ran 2-3x slower whenever the kernel came from Numba's disk cache rather than a fresh
    compilation (LeNet-5's C3, locally connected, weight gradient: 0.47 ms fresh, 0.8-1.2 from the cache;
    called, 0.47 either way)."""
    @njit(cache=True)
    def columns(a, n0, oy, q0, b0, tw, g, cols, kh, kw, sh, sw, pt, pl, dh, dw):
        if kh == 3 and kw == 3:
            _columns(a, n0, oy, q0, b0, tw, g, cols, adjoint, 3, 3, sh, sw, pt, pl, dh, dw)
        elif kh == 5 and kw == 5:
            _columns(a, n0, oy, q0, b0, tw, g, cols, adjoint, 5, 5, sh, sw, pt, pl, dh, dw)
        else:
            _columns(a, n0, oy, q0, b0, tw, g, cols, adjoint, kh, kw, sh, sw, pt, pl, dh, dw)
    return columns


_gather = _sized_columns(False)    # a block's columns from the input
_add_back = _sized_columns(True)   # a block's columns added back into the input gradient


@njit(parallel=True, cache=True)
def _forward(x, w5, bias, y, tiling, cols_ws, rows_ws, kh, kw, sh, sw, pt, pl, dh, dw):
    n, oh, ow = x.shape[0], y.shape[2], y.shape[3]
    th, tw, groups, cog = w5.shape[:4]
    nb, cq, cb = tiling
    nq = ow // tw
    per_row = _blocks(n, nb, nq, cq, tw, cb)
    for task in prange(oh * per_row):
        oy = task // per_row
        n0, count, q0, nqc, b0, nbc = _block(task % per_row, n, nb, nq, cq, tw, cb)
        cols, rows = _views(cols_ws, rows_ws, nbc, nqc, count)
        for g in range(groups):
            _gather(x, n0, oy, q0, b0, tw, g, cols, kh, kw, sh, sw, pt, pl, dh, dw)
            for bb in range(nbc):
                np.dot(cols[bb].reshape(-1, cols.shape[3]), w5[oy % th, b0 + bb, g].T,
                       _rows_of(rows, bb, nqc, count, cog))
            _scatter_rows(rows, n0, oy, q0, b0, tw, g, bias, y, nqc, count, cog)


@njit(parallel=True, cache=True)
def _grad_input(gy, w5, gx, band, parity, tiling, cols_ws, rows_ws, kh, kw, sh, sw, pt, pl, dh, dw):
    n, oh, ow = gy.shape[0], gy.shape[2], gy.shape[3]
    th, tw, groups, cog = w5.shape[:4]
    nb, cq, cb = tiling
    nq = ow // tw
    per_row = _blocks(n, nb, nq, cq, tw, cb)
    sample_blocks = (n + nb - 1) // nb
    per_block = per_row // sample_blocks  # blocks of a row that share one run of samples
    bands = ((oh + band - 1) // band - parity + 1) // 2  # bands parity, parity + 2, ...
    for task in prange(bands * sample_blocks):
        oy0 = (2 * (task // sample_blocks) + parity) * band
        first = (task % sample_blocks) * per_block
        for oy in range(oy0, min(oy0 + band, oh)):
            for item in range(first, first + per_block):  # one run of samples: no task shares a pixel
                n0, count, q0, nqc, b0, nbc = _block(item, n, nb, nq, cq, tw, cb)
                cols, rows = _views(cols_ws, rows_ws, nbc, nqc, count)
                for g in range(groups):
                    _gather_rows(gy, n0, oy, q0, b0, tw, g, rows, nqc, count, cog)
                    for bb in range(nbc):
                        np.dot(_rows_of(rows, bb, nqc, count, cog), w5[oy % th, b0 + bb, g],
                               cols[bb].reshape(-1, cols.shape[3]))
                    _add_back(gx, n0, oy, q0, b0, tw, g, cols, kh, kw, sh, sw, pt, pl, dh, dw)


@njit(parallel=True, cache=True)
def _grad_weight(gy, x, parts, tiling, cols_ws, rows_ws, prod_ws, kh, kw, sh, sw, pt, pl, dh, dw):
    n, oh, ow = x.shape[0], gy.shape[2], gy.shape[3]
    n_parts, th, tw, groups, cog = parts.shape[:5]
    nb, cq, cb = tiling
    nq = ow // tw
    per_row = _blocks(n, nb, nq, cq, tw, cb)
    for task in prange(th * n_parts):
        a, part = task // n_parts, task % n_parts
        prod = prod_ws[get_thread_id()]
        for item in range(part, (oh // th) * per_row, n_parts):  # the blocks of the rows of kernel row a
            oy = (item // per_row) * th + a
            n0, count, q0, nqc, b0, nbc = _block(item % per_row, n, nb, nq, cq, tw, cb)
            cols, rows = _views(cols_ws, rows_ws, nbc, nqc, count)
            for g in range(groups):
                _gather(x, n0, oy, q0, b0, tw, g, cols, kh, kw, sh, sw, pt, pl, dh, dw)
                _gather_rows(gy, n0, oy, q0, b0, tw, g, rows, nqc, count, cog)
                for bb in range(nbc):
                    np.dot(_rows_of(rows, bb, nqc, count, cog).T, cols[bb].reshape(-1, cols.shape[3]),
                           prod)
                    parts[part, a, b0 + bb, g] += prod


# ------------------------------------------------------------------------------ the kernels
def _blocking(spec, itemsize, most_samples=None):
    """``(nb, cq, cb)``: samples and positions of a block. As many samples as fit ``TASK_BYTES`` (every
    sample: the kernels are read once) up to ``most_samples``, then whole runs of ``tw`` positions (``cq``
    of them), else runs of ``cb`` positions within one; each count balanced over its range."""
    def balanced(size, most):
        most = max(1, min(size, most))
        return -(-size // -(-size // most))
    column = (spec.c_in // spec.groups) * spec.kh * spec.kw * itemsize
    tw, nq = spec.tiles[1], spec.ow // spec.tiles[1]
    nb = balanced(spec.n, min(TASK_BYTES // column, most_samples or spec.n))
    if tw * nb * column <= TASK_BYTES:
        return nb, balanced(nq, TASK_BYTES // (tw * nb * column)), tw
    return nb, 1, balanced(tw, TASK_BYTES // (nb * column))


def _setup(spec, dtype, most_samples=None):
    """The blocking and this call's per-thread buffers of columns and output rows."""
    nb, cq, cb = _blocking(spec, np.dtype(dtype).itemsize, most_samples)
    threads, k = numba.config.NUMBA_NUM_THREADS, (spec.c_in // spec.groups) * spec.kh * spec.kw
    cols = workspace("tiled_cols", (threads, nb * cq * cb, k), dtype)
    rows = workspace("tiled_rows", (threads, cb, nb * cq * (spec.c_out // spec.groups) + ROW_PAD), dtype)
    return (nb, cq, cb), cols, rows


def _kernels(w, spec):
    """``(th, tw, groups, C_out/groups, C_in/groups * kh * kw)`` view of the weight."""
    return w.reshape(spec.tiles + (spec.groups, spec.c_out // spec.groups, -1))


def _window(spec):
    return (spec.kh, spec.kw) + spec.window


def tiled_conv2d(x, w, b, spec):
    y = result(spec.y_shape, x.dtype)
    if spec.n == 0:
        return y
    bias = np.zeros((spec.c_out, 1, 1), x.dtype) if b is None else b
    _on_one_blas_thread(_forward, x, _kernels(w, spec), bias, y, *_setup(spec, x.dtype), *_window(spec))
    return y


def tiled_conv2d_grad_input(gy, w, spec):
    gx = np.zeros(spec.x_shape, gy.dtype)
    if spec.n == 0:
        return gx
    threads = numba.get_num_threads()
    if spec.n >= threads:  # a run of samples per thread, every row: one parallel region
        band, parities, most_samples = spec.oh, (0,), -(-spec.n // threads)
    else:  # bands two apart never overlap: the even ones, then the odd ones
        band, parities, most_samples = max(1, spec.dilation[0] * (spec.kh - 1) // spec.stride[0]), (0, 1), None
    for parity in parities:
        _on_one_blas_thread(_grad_input, gy, _kernels(w, spec), gx, band, parity,
                            *_setup(spec, gy.dtype, most_samples), *_window(spec))
    return gx


def tiled_conv2d_grad_weight(gy, x, spec):
    th, threads = spec.tiles[0], numba.get_num_threads()
    n_parts = 1 if th >= threads else -(-threads // th)
    k = (spec.c_in // spec.groups) * spec.kh * spec.kw
    parts = np.zeros((n_parts,) + spec.tiles + (spec.groups, spec.c_out // spec.groups, k), gy.dtype)
    if spec.n:
        prod = workspace("tiled_prod", (numba.config.NUMBA_NUM_THREADS, spec.c_out // spec.groups, k), gy.dtype)
        _on_one_blas_thread(_grad_weight, gy, x, parts, *_setup(spec, gy.dtype), prod,
                            *_window(spec))
    return (parts[0] if n_parts == 1 else parts.sum(axis=0)).reshape(spec.w_shape)
