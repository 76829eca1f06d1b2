# cython: language_level=3
"""Direct convolution loops: the forward pass and both gradients, without unfolding.

Chosen for depthwise-like convolutions (a channel or two per group), where a GEMM would be too thin to
pay for the unfolding. Each kernel walks the taps of ``_loops.pxi`` and parallelises over what it
writes, so no two threads add to one element:

- forward: output planes ``(n, oc)``, ``y += w[oc, c, i, j] * x`` over each tap's block of outputs;
- input gradient: input planes ``(n, ic)``, the adjoint scatter ``gx += w * gy``;
- weight gradient: weight planes ``(oc, c)``, one dot product per tap summed over the batch.

With stride 1 a tap is one long vector operation on the "wide" layout (``Wide`` below): the input
plane zero-padded into scratch, the output on rows of the padded width, cropped at the end.
"""
from cython.parallel cimport parallel, prange, threadid

include "_loops.pxi"


cdef struct Wide:
    # Padded-plane layout of a stride-1 convolution (see _loops.pxi): input planes padded to hp x wp,
    # outputs on rows of wp, ``span`` = (oh - 1) * wp + ow wide outputs per plane. A thread's scratch
    # holds its padded input plane (hp * wp elements) followed by its wide output plane (oh * wp) with
    # ``margin`` elements on either side (the largest tap offset: zeros for the input gradient's gather).
    Py_ssize_t hp, wp, span, margin


cdef inline bint use_wide(Geo* g) noexcept nogil:
    return g.sh == 1 and g.sw == 1


cdef inline Wide make_wide(Geo* g) noexcept nogil:
    cdef Wide v
    # the input may hold rows/columns no output reads (transposed convolution's output_padding)
    v.hp = max(g.oh + (g.kh - 1) * g.dh, g.pt + g.h)
    v.wp = max(g.ow + (g.kw - 1) * g.dw, g.pl + g.w)
    v.span = (g.oh - 1) * v.wp + g.ow
    v.margin = (g.kh - 1) * g.dh * v.wp + (g.kw - 1) * g.dw
    return v


cdef inline bint wide_scratch(Geo* g, real* ws, Wide* v, real** xpad, real** ywide) noexcept nogil:
    """For a stride-1 convolution, set the wide layout ``v`` and split the thread's scratch ``ws`` into the
    padded input plane ``xpad`` and the wide output plane ``ywide``; False (nothing set) otherwise."""
    if not use_wide(g):
        return False
    v[0] = make_wide(g)
    xpad[0], ywide[0] = ws, ws + v.hp * v.wp + v.margin
    return True


cdef inline Py_ssize_t wide_shift(Geo* g, Wide* v, Py_ssize_t i, Py_ssize_t j) noexcept nogil:
    return i * g.dh * v.wp + j * g.dw


cdef void forward_plane(const real* x, const real* w, const real* b, real* y, real* ws, Geo* g,
                        Py_ssize_t n, Py_ssize_t oc) noexcept nogil:
    cdef const real* xg = x + (n * g.c_in + (oc // g.cog) * g.cig) * g.hw
    cdef const real* wo = w + oc * g.taps
    cdef real* yp = y + (n * g.c_out + oc) * g.ohw
    cdef real bias = b[oc] if b != NULL else <real>0
    cdef Py_ssize_t c, i, j
    cdef Py_ssize_t off[9]
    cdef Tap t
    cdef Wide v
    cdef real* xpad
    cdef real* ywide
    if wide_scratch(g, ws, &v, &xpad, &ywide):
        if g.kh == 3 and g.kw == 3:  # the nine taps in one pass over the wide output
            for i in range(9):
                off[i] = wide_shift(g, &v, i // 3, i % 3)
            for c in range(g.cig):
                pad_plane(xg + c * g.hw, xpad, g.h, g.w, v.hp, v.wp, g.pt, g.pl)
                blk_axpy9(ywide, xpad, off, wo + c * 9, v.span, bias, c > 0)
            crop_plane(ywide, yp, g.oh, g.ow, v.wp, 0, 0)
            return
        fill(ywide, bias, v.span)
        for c in range(g.cig):
            pad_plane(xg + c * g.hw, xpad, g.h, g.w, v.hp, v.wp, g.pt, g.pl)
            for i in range(g.kh):
                for j in range(g.kw):
                    blk_axpy(ywide, 0, xpad + wide_shift(g, &v, i, j), 0, wo[(c * g.kh + i) * g.kw + j],
                             1, v.span, 1)
        crop_plane(ywide, yp, g.oh, g.ow, v.wp, 0, 0)
        return
    fill(yp, bias, g.ohw)
    for c in range(g.cig):
        for i in range(g.kh):
            for j in range(g.kw):
                t = make_tap(g, i, j)
                blk_axpy(yp + tap_out(g, &t, t.oy0), g.ow, xg + c * g.hw + tap_in(g, &t, t.oy0), g.sh * g.w,
                         wo[(c * g.kh + i) * g.kw + j], t.oy1 - t.oy0, t.ox1 - t.ox0, g.sw)


cdef void grad_input_plane(const real* gy, const real* w, real* gx, real* ws, Geo* g, Py_ssize_t n,
                           Py_ssize_t ic) noexcept nogil:
    cdef Py_ssize_t grp = ic // g.cig, c = ic % g.cig, o, oc, i, j
    cdef Py_ssize_t off[9]
    cdef real* gxp = gx + (n * g.c_in + ic) * g.hw
    cdef const real* gyp
    cdef const real* wc
    cdef Tap t
    cdef Wide v
    cdef real* xpad
    cdef real* ywide
    cdef bint wide = wide_scratch(g, ws, &v, &xpad, &ywide)
    if wide and g.kh == 3 and g.kw == 3 and v.hp == g.oh + 2 * g.dh and v.wp == g.ow + 2 * g.dw:
        # the adjoint of the forward's nine taps as a gather: gx_pad[q] = sum w[t] * gy_wide[q - off[t]],
        # one pass over the padded gradient (the wide plane's margins read as zeros)
        for i in range(9):
            off[i] = -wide_shift(g, &v, i // 3, i % 3)
        fill(ywide - v.margin, <real>0, v.margin)
        fill(ywide + g.oh * v.wp, <real>0, v.margin)
        for o in range(g.cog):
            oc = grp * g.cog + o
            pad_plane(gy + (n * g.c_out + oc) * g.ohw, ywide, g.oh, g.ow, g.oh, v.wp, 0, 0)
            blk_axpy9(xpad, ywide, off, w + oc * g.taps + c * 9, v.hp * v.wp, <real>0, o > 0)
        crop_plane(xpad, gxp, g.h, g.w, v.wp, g.pt, g.pl)
        return
    if wide:
        fill(xpad, <real>0, v.hp * v.wp)
    else:
        fill(gxp, <real>0, g.hw)
    for o in range(g.cog):
        oc = grp * g.cog + o
        gyp = gy + (n * g.c_out + oc) * g.ohw
        wc = w + oc * g.taps + c * g.kh * g.kw
        if wide:  # the adjoint of the wide forward: junk columns of the wide gradient are zero
            pad_plane(gyp, ywide, g.oh, g.ow, g.oh, v.wp, 0, 0)
        for i in range(g.kh):
            for j in range(g.kw):
                if wide:
                    blk_scatter(xpad + wide_shift(g, &v, i, j), 0, ywide, 0, wc[i * g.kw + j], 1, v.span, 1)
                    continue
                t = make_tap(g, i, j)
                blk_scatter(gxp + tap_in(g, &t, t.oy0), g.sh * g.w, gyp + tap_out(g, &t, t.oy0), g.ow,
                            wc[i * g.kw + j], t.oy1 - t.oy0, t.ox1 - t.ox0, g.sw)
    if wide:
        crop_plane(xpad, gxp, g.h, g.w, v.wp, g.pt, g.pl)


cdef void grad_weight_plane(const real* gy, const real* x, real* gw, double* acc, real* ws, Geo* g,
                            Py_ssize_t oc, Py_ssize_t c) noexcept nogil:
    """``gw[oc, c]``, summed over the batch in ``acc`` (``kh * kw`` doubles: float32 sums over the whole
    batch keep their precision); a sample's planes stay in cache while all taps read them."""
    cdef Py_ssize_t ic = (oc // g.cog) * g.cig + c, n, i, j
    cdef Py_ssize_t off[9]
    cdef const real* gyp
    cdef const real* xp
    cdef Tap t
    cdef Wide v
    cdef real* xpad
    cdef real* ywide
    cdef bint wide = wide_scratch(g, ws, &v, &xpad, &ywide)
    cdef bint nine = wide and g.kh == 3 and g.kw == 3  # the nine taps in one pass over the planes
    for i in range(g.kh * g.kw):
        acc[i] = 0
    if nine:
        for i in range(9):
            off[i] = wide_shift(g, &v, i // 3, i % 3)
    for n in range(g.n):
        gyp = gy + (n * g.c_out + oc) * g.ohw
        xp = x + (n * g.c_in + ic) * g.hw
        if wide:
            pad_plane(xp, xpad, g.h, g.w, v.hp, v.wp, g.pt, g.pl)
            pad_plane(gyp, ywide, g.oh, g.ow, g.oh, v.wp, 0, 0)
            if nine:
                blk_dot9(ywide, xpad, off, v.span, acc)
                continue
        for i in range(g.kh):
            for j in range(g.kw):
                if wide:
                    acc[i * g.kw + j] += blk_dot(ywide, 0, xpad + wide_shift(g, &v, i, j), 0, 1, v.span, 1)
                    continue
                t = make_tap(g, i, j)
                acc[i * g.kw + j] += blk_dot(gyp + tap_out(g, &t, t.oy0), g.ow, xp + tap_in(g, &t, t.oy0),
                                             g.sh * g.w, t.oy1 - t.oy0, t.ox1 - t.ox0, g.sw)
    for i in range(g.kh * g.kw):
        gw[(oc * g.cig + c) * g.kh * g.kw + i] = <real>acc[i]


def wide_size(tuple geo):
    """Scratch elements per thread the kernels below need (padded input + wide output plane)."""
    cdef Geo g = make_geo(geo)
    cdef Wide v = make_wide(&g)
    return (v.hp + g.oh) * v.wp + 2 * v.margin if use_wide(&g) else 1


def conv2d(const real[:, :, :, ::1] x, const real[:, :, :, ::1] w, const real[::1] b,
           real[:, :, :, ::1] y, real[:, ::1] ws, tuple geo):
    """``y = conv(x, w) + b`` (``b`` may be None); ``ws``: ``wide_size(geo)`` scratch per thread."""
    cdef Geo g = make_geo(geo)
    cdef const real* bp = NULL
    cdef Py_ssize_t t
    if y.size == 0:
        return
    if b is not None:
        bp = &b[0]
    with nogil, parallel():
        for t in prange(g.n * g.c_out, schedule="static"):
            forward_plane(&x[0, 0, 0, 0], &w[0, 0, 0, 0], bp, &y[0, 0, 0, 0], &ws[threadid(), 0], &g,
                          t // g.c_out, t % g.c_out)


def conv2d_grad_input(const real[:, :, :, ::1] gy, const real[:, :, :, ::1] w, real[:, :, :, ::1] gx,
                      real[:, ::1] ws, tuple geo):
    cdef Geo g = make_geo(geo)
    cdef Py_ssize_t t
    if gx.size == 0:
        return
    with nogil, parallel():
        for t in prange(g.n * g.c_in, schedule="static"):
            grad_input_plane(&gy[0, 0, 0, 0], &w[0, 0, 0, 0], &gx[0, 0, 0, 0], &ws[threadid(), 0], &g,
                             t // g.c_in, t % g.c_in)


def conv2d_grad_weight(const real[:, :, :, ::1] gy, const real[:, :, :, ::1] x, real[:, :, :, ::1] gw,
                       double[:, ::1] acc, real[:, ::1] ws, tuple geo):
    """``acc``: ``kh * kw`` doubles of scratch per thread."""
    cdef Geo g = make_geo(geo)
    cdef Py_ssize_t t
    if gw.size == 0:
        return
    if gy.size == 0:
        gw[...] = 0
        return
    with nogil, parallel():
        for t in prange(g.c_out * g.cig, schedule="static"):
            grad_weight_plane(&gy[0, 0, 0, 0], &x[0, 0, 0, 0], &gw[0, 0, 0, 0], &acc[threadid(), 0],
                              &ws[threadid(), 0], &g, t // g.cig, t % g.cig)
