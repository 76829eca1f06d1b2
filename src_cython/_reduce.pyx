# cython: language_level=3
"""Per-channel sums of a gradient (a bias gradient) on every thread.

NumPy's sums run on one thread; a bias gradient reads the whole output gradient (vgg_3x3's: 6.4 MB) for
as many floats as it has channels. Here each plane (one sample's channel) is summed by one thread in
float64, and the planes of a channel are then added in sample order: the result depends neither on the
thread count nor on which thread summed which plane.
"""
import numpy as np

cdef extern from *:
    """
    #include <stddef.h>
    #define FC_SUMS_PARALLEL_FROM 65536  /* elements: fewer are summed on the calling thread */
    #define FC_SUMS_LANES 16              /* independent float64 accumulators per plane */
    /* out[j] = the sum of g[i][j][k] over samples i < n and k < p, planes summed into part (n * c). */
    #define FC_CHANNEL_SUMS(NAME, T)                                                            \
    static void NAME(const T *g, ptrdiff_t n, ptrdiff_t c, ptrdiff_t p, double *part, T *out)   \
    {                                                                                           \
        _Pragma("omp parallel for schedule(static) if(n * c * p >= FC_SUMS_PARALLEL_FROM)")     \
        for (ptrdiff_t i = 0; i < n * c; i++) {                                                 \
            const T *a = g + i * p;                                                             \
            double acc[FC_SUMS_LANES] = {0}, s = 0;                                             \
            ptrdiff_t k = 0;                                                                    \
            for (; k + FC_SUMS_LANES <= p; k += FC_SUMS_LANES)                                  \
                for (int l = 0; l < FC_SUMS_LANES; l++)                                         \
                    acc[l] += a[k + l];                                                         \
            for (; k < p; k++)                                                                  \
                s += a[k];                                                                      \
            for (int l = 0; l < FC_SUMS_LANES; l++)                                             \
                s += acc[l];                                                                    \
            part[i] = s;                                                                        \
        }                                                                                       \
        for (ptrdiff_t j = 0; j < c; j++) {                                                     \
            double s = 0;                                                                       \
            for (ptrdiff_t i = 0; i < n; i++)                                                   \
                s += part[i * c + j];                                                           \
            out[j] = (T)s;                                                                      \
        }                                                                                       \
    }
    FC_CHANNEL_SUMS(fc_channel_sums32, float)
    FC_CHANNEL_SUMS(fc_channel_sums64, double)
    """
    void fc_channel_sums32(const float* g, Py_ssize_t n, Py_ssize_t c, Py_ssize_t p, double* part,
                           float* out) nogil
    void fc_channel_sums64(const double* g, Py_ssize_t n, Py_ssize_t c, Py_ssize_t p, double* part,
                           double* out) nogil


def channel_sums(g):
    """The sums of the C-contiguous float32 or float64 array ``g`` (N, C, ...) over all axes but the
    channels (axis 1), in ``g``'s dtype; None for any other array (the caller sums it another way)."""
    if g.ndim < 2 or not g.flags.c_contiguous or g.dtype not in (np.float32, np.float64):
        return None
    cdef Py_ssize_t n = g.shape[0], c = g.shape[1], p = 1
    for size in g.shape[2:]:
        p *= size
    out = np.zeros(c, g.dtype)
    if n * c * p == 0:
        return out
    cdef double[::1] part = np.empty(n * c, np.float64)
    cdef const float[::1] g32
    cdef const double[::1] g64
    cdef float[::1] o32
    cdef double[::1] o64
    if g.dtype == np.float32:
        g32, o32 = g.reshape(-1), out
        with nogil:
            fc_channel_sums32(&g32[0], n, c, p, &part[0], &o32[0])
    else:
        g64, o64 = g.reshape(-1), out
        with nogil:
            fc_channel_sums64(&g64[0], n, c, p, &part[0], &o64[0])
    return out
