# cython: language_level=3
"""im2col / col2im: unfold the receptive fields of a padded, strided, dilated input into columns.

``cols[n, c, i, j, oy, ox] = x[n, c, oy*sh - pt + i*dh, ox*sw - pl + j*dw]`` (zero outside the input), so a
convolution is one matrix product per group, and col2im (the adjoint, accumulating) gives its input gradient.
"""
from cython.parallel cimport prange

ctypedef fused real:
    float
    double


def im2col(const real[:, :, :, ::1] x, real[:, :, :, :, :, ::1] cols,
           int sh, int sw, int pt, int pl, int dh, int dw):
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t KH = cols.shape[2], KW = cols.shape[3], OH = cols.shape[4], OW = cols.shape[5]
    cdef Py_ssize_t nc, n, c, i, j, oy, ox, iy, ix
    with nogil:
        for nc in prange(N * C, schedule="static"):
            n = nc // C
            c = nc % C
            for i in range(KH):
                for j in range(KW):
                    for oy in range(OH):
                        iy = oy * sh - pt + i * dh
                        if iy < 0 or iy >= H:
                            for ox in range(OW):
                                cols[n, c, i, j, oy, ox] = 0
                            continue
                        for ox in range(OW):
                            ix = ox * sw - pl + j * dw
                            if ix >= 0 and ix < W:
                                cols[n, c, i, j, oy, ox] = x[n, c, iy, ix]
                            else:
                                cols[n, c, i, j, oy, ox] = 0


def col2im(const real[:, :, :, :, :, ::1] cols, real[:, :, :, ::1] x,
           int sh, int sw, int pt, int pl, int dh, int dw):
    """Add every column entry back to the input pixel it came from (``x`` must start zeroed)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t KH = cols.shape[2], KW = cols.shape[3], OH = cols.shape[4], OW = cols.shape[5]
    cdef Py_ssize_t nc, n, c, i, j, oy, ox, iy, ix
    with nogil:
        for nc in prange(N * C, schedule="static"):
            n = nc // C
            c = nc % C
            for i in range(KH):
                for j in range(KW):
                    for oy in range(OH):
                        iy = oy * sh - pt + i * dh
                        if iy < 0 or iy >= H:
                            continue
                        for ox in range(OW):
                            ix = ox * sw - pl + j * dw
                            if ix >= 0 and ix < W:
                                x[n, c, iy, ix] += cols[n, c, i, j, oy, ox]
