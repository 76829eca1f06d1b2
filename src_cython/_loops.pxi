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
# Written in C so that their pointers are ``restrict`` and they stay out of line: inlined into the
# large OpenMP-outlined kernels (built with -fno-strict-aliasing), their loops would reload pointers
# and spill registers on every element. The dot product keeps 16 partial sums so that it vectorises.
cdef extern from *:
    """
    #if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
    #define FC_ROW static __attribute__((noinline, target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
    #elif defined(__GNUC__)
    #define FC_ROW static __attribute__((noinline))
    #else
    #define FC_ROW static
    #endif
    #define FC_ROW_OPS(T, S) \
    FC_ROW void fc_gather_axpy_##S(T *restrict y, const T *restrict x, T a, Py_ssize_t n, Py_ssize_t sx) { \
        if (sx == 1) { for (Py_ssize_t k = 0; k < n; k++) y[k] += a * x[k]; } \
        else { for (Py_ssize_t k = 0; k < n; k++) y[k] += a * x[k * sx]; } } \
    FC_ROW void fc_scatter_axpy_##S(T *restrict x, const T *restrict y, T a, Py_ssize_t n, Py_ssize_t sx) { \
        if (sx == 1) { for (Py_ssize_t k = 0; k < n; k++) x[k] += a * y[k]; } \
        else { for (Py_ssize_t k = 0; k < n; k++) x[k * sx] += a * y[k]; } } \
    FC_ROW T fc_dot_##S(const T *restrict y, const T *restrict x, Py_ssize_t n, Py_ssize_t sx) { \
        T part[16] = {0}, acc = 0; Py_ssize_t k = 0; \
        if (sx == 1) { for (; k + 16 <= n; k += 16) for (int l = 0; l < 16; l++) part[l] += y[k + l] * x[k + l]; } \
        for (; k < n; k++) acc += y[k] * x[k * sx]; \
        for (int l = 0; l < 16; l++) acc += part[l]; \
        return acc; } \
    FC_ROW void fc_gather_##S(T *restrict y, const T *restrict x, Py_ssize_t n, Py_ssize_t sx) { \
        if (sx == 1) { for (Py_ssize_t k = 0; k < n; k++) y[k] = x[k]; } \
        else { for (Py_ssize_t k = 0; k < n; k++) y[k] = x[k * sx]; } } \
    FC_ROW void fc_fill_##S(T *restrict y, T v, Py_ssize_t n) { \
        for (Py_ssize_t k = 0; k < n; k++) y[k] = v; }
    FC_ROW_OPS(float, f)
    FC_ROW_OPS(double, d)
    """
    void fc_gather_axpy_f(float*, const float*, float, Py_ssize_t, Py_ssize_t) noexcept nogil
    void fc_gather_axpy_d(double*, const double*, double, Py_ssize_t, Py_ssize_t) noexcept nogil
    void fc_scatter_axpy_f(float*, const float*, float, Py_ssize_t, Py_ssize_t) noexcept nogil
    void fc_scatter_axpy_d(double*, const double*, double, Py_ssize_t, Py_ssize_t) noexcept nogil
    float fc_dot_f(const float*, const float*, Py_ssize_t, Py_ssize_t) noexcept nogil
    double fc_dot_d(const double*, const double*, Py_ssize_t, Py_ssize_t) noexcept nogil
    void fc_gather_f(float*, const float*, Py_ssize_t, Py_ssize_t) noexcept nogil
    void fc_gather_d(double*, const double*, Py_ssize_t, Py_ssize_t) noexcept nogil
    void fc_fill_f(float*, float, Py_ssize_t) noexcept nogil
    void fc_fill_d(double*, double, Py_ssize_t) noexcept nogil


cdef inline void row_gather_axpy(real* y, const real* x, real a, Py_ssize_t n,
                                 Py_ssize_t sx) noexcept nogil:
    """``y[k] += a * x[k*sx]``: a tap's contribution to an output row (forward)."""
    if real is float:
        fc_gather_axpy_f(y, x, a, n, sx)
    else:
        fc_gather_axpy_d(y, x, a, n, sx)


cdef inline void row_scatter_axpy(real* x, const real* y, real a, Py_ssize_t n,
                                  Py_ssize_t sx) noexcept nogil:
    """``x[k*sx] += a * y[k]``: the adjoint of :func:`row_gather_axpy` (input gradient)."""
    if real is float:
        fc_scatter_axpy_f(x, y, a, n, sx)
    else:
        fc_scatter_axpy_d(x, y, a, n, sx)


cdef inline real row_dot(const real* y, const real* x, Py_ssize_t n, Py_ssize_t sx) noexcept nogil:
    """``sum_k y[k] * x[k*sx]`` (weight gradient)."""
    if real is float:
        return fc_dot_f(y, x, n, sx)
    else:
        return fc_dot_d(y, x, n, sx)


cdef inline void row_gather(real* y, const real* x, Py_ssize_t n, Py_ssize_t sx) noexcept nogil:
    """``y[k] = x[k*sx]`` (im2col)."""
    if real is float:
        fc_gather_f(y, x, n, sx)
    else:
        fc_gather_d(y, x, n, sx)


cdef inline void row_fill(real* y, real v, Py_ssize_t n) noexcept nogil:
    if real is float:
        fc_fill_f(y, v, n)
    else:
        fc_fill_d(y, v, n)


# ------------------------------------------------------------------------ padded planes
# A stride-1 kernel tap shifts a whole zero-padded plane: with the input padded to ``hp x wp`` and the
# output laid out on rows of ``wp`` ("wide"), every tap is one long row op at offset ``i*dh*wp + j*dw``
# instead of one short row op per output row. The ``wp - ow`` extra columns of a wide output are junk.
cdef inline void pad_plane(const real* src, real* dst, Py_ssize_t h, Py_ssize_t w, Py_ssize_t hp,
                           Py_ssize_t wp, Py_ssize_t top, Py_ssize_t left) noexcept nogil:
    """``dst (hp x wp)``: ``src (h x w)`` placed at ``(top, left)``, zeros around it."""
    cdef Py_ssize_t r
    cdef real* d
    row_fill(dst, <real>0, top * wp)
    for r in range(h):
        d = dst + (top + r) * wp
        row_fill(d, <real>0, left)
        row_gather(d + left, src + r * w, w, 1)
        row_fill(d + left + w, <real>0, wp - left - w)
    row_fill(dst + (top + h) * wp, <real>0, (hp - top - h) * wp)


cdef inline void crop_plane(const real* src, real* dst, Py_ssize_t h, Py_ssize_t w, Py_ssize_t wp,
                            Py_ssize_t top, Py_ssize_t left) noexcept nogil:
    """``dst (h x w)`` = the block of ``src`` (rows of ``wp``) at ``(top, left)``."""
    cdef Py_ssize_t r
    for r in range(h):
        row_gather(dst + r * w, src + (top + r) * wp + left, w, 1)
