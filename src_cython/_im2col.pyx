# cython: language_level=3
"""im2col / col2im, and the convolutions built on them with a BLAS GEMM per (sample, group, row tile).

``cols[n, c, i, j, oy, ox] = x[n, c, oy*sh - pt + i*dh, ox*sw - pl + j*dw]`` (zero outside the input), so a
convolution is one matrix product per group, and col2im (the adjoint, accumulating) gives its input gradient.

The GEMM kernels unfold one tile of output pixels of one (sample, group) at a time into a per-thread
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
cdef void unfold_rect(real* xc, real* cols, Geo* g, Tap* t, Py_ssize_t ya, Py_ssize_t yb, Py_ssize_t xa,
                      Py_ssize_t xb, bint adjoint) noexcept nogil:
    """Tap ``t``'s columns for outputs ``[ya, yb) x [xa, xb)``, rows of ``xb - xa`` at ``cols``: copied
    from plane ``xc`` with zeros where the tap reads padding, or (``adjoint``) added back into it."""
    cdef Py_ssize_t width = xb - xa
    cdef Py_ssize_t ra = min(max(t.oy0, ya), yb), lo = min(max(t.ox0, xa), xb)
    cdef Py_ssize_t rb = max(min(t.oy1, yb), ra), hi = max(min(t.ox1, xb), lo)
    cdef real* src = xc + ra * g.sh * g.w + lo * g.sw + t.shift  # input of output (ra, lo)
    if adjoint:
        blk_scatter(src, g.sh * g.w, cols + (ra - ya) * width + lo - xa, width, <real>1, rb - ra, hi - lo,
                    g.sw)
        return
    fill(cols, <real>0, (ra - ya) * width)
    blk_copy(cols + (ra - ya) * width, width, src, g.sh * g.w, rb - ra, lo - xa, hi - xa, width, g.sw)
    fill(cols + (rb - ya) * width, <real>0, (yb - rb) * width)


cdef void unfold_tile(real* xg, real* cols, Geo* g, Py_ssize_t channels, Py_ssize_t p0, Py_ssize_t p1,
                      bint adjoint) noexcept nogil:
    """im2col of output pixels ``[p0, p1)`` (flat ``oy * ow + ox``) of ``channels`` planes at ``xg``:
    ``cols[(c, i, j), p - p0]``; with ``adjoint``, col2im: add ``cols`` back into the planes. A tile is
    cut into a partial first row, whole rows and a partial last row."""
    cdef Py_ssize_t n = p1 - p0, c, i, j, p, oy, xa, xb, rows
    cdef Tap t
    for c in range(channels):
        for i in range(g.kh):
            for j in range(g.kw):
                t = make_tap(g, i, j)
                p = p0
                while p < p1:
                    oy, xa = p // g.ow, p % g.ow
                    rows = (p1 - p) // g.ow if xa == 0 else 0
                    if rows > 0:
                        unfold_rect(xg + c * g.hw, cols + ((c * g.kh + i) * g.kw + j) * n + p - p0, g, &t,
                                    oy, oy + rows, 0, g.ow, adjoint)
                        p += rows * g.ow
                    else:
                        xb = min(g.ow, xa + p1 - p)
                        unfold_rect(xg + c * g.hw, cols + ((c * g.kh + i) * g.kw + j) * n + p - p0, g, &t,
                                    oy, oy + 1, xa, xb, adjoint)
                        p += xb - xa


def im2col(const real[:, :, :, ::1] x, real[:, :, :, :, :, ::1] cols,
           int sh, int sw, int pt, int pl, int dh, int dw):
    """Fill ``cols (N, C, kh, kw, oh, ow)`` from ``x (N, C, H, W)``."""
    cdef Geo g = make_geo((x.shape[0], x.shape[1], x.shape[2], x.shape[3], x.shape[1], cols.shape[2],
                           cols.shape[3], cols.shape[4], cols.shape[5], sh, sw, pt, pl, dh, dw, 1))
    cdef Py_ssize_t n
    if cols.size == 0:
        return
    for n in prange(g.n, nogil=True, schedule="static"):
        unfold_tile(<real*>&x[n, 0, 0, 0], &cols[n, 0, 0, 0, 0, 0], &g, g.c_in, 0, g.ohw, False)


def col2im(const real[:, :, :, :, :, ::1] cols, real[:, :, :, ::1] x,
           int sh, int sw, int pt, int pl, int dh, int dw):
    """Add every column entry back to the input pixel it came from (``x`` must start zeroed)."""
    cdef Geo g = make_geo((x.shape[0], x.shape[1], x.shape[2], x.shape[3], x.shape[1], cols.shape[2],
                           cols.shape[3], cols.shape[4], cols.shape[5], sh, sw, pt, pl, dh, dw, 1))
    cdef Py_ssize_t n
    if cols.size == 0:
        return
    for n in prange(g.n, nogil=True, schedule="static"):
        unfold_tile(&x[n, 0, 0, 0], <real*>&cols[n, 0, 0, 0, 0, 0], &g, g.c_in, 0, g.ohw, True)


# ------------------------------------------------------------------- convolution as GEMM
cdef inline bint pointwise(Geo* g) noexcept nogil:
    """1x1, stride 1, unpadded: the columns are the input planes (no unfolding)."""
    return (g.kh == 1 and g.kw == 1 and g.sh == 1 and g.sw == 1 and g.pt == 0 and g.pl == 0
            and g.oh == g.h and g.ow == g.w)


cdef void forward_tile(const real* x, const real* w, const real* b, real* y, real* ws, Geo* g,
                       Py_ssize_t n, Py_ssize_t grp, Py_ssize_t p0, Py_ssize_t p1) noexcept nogil:
    """Output pixels ``[p0, p1)`` of sample ``n``, group ``grp``: ``Y = W_g @ cols``."""
    cdef Py_ssize_t p = p1 - p0, o
    cdef const real* xg = x + (n * g.c_in + grp * g.cig) * g.hw
    cdef real* yt = y + (n * g.c_out + grp * g.cog) * g.ohw + p0
    cdef const real* cols = ws
    cdef Py_ssize_t ld = p
    if pointwise(g):
        cols, ld = xg + p0, g.hw
    else:
        unfold_tile(<real*>xg, ws, g, g.cig, p0, p1, False)
    if b != NULL:
        for o in range(g.cog):
            fill(yt + o * g.ohw, b[grp * g.cog + o], p)
    # column-major: Y^T (p x cog) = cols^T (p x taps) @ W_g^T (taps x cog)
    gemm(c'N', c'N', <int>p, <int>g.cog, <int>g.taps, cols, <int>ld, w + grp * g.cog * g.taps,
         <int>g.taps, <real>(1 if b != NULL else 0), yt, <int>g.ohw)


cdef void grad_input_sample(const real* gy, const real* w, real* gx, real* ws, Geo* g, Py_ssize_t n,
                            Py_ssize_t grp, Py_ssize_t pix) noexcept nogil:
    """Input gradient of sample ``n``, group ``grp``: ``col2im(W_g^T @ GY)``, ``pix`` outputs at a time."""
    cdef real* xg = gx + (n * g.c_in + grp * g.cig) * g.hw
    cdef const real* gyg = gy + (n * g.c_out + grp * g.cog) * g.ohw
    cdef const real* wg = w + grp * g.cog * g.taps
    cdef Py_ssize_t tile, p0, p1
    cdef bint pw = pointwise(g)
    if not pw:
        memset(xg, 0, g.cig * g.hw * sizeof(real))
    for tile in range((g.ohw + pix - 1) // pix):
        p0 = tile * pix
        p1 = min(p0 + pix, g.ohw)
        # column-major: cols^T (p x taps) = GY^T (p x cog) @ W_g (cog x taps)
        if pw:
            gemm(c'N', c'T', <int>(p1 - p0), <int>g.taps, <int>g.cog, gyg + p0, <int>g.ohw, wg, <int>g.taps,
                 <real>0, xg + p0, <int>g.hw)
        else:
            gemm(c'N', c'T', <int>(p1 - p0), <int>g.taps, <int>g.cog, gyg + p0, <int>g.ohw, wg, <int>g.taps,
                 <real>0, ws, <int>(p1 - p0))
            unfold_tile(xg, ws, g, g.cig, p0, p1, True)


cdef void grad_weight_tile(const real* gy, const real* x, real* acc, real* ws, Geo* g, Py_ssize_t n,
                           Py_ssize_t grp, Py_ssize_t p0, Py_ssize_t p1) noexcept nogil:
    """``acc[grp] += GY_tile @ cols^T`` for output pixels ``[p0, p1)`` of sample ``n``."""
    cdef Py_ssize_t p = p1 - p0
    cdef const real* xg = x + (n * g.c_in + grp * g.cig) * g.hw
    cdef const real* cols = ws
    cdef Py_ssize_t ld = p
    if pointwise(g):
        cols, ld = xg + p0, g.hw
    else:
        unfold_tile(<real*>xg, ws, g, g.cig, p0, p1, False)
    # column-major: GW_g^T (taps x cog) += cols (taps x p) @ GY^T (p x cog)
    gemm(c'T', c'N', <int>g.taps, <int>g.cog, <int>p, cols, <int>ld,
         gy + (n * g.c_out + grp * g.cog) * g.ohw + p0, <int>g.ohw, <real>1, acc + grp * g.cog * g.taps,
         <int>g.taps)


def conv2d_gemm(const real[:, :, :, ::1] x, const real[:, :, :, ::1] w, const real[::1] b,
                real[:, :, :, ::1] y, real[:, ::1] ws, tuple geo, Py_ssize_t pix, int nthreads):
    """``y = conv(x, w) + b``, ``pix`` output pixels per tile; ``ws``: ``taps * pix`` per thread."""
    cdef Geo g = make_geo(geo)
    cdef Py_ssize_t tiles = (g.ohw + pix - 1) // pix, t, n, grp, p0
    cdef const real* bp = NULL
    if y.size == 0:
        return
    if b is not None:
        bp = &b[0]
    with nogil, parallel(num_threads=nthreads):
        for t in prange(g.n * g.groups * tiles, schedule="static"):
            n = t // (g.groups * tiles)
            grp = (t // tiles) % g.groups
            p0 = (t % tiles) * pix
            forward_tile(&x[0, 0, 0, 0], &w[0, 0, 0, 0], bp, &y[0, 0, 0, 0], &ws[threadid(), 0], &g,
                         n, grp, p0, min(p0 + pix, g.ohw))


def conv2d_grad_input_gemm(const real[:, :, :, ::1] gy, const real[:, :, :, ::1] w,
                           real[:, :, :, ::1] gx, real[:, ::1] ws, tuple geo, Py_ssize_t pix,
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
                              t // g.groups, t % g.groups, pix)


def conv2d_grad_weight_gemm(const real[:, :, :, ::1] gy, const real[:, :, :, ::1] x,
                            real[:, ::1] acc, real[:, ::1] ws, tuple geo, Py_ssize_t pix,
                            int nthreads):
    """Per-thread partial weight gradients into the zeroed ``acc (threads, w.size)``; the caller sums."""
    cdef Geo g = make_geo(geo)
    cdef Py_ssize_t tiles = (g.ohw + pix - 1) // pix, t, n, grp, p0
    if gy.size == 0:
        return
    with nogil, parallel(num_threads=nthreads):
        for t in prange(g.n * g.groups * tiles, schedule="static"):
            n = t // (g.groups * tiles)
            grp = (t // tiles) % g.groups
            p0 = (t % tiles) * pix
            grad_weight_tile(&gy[0, 0, 0, 0], &x[0, 0, 0, 0], &acc[threadid(), 0], &ws[threadid(), 0],
                             &g, n, grp, p0, min(p0 + pix, g.ohw))
