# cython: language_level=3
"""Register-blocked direct convolution (float32): the ``"blocked"`` algorithm, forward pass and weight
gradient.

The micro-kernel in ``blocked_conv.h`` keeps a tile of outputs (up to 14 pixels of one row by 16
output channels with AVX-512, 6 by 16 with AVX2) in vector registers while it runs the whole reduction,
so no column matrix is built and each weight is loaded once per tile. Here: the weights are packed per
block of output channels, and the work is cut into tasks (one sample, a band of output rows) run in
parallel over OpenMP. A task of a padded convolution first copies the input rows it reads into its
thread's scratch, zero-padded, so the micro-kernel never tests bounds. The weight gradient turns the
tile (see ``grad_weight``); the input gradient is the forward pass of another convolution (the
caller's ``adjoint_spec``).
"""
from cython.parallel cimport parallel, prange, threadid
from libc.string cimport memcpy, memset

import numpy as np

include "_loops.pxi"


cdef extern from "blocked_conv.h" nogil:
    ctypedef struct fc_src:
        const float* x
        const Py_ssize_t* taps
        int ntaps, sw
        const Py_ssize_t* cols
    int FC_LANES
    int FC_MAX_NV
    int FC_MAX_NJ
    void fc_conv_row(const fc_src* s, const float* w, int nv, int ow, float* y, Py_ssize_t yc, int nc,
                     const float* bias)
    void fc_tile_any(const fc_src* s, const float* w, int nj, int nv, float* out)


def tile_shape():
    """``(pixels, channels)`` of this build's largest register tile: (14, 16) with AVX-512, else (6, 16)."""
    return FC_MAX_NJ, FC_LANES * FC_MAX_NV


cdef inline int vectors(Py_ssize_t cog) noexcept nogil:
    """Vectors per weight block for ``cog`` output channels per group."""
    return 1 if cog <= FC_LANES else FC_MAX_NV


def packed_size(tuple geo):
    """Elements of the packed weights: per group and block of ``lanes * nv`` output channels, a
    ``(taps, lanes * nv)`` matrix (channels past the group's end are zero)."""
    cdef Geo g = make_geo(geo)
    cdef Py_ssize_t width = FC_LANES * vectors(g.cog)
    return g.groups * ((g.cog + width - 1) // width) * g.taps * width


def pack_weights(const float[:, :, :, ::1] w, float[::1] out, tuple geo):
    """``w[oc, c, i, j]`` into ``out[group, block, (c, i, j), lane]`` (see ``packed_size``)."""
    cdef Geo g = make_geo(geo)
    cdef Py_ssize_t width = FC_LANES * vectors(g.cog), blocks = (g.cog + width - 1) // width
    cdef Py_ssize_t grp, blk, t, lane, oc
    cdef const float* wf = &w[0, 0, 0, 0]
    cdef float* dst
    with nogil:
        for grp in range(g.groups):
            for blk in range(blocks):
                dst = &out[(grp * blocks + blk) * g.taps * width]
                for t in range(g.taps):
                    for lane in range(width):
                        oc = blk * width + lane
                        dst[t * width + lane] = wf[(grp * g.cog + oc) * g.taps + t] if oc < g.cog else 0


cdef inline bint padded(Geo* g) noexcept nogil:
    """Whether some output reads outside the input (then tasks work on zero-padded copies)."""
    return (g.pt > 0 or g.pl > 0 or (g.oh - 1) * g.sh + (g.kh - 1) * g.dh >= g.h
            or (g.ow - 1) * g.sw + (g.kw - 1) * g.dw >= g.w)


cdef inline Py_ssize_t band_rows(Geo* g, Py_ssize_t rows) noexcept nogil:
    """Input rows a band of ``rows`` output rows reads."""
    return (rows - 1) * g.sh + (g.kh - 1) * g.dh + 1


cdef inline Py_ssize_t band_width(Geo* g) noexcept nogil:
    return (g.ow - 1) * g.sw + (g.kw - 1) * g.dw + 1


cdef (Py_ssize_t, Py_ssize_t) strides(Geo* g, Py_ssize_t rows) noexcept nogil:
    """Channel and row strides of the input the kernels read: the padded copy of bands of ``rows``
    output rows, or the input itself."""
    if padded(g):
        return band_rows(g, rows) * band_width(g), band_width(g)
    return g.hw, g.w


cdef Py_ssize_t[::1] tap_offsets(Geo* g, Py_ssize_t xc, Py_ssize_t xr):
    """Offset of each kernel tap ``(c, i, j)`` of a group from its first input pixel."""
    cdef Py_ssize_t[::1] taps = np.empty(max(g.taps, 1), np.intp)
    cdef Py_ssize_t c, i, j
    for c in range(g.cig):
        for i in range(g.kh):
            for j in range(g.kw):
                taps[(c * g.kh + i) * g.kw + j] = c * xc + i * g.dh * xr + j * g.dw
    return taps


def scratch_size(tuple geo, Py_ssize_t rows):
    """Elements of scratch per thread for bands of ``rows`` output rows (0 when nothing is padded)."""
    cdef Geo g = make_geo(geo)
    return g.c_in * band_rows(&g, rows) * band_width(&g) if padded(&g) else 0


cdef void copy_band(const float* x, float* buf, Geo* g, Py_ssize_t n, Py_ssize_t r0,
                    Py_ssize_t rows, Py_ssize_t stride) noexcept nogil:
    """Input rows of output rows ``[r0, r0 + rows)`` of sample ``n``, all channels, zero-padded:
    ``buf[c * stride + r * width + col]`` holds input pixel ``(r0*sh - pt + r, col - pl)``."""
    cdef Py_ssize_t nr = band_rows(g, rows), wp = band_width(g), c, r, ih, lo, hi
    cdef const float* src
    cdef float* dst
    lo = min(g.pl, wp)                        # first column inside the input
    hi = max(lo, min(wp, g.pl + g.w))         # first column past it
    for c in range(g.c_in):
        for r in range(nr):
            dst = buf + c * stride + r * wp
            ih = r0 * g.sh - g.pt + r
            if ih < 0 or ih >= g.h:
                memset(dst, 0, wp * sizeof(float))
                continue
            src = x + ((n * g.c_in + c) * g.h + ih) * g.w
            memset(dst, 0, lo * sizeof(float))
            memcpy(dst + lo, src + (lo - g.pl), (hi - lo) * sizeof(float))
            memset(dst + hi, 0, (wp - hi) * sizeof(float))


cdef void band(const float* x, const float* wp, const float* b, float* y, float* buf,
               const Py_ssize_t* taps, Geo* g, Py_ssize_t n, Py_ssize_t r0, Py_ssize_t rows,
               Py_ssize_t full) noexcept nogil:
    """Output rows ``[r0, r0 + rows)`` of sample ``n``, every channel (``full``: rows of a whole band,
    which fixes the channel stride of the padded copy)."""
    cdef int nv = vectors(g.cog)
    cdef Py_ssize_t width = FC_LANES * nv, blocks = (g.cog + width - 1) // width, grp, blk, r, oc
    cdef Py_ssize_t xc, xr
    cdef fc_src s
    cdef const float* base
    s.taps, s.ntaps, s.sw, s.cols = taps, g.taps, g.sw, NULL
    xc, xr = strides(g, full)
    if padded(g):
        copy_band(x, buf, g, n, r0, rows, xc)
        base = buf
    else:
        base = x + n * g.c_in * g.hw + r0 * g.sh * g.w
    for r in range(rows):  # a row's input stays in cache while every block of channels reads it
        for grp in range(g.groups):
            for blk in range(blocks):
                oc = grp * g.cog + blk * width
                s.x = base + grp * g.cig * xc + r * g.sh * xr
                fc_conv_row(&s, wp + (grp * blocks + blk) * g.taps * width, nv, g.ow,
                            y + ((n * g.c_out + oc) * g.oh + r0 + r) * g.ow, g.ohw,
                            min(width, g.cog - blk * width), b + oc if b != NULL else NULL)


def conv2d(const float[:, :, :, ::1] x, const float[::1] packed, const float[::1] b,
           float[:, :, :, ::1] y, float[:, ::1] scratch, tuple geo, Py_ssize_t rows):
    """``y = conv(x, w) + b`` (``b`` may be None) from ``pack_weights``' output, in tasks of ``rows``
    output rows; ``scratch``: ``scratch_size(geo, rows)`` elements per thread."""
    cdef Geo g = make_geo(geo)
    cdef const float* bp = NULL
    cdef Py_ssize_t bands = (g.oh + rows - 1) // rows, t, r0, xc, xr
    cdef Py_ssize_t[::1] taps
    if y.size == 0:
        return
    if b is not None:
        bp = &b[0]
    xc, xr = strides(&g, rows)
    taps = tap_offsets(&g, xc, xr)
    with nogil, parallel():
        for t in prange(g.n * bands, schedule="dynamic"):
            r0 = (t % bands) * rows
            band(&x[0, 0, 0, 0], &packed[0], bp, &y[0, 0, 0, 0], &scratch[threadid(), 0], &taps[0], &g,
                 t // bands, r0, min(rows, g.oh - r0), rows)


def grad_weight_scratch(tuple geo):
    """``(padded input, packed gradient)`` elements per thread that ``grad_weight`` needs."""
    cdef Geo g = make_geo(geo)
    cdef Py_ssize_t width = FC_LANES * vectors(g.cog)
    return scratch_size(geo, g.oh), (g.ohw + FC_MAX_NJ) * width


cdef void weight_task(const float* gy, const float* x, float* parts, float* scratch, float* packed,
                      const Py_ssize_t* pixels, const Py_ssize_t* taps, Py_ssize_t* last, Geo* g,
                      Py_ssize_t xc, Py_ssize_t n, Py_ssize_t grp, Py_ssize_t blk) noexcept nogil:
    """One task of ``grad_weight``: sample ``n``, group ``grp``, block ``blk`` of its output channels."""
    cdef int nv = vectors(g.cog)
    cdef Py_ssize_t width = FC_LANES * nv, oc0 = grp * g.cog + blk * width
    cdef Py_ssize_t nc = min(width, g.cog - blk * width), tiles = (g.taps + FC_MAX_NJ - 1) // FC_MAX_NJ
    cdef Py_ssize_t nj = (g.taps + tiles - 1) // tiles, c, p, o, t, t0, count
    cdef float* tile = packed + g.ohw * width
    cdef const float* src
    cdef fc_src s
    tiles = (g.taps + nj - 1) // nj
    if padded(g):
        if last[0] != n:
            copy_band(x, scratch, g, n, 0, g.oh, xc)
            last[0] = n
        s.x = scratch + grp * g.cig * xc
    else:
        s.x = x + (n * g.c_in + grp * g.cig) * g.hw
    for c in range(width):  # the block's output gradient, pixel-major: the micro-kernel's "weights"
        src = gy + (n * g.c_out + oc0 + c) * g.ohw
        for p in range(g.ohw):
            packed[p * width + c] = src[p] if c < nc else 0
    s.taps, s.ntaps, s.sw = pixels, g.ohw, 0
    for t in range(tiles):  # tiles of nearly equal width
        t0 = t * nj
        count = min(nj, g.taps - t0)
        s.cols = taps + t0
        fc_tile_any(&s, packed, count, nv, tile)
        for o in range(count):
            for c in range(nc):
                parts[(oc0 + c) * g.taps + t0 + o] += tile[o * width + c]


def grad_weight(const float[:, :, :, ::1] gy, const float[:, :, :, ::1] x, float[:, :, ::1] parts,
                float[:, ::1] scratch, float[:, ::1] packed, tuple geo):
    """``parts[thread, oc, tap] +=`` the weight gradient of the samples each thread ran (the caller
    zeroes ``parts``, ``(threads, c_out, taps)``, and sums it over threads).

    The same micro-kernel with the roles turned: the reduction runs over a sample's output pixels, the
    tile holds up to ``FC_MAX_NJ`` kernel taps by a block of output channels. A task (sample, group,
    block of output channels) transposes the block's output gradient to pixel-major rows in
    ``packed[thread]`` (they play the weights) and reads the sample's zero-padded input from
    ``scratch[thread]`` (copied when the thread moves to another sample); sizes: ``grad_weight_scratch``.
    """
    cdef Geo g = make_geo(geo)
    cdef Py_ssize_t blocks = (g.cog + FC_LANES * vectors(g.cog) - 1) // (FC_LANES * vectors(g.cog))
    cdef Py_ssize_t task, tid, oy, ox, xc, xr
    cdef Py_ssize_t[::1] pixels = np.empty(max(g.ohw, 1), np.intp)
    cdef Py_ssize_t[::1] taps
    cdef Py_ssize_t[::1] last = np.full(scratch.shape[0], -1, np.intp)
    if gy.size == 0 or x.size == 0 or g.taps == 0:
        return
    xc, xr = strides(&g, g.oh)
    taps = tap_offsets(&g, xc, xr)
    for oy in range(g.oh):
        for ox in range(g.ow):
            pixels[oy * g.ow + ox] = oy * g.sh * xr + ox * g.sw
    with nogil, parallel():
        for task in prange(g.n * g.groups * blocks, schedule="static"):
            tid = threadid()
            weight_task(&gy[0, 0, 0, 0], &x[0, 0, 0, 0], &parts[tid, 0, 0], &scratch[tid, 0],
                        &packed[tid, 0], &pixels[0], &taps[0], &last[tid], &g, xc,
                        task // (g.groups * blocks), (task // blocks) % g.groups, task % blocks)
