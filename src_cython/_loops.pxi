# The one description of a convolution / pooling loop nest, shared by every Cython kernel (included
# textually by _im2col.pyx, _conv.pyx and _pool.pyx, so the helpers inline into each module).
#
# ``Geo`` mirrors the fields of fastconv.shapes.ConvSpec / PoolSpec. Every kernel walks the same nest:
# for each kernel tap (i, j) (``make_tap``), input pixel ``(oy*sh - pt + i*dh, ox*sw - pl + j*dw)`` feeds
# output ``(oy, ox)``; the tap holds the outputs for which that pixel lies inside the input, so no kernel
# tests bounds per pixel, and the ``row_*`` helpers are the inner loops over one output row.

ctypedef fused real:
    float
    double


cdef struct Geo:
    Py_ssize_t n, c_in, h, w, c_out, kh, kw, oh, ow
    Py_ssize_t sh, sw, pt, pl, dh, dw, groups
    Py_ssize_t cig, cog      # channels per group, in and out
    Py_ssize_t hw, ohw       # plane sizes
    Py_ssize_t taps          # cig * kh * kw: one output's reduction length (a weight row)


cdef inline Geo make_geo(tuple t):
    """Geo from the tuple ``geo(spec)`` of the Python wrapper builds:
    (n, c_in, h, w, c_out, kh, kw, oh, ow, sh, sw, pt, pl, dh, dw, groups)."""
    cdef Geo g
    (g.n, g.c_in, g.h, g.w, g.c_out, g.kh, g.kw, g.oh, g.ow,
     g.sh, g.sw, g.pt, g.pl, g.dh, g.dw, g.groups) = t
    g.cig = g.c_in // g.groups
    g.cog = g.c_out // g.groups
    g.hw = g.h * g.w
    g.ohw = g.oh * g.ow
    g.taps = g.cig * g.kh * g.kw
    return g


cdef inline (Py_ssize_t, Py_ssize_t) tap_range(Py_ssize_t out, Py_ssize_t size, Py_ssize_t stride,
                                               Py_ssize_t offset) noexcept nogil:
    """Outputs ``[lo, hi)`` whose input index ``o*stride + offset`` lies in ``[0, size)``."""
    cdef Py_ssize_t lo = 0, hi = 0
    if offset < 0:
        lo = (-offset + stride - 1) // stride
    if size - 1 - offset >= 0:
        hi = (size - 1 - offset) // stride + 1
    if hi > out:
        hi = out
    if lo > hi:
        lo = hi
    return lo, hi


cdef struct Tap:
    # One kernel tap (i, j): the outputs [oy0, oy1) x [ox0, ox1) whose input pixel lies inside the
    # input, and ``shift`` such that output (oy, ox) reads plane offset ``oy*sh*w + ox*sw + shift``
    # (that offset is also the flat ``row * W + col`` index max pooling returns).
    Py_ssize_t oy0, oy1, ox0, ox1, shift


cdef inline Tap make_tap(Geo* g, Py_ssize_t i, Py_ssize_t j) noexcept nogil:
    cdef Tap t
    cdef Py_ssize_t ry = i * g.dh - g.pt, rx = j * g.dw - g.pl
    t.oy0, t.oy1 = tap_range(g.oh, g.h, g.sh, ry)
    t.ox0, t.ox1 = tap_range(g.ow, g.w, g.sw, rx)
    t.shift = ry * g.w + rx
    return t


cdef inline Py_ssize_t tap_in(Geo* g, Tap* t, Py_ssize_t oy) noexcept nogil:
    """Plane offset of the input pixel that output ``(oy, t.ox0)`` reads through tap ``t``."""
    return oy * g.sh * g.w + t.ox0 * g.sw + t.shift


# ------------------------------------------------------------------ inner loops over one row
cdef inline void row_gather_axpy(real* y, const real* x, real a, Py_ssize_t n,
                                 Py_ssize_t sx) noexcept nogil:
    """``y[k] += a * x[k*sx]``: a tap's contribution to an output row (forward)."""
    cdef Py_ssize_t k
    if sx == 1:
        for k in range(n):
            y[k] += a * x[k]
    else:
        for k in range(n):
            y[k] += a * x[k * sx]


cdef inline void row_scatter_axpy(real* x, const real* y, real a, Py_ssize_t n,
                                  Py_ssize_t sx) noexcept nogil:
    """``x[k*sx] += a * y[k]``: the adjoint of :func:`row_gather_axpy` (input gradient)."""
    cdef Py_ssize_t k
    if sx == 1:
        for k in range(n):
            x[k] += a * y[k]
    else:
        for k in range(n):
            x[k * sx] += a * y[k]


cdef inline real row_dot(const real* y, const real* x, Py_ssize_t n, Py_ssize_t sx) noexcept nogil:
    """``sum_k y[k] * x[k*sx]`` (weight gradient)."""
    cdef Py_ssize_t k
    cdef real acc = 0
    if sx == 1:
        for k in range(n):
            acc = acc + y[k] * x[k]
    else:
        for k in range(n):
            acc = acc + y[k] * x[k * sx]
    return acc


cdef inline void row_gather(real* y, const real* x, Py_ssize_t n, Py_ssize_t sx) noexcept nogil:
    """``y[k] = x[k*sx]`` (im2col)."""
    cdef Py_ssize_t k
    if sx == 1:
        for k in range(n):
            y[k] = x[k]
    else:
        for k in range(n):
            y[k] = x[k * sx]


cdef inline void row_fill(real* y, real v, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t k
    for k in range(n):
        y[k] = v
