# cython: language_level=3
"""im2col / col2im, and the convolutions built on them: a BLAS GEMM per (group, tile of outputs).

``cols[n, c, i, j, oy, ox] = x[n, c, oy*sh - pt + i*dh, ox*sw - pl + j*dw]`` (zero outside the input), so a
convolution is one matrix product per group, and col2im (the adjoint, accumulating) gives its input gradient.

The GEMM kernels unfold one tile of outputs of one group (pixels of a sample, or whole small samples)
at a time into a per-thread workspace (under a MiB, so it stays in cache) and multiply it with BLAS
``?gemm`` taken from ``scipy.linalg.cython_blas``. The parallel loop runs over tiles; the caller sets the BLAS to one thread
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


cdef void unfold_tile(real* xg, real* cols, Py_ssize_t ld, Geo* g, Py_ssize_t channels, Py_ssize_t p0,
                      Py_ssize_t p1, bint adjoint) noexcept nogil:
    """im2col of output pixels ``[p0, p1)`` (flat ``oy * ow + ox``) of ``channels`` planes at ``xg``:
    ``cols[(c, i, j) * ld + p - p0]``; with ``adjoint``, col2im: add ``cols`` back into the planes. A
    tile is cut into a partial first row, whole rows and a partial last row."""
    cdef Py_ssize_t c, i, j, p, oy, xa, xb, rows
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
                        unfold_rect(xg + c * g.hw, cols + ((c * g.kh + i) * g.kw + j) * ld + p - p0, g, &t,
                                    oy, oy + rows, 0, g.ow, adjoint)
                        p += rows * g.ow
                    else:
                        xb = min(g.ow, xa + p1 - p)
                        unfold_rect(xg + c * g.hw, cols + ((c * g.kh + i) * g.kw + j) * ld + p - p0, g, &t,
                                    oy, oy + 1, xa, xb, adjoint)
                        p += xb - xa


cdef inline Geo columns_geo(Py_ssize_t* xs, Py_ssize_t* cs, int sh, int sw, int pt, int pl, int dh, int dw):
    """The loop nest of ``im2col`` / ``col2im``: ``x (N, C, H, W)``, ``cols (N, C, kh, kw, oh, ow)``."""
    return make_geo((xs[0], xs[1], xs[2], xs[3], xs[1], cs[2], cs[3], cs[4], cs[5], sh, sw, pt, pl, dh, dw, 1))


def im2col(const real[:, :, :, ::1] x, real[:, :, :, :, :, ::1] cols,
           int sh, int sw, int pt, int pl, int dh, int dw):
    """Fill ``cols (N, C, kh, kw, oh, ow)`` from ``x (N, C, H, W)``."""
    cdef Geo g = columns_geo(x.shape, cols.shape, sh, sw, pt, pl, dh, dw)
    cdef Py_ssize_t n
    if cols.size == 0:
        return
    for n in prange(g.n, nogil=True, schedule="static"):
        unfold_tile(<real*>&x[n, 0, 0, 0], &cols[n, 0, 0, 0, 0, 0], g.ohw, &g, g.c_in, 0, g.ohw, False)


def col2im(const real[:, :, :, :, :, ::1] cols, real[:, :, :, ::1] x,
           int sh, int sw, int pt, int pl, int dh, int dw):
    """Add every column entry back to the input pixel it came from (``x`` must start zeroed)."""
    cdef Geo g = columns_geo(x.shape, cols.shape, sh, sw, pt, pl, dh, dw)
    cdef Py_ssize_t n
    if cols.size == 0:
        return
    for n in prange(g.n, nogil=True, schedule="static"):
        unfold_tile(&x[n, 0, 0, 0], <real*>&cols[n, 0, 0, 0, 0, 0], g.ohw, &g, g.c_in, 0, g.ohw, True)


# ------------------------------------------------------------------- convolution as GEMM
# A tile is a range ``[q0, q1)`` of one group's outputs flattened over (sample, pixel),
# ``q = n * oh * ow + p``: a few rows of a large plane, or several small planes (LeNet, 1-D signals)
# in one matrix product. Per thread, the workspace holds the tile's columns (``taps x Q``) and then
# ``cog x Q`` for output-gradient blocks that span samples.
cdef inline bint pointwise(Geo* g) noexcept nogil:
    """1x1, stride 1, unpadded: the columns are the input planes (no unfolding)."""
    return (g.kh == 1 and g.kw == 1 and g.sh == 1 and g.sw == 1 and g.pt == 0 and g.pl == 0
            and g.oh == g.h and g.ow == g.w)


cdef inline bint one_sample(Geo* g, Py_ssize_t q0, Py_ssize_t q1) noexcept nogil:
    return q0 // g.ohw == (q1 - 1) // g.ohw


cdef void unfold_signals(real* x, real* cols, Geo* g, Py_ssize_t grp, Py_ssize_t n0, Py_ssize_t n1,
                         bint adjoint) noexcept nogil:
    """:func:`unfold_samples` of whole samples ``[n0, n1)`` of one-row outputs (1-D signals): a tap's
    columns for all of them are one block, a sample per row."""
    cdef Py_ssize_t ld = (n1 - n0) * g.ow, c, i, j
    cdef Tap t
    cdef real* src
    cdef real* dst
    for c in range(g.cig):
        for i in range(g.kh):
            for j in range(g.kw):
                t = make_tap(g, i, j)
                dst = cols + ((c * g.kh + i) * g.kw + j) * ld
                src = x + (n0 * g.c_in + grp * g.cig + c) * g.hw + tap_in(g, &t, 0)
                if t.oy0 >= t.oy1:  # the tap reads padding rows only
                    if not adjoint:
                        fill(dst, <real>0, ld)
                elif adjoint:
                    blk_scatter(src, g.c_in * g.hw, dst + t.ox0, g.ow, <real>1, n1 - n0, t.ox1 - t.ox0, g.sw)
                else:
                    blk_copy(dst, g.ow, src, g.c_in * g.hw, n1 - n0, t.ox0, t.ox1, g.ow, g.sw)


cdef void unfold_samples(real* x, real* cols, Geo* g, Py_ssize_t grp, Py_ssize_t q0, Py_ssize_t q1,
                         bint adjoint) noexcept nogil:
    """:func:`unfold_tile` of tile ``[q0, q1)`` of group ``grp``, one sample's part at a time."""
    cdef Py_ssize_t q = q0, n, p0, p1
    if g.oh == 1 and q0 % g.ohw == 0 and q1 % g.ohw == 0:
        unfold_signals(x, cols, g, grp, q0 // g.ohw, q1 // g.ohw, adjoint)
        return
    while q < q1:
        n, p0 = q // g.ohw, q % g.ohw
        p1 = min(g.ohw, p0 + q1 - q)
        unfold_tile(x + (n * g.c_in + grp * g.cig) * g.hw, cols + q - q0, q1 - q0, g, g.cig, p0, p1, adjoint)
        q += p1 - p0


cdef void move_outputs(real* y, real* tile, Geo* g, Py_ssize_t grp, Py_ssize_t q0, Py_ssize_t q1,
                       bint to_tile) noexcept nogil:
    """Copy a group's output-shaped block between ``y`` (N, C_out, oh*ow) and ``tile`` (cog x Q)."""
    cdef Py_ssize_t q = q0, n, p0, p1
    cdef real* yp
    while q < q1:
        n, p0 = q // g.ohw, q % g.ohw
        p1 = min(g.ohw, p0 + q1 - q)
        yp = y + (n * g.c_out + grp * g.cog) * g.ohw + p0
        if to_tile:
            blk_copy(tile + q - q0, q1 - q0, yp, g.ohw, g.cog, 0, p1 - p0, p1 - p0, 1)
        else:
            blk_copy(yp, g.ohw, tile + q - q0, q1 - q0, g.cog, 0, p1 - p0, p1 - p0, 1)
        q += p1 - p0


cdef void forward_tile(const real* x, const real* w, const real* b, real* y, real* ws, Geo* g,
                       Py_ssize_t grp, Py_ssize_t q0, Py_ssize_t q1) noexcept nogil:
    """Outputs ``[q0, q1)`` of group ``grp``: ``Y = W_g @ cols``."""
    cdef Py_ssize_t m = q1 - q0, n = q0 // g.ohw, p0 = q0 % g.ohw, o
    cdef bint direct = one_sample(g, q0, q1)  # the tile's outputs are contiguous rows of y
    cdef real* cols = ws
    cdef real* out = y + (n * g.c_out + grp * g.cog) * g.ohw + p0 if direct else ws + g.taps * m
    cdef Py_ssize_t ldc = g.ohw if direct else m, ld = m
    if direct and pointwise(g):
        cols, ld = <real*>x + (n * g.c_in + grp * g.cig) * g.hw + p0, g.hw
    else:
        unfold_samples(<real*>x, cols, g, grp, q0, q1, False)
    if b != NULL:
        for o in range(g.cog):
            fill(out + o * ldc, b[grp * g.cog + o], m)
    # column-major: Y^T (m x cog) = cols^T (m x taps) @ W_g^T (taps x cog)
    gemm(c'N', c'N', <int>m, <int>g.cog, <int>g.taps, cols, <int>ld, w + grp * g.cog * g.taps,
         <int>g.taps, <real>(1 if b != NULL else 0), out, <int>ldc)
    if not direct:
        move_outputs(y, out, g, grp, q0, q1, False)


cdef void grad_weight_tile(const real* gy, const real* x, real* acc, real* ws, Geo* g, Py_ssize_t grp,
                           Py_ssize_t q0, Py_ssize_t q1) noexcept nogil:
    """``acc[grp] += GY_tile @ cols^T`` for outputs ``[q0, q1)`` of group ``grp``."""
    cdef Py_ssize_t m = q1 - q0, n = q0 // g.ohw, p0 = q0 % g.ohw
    cdef bint direct = one_sample(g, q0, q1)
    cdef real* cols = ws
    cdef real* gyt = <real*>gy + (n * g.c_out + grp * g.cog) * g.ohw + p0 if direct else ws + g.taps * m
    cdef Py_ssize_t ldg = g.ohw if direct else m, ld = m
    if direct and pointwise(g):
        cols, ld = <real*>x + (n * g.c_in + grp * g.cig) * g.hw + p0, g.hw
    else:
        unfold_samples(<real*>x, cols, g, grp, q0, q1, False)
    if not direct:
        move_outputs(<real*>gy, gyt, g, grp, q0, q1, True)
    # column-major: GW_g^T (taps x cog) += cols (taps x m) @ GY^T (m x cog)
    gemm(c'T', c'N', <int>g.taps, <int>g.cog, <int>m, cols, <int>ld, gyt, <int>ldg, <real>1,
         acc + grp * g.cog * g.taps, <int>g.taps)


cdef void grad_input_task(const real* gy, const real* w, real* gx, real* ws, Geo* g, Py_ssize_t grp,
                          Py_ssize_t n0, Py_ssize_t n1, Py_ssize_t tile) noexcept nogil:
    """Input gradient of samples ``[n0, n1)``, group ``grp``: ``col2im(W_g^T @ GY)``, ``tile`` outputs
    at a time. Tasks own whole samples, so no two threads add to one pixel."""
    cdef Py_ssize_t q0, q1, m, n, p0
    cdef bint direct
    cdef real* gyt
    cdef const real* wg = w + grp * g.cog * g.taps
    if not (pointwise(g) and tile <= g.ohw):
        for n in range(n0, n1):
            fill(gx + (n * g.c_in + grp * g.cig) * g.hw, <real>0, g.cig * g.hw)
    q0 = n0 * g.ohw
    while q0 < n1 * g.ohw:
        q1 = min(q0 + tile, n1 * g.ohw)
        m, n, p0 = q1 - q0, q0 // g.ohw, q0 % g.ohw
        direct = one_sample(g, q0, q1)
        gyt = <real*>gy + (n * g.c_out + grp * g.cog) * g.ohw + p0 if direct else ws + g.taps * m
        if not direct:
            move_outputs(<real*>gy, gyt, g, grp, q0, q1, True)
        # column-major: cols^T (m x taps) = GY^T (m x cog) @ W_g (cog x taps)
        if direct and pointwise(g) and tile <= g.ohw:
            gemm(c'N', c'T', <int>m, <int>g.taps, <int>g.cog, gyt, <int>g.ohw, wg, <int>g.taps, <real>0,
                 gx + (n * g.c_in + grp * g.cig) * g.hw + p0, <int>g.hw)
        else:
            gemm(c'N', c'T', <int>m, <int>g.taps, <int>g.cog, gyt, <int>(g.ohw if direct else m), wg,
                 <int>g.taps, <real>0, ws, <int>m)
            unfold_samples(gx, ws, g, grp, q0, q1, True)
        q0 = q1


def conv2d_gemm(const real[:, :, :, ::1] x, const real[:, :, :, ::1] w, const real[::1] b,
                real[:, :, :, ::1] y, real[:, ::1] ws, tuple geo, Py_ssize_t tile, int nthreads):
    """``y = conv(x, w) + b``, ``tile`` outputs per matrix product; ``ws``: ``(taps + cog) * tile``
    per thread."""
    cdef Geo g = make_geo(geo)
    cdef Py_ssize_t total = g.n * g.ohw, tiles = (total + tile - 1) // tile, t, q0
    cdef const real* bp = NULL
    if y.size == 0:
        return
    if b is not None:
        bp = &b[0]
    with nogil, parallel(num_threads=nthreads):
        for t in prange(g.groups * tiles, schedule="static"):
            q0 = (t % tiles) * tile
            forward_tile(&x[0, 0, 0, 0], &w[0, 0, 0, 0], bp, &y[0, 0, 0, 0], &ws[threadid(), 0], &g,
                         t // tiles, q0, min(q0 + tile, total))


def conv2d_grad_input_gemm(const real[:, :, :, ::1] gy, const real[:, :, :, ::1] w,
                           real[:, :, :, ::1] gx, real[:, ::1] ws, tuple geo, Py_ssize_t tile,
                           int nthreads):
    """``gx`` = input gradient; a task is one group of ``max(1, tile // (oh*ow))`` samples."""
    cdef Geo g = make_geo(geo)
    cdef Py_ssize_t per = max(1, tile // g.ohw) if g.ohw > 0 else 1
    cdef Py_ssize_t tasks = (g.n + per - 1) // per, t, n0
    if gx.size == 0:
        return
    if gy.size == 0:
        gx[...] = 0
        return
    with nogil, parallel(num_threads=nthreads):
        for t in prange(g.groups * tasks, schedule="static"):
            n0 = (t % tasks) * per
            grad_input_task(&gy[0, 0, 0, 0], &w[0, 0, 0, 0], &gx[0, 0, 0, 0], &ws[threadid(), 0], &g,
                            t // tasks, n0, min(n0 + per, g.n), tile)


def conv2d_grad_weight_gemm(const real[:, :, :, ::1] gy, const real[:, :, :, ::1] x,
                            real[:, ::1] acc, real[:, ::1] ws, tuple geo, Py_ssize_t tile,
                            int nthreads):
    """Per-thread partial weight gradients into the zeroed ``acc (threads, w.size)``; the caller sums."""
    cdef Geo g = make_geo(geo)
    cdef Py_ssize_t total = g.n * g.ohw, tiles = (total + tile - 1) // tile, t, q0
    if gy.size == 0:
        return
    with nogil, parallel(num_threads=nthreads):
        for t in prange(g.groups * tiles, schedule="static"):
            q0 = (t % tiles) * tile
            grad_weight_tile(&gy[0, 0, 0, 0], &x[0, 0, 0, 0], &acc[threadid(), 0], &ws[threadid(), 0],
                             &g, t // tiles, q0, min(q0 + tile, total))
