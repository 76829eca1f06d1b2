# The one description of a convolution / pooling loop nest, shared by every Cython kernel (included
# textually by _im2col.pyx, _conv.pyx and _pool.pyx, so the helpers inline into each module).
#
# ``Geo`` holds fastconv.shapes.GEOMETRY (``spec.geometry()``) in its order, then derived sizes (checked
# by tests/test_shapes.py through ``_pool.geometry``). Every kernel walks the same nest:
# for each kernel tap (i, j) (``make_tap``), input pixel ``(oy*sh - pt + i*dh, ox*sw - pl + j*dw)`` feeds
# output ``(oy, ox)``; the tap holds the block of outputs for which that pixel lies inside the input, so
# no kernel tests bounds per pixel, and one ``blk_*`` call does the tap's work over its whole block.

from libc.stdint cimport int32_t, int64_t

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
    """Geo from ``spec.geometry()``: (n, c_in, h, w, c_out, kh, kw, oh, ow, sh, sw, pt, pl, dh, dw, groups)."""
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


cdef inline Py_ssize_t tap_out(Geo* g, Tap* t, Py_ssize_t oy) noexcept nogil:
    """Plane offset of output ``(oy, t.ox0)``."""
    return oy * g.ow + t.ox0


# ------------------------------------------------------------------------ block loops
# The inner loops: one call covers a block of ``rows`` rows of ``n`` elements; ``ys``/``xs`` are the row
# strides, ``sx`` the element stride on the strided (input) side. Written in C so that their pointers
# are ``restrict`` and they stay out of line: inlined into the large OpenMP-outlined kernels (built with
# -fno-strict-aliasing), their loops would reload pointers and spill registers on every element.
# GCC on x86-64 Linux also clones them for AVX2 and AVX-512, picked at load time. The dot product keeps
# 16 partial sums so that it vectorises; copies stay loops (short rows would pay for memcpy calls).
cdef extern from *:
    """
    #if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
    #define FC_BLK static __attribute__((noinline, unused, \
        target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"), \
        optimize("no-tree-loop-distribute-patterns")))
    #elif defined(__GNUC__)
    #define FC_BLK static __attribute__((noinline, unused))
    #else
    #define FC_BLK static
    #endif
    #if defined(_MSC_VER)
    #define restrict __restrict
    #endif
    #define FC_ROWS for (Py_ssize_t r = 0; r < rows; r++, y += ys, x += xs)
    #define FC_BLOCK_OPS(T, S) \
    FC_BLK void fc_axpy_##S(T *restrict y, Py_ssize_t ys, const T *restrict x, Py_ssize_t xs, T a, \
                            Py_ssize_t rows, Py_ssize_t n, Py_ssize_t sx) { \
        if (sx == 1) { FC_ROWS for (Py_ssize_t k = 0; k < n; k++) y[k] += a * x[k]; } \
        else { FC_ROWS for (Py_ssize_t k = 0; k < n; k++) y[k] += a * x[k * sx]; } } \
    FC_BLK void fc_scatter_##S(T *restrict x, Py_ssize_t xs, const T *restrict y, Py_ssize_t ys, T a, \
                               Py_ssize_t rows, Py_ssize_t n, Py_ssize_t sx) { \
        if (sx == 1) { FC_ROWS for (Py_ssize_t k = 0; k < n; k++) x[k] += a * y[k]; } \
        else { FC_ROWS for (Py_ssize_t k = 0; k < n; k++) x[k * sx] += a * y[k]; } } \
    FC_BLK double fc_dot_##S(const T *restrict y, Py_ssize_t ys, const T *restrict x, Py_ssize_t xs, \
                             Py_ssize_t rows, Py_ssize_t n, Py_ssize_t sx) { \
        double total = 0; \
        FC_ROWS { \
            T part[16] = {0}, acc = 0; Py_ssize_t k = 0; \
            if (sx == 1) { \
                for (; k + 16 <= n; k += 16) for (int l = 0; l < 16; l++) part[l] += y[k + l] * x[k + l]; } \
            for (; k < n; k++) acc += y[k] * x[k * sx]; \
            for (int l = 0; l < 16; l++) acc += part[l]; \
            total += acc; } \
        return total; } \
    FC_BLK void fc_copy_##S(T *restrict y, Py_ssize_t ys, const T *restrict x, Py_ssize_t xs, \
                            Py_ssize_t rows, Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t width, Py_ssize_t sx) { \
        FC_ROWS { \
            for (Py_ssize_t k = 0; k < lo; k++) y[k] = 0; \
            if (sx == 1) { for (Py_ssize_t k = 0; k < hi - lo; k++) y[lo + k] = x[k]; } \
            else { for (Py_ssize_t k = 0; k < hi - lo; k++) y[lo + k] = x[k * sx]; } \
            for (Py_ssize_t k = hi; k < width; k++) y[k] = 0; } } \
    FC_BLK void fc_max_##S(T *restrict y, int64_t *restrict idx, Py_ssize_t ys, const T *restrict x, \
                           Py_ssize_t start, Py_ssize_t xs, Py_ssize_t rows, Py_ssize_t n, Py_ssize_t sx) { \
        for (Py_ssize_t r = 0; r < rows; r++, y += ys, idx += ys, start += xs) \
            for (Py_ssize_t k = 0; k < n; k++) { \
                Py_ssize_t off = start + k * sx; T v = x[off], best = y[k]; \
                if (idx[k] < 0 || v > best || (v != v && best == best)) { y[k] = v; idx[k] = off; } } } \
    FC_BLK void fc_maxwin_##S(T *restrict y, int64_t *restrict idx, const T *restrict x, \
                              const int32_t *restrict outs, Py_ssize_t n, const int32_t *restrict taps, \
                              Py_ssize_t ntaps) { \
        for (Py_ssize_t k = 0; k < n; k++) { int32_t at = outs[k] + taps[0]; y[k] = x[at]; idx[k] = at; } \
        for (Py_ssize_t t = 1; t < ntaps; t++) { \
            int32_t tap = taps[t]; \
            for (Py_ssize_t k = 0; k < n; k++) { \
                int32_t at = outs[k] + tap; T v = x[at], best = y[k]; \
                int take = v > best || (v != v && best == best); \
                y[k] = take ? v : best; idx[k] = take ? at : idx[k]; } } } \
    FC_BLK void fc_fill_##S(T *restrict y, T v, Py_ssize_t n) { \
        for (Py_ssize_t k = 0; k < n; k++) y[k] = v; }
    FC_BLOCK_OPS(float, f)
    FC_BLOCK_OPS(double, d)
    /* out[t] += sum y[k] * x[off[t] + k] for nine taps (a 3x3 weight gradient): one vector accumulator
     * per tap where the compiler has vector types, y read once. */
    #if defined(__GNUC__) || defined(__clang__)
    #define FC_DOT9(T, S) \
    FC_BLK void fc_dot9_##S(const T *restrict y, const T *restrict x, const Py_ssize_t *restrict off, \
                            Py_ssize_t n, double *restrict out) { \
        typedef T vec __attribute__((vector_size(64))); \
        typedef T uvec __attribute__((vector_size(64), aligned(sizeof(T)))); \
        enum { L = 64 / sizeof(T) }; \
        vec p[9]; Py_ssize_t k = 0; \
        for (int t = 0; t < 9; t++) p[t] = (vec){0}; \
        for (; k + L <= n; k += L) { \
            vec yv = *(const uvec *)(y + k); \
            _Pragma("GCC unroll 9") for (int t = 0; t < 9; t++) p[t] += yv * *(const uvec *)(x + off[t] + k); } \
        for (int t = 0; t < 9; t++) { \
            double acc = 0; \
            for (Py_ssize_t m = k; m < n; m++) acc += y[m] * x[off[t] + m]; \
            for (int l = 0; l < L; l++) acc += p[t][l]; \
            out[t] += acc; } }
    #else
    #define FC_DOT9(T, S) \
    FC_BLK void fc_dot9_##S(const T *y, const T *x, const Py_ssize_t *off, Py_ssize_t n, double *out) { \
        for (int t = 0; t < 9; t++) { \
            double acc = 0; \
            for (Py_ssize_t m = 0; m < n; m++) acc += y[m] * x[off[t] + m]; \
            out[t] += acc; } }
    #endif
    FC_DOT9(float, f)
    FC_DOT9(double, d)
    /* y[m] = (add ? y[m] : base) + sum k[t] * x[off[t] + m], taps t < 9 in order (a 3x3 kernel's forward
     * pass on a padded plane: y written once, not nine times). */
    #define FC_AXPY9(T, S) \
    FC_BLK void fc_axpy9_##S(T *restrict y, const T *restrict x, const Py_ssize_t *restrict off, \
                             const T *restrict k, Py_ssize_t n, T base, int add) { \
        const T *restrict p[9]; T w[9]; \
        for (int t = 0; t < 9; t++) { p[t] = x + off[t]; w[t] = k[t]; } \
        for (Py_ssize_t m = 0; m < n; m++) { \
            T acc = add ? y[m] : base; \
            _Pragma("GCC unroll 9") for (int t = 0; t < 9; t++) acc += w[t] * p[t][m]; \
            y[m] = acc; } }
    FC_AXPY9(float, f)
    FC_AXPY9(double, d)
    """
    void fc_axpy_f(float*, Py_ssize_t, const float*, Py_ssize_t, float, Py_ssize_t, Py_ssize_t,
                   Py_ssize_t) noexcept nogil
    void fc_axpy_d(double*, Py_ssize_t, const double*, Py_ssize_t, double, Py_ssize_t, Py_ssize_t,
                   Py_ssize_t) noexcept nogil
    void fc_scatter_f(float*, Py_ssize_t, const float*, Py_ssize_t, float, Py_ssize_t, Py_ssize_t,
                      Py_ssize_t) noexcept nogil
    void fc_scatter_d(double*, Py_ssize_t, const double*, Py_ssize_t, double, Py_ssize_t, Py_ssize_t,
                      Py_ssize_t) noexcept nogil
    double fc_dot_f(const float*, Py_ssize_t, const float*, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                    Py_ssize_t) noexcept nogil
    double fc_dot_d(const double*, Py_ssize_t, const double*, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                    Py_ssize_t) noexcept nogil
    void fc_dot9_f(const float*, const float*, const Py_ssize_t*, Py_ssize_t, double*) noexcept nogil
    void fc_dot9_d(const double*, const double*, const Py_ssize_t*, Py_ssize_t, double*) noexcept nogil
    void fc_axpy9_f(float*, const float*, const Py_ssize_t*, const float*, Py_ssize_t, float,
                    int) noexcept nogil
    void fc_axpy9_d(double*, const double*, const Py_ssize_t*, const double*, Py_ssize_t, double,
                    int) noexcept nogil
    void fc_copy_f(float*, Py_ssize_t, const float*, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                   Py_ssize_t, Py_ssize_t) noexcept nogil
    void fc_copy_d(double*, Py_ssize_t, const double*, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                   Py_ssize_t, Py_ssize_t) noexcept nogil
    void fc_max_f(float*, int64_t*, Py_ssize_t, const float*, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                  Py_ssize_t, Py_ssize_t) noexcept nogil
    void fc_max_d(double*, int64_t*, Py_ssize_t, const double*, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                  Py_ssize_t, Py_ssize_t) noexcept nogil
    void fc_maxwin_f(float*, int64_t*, const float*, const int32_t*, Py_ssize_t, const int32_t*,
                     Py_ssize_t) noexcept nogil
    void fc_maxwin_d(double*, int64_t*, const double*, const int32_t*, Py_ssize_t, const int32_t*,
                     Py_ssize_t) noexcept nogil
    void fc_fill_f(float*, float, Py_ssize_t) noexcept nogil
    void fc_fill_d(double*, double, Py_ssize_t) noexcept nogil


cdef inline void blk_axpy(real* y, Py_ssize_t ys, const real* x, Py_ssize_t xs, real a, Py_ssize_t rows,
                          Py_ssize_t n, Py_ssize_t sx) noexcept nogil:
    """``y[r*ys + k] += a * x[r*xs + k*sx]``: a tap's contribution to its output block (forward)."""
    if rows > 0 and n > 0:
        if real is float:
            fc_axpy_f(y, ys, x, xs, a, rows, n, sx)
        else:
            fc_axpy_d(y, ys, x, xs, a, rows, n, sx)


cdef inline void blk_scatter(real* x, Py_ssize_t xs, const real* y, Py_ssize_t ys, real a,
                             Py_ssize_t rows, Py_ssize_t n, Py_ssize_t sx) noexcept nogil:
    """``x[r*xs + k*sx] += a * y[r*ys + k]``: the adjoint of :func:`blk_axpy` (input gradient)."""
    if rows > 0 and n > 0:
        if real is float:
            fc_scatter_f(x, xs, y, ys, a, rows, n, sx)
        else:
            fc_scatter_d(x, xs, y, ys, a, rows, n, sx)


cdef inline double blk_dot(const real* y, Py_ssize_t ys, const real* x, Py_ssize_t xs, Py_ssize_t rows,
                           Py_ssize_t n, Py_ssize_t sx) noexcept nogil:
    """``sum y[r*ys + k] * x[r*xs + k*sx]`` (weight gradient), summed over rows in double."""
    if rows <= 0 or n <= 0:
        return 0
    if real is float:
        return fc_dot_f(y, ys, x, xs, rows, n, sx)
    else:
        return fc_dot_d(y, ys, x, xs, rows, n, sx)


cdef inline void blk_dot9(const real* y, const real* x, const Py_ssize_t* off, Py_ssize_t n,
                          double* out) noexcept nogil:
    """``out[t] += sum y[k] * x[off[t] + k]``, ``k < n``, for nine taps at once (a 3x3 kernel's weight
    gradient on a padded plane: ``y`` is read once, not nine times)."""
    if n > 0:
        if real is float:
            fc_dot9_f(y, x, off, n, out)
        else:
            fc_dot9_d(y, x, off, n, out)


cdef inline void blk_axpy9(real* y, const real* x, const Py_ssize_t* off, const real* k, Py_ssize_t n,
                           real base, bint add) noexcept nogil:
    """``y[m] = (y[m] if add else base) + sum k[t] * x[off[t] + m]``, ``m < n``, nine taps at once (a 3x3
    kernel's forward pass on a padded plane: ``y`` is written once, not nine times)."""
    if n > 0:
        if real is float:
            fc_axpy9_f(y, x, off, k, n, base, add)
        else:
            fc_axpy9_d(y, x, off, k, n, base, add)


cdef inline void blk_copy(real* y, Py_ssize_t ys, const real* x, Py_ssize_t xs, Py_ssize_t rows,
                          Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t width, Py_ssize_t sx) noexcept nogil:
    """Rows of ``width``: ``y[r*ys + lo + k] = x[r*xs + k*sx]`` for ``lo + k < hi``, zeros around
    (im2col, padding and cropping planes)."""
    if rows > 0:
        if real is float:
            fc_copy_f(y, ys, x, xs, rows, lo, hi, width, sx)
        else:
            fc_copy_d(y, ys, x, xs, rows, lo, hi, width, sx)


cdef inline void blk_max(real* y, int64_t* idx, Py_ssize_t ys, const real* xp, Py_ssize_t start,
                         Py_ssize_t xs, Py_ssize_t rows, Py_ssize_t n, Py_ssize_t sx) noexcept nogil:
    """Running max over a block: ``xp`` is the input plane, row r element k reads offset
    ``start + r*xs + k*sx``. The first maximum in visiting order wins, a NaN beats any number (as
    ``numpy.argmax``); ``idx < 0`` marks an output no tap reached yet."""
    if rows > 0 and n > 0:
        if real is float:
            fc_max_f(y, idx, ys, xp, start, xs, rows, n, sx)
        else:
            fc_max_d(y, idx, ys, xp, start, xs, rows, n, sx)


cdef inline void blk_maxwin(real* y, int64_t* idx, const real* xp, const int32_t* outs, Py_ssize_t n,
                            const int32_t* taps, Py_ssize_t ntaps) noexcept nogil:
    """Whole windows inside the plane ``xp``: ``y[k]`` is the max over ``xp[outs[k] + taps[t]]``, ``idx[k]``
    the offset of its first maximum in tap order (a NaN beats any number, as in ``blk_max``). Tap by tap
    over the plane's outputs, so that the loop vectorises (gathers) whatever the row width."""
    if n > 0:
        if real is float:
            fc_maxwin_f(y, idx, xp, outs, n, taps, ntaps)
        else:
            fc_maxwin_d(y, idx, xp, outs, n, taps, ntaps)


cdef inline void fill(real* y, real v, Py_ssize_t n) noexcept nogil:
    if n > 0:
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
    fill(dst, <real>0, top * wp)
    blk_copy(dst + top * wp, wp, src, w, h, left, left + w, wp, 1)
    fill(dst + (top + h) * wp, <real>0, (hp - top - h) * wp)


cdef inline void crop_plane(const real* src, real* dst, Py_ssize_t h, Py_ssize_t w, Py_ssize_t wp,
                            Py_ssize_t top, Py_ssize_t left) noexcept nogil:
    """``dst (h x w)`` = the block of ``src`` (rows of ``wp``) at ``(top, left)``."""
    blk_copy(dst, w, src + top * wp + left, wp, h, 0, w, w, 1)
