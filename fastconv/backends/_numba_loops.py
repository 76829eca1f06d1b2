"""The compiled loops of the Numba backend: ``@njit(parallel=True, cache=True)`` kernels.

One window geometry serves every kernel. Along each spatial axis, output ``o`` and kernel tap ``t`` meet
input pixel ``o*s - p + t*d``; :func:`tap_range` gives the taps of an output that land inside the input
and :func:`out_range` the outputs a tap reaches inside the input (tabulated once per call by
:func:`tap_table` / :func:`out_table`). Convolution, its gradients, im2col / col2im and pooling are loop
nests over these two ranges, with the output column ``ox`` innermost so that LLVM vectorises the row
(every kernel skips the padding instead of testing each pixel). Average pooling has no dilation.

Kernels write into arrays the caller allocates (outputs, gradients, workspaces): the wrappers in
``numba_cpu`` own the memory and run the algorithm the planner hands them. Nothing is compiled at import: each kernel compiles on
its first call (per dtype) and is then loaded from Numba's cache. ``prange`` runs over independent
outputs only (``n*c`` planes, or weight entries for the weight gradient), so no two threads write the same
element. Reductions may be reordered (``reassoc``) but NaN and inf propagate (no ``nnan``/``ninf``).

Innermost indices, non-negative by construction, are cast to unsigned (``_u``): Numba then skips its
negative-index wraparound test, which otherwise blocks vectorisation (about 14x slower rows).
"""
import numpy as np
from numba import get_thread_id, njit, prange
from numba import uintp as _u  # see the module docstring

_FAST = {"reassoc", "contract", "nsz"}  # vectorised sums; NaN/inf semantics kept
_CONV = dict(parallel=True, cache=True, fastmath=_FAST)
_EXACT = dict(parallel=True, cache=True)  # pooling and copies: comparisons and order as written


# ------------------------------------------------------------------------------- geometry
@njit(inline="always", cache=True)
def tap_range(o, s, p, d, k, size):
    """Taps ``t`` in ``[lo, hi)`` of output ``o`` whose pixel ``o*s - p + t*d`` lies in ``[0, size)``
    (``0 <= lo <= hi <= k``: loops over ``range(lo)`` stay inside the window too)."""
    start = o * s - p
    lo = 0 if start >= 0 else min(k, (d - 1 - start) // d)
    hi = min(k, (size - start + d - 1) // d) if size > start else 0
    return lo, max(lo, hi)


@njit(inline="always", cache=True)
def out_range(t, s, p, d, size, n_out):
    """Outputs ``o`` in ``[lo, hi)`` whose tap ``t`` lands on a pixel ``o*s - p + t*d`` in ``[0, size)``
    (``0 <= lo <= hi <= n_out``: loops over ``range(lo)`` stay inside the row too)."""
    off = t * d - p
    lo = 0 if off >= 0 else min(n_out, (s - 1 - off) // s)
    hi = min(n_out, (size - off - 1) // s + 1) if size > off else 0
    return lo, max(lo, hi)


@njit(cache=True)
def tap_table(n_out, s, p, d, k, size):
    """:func:`tap_range` of every output, ``(n_out, 2)``: computed once per call, not per row."""
    table = np.empty((n_out, 2), np.int64)
    for o in range(n_out):
        table[o, 0], table[o, 1] = tap_range(o, s, p, d, k, size)
    return table


@njit(cache=True)
def out_table(k, s, p, d, size, n_out):
    """:func:`out_range` of every tap, ``(k, 2)``: computed once per call, not per row."""
    table = np.empty((k, 2), np.int64)
    for t in range(k):
        table[t, 0], table[t, 1] = out_range(t, s, p, d, size, n_out)
    return table


# ---------------------------------------------------------------------------- convolution
@njit(**_CONV)
def conv_direct(x, w, b, y, sh, sw, pt, pl, dh, dw):
    """``y = conv(x, w) + b`` by direct loops, one ``(n, c_out)`` output plane per task."""
    n, c_in, h, wd = x.shape
    c_out, cig, kh, kw = w.shape
    oh, ow = y.shape[2], y.shape[3]
    cog = c_out // (c_in // cig)
    taps = tap_table(oh, sh, pt, dh, kh, h)
    reach = out_table(kw, sw, pl, dw, wd, ow)
    for task in prange(n * c_out):
        m, o = task // c_out, task % c_out
        c0 = (o // cog) * cig
        for oy in range(oh):
            for ox in range(ow):
                y[m, o, oy, ox] = b[o]
            ilo, ihi = taps[oy, 0], taps[oy, 1]
            for c in range(cig):
                for i in range(ilo, ihi):
                    iy = oy * sh - pt + i * dh
                    for j in range(kw):
                        wv = w[o, c, i, j]
                        lo, hi = reach[j, 0], reach[j, 1]
                        off = j * dw - pl
                        for ox in range(lo, hi):
                            y[m, o, oy, _u(ox)] += wv * x[m, c0 + c, iy, _u(ox * sw + off)]


@njit(**_CONV)
def conv_grad_input_direct(gy, w, gx, sh, sw, pt, pl, dh, dw):
    """``gx`` = the adjoint of :func:`conv_direct` applied to ``gy``: every output gradient is scattered
    back onto the pixels its window read, one ``(n, c_in)`` input plane per task."""
    n, c_in, h, wd = gx.shape
    c_out, cig, kh, kw = w.shape
    oh, ow = gy.shape[2], gy.shape[3]
    cog = c_out // (c_in // cig)
    taps = tap_table(oh, sh, pt, dh, kh, h)
    reach = out_table(kw, sw, pl, dw, wd, ow)
    for task in prange(n * c_in):
        m, ci = task // c_in, task % c_in
        g, c = ci // cig, ci % cig
        for iy in range(h):
            for ix in range(wd):
                gx[m, ci, iy, ix] = 0
        for o in range(g * cog, (g + 1) * cog):
            for oy in range(oh):
                ilo, ihi = taps[oy, 0], taps[oy, 1]
                for i in range(ilo, ihi):
                    iy = oy * sh - pt + i * dh
                    for j in range(kw):
                        wv = w[o, c, i, j]
                        lo, hi = reach[j, 0], reach[j, 1]
                        off = j * dw - pl
                        for ox in range(lo, hi):
                            gx[m, ci, iy, _u(ox * sw + off)] += wv * gy[m, o, oy, _u(ox)]


@njit(**_CONV)
def conv_grad_weight_direct(gy, x, gw, sh, sw, pt, pl, dh, dw):
    """``gw[o, c, i, j] = sum over n, oy, ox of gy * x`` at the pixel the tap read; one ``(c_out, c)``
    kernel per task, the sum over the batch inside it."""
    n, c_in, h, wd = x.shape
    c_out, cig, kh, kw = gw.shape
    oh, ow = gy.shape[2], gy.shape[3]
    cog = c_out // (c_in // cig)
    taps = tap_table(oh, sh, pt, dh, kh, h)
    reach = out_table(kw, sw, pl, dw, wd, ow)
    zero = gw.dtype.type(0)
    for task in prange(c_out * cig):
        o, c = task // cig, task % cig
        ci = (o // cog) * cig + c
        for i in range(kh):
            for j in range(kw):
                gw[o, c, i, j] = 0
        for m in range(n):
            for oy in range(oh):
                ilo, ihi = taps[oy, 0], taps[oy, 1]
                for i in range(ilo, ihi):
                    iy = oy * sh - pt + i * dh
                    for j in range(kw):
                        lo, hi = reach[j, 0], reach[j, 1]
                        off = j * dw - pl
                        acc = zero  # summed in the array's dtype, vectorised
                        for ox in range(lo, hi):
                            acc += gy[m, o, oy, _u(ox)] * x[m, ci, iy, _u(ox * sw + off)]
                        gw[o, c, i, j] += acc


# ------------------------------------------------------------------------------ im2col / col2im
@njit(cache=True)
def unfold_plane(x, m, c, cols, k, oy0, reach, sh, sw, pt, pl, dh, dw):
    """Columns of input plane ``x[m, c]``: ``cols[c, i, j, k, r, ox] = x[m, c, iy, ix]`` for output row
    ``oy0 + r`` and tap ``(i, j)``, 0 where the tap falls in the padding."""
    h = x.shape[2]
    kh, kw, bh, ow = cols.shape[1], cols.shape[2], cols.shape[4], cols.shape[5]
    for i in range(kh):
        for r in range(bh):
            iy = (oy0 + r) * sh - pt + i * dh
            inside = 0 <= iy < h
            for j in range(kw):
                lo, hi = reach[j, 0], reach[j, 1]
                if not inside:
                    lo, hi = 0, 0
                off = j * dw - pl
                for ox in range(lo):
                    cols[c, i, j, k, r, ox] = 0
                for ox in range(lo, hi):
                    cols[c, i, j, k, r, _u(ox)] = x[m, c, iy, _u(ox * sw + off)]
                for ox in range(max(lo, hi), ow):
                    cols[c, i, j, k, r, ox] = 0


@njit(cache=True)
def fold_plane(cols, k, oy0, gx, m, c, clear, reach, sh, sw, pt, pl, dh, dw):
    """The adjoint of :func:`unfold_plane`: column entries added to the pixels of ``gx[m, c]`` they came
    from (the plane zeroed first when ``clear``)."""
    h, wd = gx.shape[2], gx.shape[3]
    kh, kw, bh, ow = cols.shape[1], cols.shape[2], cols.shape[4], cols.shape[5]
    if clear:
        for iy in range(h):
            for ix in range(wd):
                gx[m, c, iy, ix] = 0
    for i in range(kh):
        for r in range(bh):
            iy = (oy0 + r) * sh - pt + i * dh
            if not 0 <= iy < h:
                continue
            for j in range(kw):
                lo, hi = reach[j, 0], reach[j, 1]
                off = j * dw - pl
                for ox in range(lo, hi):
                    gx[m, c, iy, _u(ox * sw + off)] += cols[c, i, j, k, r, _u(ox)]


@njit(**_EXACT)
def im2col(x, n0, oy0, cols, sh, sw, pt, pl, dh, dw):
    """Columns of output rows ``oy0 ..`` of samples ``n0 .. n0+nb``, side by side so that one GEMM per
    group covers them all: ``cols[c, i, j, m, r, ox]`` reads sample ``n0 + m``."""
    reach = out_table(cols.shape[2], sw, pl, dw, x.shape[3], cols.shape[5])
    c_in, nb = cols.shape[0], cols.shape[3]
    for task in prange(c_in * nb):
        c, m = task // nb, task % nb
        unfold_plane(x, n0 + m, c, cols, m, oy0, reach, sh, sw, pt, pl, dh, dw)


@njit(**_EXACT)
def col2im(cols, n0, oy0, gx, clear, sh, sw, pt, pl, dh, dw):
    """The adjoint of :func:`im2col` into planes ``gx[n0 + m, c]`` (zeroed first when ``clear``: row bands
    of one sample accumulate)."""
    reach = out_table(cols.shape[2], sw, pl, dw, gx.shape[3], cols.shape[5])
    c_in, nb = cols.shape[0], cols.shape[3]
    for task in prange(c_in * nb):
        c, m = task // nb, task % nb
        fold_plane(cols, m, oy0, gx, n0 + m, c, clear, reach, sh, sw, pt, pl, dh, dw)


# ------------------------------------------------- one block of samples per task, BLAS on the task's thread
# Task ``T`` takes samples ``m0 = T*nb .. m0+nb`` (fewer in the last task) and walks their output rows in
# bands of ``bh`` (one band when ``bh == oh``; several only when ``nb == 1``; the last band may overhang
# the output, its extra rows zero). Per band it builds the columns in its thread's slice of ``cols``
# (threads, C_in, kh, kw, nb, bh, ow) and multiplies them by BLAS (``np.dot``) on its own thread through
# its slice of ``rows`` (threads, C_out/groups, nb*bh*ow). The caller keeps BLAS single-threaded, so the
# whole convolution is one parallel region with no hand-over to BLAS threads. ``w3`` is ``(groups,
# C_out/groups, K)`` and ``y4``/``gy4`` ``(N, groups, C_out/groups, oh*ow)``, ``K = C_in/groups * kh * kw``.
@njit(cache=True)
def _band_columns(x, m0, count, oy0, n_out, cols, reach, sh, sw, pt, pl, dh, dw):
    """Columns of output rows ``oy0 ..`` of samples ``m0 .. m0+count`` into ``cols`` (C_in, kh, kw, nb,
    bh, ow); zeros for missing samples and for rows past ``n_out``."""
    bh = cols.shape[4]
    for k in range(cols.shape[3]):
        for c in range(cols.shape[0]):
            if k < count:
                unfold_plane(x, m0 + k, c, cols, k, oy0, reach, sh, sw, pt, pl, dh, dw)
                for r in range(min(bh, n_out - oy0), bh):
                    cols[c, :, :, k, r] = 0
            else:
                cols[c, :, :, k] = 0


@njit(cache=True)
def _band_rows(gy4, g, m0, count, oy0, rows, bh, ow):
    """``rows[o, (k*bh + r)*ow + q] = gy4[m0 + k, g, o, (oy0 + r)*ow + q]``, 0 outside the samples and the
    output: a band of the output gradient in the layout of its columns."""
    n_px = gy4.shape[3]
    nb = rows.shape[1] // (bh * ow)
    for o in range(rows.shape[0]):
        for k in range(nb):
            for r in range(bh):
                at, src = (k * bh + r) * ow, (oy0 + r) * ow
                inside = k < count and src < n_px
                for q in range(ow):
                    rows[o, _u(at + q)] = gy4[m0 + k, g, o, _u(src + q)] if inside else 0


@njit(inline="always", cache=True)
def _task_plan(cols, n, out_px, in_w, sw, pl, dw):
    """``(nb, bh, ow, oh, reach, tasks)``: samples per task, rows per band, output width and height
    (``out_px`` pixels), the reach of each tap column (``out_table``) and the number of tasks."""
    nb, bh, ow = cols.shape[4], cols.shape[5], cols.shape[6]
    return nb, bh, ow, out_px // ow, out_table(cols.shape[3], sw, pl, dw, in_w, ow), (n + nb - 1) // nb


@njit(inline="always", cache=True)
def _task_samples(task, nb, n):
    """``(thread, first sample, samples)`` of task ``task``."""
    m0 = task * nb
    return get_thread_id(), m0, min(nb, n - m0)


@njit(**_CONV)
def conv_per_task(x, w3, b, y4, cols, rows, sh, sw, pt, pl, dh, dw):
    """``y4[m, g] = w3[g] @ columns(x[m])[g] + b``."""
    n, groups, cog = x.shape[0], w3.shape[0], w3.shape[1]
    nb, bh, ow, oh, reach, tasks = _task_plan(cols, n, y4.shape[3], x.shape[3], sw, pl, dw)
    for task in prange(tasks):
        t, m0, count = _task_samples(task, nb, n)
        for oy0 in range(0, oh, bh):
            _band_columns(x, m0, count, oy0, oh, cols[t], reach, sh, sw, pt, pl, dh, dw)
            c3 = cols[t].reshape(groups, -1, nb * bh * ow)
            for g in range(groups):
                np.dot(w3[g], c3[g], rows[t])
                for k in range(count):
                    for o in range(cog):
                        bias = b[g * cog + o]
                        for r in range(min(bh, oh - oy0)):
                            at, to = (k * bh + r) * ow, (oy0 + r) * ow
                            for q in range(ow):
                                y4[m0 + k, g, o, _u(to + q)] = rows[t, o, _u(at + q)] + bias


@njit(**_CONV)
def conv_grad_input_per_task(gy4, w3, gx, cols, rows, sh, sw, pt, pl, dh, dw):
    """``gx[m] = col2im(w3[g].T @ gy4[m, g])``; a task owns its samples' planes, bands accumulate."""
    n, groups = gx.shape[0], w3.shape[0]
    nb, bh, ow, oh, reach, tasks = _task_plan(cols, n, gy4.shape[3], gx.shape[3], sw, pl, dw)
    for task in prange(tasks):
        t, m0, count = _task_samples(task, nb, n)
        c3 = cols[t].reshape(groups, -1, nb * bh * ow)
        for oy0 in range(0, oh, bh):
            for g in range(groups):
                _band_rows(gy4, g, m0, count, oy0, rows[t], bh, ow)
                np.dot(w3[g].T, rows[t], c3[g])
            for k in range(count):
                for c in range(gx.shape[1]):
                    fold_plane(cols[t], k, oy0, gx, m0 + k, c, oy0 == 0, reach, sh, sw, pt, pl, dh, dw)


@njit(**_CONV)
def conv_grad_weight_per_task(gy4, x, parts, rows, prod, cols, sh, sw, pt, pl, dh, dw):
    """``parts[t, g] += gy4[m, g] @ columns(x[m])[g].T`` over the samples that thread ``t`` ran; the
    caller zeroes ``parts`` (threads, groups, C_out/groups, K) and sums it over threads; ``prod`` holds
    one product per thread."""
    n, groups = x.shape[0], parts.shape[1]
    nb, bh, ow, oh, reach, tasks = _task_plan(cols, n, gy4.shape[3], x.shape[3], sw, pl, dw)
    for task in prange(tasks):
        t, m0, count = _task_samples(task, nb, n)
        for oy0 in range(0, oh, bh):
            _band_columns(x, m0, count, oy0, oh, cols[t], reach, sh, sw, pt, pl, dh, dw)
            c3 = cols[t].reshape(groups, -1, nb * bh * ow)
            for g in range(groups):
                _band_rows(gy4, g, m0, count, oy0, rows[t], bh, ow)
                np.dot(rows[t], c3[g].T, prod[t])
                for o in range(prod.shape[1]):
                    for q in range(prod.shape[2]):
                        parts[t, g, o, _u(q)] += prod[t, o, _u(q)]


@njit(**_EXACT)
def unmerge(src, n0, b, y):
    """``y[n0 + m, o, p] = src[o, m, p] + b[o]``: a GEMM result over merged samples back to NCHW."""
    c_out, nb, size = src.shape
    for task in prange(nb * c_out):
        m, o = task // c_out, task % c_out
        for q in range(size):
            y[n0 + m, o, _u(q)] = src[o, m, _u(q)] + b[o]


@njit(**_EXACT)
def merge(src, n0, dst):
    """``dst[o, m, p] = src[n0 + m, o, p]``: samples side by side, the layout of merged columns."""
    c, nb, size = dst.shape
    for task in prange(nb * c):
        m, o = task // c, task % c
        for q in range(size):
            dst[o, m, _u(q)] = src[n0 + m, o, _u(q)]


@njit(**_EXACT)
def add_bias(y, b):
    """``y[n, o, :] += b[o]`` in place."""
    n, c, size = y.shape
    for task in prange(n * c):
        m, o = task // c, task % c
        for q in range(size):
            y[m, o, _u(q)] += b[o]


# -------------------------------------------------------------------------------------- pooling
@njit(inline="always", cache=True)
def _row_max(plane, row, oy, ilo, ihi, kw, sh, sw, pt, pl, dh, dw, reach):
    """Fold the window taps ``ilo <= i < ihi`` (all columns) of one input plane into the maxima of output
    row ``oy``: keep a NaN; take a NaN or a larger value."""
    for i in range(ilo, ihi):
        iy = oy * sh - pt + i * dh
        for j in range(kw):
            lo, hi = reach[j, 0], reach[j, 1]
            off = j * dw - pl
            for ox in range(lo, hi):
                v = plane[iy, _u(ox * sw + off)]
                best = row[_u(ox)]
                row[_u(ox)] = best if (v <= best) | (best != best) else v


@njit(inline="always", cache=True)
def _row_argmax(plane, row, index, base, oy, ilo, ihi, kw, sh, sw, pt, pl, dh, dw, reach):
    """The taps of :func:`_row_max` in reverse order, each one equal to the row's maximum (or a NaN where
    it is NaN) giving its flat index ``base + iy*W + ix``: the last to write is the first maximum."""
    wd = plane.shape[1]
    for i in range(ihi - 1, ilo - 1, -1):
        iy = oy * sh - pt + i * dh
        for j in range(kw - 1, -1, -1):
            lo, hi = reach[j, 0], reach[j, 1]
            off = j * dw - pl
            for ox in range(lo, hi):
                v = plane[iy, _u(ox * sw + off)]
                best = row[_u(ox)]
                hit = (v == best) | ((v != v) & (best != best))
                old = index[_u(ox)]
                index[_u(ox)] = base + iy * wd + ox * sw + off if hit else old


@njit(**_EXACT)
def max_pool(x, y, idx, kh, kw, sh, sw, pt, pl, dh, dw):
    """Max of every window and the flat index ``iy*W + ix`` of its first maximum in row-major tap order;
    a NaN wins over numbers (the first NaN). Two branch-free passes per output row, so that both
    vectorise: the max, then the taps in reverse order, each one equal to the max taking the index."""
    n, c, h, wd = x.shape
    oh, ow = y.shape[2], y.shape[3]
    taps = tap_table(oh, sh, pt, dh, kh, h)
    reach = out_table(kw, sw, pl, dw, wd, ow)
    for task in prange(n * c):
        m, ch = task // c, task % c
        for oy in range(oh):
            ilo, ihi = taps[oy, 0], taps[oy, 1]
            row, index, plane = y[m, ch, oy], idx[m, ch, oy], x[m, ch]
            for ox in range(ow):
                row[ox] = -np.inf
            _row_max(plane, row, oy, ilo, ihi, kw, sh, sw, pt, pl, dh, dw, reach)
            _row_argmax(plane, row, index, 0, oy, ilo, ihi, kw, sh, sw, pt, pl, dh, dw, reach)


@njit(**_EXACT)
def max_pool3d(x, y, idx, kd, kh, kw, sd, sh, sw, pf, pt, pl, dd, dh, dw):
    """:func:`max_pool` of volumes: the same two passes per output row over every depth tap (depth taps
    outermost), the flat index ``(iz*H + iy)*W + ix``; one ``(n, c, oz)`` output plane per task."""
    n, c, d, h, wd = x.shape
    od, oh, ow = y.shape[2], y.shape[3], y.shape[4]
    depth = tap_table(od, sd, pf, dd, kd, d)
    taps = tap_table(oh, sh, pt, dh, kh, h)
    reach = out_table(kw, sw, pl, dw, wd, ow)
    for task in prange(n * c * od):
        m, ch, oz = task // (c * od), (task // od) % c, task % od
        klo, khi = depth[oz, 0], depth[oz, 1]
        for oy in range(oh):
            ilo, ihi = taps[oy, 0], taps[oy, 1]
            row, index = y[m, ch, oz, oy], idx[m, ch, oz, oy]
            for ox in range(ow):
                row[ox] = -np.inf
            for k in range(klo, khi):
                _row_max(x[m, ch, oz * sd - pf + k * dd], row, oy, ilo, ihi, kw, sh, sw, pt, pl, dh, dw, reach)
            for k in range(khi - 1, klo - 1, -1):
                iz = oz * sd - pf + k * dd
                _row_argmax(x[m, ch, iz], row, index, iz * h * wd, oy, ilo, ihi, kw, sh, sw, pt, pl, dh, dw,
                            reach)


@njit(**_EXACT)
def avg_pool(x, y, divisors, kh, kw, sh, sw, pt, pl):
    """Mean of every window (``sum / divisors[oy, ox]``, see ``PoolSpec.divisors``)."""
    n, c, h, wd = x.shape
    oh, ow = y.shape[2], y.shape[3]
    taps = tap_table(oh, sh, pt, 1, kh, h)
    reach = out_table(kw, sw, pl, 1, wd, ow)
    for task in prange(n * c):
        m, ch = task // c, task % c
        for oy in range(oh):
            for ox in range(ow):
                y[m, ch, oy, ox] = 0
            ilo, ihi = taps[oy, 0], taps[oy, 1]
            for i in range(ilo, ihi):
                iy = oy * sh - pt + i
                for j in range(kw):
                    lo, hi = reach[j, 0], reach[j, 1]
                    for ox in range(lo, hi):
                        y[m, ch, oy, _u(ox)] += x[m, ch, iy, _u(ox * sw - pl + j)]
            for ox in range(ow):
                y[m, ch, oy, ox] /= divisors[oy, ox]


@njit(**_EXACT)
def avg_pool_grad(gy, gx, divisors, kh, kw, sh, sw, pt, pl):
    """The adjoint of :func:`avg_pool`: each output gradient / divisor added to its window's pixels."""
    n, c, h, wd = gx.shape
    oh, ow = gy.shape[2], gy.shape[3]
    taps = tap_table(oh, sh, pt, 1, kh, h)
    reach = out_table(kw, sw, pl, 1, wd, ow)
    for task in prange(n * c):
        m, ch = task // c, task % c
        g = np.empty(ow, gy.dtype)
        for iy in range(h):
            for ix in range(wd):
                gx[m, ch, iy, ix] = 0
        for oy in range(oh):
            for ox in range(ow):
                g[ox] = gy[m, ch, oy, ox] / divisors[oy, ox]
            ilo, ihi = taps[oy, 0], taps[oy, 1]
            for i in range(ilo, ihi):
                iy = oy * sh - pt + i
                for j in range(kw):
                    lo, hi = reach[j, 0], reach[j, 1]
                    for ox in range(lo, hi):
                        gx[m, ch, iy, _u(ox * sw - pl + j)] += g[_u(ox)]


# ---------------------------------------------------- index scatter / gather (planes x pixels)
@njit(**_EXACT)
def scatter(values, idx, out, accumulate):
    """``out[p] = 0``, then ``out[p, idx[p, k]] += values[p, k]`` for every plane ``p`` when
    ``accumulate`` (max-pool gradient: overlapping windows share pixels), else ``= values[p, k]``
    (max-unpool: a repeated index keeps the last)."""
    for p in prange(out.shape[0]):
        for q in range(out.shape[1]):
            out[p, q] = 0
        for k in range(idx.shape[1]):
            if accumulate:
                out[p, _u(idx[p, k])] += values[p, _u(k)]
            else:
                out[p, _u(idx[p, k])] = values[p, _u(k)]


@njit(**_EXACT)
def gather(src, idx, out):
    """``out[p, k] = src[p, idx[p, k]]`` (max-unpool gradient)."""
    for p in prange(out.shape[0]):
        for k in range(idx.shape[1]):
            out[p, _u(k)] = src[p, _u(idx[p, k])]
