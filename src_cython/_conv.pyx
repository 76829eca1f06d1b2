# cython: language_level=3
"""Direct convolution loops: the forward pass and both gradients, without unfolding.

Chosen for few channels per group (depthwise, LeNet's first layer, 1-D signals), where a GEMM would be
too thin to pay for the unfolding. Each kernel walks the taps of ``_loops.pxi``, and parallelises over
what it writes, so no two threads add to one element:

- forward: output planes ``(n, oc)``, ``y += w[oc, c, i, j] * x`` row by row;
- input gradient: input planes ``(n, ic)``, the adjoint scatter ``gx += w * gy``;
- weight gradient: weight planes ``(oc, c)``, one dot product per tap summed over the batch.
"""
from cython.parallel cimport prange

include "_loops.pxi"


cdef void forward_plane(const real* x, const real* w, const real* b, real* y, Geo* g, Py_ssize_t n,
                        Py_ssize_t oc) noexcept nogil:
    cdef const real* xg = x + (n * g.c_in + (oc // g.cog) * g.cig) * g.hw
    cdef const real* wo = w + oc * g.taps
    cdef real* yp = y + (n * g.c_out + oc) * g.ohw
    cdef Py_ssize_t c, i, j, oy
    cdef Tap t
    row_fill(yp, b[oc] if b != NULL else <real>0, g.ohw)
    for c in range(g.cig):
        for i in range(g.kh):
            for j in range(g.kw):
                t = make_tap(g, i, j)
                for oy in range(t.oy0, t.oy1):
                    row_gather_axpy(yp + oy * g.ow + t.ox0, xg + c * g.hw + tap_in(g, &t, oy),
                                    wo[(c * g.kh + i) * g.kw + j], t.ox1 - t.ox0, g.sw)


cdef void grad_input_plane(const real* gy, const real* w, real* gx, Geo* g, Py_ssize_t n,
                           Py_ssize_t ic) noexcept nogil:
    cdef Py_ssize_t grp = ic // g.cig, c = ic % g.cig, o, oc, i, j, oy
    cdef real* gxp = gx + (n * g.c_in + ic) * g.hw
    cdef const real* gyp
    cdef const real* wc
    cdef Tap t
    row_fill(gxp, <real>0, g.hw)
    for o in range(g.cog):
        oc = grp * g.cog + o
        gyp = gy + (n * g.c_out + oc) * g.ohw
        wc = w + oc * g.taps + c * g.kh * g.kw
        for i in range(g.kh):
            for j in range(g.kw):
                t = make_tap(g, i, j)
                for oy in range(t.oy0, t.oy1):
                    row_scatter_axpy(gxp + tap_in(g, &t, oy), gyp + oy * g.ow + t.ox0, wc[i * g.kw + j],
                                     t.ox1 - t.ox0, g.sw)


cdef void grad_weight_plane(const real* gy, const real* x, real* gw, Geo* g, Py_ssize_t oc,
                            Py_ssize_t c) noexcept nogil:
    cdef Py_ssize_t ic = (oc // g.cog) * g.cig + c, n, i, j, oy
    cdef double acc  # float32 sums over the whole batch keep their precision in double
    cdef Tap t
    for i in range(g.kh):
        for j in range(g.kw):
            t = make_tap(g, i, j)
            acc = 0
            for n in range(g.n):
                for oy in range(t.oy0, t.oy1):
                    acc += row_dot(gy + (n * g.c_out + oc) * g.ohw + oy * g.ow + t.ox0,
                                   x + (n * g.c_in + ic) * g.hw + tap_in(g, &t, oy), t.ox1 - t.ox0, g.sw)
            gw[(oc * g.cig + c) * g.kh * g.kw + i * g.kw + j] = <real>acc


def conv2d(const real[:, :, :, ::1] x, const real[:, :, :, ::1] w, const real[::1] b,
           real[:, :, :, ::1] y, tuple geo):
    """``y = conv(x, w) + b`` (``b`` may be None)."""
    cdef Geo g = make_geo(geo)
    cdef const real* bp = NULL if b is None else &b[0]
    cdef Py_ssize_t t
    if y.size == 0:
        return
    for t in prange(g.n * g.c_out, nogil=True, schedule="static"):
        forward_plane(&x[0, 0, 0, 0], &w[0, 0, 0, 0], bp, &y[0, 0, 0, 0], &g, t // g.c_out, t % g.c_out)


def conv2d_grad_input(const real[:, :, :, ::1] gy, const real[:, :, :, ::1] w, real[:, :, :, ::1] gx,
                      tuple geo):
    cdef Geo g = make_geo(geo)
    cdef Py_ssize_t t
    if gx.size == 0:
        return
    for t in prange(g.n * g.c_in, nogil=True, schedule="static"):
        grad_input_plane(&gy[0, 0, 0, 0], &w[0, 0, 0, 0], &gx[0, 0, 0, 0], &g, t // g.c_in, t % g.c_in)


def conv2d_grad_weight(const real[:, :, :, ::1] gy, const real[:, :, :, ::1] x, real[:, :, :, ::1] gw,
                       tuple geo):
    cdef Geo g = make_geo(geo)
    cdef Py_ssize_t t
    if gw.size == 0:
        return
    if gy.size == 0:
        gw[...] = 0
        return
    for t in prange(g.c_out * g.cig, nogil=True, schedule="static"):
        grad_weight_plane(&gy[0, 0, 0, 0], &x[0, 0, 0, 0], &gw[0, 0, 0, 0], &g, t // g.cig, t % g.cig)
