# cython: language_level=3
"""Max / average pooling and their gradients, max unpooling (``scatter``, ``gather``): one parallel task
per (n, c) plane.

Pooling windows are convolution taps with one channel (``_loops.pxi``): the forward kernels visit the
taps in row-major window order and reduce into the output plane, the gradients scatter back through the
same taps (average) or through the recorded flat indices (max).
"""
from cython.parallel cimport parallel, prange, threadid
from libc.math cimport INFINITY
from libc.stdlib cimport free, malloc

include "_loops.pxi"


def geometry(tuple geo):
    """The ``Geo`` struct built from ``spec.geometry()``, as a dict (its fields in order): how the tests
    check the struct against ``fastconv.shapes.GEOMETRY``."""
    return make_geo(geo)


cdef void divide(const real* src, const real* divisors, real* dst, Py_ssize_t count) noexcept nogil:
    """``dst = src / divisors`` over one output plane (``PoolSpec.divisors``)."""
    cdef Py_ssize_t k
    for k in range(count):
        dst[k] = src[k] / divisors[k]


cdef inline bint windows_inside(Geo* g) noexcept nogil:
    """Whether every window lies inside the input (no padding reached, nothing past the edges)."""
    return (g.pt == 0 and g.pl == 0 and (g.oh - 1) * g.sh + (g.kh - 1) * g.dh < g.h
            and (g.ow - 1) * g.sw + (g.kw - 1) * g.dw < g.w)


# Output planes up to this many pixels go window by window (through a table of offsets); larger ones tap
# by tap. 2x2 stride-2 pooling, float32, 2 threads, ms (windows / taps): (128, 6, 28, 28) 0.12 / 0.73,
# (64, 64, 14, 14) 0.17 / 2.15, (8, 64, 56, 56) 0.35 / 0.91, (16, 128, 56, 56) 3.6 / 4.2; with 56x56
# outputs (3,136) (8, 64, 112, 112) 4.1 / 3.2, (8, 16, 112, 112) 0.35 / 0.37; (1, 64, 224, 224) 0.80 / 0.56.
cdef enum:
    WINDOW_TABLE_MAX = 2048


def max_pool2d(const real[:, :, :, ::1] x, real[:, :, :, ::1] y, int64_t[:, :, :, ::1] idx, tuple geo):
    """Max of every window and the flat index of its first maximum. Where every window lies inside the
    input, window by window over a table of the windows' and the taps' offsets; else tap by tap over
    blocks of outputs (no bounds tested per pixel either way)."""
    cdef Geo g = make_geo(geo)
    cdef Py_ssize_t p, i, j
    cdef Tap t
    cdef const real* xp
    cdef real* yp
    cdef int64_t* ip
    cdef int32_t* outs
    cdef int32_t* taps
    if y.size == 0:
        return
    if windows_inside(&g) and g.ohw <= WINDOW_TABLE_MAX and g.hw < 2 ** 31:
        outs = <int32_t*>malloc(g.ohw * sizeof(int32_t))
        taps = <int32_t*>malloc(g.kh * g.kw * sizeof(int32_t))
        if outs == NULL or taps == NULL:
            free(outs)
            free(taps)
            raise MemoryError()
        for i in range(g.oh):
            for j in range(g.ow):
                outs[i * g.ow + j] = <int32_t>(i * g.sh * g.w + j * g.sw)
        for i in range(g.kh):
            for j in range(g.kw):
                taps[i * g.kw + j] = <int32_t>(i * g.dh * g.w + j * g.dw)
        for p in prange(g.n * g.c_in, nogil=True, schedule="static"):
            blk_maxwin(&y[0, 0, 0, 0] + p * g.ohw, &idx[0, 0, 0, 0] + p * g.ohw, &x[0, 0, 0, 0] + p * g.hw,
                       outs, g.ohw, taps, g.kh * g.kw)
        free(outs)
        free(taps)
        return
    for p in prange(g.n * g.c_in, nogil=True, schedule="static"):
        xp = &x[0, 0, 0, 0] + p * g.hw
        yp = &y[0, 0, 0, 0] + p * g.ohw
        ip = &idx[0, 0, 0, 0] + p * g.ohw
        fill(yp, <real>-INFINITY, g.ohw)
        for i in range(g.ohw):
            ip[i] = -1
        for i in range(g.kh):
            for j in range(g.kw):
                t = make_tap(&g, i, j)
                blk_max(yp + tap_out(&g, &t, t.oy0), ip + tap_out(&g, &t, t.oy0), g.ow, xp,
                        tap_in(&g, &t, t.oy0), g.sh * g.w, t.oy1 - t.oy0, t.ox1 - t.ox0, g.sw)


def scatter(const real[:, :, :, ::1] values, const int64_t[:, :, :, ::1] idx, real[:, :, :, ::1] out,
            bint accumulate):
    """``out[n, c] = 0``, then ``out[n, c, idx[n, c, k]] += values[n, c, k]`` when ``accumulate``
    (max-pool gradient: overlapping windows share pixels), else ``= values[n, c, k]`` (max-unpool: a
    repeated index keeps the last)."""
    cdef Py_ssize_t planes = out.shape[0] * out.shape[1], hw = out.shape[2] * out.shape[3]
    cdef Py_ssize_t m = values.shape[2] * values.shape[3], p, k
    cdef real* op
    cdef const real* vp
    cdef const int64_t* ip
    if out.size == 0:
        return
    for p in prange(planes, nogil=True, schedule="static"):
        op = &out[0, 0, 0, 0] + p * hw
        vp = &values[0, 0, 0, 0] + p * m
        ip = &idx[0, 0, 0, 0] + p * m
        fill(op, <real>0, hw)
        if accumulate:
            for k in range(m):
                op[ip[k]] += vp[k]
        else:
            for k in range(m):
                op[ip[k]] = vp[k]


def avg_pool2d(const real[:, :, :, ::1] x, real[:, :, :, ::1] y, const real[:, ::1] divisors, tuple geo):
    """Window sums divided by ``divisors`` (``(oh, ow)``, from ``PoolSpec.divisors``)."""
    cdef Geo g = make_geo(geo)
    cdef Py_ssize_t p, i, j
    cdef Tap t
    cdef const real* xp
    cdef real* yp
    if y.size == 0:
        return
    for p in prange(g.n * g.c_in, nogil=True, schedule="static"):
        xp = &x[0, 0, 0, 0] + p * g.hw
        yp = &y[0, 0, 0, 0] + p * g.ohw
        fill(yp, <real>0, g.ohw)
        for i in range(g.kh):
            for j in range(g.kw):
                t = make_tap(&g, i, j)
                blk_axpy(yp + tap_out(&g, &t, t.oy0), g.ow, xp + tap_in(&g, &t, t.oy0), g.sh * g.w, <real>1,
                         t.oy1 - t.oy0, t.ox1 - t.ox0, g.sw)
        divide(yp, &divisors[0, 0], yp, g.ohw)


def avg_pool2d_grad(const real[:, :, :, ::1] gy, real[:, :, :, ::1] gx, real[:, ::1] ws,
                    const real[:, ::1] divisors, tuple geo):
    """``ws``: one output plane of scratch per thread (the divided gradient)."""
    cdef Geo g = make_geo(geo)
    cdef Py_ssize_t p, i, j
    cdef Tap t
    cdef real* gxp
    cdef real* s
    if gx.size == 0:
        return
    with nogil, parallel():
        for p in prange(g.n * g.c_in, schedule="static"):
            s = &ws[threadid(), 0]
            divide(&gy[0, 0, 0, 0] + p * g.ohw, &divisors[0, 0], s, g.ohw)
            gxp = &gx[0, 0, 0, 0] + p * g.hw
            fill(gxp, <real>0, g.hw)
            for i in range(g.kh):
                for j in range(g.kw):
                    t = make_tap(&g, i, j)
                    blk_scatter(gxp + tap_in(&g, &t, t.oy0), g.sh * g.w, s + tap_out(&g, &t, t.oy0), g.ow,
                                <real>1, t.oy1 - t.oy0, t.ox1 - t.ox0, g.sw)


def gather(const real[:, :, :, ::1] gy, const int64_t[:, :, :, ::1] idx, real[:, :, :, ::1] gx):
    """``gx[n, c, k] = gy[n, c, idx[n, c, k]]`` (max-unpool gradient)."""
    cdef Py_ssize_t planes = gx.shape[0] * gx.shape[1], hw = gy.shape[2] * gy.shape[3]
    cdef Py_ssize_t m = gx.shape[2] * gx.shape[3], p, k
    cdef const real* gyp
    cdef const int64_t* ip
    if gx.size == 0:
        return
    for p in prange(planes, nogil=True, schedule="static"):
        gyp = &gy[0, 0, 0, 0] + p * hw
        ip = &idx[0, 0, 0, 0] + p * m
        for k in range(m):
            (&gx[0, 0, 0, 0])[p * m + k] = gyp[ip[k]]
