# cython: language_level=3
"""im2col / col2im, and the convolutions built on them with a BLAS GEMM per (sample, group, row tile).

``cols[n, c, i, j, oy, ox] = x[n, c, oy*sh - pt + i*dh, ox*sw - pl + j*dw]`` (zero outside the input), so a
convolution is one matrix product per group, and col2im (the adjoint, accumulating) gives its input gradient.

The GEMM kernels unfold one tile of output rows of one (sample, group) at a time into a per-thread
workspace (a few hundred KiB, so it stays in cache) and multiply it with BLAS ``?gemm`` taken from
``scipy.linalg.cython_blas``. The parallel loop runs over tiles; the caller sets the BLAS to one thread
while it does (``nthreads > 1``), or runs one tile at a time and lets the BLAS thread (``nthreads == 1``).
A 1x1, stride-1, unpadded convolution needs no unfolding: its columns are the input planes themselves.
"""
from cpython.pycapsule cimport PyCapsule_GetName, PyCapsule_GetPointer
from cython.parallel cimport parallel, prange, threadid
from libc.string cimport memset

include "_loops.pxi"


# ----------------------------------------------------------------------------- BLAS access
ctypedef void (*sgemm_t)(char*, char*, int*, int*, int*, float*, float*, int*, float*, int*,
                         float*, float*, int*) noexcept nogil
ctypedef void (*dgemm_t)(char*, char*, int*, int*, int*, double*, double*, int*, double*, int*,
                         double*, double*, int*) noexcept nogil

cdef sgemm_t _sgemm = NULL
cdef dgemm_t _dgemm = NULL


def _load_blas():
    """Take ``sgemm``/``dgemm`` from SciPy's Cython BLAS (its capsules: no build-time SciPy needed)."""
    global _sgemm, _dgemm
    from scipy.linalg import cython_blas
    caps = cython_blas.__pyx_capi__
    _sgemm = <sgemm_t>PyCapsule_GetPointer(caps["sgemm"], PyCapsule_GetName(caps["sgemm"]))
    _dgemm = <dgemm_t>PyCapsule_GetPointer(caps["dgemm"], PyCapsule_GetName(caps["dgemm"]))


_load_blas()


cdef inline void gemm(char ta, char tb, int m, int n, int k, const real* a, int lda, const real* b,
                      int ldb, real beta, real* c, int ldc) noexcept nogil:
    """Column-major ``C = op(A) @ op(B) + beta * C`` (Fortran BLAS conventions)."""
    cdef real one = 1
    if real is float:
        _sgemm(&ta, &tb, &m, &n, &k, &one, <float*>a, &lda, <float*>b, &ldb, &beta, c, &ldc)
    else:
        _dgemm(&ta, &tb, &m, &n, &k, &one, <double*>a, &lda, <double*>b, &ldb, &beta, c, &ldc)


# -------------------------------------------------------------------------- im2col / col2im
cdef inline (Py_ssize_t, Py_ssize_t) clip_rows(Tap* t, Py_ssize_t oy0, Py_ssize_t oy1) noexcept nogil:
    """The tap's valid output rows within the tile ``[oy0, oy1)``."""
    cdef Py_ssize_t a = min(max(t.oy0, oy0), oy1)
    return a, max(min(t.oy1, oy1), a)


cdef void im2col_tile(const real* xg, real* cols, Geo* g, Py_ssize_t channels, Py_ssize_t oy0,
                      Py_ssize_t oy1) noexcept nogil:
    """Unfold output rows ``[oy0, oy1)`` of ``channels`` planes starting at ``xg`` into
    ``cols[(c, i, j), (oy - oy0) * ow + ox]``."""
    cdef Py_ssize_t p = (oy1 - oy0) * g.ow
    cdef Py_ssize_t c, i, j, ya, yb
    cdef Tap t
    cdef real* dst
    for c in range(channels):
        for i in range(g.kh):
            for j in range(g.kw):
                t = make_tap(g, i, j)
                ya, yb = clip_rows(&t, oy0, oy1)
                dst = cols + ((c * g.kh + i) * g.kw + j) * p
                fill(dst, <real>0, (ya - oy0) * g.ow)
                blk_copy(dst + (ya - oy0) * g.ow, g.ow, xg + c * g.hw + tap_in(g, &t, ya), g.sh * g.w,
                         yb - ya, t.ox0, t.ox1, g.ow, g.sw)
                fill(dst + (yb - oy0) * g.ow, <real>0, (oy1 - yb) * g.ow)


cdef void col2im_tile(const real* cols, real* xg, Geo* g, Py_ssize_t channels, Py_ssize_t oy0,
                      Py_ssize_t oy1) noexcept nogil:
    """Adjoint of :func:`im2col_tile`: add the columns back into the planes at ``xg``."""
    cdef Py_ssize_t p = (oy1 - oy0) * g.ow
    cdef Py_ssize_t c, i, j, ya, yb
    cdef Tap t
    for c in range(channels):
        for i in range(g.kh):
            for j in range(g.kw):
                t = make_tap(g, i, j)
                ya, yb = clip_rows(&t, oy0, oy1)
                blk_scatter(xg + c * g.hw + tap_in(g, &t, ya), g.sh * g.w,
                            cols + ((c * g.kh + i) * g.kw + j) * p + (ya - oy0) * g.ow + t.ox0, g.ow,
                            <real>1, yb - ya, t.ox1 - t.ox0, g.sw)


def im2col(const real[:, :, :, ::1] x, real[:, :, :, :, :, ::1] cols,
           int sh, int sw, int pt, int pl, int dh, int dw):
    """Fill ``cols (N, C, kh, kw, oh, ow)`` from ``x (N, C, H, W)``."""
    cdef Geo g = make_geo((x.shape[0], x.shape[1], x.shape[2], x.shape[3], x.shape[1], cols.shape[2],
                           cols.shape[3], cols.shape[4], cols.shape[5], sh, sw, pt, pl, dh, dw, 1))
    cdef Py_ssize_t n
    if cols.size == 0:
        return
    for n in prange(g.n, nogil=True, schedule="static"):
        im2col_tile(&x[n, 0, 0, 0], &cols[n, 0, 0, 0, 0, 0], &g, g.c_in, 0, g.oh)


def col2im(const real[:, :, :, :, :, ::1] cols, real[:, :, :, ::1] x,
           int sh, int sw, int pt, int pl, int dh, int dw):
    """Add every column entry back to the input pixel it came from (``x`` must start zeroed)."""
    cdef Geo g = make_geo((x.shape[0], x.shape[1], x.shape[2], x.shape[3], x.shape[1], cols.shape[2],
                           cols.shape[3], cols.shape[4], cols.shape[5], sh, sw, pt, pl, dh, dw, 1))
    cdef Py_ssize_t n
    if cols.size == 0:
        return
    for n in prange(g.n, nogil=True, schedule="static"):
        col2im_tile(&cols[n, 0, 0, 0, 0, 0], &x[n, 0, 0, 0], &g, g.c_in, 0, g.oh)


# ------------------------------------------------------------------- convolution as GEMM
cdef inline bint pointwise(Geo* g) noexcept nogil:
    """1x1, stride 1, unpadded: the columns are the input planes (no unfolding)."""
    return (g.kh == 1 and g.kw == 1 and g.sh == 1 and g.sw == 1 and g.pt == 0 and g.pl == 0
            and g.oh == g.h and g.ow == g.w)


cdef void forward_tile(const real* x, const real* w, const real* b, real* y, real* ws, Geo* g,
                       Py_ssize_t n, Py_ssize_t grp, Py_ssize_t oy0, Py_ssize_t oy1) noexcept nogil:
    """Output rows ``[oy0, oy1)`` of sample ``n``, group ``grp``: ``Y = W_g @ cols``."""
    cdef Py_ssize_t p = (oy1 - oy0) * g.ow, o
    cdef const real* xg = x + (n * g.c_in + grp * g.cig) * g.hw
    cdef real* yt = y + (n * g.c_out + grp * g.cog) * g.ohw + oy0 * g.ow
    cdef const real* cols = ws
    cdef Py_ssize_t ld = p
    if pointwise(g):
        cols, ld = xg + oy0 * g.ow, g.hw
    else:
        im2col_tile(xg, ws, g, g.cig, oy0, oy1)
    if b != NULL:
        for o in range(g.cog):
            fill(yt + o * g.ohw, b[grp * g.cog + o], p)
    # column-major: Y^T (p x cog) = cols^T (p x taps) @ W_g^T (taps x cog)
    gemm(c'N', c'N', <int>p, <int>g.cog, <int>g.taps, cols, <int>ld, w + grp * g.cog * g.taps,
         <int>g.taps, <real>(1 if b != NULL else 0), yt, <int>g.ohw)


cdef void grad_input_sample(const real* gy, const real* w, real* gx, real* ws, Geo* g, Py_ssize_t n,
                            Py_ssize_t grp, Py_ssize_t rows) noexcept nogil:
    """Input gradient of sample ``n``, group ``grp``: ``col2im(W_g^T @ GY)``, one row tile at a time."""
    cdef real* xg = gx + (n * g.c_in + grp * g.cig) * g.hw
    cdef const real* gyg = gy + (n * g.c_out + grp * g.cog) * g.ohw
    cdef const real* wg = w + grp * g.cog * g.taps
    cdef Py_ssize_t tile, oy0, oy1, p
    cdef bint pw = pointwise(g)
    if not pw:
        memset(xg, 0, g.cig * g.hw * sizeof(real))
    for tile in range((g.oh + rows - 1) // rows):
        oy0 = tile * rows
        oy1 = min(oy0 + rows, g.oh)
        p = (oy1 - oy0) * g.ow
        # column-major: cols^T (p x taps) = GY^T (p x cog) @ W_g (cog x taps)
        if pw:
            gemm(c'N', c'T', <int>p, <int>g.taps, <int>g.cog, gyg + oy0 * g.ow, <int>g.ohw, wg,
                 <int>g.taps, <real>0, xg + oy0 * g.ow, <int>g.hw)
        else:
            gemm(c'N', c'T', <int>p, <int>g.taps, <int>g.cog, gyg + oy0 * g.ow, <int>g.ohw, wg,
                 <int>g.taps, <real>0, ws, <int>p)
            col2im_tile(ws, xg, g, g.cig, oy0, oy1)


cdef void grad_weight_tile(const real* gy, const real* x, real* acc, real* ws, Geo* g, Py_ssize_t n,
                           Py_ssize_t grp, Py_ssize_t oy0, Py_ssize_t oy1) noexcept nogil:
    """``acc[grp] += GY_tile @ cols^T`` for output rows ``[oy0, oy1)`` of sample ``n``."""
    cdef Py_ssize_t p = (oy1 - oy0) * g.ow
    cdef const real* xg = x + (n * g.c_in + grp * g.cig) * g.hw
    cdef const real* cols = ws
    cdef Py_ssize_t ld = p
    if pointwise(g):
        cols, ld = xg + oy0 * g.ow, g.hw
    else:
        im2col_tile(xg, ws, g, g.cig, oy0, oy1)
    # column-major: GW_g^T (taps x cog) += cols (taps x p) @ GY^T (p x cog)
    gemm(c'T', c'N', <int>g.taps, <int>g.cog, <int>p, cols, <int>ld,
         gy + (n * g.c_out + grp * g.cog) * g.ohw + oy0 * g.ow, <int>g.ohw, <real>1,
         acc + grp * g.cog * g.taps, <int>g.taps)


def conv2d_gemm(const real[:, :, :, ::1] x, const real[:, :, :, ::1] w, const real[::1] b,
                real[:, :, :, ::1] y, real[:, ::1] ws, tuple geo, Py_ssize_t rows, int nthreads):
    """``y = conv(x, w) + b`` with tiles of ``rows`` output rows; ``ws``: one row of
    ``taps * rows * ow`` per thread."""
    cdef Geo g = make_geo(geo)
    cdef Py_ssize_t tiles = (g.oh + rows - 1) // rows, t, n, grp, oy0
    cdef const real* bp = NULL if b is None else &b[0]
    if y.size == 0:
        return
    with nogil, parallel(num_threads=nthreads):
        for t in prange(g.n * g.groups * tiles, schedule="static"):
            n = t // (g.groups * tiles)
            grp = (t // tiles) % g.groups
            oy0 = (t % tiles) * rows
            forward_tile(&x[0, 0, 0, 0], &w[0, 0, 0, 0], bp, &y[0, 0, 0, 0], &ws[threadid(), 0], &g,
                         n, grp, oy0, min(oy0 + rows, g.oh))


def conv2d_grad_input_gemm(const real[:, :, :, ::1] gy, const real[:, :, :, ::1] w,
                           real[:, :, :, ::1] gx, real[:, ::1] ws, tuple geo, Py_ssize_t rows,
                           int nthreads):
    """``gx`` = input gradient; tasks are (sample, group) so no two threads add to one pixel."""
    cdef Geo g = make_geo(geo)
    cdef Py_ssize_t t
    if gx.size == 0:
        return
    if gy.size == 0:
        gx[...] = 0
        return
    with nogil, parallel(num_threads=nthreads):
        for t in prange(g.n * g.groups, schedule="static"):
            grad_input_sample(&gy[0, 0, 0, 0], &w[0, 0, 0, 0], &gx[0, 0, 0, 0], &ws[threadid(), 0], &g,
                              t // g.groups, t % g.groups, rows)


def conv2d_grad_weight_gemm(const real[:, :, :, ::1] gy, const real[:, :, :, ::1] x,
                            real[:, ::1] acc, real[:, ::1] ws, tuple geo, Py_ssize_t rows,
                            int nthreads):
    """Per-thread partial weight gradients into the zeroed ``acc (threads, w.size)``; the caller sums."""
    cdef Geo g = make_geo(geo)
    cdef Py_ssize_t tiles = (g.oh + rows - 1) // rows, t, n, grp, oy0
    if gy.size == 0:
        return
    with nogil, parallel(num_threads=nthreads):
        for t in prange(g.n * g.groups * tiles, schedule="static"):
            n = t // (g.groups * tiles)
            grp = (t // tiles) % g.groups
            oy0 = (t % tiles) * rows
            grad_weight_tile(&gy[0, 0, 0, 0], &x[0, 0, 0, 0], &acc[threadid(), 0], &ws[threadid(), 0],
                             &g, n, grp, oy0, min(oy0 + rows, g.oh))
