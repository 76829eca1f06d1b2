# cython: language_level=3
"""Register-blocked direct convolution (float32): the ``"blocked"`` algorithm, forward pass and weight
gradient.

The micro-kernel in ``blocked_conv.h`` keeps a tile of outputs (up to 14 pixels of one row by 16
output channels with AVX-512, 6 by 16 with AVX2) in vector registers while it runs the whole reduction,
so no column matrix is built and each weight is loaded once per tile; layers with at most 8 output
channels per group turn the tile (pixels in the lanes, channels in registers: ``pixel_tiles``), and
forward passes whose taps share no input pixel widen it (``fwd_vectors``). Here: the weights are packed per
block of output channels (and checked against the caller's weights on every call, in the same parallel
region), and the work is cut into tasks (one sample, a band of output rows, a chunk of channel blocks)
run in parallel over OpenMP; a task runs each block of its chunk over every row of its band, so the
block's weights stay in cache. A task of a padded convolution first copies the input rows it reads into
its thread's scratch, zero-padded, so the micro-kernel never tests bounds. The weight gradient turns the
tile (see ``grad_weight``); the input gradient is the forward pass of another convolution
(``fastconv.shapes.adjoint_spec``), its weights flipped on the way into the packing (``adjoint``).
"""
cimport numpy as cnp
from cython.parallel cimport parallel, prange, threadid
from libc.stdlib cimport free, malloc

import numpy as np

cnp.import_array()

include "_loops.pxi"


cdef extern from "blocked_conv.h" nogil:
    ctypedef struct fc_src:
        const float* x
        const Py_ssize_t* taps
        int ntaps, kw, dw, sw
        const Py_ssize_t* cols
        int ekw, edw
    ctypedef struct fc_dst:
        float* y
        Py_ssize_t yc, ys
        int nc
        const float* bias
        int add
    int FC_LANES
    int FC_NV
    int FC_WIDE_NV
    int FC_MAX_NV
    int FC_MAX_NJ
    const char* FC_ISA
    bint FC_ROW_SHAPE(Py_ssize_t sw, Py_ssize_t kw, Py_ssize_t dw)
    void fc_conv_row(const fc_src* s, const float* w, int nv, int ow, float* y, Py_ssize_t yc, Py_ssize_t ys,
                     int nc, const float* bias)
    void fc_tile_any(const fc_src* s, const float* w, int nj, int nv, const fc_dst* d)
    int fc_wgrad3_any(const fc_src* s, const float* w, int nr, int nv, const fc_dst* d)
    int fc_wgrad3_rows(int nv)
    int fc_tile_width_max(Py_ssize_t n, int most)
    int fc_tile_width(Py_ssize_t n)
    int fc_pack_block(const float* src, Py_ssize_t so, int runs, Py_ssize_t srun, int len, int rev, int nc,
                      int width, float* out, int fresh)
    int FC_PIX_MAX_NC
    int fc_ptile_rows(int nc)
    void fc_ptile_any(const float* x, const Py_ssize_t* taps, int ntaps, Py_ssize_t xr, const float* w, int nc,
                      int nr, int npix, float* y, Py_ssize_t yc, Py_ssize_t yr, Py_ssize_t ys,
                      const float* bias)


def isa():
    """The vector instructions this build of the kernel uses ("AVX-512", "AVX2+FMA", or none)."""
    return FC_ISA.decode()


def tile_shape():
    """``(pixels, channels)`` of this build's largest register tile: (14, 16) with AVX-512, else (6, 16)."""
    return FC_MAX_NJ, FC_LANES * FC_NV


cdef inline int vectors(Py_ssize_t cog) noexcept nogil:
    """Vectors per weight block of the weight gradient's tile for ``cog`` output channels per group."""
    return 1 if cog <= FC_LANES else FC_NV


cdef inline int fwd_vectors(Geo* g) noexcept nogil:
    """Vectors per weight block of the forward pass: the wide tile (``FC_WIDE_NV``) where it has the
    channels and no input pixel serves two taps of a tile (1x1 kernels, flat tables of taps), else as
    ``vectors``."""
    if (FC_WIDE_NV > FC_NV and g.cog >= FC_LANES * FC_WIDE_NV
            and (g.kw == 1 or not FC_ROW_SHAPE(g.sw, g.kw, g.dw))):
        return FC_WIDE_NV
    return vectors(g.cog)


cdef inline bint wgrad3_tiles(Geo* g) noexcept nogil:
    """Whether the weight gradient's tiles are kernel rows of 3 taps at stride 1 or 2 (``fc_wgrad3``)."""
    return g.kw == 3 and g.dw == 1 and g.sw <= 2 and fc_wgrad3_rows(1) > 0


cdef inline int grad_vectors(Geo* g) noexcept nogil:
    """Vectors per weight block of the weight gradient: two where ``fc_wgrad3`` runs and the group has
    their channels (half the broadcasts per multiply-add; Zen 5, 2 threads: 256 channels at stride 2,
    resnet_s2, 340 -> 390 GFLOP/s; 64 at 56 x 56 410-440 -> 450-470; 512 at 14 x 14 370-400 -> 400-410),
    else as ``vectors``."""
    if wgrad3_tiles(g) and g.cog >= 2 * FC_LANES and FC_MAX_NV >= 2:
        return 2
    return vectors(g.cog)


def runs_pixel_tiles(tuple geo):
    """Whether the forward pass of ``geo`` runs the tile of pixel vectors (few output channels)."""
    cdef Geo g = make_geo(geo)
    return pixel_tiles(&g)


def gather(const float[::1] src, const int[::1] index, float[::1] out, int threads):
    """``out[i] = src[index[i]]`` on ``threads`` threads: the kernels of a strided input gradient's input
    phases, picked from the weights on every call (one thread: resnet_s2's 0.21 ms, 0.34 with the weights
    out of cache). ``index`` must hold valid positions of ``src`` (nothing is checked)."""
    cdef Py_ssize_t i, n = min(index.shape[0], out.shape[0])
    with nogil:
        for i in prange(n, num_threads=threads, schedule="static"):
            out[i] = src[index[i]]


def address(cnp.ndarray a not None):
    """The address of ``a``'s first element (``a.ctypes.data``, without building a ctypes object)."""
    return <size_t>cnp.PyArray_DATA(a)


def block_width(tuple geo, bint forward=True):
    """Output channels per weight block (a tile's channels) of the forward pass, or of the weight
    gradient."""
    cdef Geo g = make_geo(geo)
    return FC_LANES * (fwd_vectors(&g) if forward else grad_vectors(&g))


def packed_size(tuple geo):
    """Elements of the packed weights: per group and block of ``lanes * nv`` output channels, a
    ``(taps, lanes * nv)`` matrix (channels past the group's end are zero)."""
    cdef Geo g = make_geo(geo)
    cdef Py_ssize_t width = FC_LANES * fwd_vectors(&g)
    return g.groups * ((g.cog + width - 1) // width) * g.taps * width


cdef int pack_task(const float* w, float* out, Geo* g, bint adjoint, Py_ssize_t task, bint fresh) noexcept nogil:
    """Packs (or checks) block ``task`` (group ``task // blocks``, block ``task % blocks``) of
    ``pack_weights``; returns whether it wrote."""
    cdef Py_ssize_t width = FC_LANES * fwd_vectors(g), blocks = (g.cog + width - 1) // width
    cdef Py_ssize_t khw = g.kh * g.kw, so, srun
    cdef int runs, length
    if adjoint:  # lane oc, tap (c, r) reads w[group * cig + c, oc, flipped r]: a reversed run per c
        so, runs, srun, length = khw, <int>g.cig, g.cog * khw, <int>khw
    else:        # lane oc reads the run w[oc, :, :, :]
        so, runs, srun, length = g.taps, 1, 0, <int>g.taps
    return fc_pack_block(w + (task // blocks) * g.cog * g.taps + (task % blocks) * width * so, so, runs, srun,
                         length, adjoint, <int>min(width, g.cog - (task % blocks) * width), <int>width,
                         out + task * g.taps * width, fresh)


def pack_weights(const float[:, :, :, ::1] w, float[::1] out, tuple geo, bint adjoint=False,
                 bint fresh=True):
    """``w[oc, c, i, j]`` into ``out[group, block, (c, i, j), lane]`` (see ``packed_size``) for the
    convolution ``geo``; with ``adjoint``, ``geo`` is the adjoint of ``w``'s convolution (the input
    gradient's forward pass, :func:`fastconv.shapes.adjoint_spec`) and the kernels are flipped, in and
    out channels swapped, on the way. Unless ``fresh``, ``out`` holds an earlier packing and only what
    differs (bit for bit) is written. Returns the number of blocks written."""
    cdef Geo g = make_geo(geo)
    cdef Py_ssize_t width = FC_LANES * fwd_vectors(&g), tasks = g.groups * ((g.cog + width - 1) // width), task
    cdef Py_ssize_t written = 0
    if g.taps == 0 or g.cog == 0:
        return 0
    with nogil:
        for task in prange(tasks, schedule="static"):
            written += pack_task(&w[0, 0, 0, 0], &out[0], &g, adjoint, task, fresh)
    return written


cdef inline bint padded(Geo* g) noexcept nogil:
    """Whether some output reads outside the input (then tasks work on zero-padded copies)."""
    return (g.pt > 0 or g.pl > 0 or (g.oh - 1) * g.sh + (g.kh - 1) * g.dh >= g.h
            or (g.ow - 1) * g.sw + (g.kw - 1) * g.dw >= g.w)


cdef inline bint pixel_tiles(Geo* g) noexcept nogil:
    """Whether the forward pass runs the tile of pixel vectors (``fc_ptile``): few output channels per
    group, stride 1, and more pixels to a row's vector than channels (else the channel tile wastes fewer
    lanes). Its tasks always copy their band (with slack for the vectors' tails)."""
    return g.cog <= FC_PIX_MAX_NC and g.sw == 1 and min(g.ow, FC_LANES) > g.cog


cdef inline bint aliased(Geo* g) noexcept nogil:
    """Whether a band read in place would put every channel's rows at the same cache sets, with nothing
    to amortise a copy over: planes of a multiple of 4 KB (64 x 64 maps), more rows per window than a
    set has ways, no input row shared by two output rows (2x2 stride 2: the 3-D U-Net's folded
    upsampling gradient).
    The tile reads all those rows at once and they evict one another; a copy of the band is contiguous
    (64 channels, 2x2 stride 2, on 64 x 64 maps: 130-180 -> 255-295 GFLOP/s; 3x3 stride 2, whose bands
    overlap, lost 10-15% to the copy, 1x1 kernels and 56 x 56 maps gain nothing)."""
    return 1 < g.kh <= g.sh and g.cig * g.kh > 16 and (g.hw * sizeof(float)) % 4096 == 0


cdef inline bint copies(Geo* g) noexcept nogil:
    """Whether forward tasks read a zero-padded copy of their band rather than the input."""
    return padded(g) or pixel_tiles(g) or aliased(g)


cdef inline Py_ssize_t band_rows(Geo* g, Py_ssize_t rows) noexcept nogil:
    """Input rows a band of ``rows`` output rows reads."""
    return (rows - 1) * g.sh + (g.kh - 1) * g.dh + 1


cdef inline Py_ssize_t band_width(Geo* g) noexcept nogil:
    return (g.ow - 1) * g.sw + (g.kw - 1) * g.dw + 1


cdef (Py_ssize_t, Py_ssize_t) strides(Geo* g, Py_ssize_t rows, bint copy) noexcept nogil:
    """Channel and row strides of the input the kernels read: with ``copy`` the padded copy of bands of
    ``rows`` output rows, else the input itself."""
    if copy:
        return band_rows(g, rows) * band_width(g), band_width(g)
    return g.hw, g.w


cdef Py_ssize_t* tap_offsets(Geo* g, Py_ssize_t xc, Py_ssize_t xr, bint rows) noexcept nogil:
    """Offset of each kernel tap ``(c, i, j)`` of a group from its first input pixel, or with ``rows``
    of each kernel row ``(c, i)`` (its taps follow at ``j * dw``); the caller frees the table."""
    cdef Py_ssize_t kw = 1 if rows else g.kw
    cdef Py_ssize_t* taps = <Py_ssize_t*>malloc(max(g.cig * g.kh * kw, 1) * sizeof(Py_ssize_t))
    cdef Py_ssize_t c, i, j
    if taps != NULL:
        for c in range(g.cig):
            for i in range(g.kh):
                for j in range(kw):
                    taps[(c * g.kh + i) * kw + j] = c * xc + i * g.dh * xr + j * g.dw
    return taps


def scratch_size(tuple geo, Py_ssize_t rows):
    """Elements of scratch per thread for bands of ``rows`` output rows (0 when nothing is copied), with
    one vector of slack after a band of pixel tiles."""
    cdef Geo g = make_geo(geo)
    if not copies(&g):
        return 0
    return g.cig * band_rows(&g, rows) * band_width(&g) + (FC_LANES if pixel_tiles(&g) else 0)


cdef void copy_band(const float* x, float* buf, Geo* g, Py_ssize_t n, Py_ssize_t grp, Py_ssize_t r0,
                    Py_ssize_t rows, Py_ssize_t stride) noexcept nogil:
    """Input rows of output rows ``[r0, r0 + rows)`` of sample ``n``, the channels of group ``grp``,
    zero-padded: ``buf[c * stride + r * width + col]`` holds input pixel ``(r0*sh - pt + r, col - pl)``."""
    cdef Py_ssize_t nr = band_rows(g, rows), wp = band_width(g), c, lo, hi, top, valid
    cdef const float* src
    cdef float* dst
    lo = min(g.pl, wp)                        # first column inside the input
    hi = max(lo, min(wp, g.pl + g.w))         # first column past it
    top = min(nr, max(0, g.pt - r0 * g.sh))   # rows above the input
    valid = max(0, min(nr, g.h + g.pt - r0 * g.sh) - top)
    for c in range(g.cig):
        dst = buf + c * stride
        src = x + ((n * g.c_in + grp * g.cig + c) * g.h + r0 * g.sh - g.pt + top) * g.w + lo - g.pl
        fill(dst, <float>0, top * wp)
        blk_copy(dst + top * wp, wp, src, g.w, valid, lo, hi, wp, 1)
        fill(dst + (top + valid) * wp, <float>0, (nr - top - valid) * wp)


cdef void conv_task(const float* x, const float* wp, const float* b, float* y, const Py_ssize_t* ys,
                    float* buf, const Py_ssize_t* taps, Geo* g, Py_ssize_t n, Py_ssize_t grp, Py_ssize_t r0,
                    Py_ssize_t rows, Py_ssize_t blk0, Py_ssize_t blk1, Py_ssize_t xc, Py_ssize_t xr) noexcept nogil:
    """Output rows ``[r0, r0 + rows)`` of sample ``n``, the channels of blocks ``[blk0, blk1)`` of group
    ``grp``: each block's weights stay in cache while it runs every row of the band. ``ys``: the strides
    of ``y``'s four axes, in floats."""
    cdef int nv = fwd_vectors(g)
    cdef Py_ssize_t width = FC_LANES * nv, blocks = (g.cog + width - 1) // width, blk, r, oc
    cdef Py_ssize_t o0, nr, npix
    cdef fc_src s
    cdef const float* base
    if pixel_tiles(g):
        copy_band(x, buf, g, n, grp, r0, rows, xc)
        for blk in range(blk0, blk1):
            oc = grp * g.cog + blk * width
            r = 0
            while r < rows:
                nr = min(fc_ptile_rows(<int>g.cog), rows - r)
                o0 = 0
                while o0 < g.ow:
                    npix = min(FC_LANES, g.ow - o0)
                    fc_ptile_any(buf + r * g.sh * xr + o0, taps, <int>g.taps, g.sh * xr,
                                 wp + (grp * blocks + blk) * g.taps * width, <int>g.cog, <int>nr, <int>npix,
                                 y + n * ys[0] + oc * ys[1] + (r0 + r) * ys[2] + o0 * ys[3], ys[1], ys[2], ys[3],
                                 b + oc if b != NULL else NULL)
                    o0 += npix
                r += nr
        return
    s.taps, s.sw, s.cols, s.ekw, s.edw = taps, g.sw, NULL, 1, 0
    if FC_ROW_SHAPE(g.sw, g.kw, g.dw):
        s.ntaps, s.kw, s.dw = g.cig * g.kh, g.kw, g.dw
    else:
        s.ntaps, s.kw, s.dw = g.taps, 1, 0
    if copies(g):
        copy_band(x, buf, g, n, grp, r0, rows, xc)
        base = buf
    else:
        base = x + (n * g.c_in + grp * g.cig) * g.hw + r0 * g.sh * g.w
    for blk in range(blk0, blk1):
        oc = grp * g.cog + blk * width
        for r in range(rows):
            s.x = base + r * g.sh * xr
            fc_conv_row(&s, wp + (grp * blocks + blk) * g.taps * width, nv, g.ow,
                        y + n * ys[0] + oc * ys[1] + (r0 + r) * ys[2], ys[1], ys[3],
                        min(width, g.cog - blk * width), b + oc if b != NULL else NULL)


def conv2d(const float[:, :, :, ::1] x, const float[:, :, :, ::1] w, float[::1] packed, bint adjoint,
           bint fresh, const float[::1] b, float[:, :, :, :] y, float[:, ::1] scratch, tuple geo,
           Py_ssize_t rows, Py_ssize_t chunk, int threads):
    """``y = conv(x, w) + b`` (``b`` may be None) with the weights packed in ``packed`` (packed there
    first, as ``pack_weights(w, packed, geo, adjoint, fresh)`` does, unless ``w`` is None), in tasks of
    ``rows`` output rows of one sample by ``chunk`` blocks of output channels of one group; ``scratch``:
    ``scratch_size(geo, rows)`` elements per thread. One parallel region of ``threads`` threads runs the
    packing, then the convolution. ``y`` may be a strided view (one input phase of a strided input
    gradient, written in place). Returns the number of weight blocks written."""
    cdef Geo g = make_geo(geo)
    cdef const float* bp = NULL
    cdef Py_ssize_t width = FC_LANES * fwd_vectors(&g), blocks = (g.cog + width - 1) // width
    cdef Py_ssize_t bands = (g.oh + rows - 1) // rows, chunks = (blocks + chunk - 1) // chunk
    cdef Py_ssize_t packs = 0, tasks = 0, written = 0, t, k, r0, xc, xr
    cdef Py_ssize_t ys[4]
    cdef Py_ssize_t* taps
    if w is not None and g.taps > 0:
        packs = g.groups * blocks
    if b is not None:
        bp = &b[0]
    for k in range(4):
        ys[k] = y.strides[k] // <Py_ssize_t>sizeof(float)
    xc, xr = strides(&g, rows, copies(&g))
    taps = tap_offsets(&g, xc, xr, FC_ROW_SHAPE(g.sw, g.kw, g.dw) and not pixel_tiles(&g))
    if taps == NULL:
        raise MemoryError()
    if y.size == 0:
        packs = 0
    else:
        tasks = g.n * g.groups * bands * chunks
    with nogil, parallel(num_threads=threads):
        for t in prange(packs, schedule="static"):
            written += pack_task(&w[0, 0, 0, 0], &packed[0], &g, adjoint, t, fresh)
        for t in prange(tasks, schedule="dynamic"):
            k = t % chunks
            r0 = (t // chunks % bands) * rows
            conv_task(&x[0, 0, 0, 0], &packed[0], bp, &y[0, 0, 0, 0], ys, &scratch[threadid(), 0], taps, &g,
                      t // (chunks * bands * g.groups), t // (chunks * bands) % g.groups, r0,
                      min(rows, g.oh - r0), k * chunk, min(blocks, (k + 1) * chunk), xc, xr)
    free(taps)
    return written


cdef enum:
    GRAD_PIXELS = 256  # output pixels a weight-gradient tile reduces over before it stores, at least


cdef inline Py_ssize_t grad_samples(Geo* g) noexcept nogil:
    """Samples whose output pixels one weight-gradient tile reduces over before it stores its sums: a
    tile's store (a transpose, a load and a store per channel) costs as much as a reduction over some
    dozens of pixels, and 1-D layers have ten or twenty per sample (the MNIST-1D nets' layers at batch
    100: 19-24 -> 10-15 us; the paper net's backward pass 0.40-0.41 -> 0.34-0.35 ms a step)."""
    return max(1, min(g.n, GRAD_PIXELS // max(1, g.ohw)))


def grad_weight_scratch(tuple geo):
    """``(padded input, packed gradient)`` elements per thread that ``grad_weight`` needs."""
    cdef Geo g = make_geo(geo)
    cdef Py_ssize_t width = FC_LANES * grad_vectors(&g), samples = grad_samples(&g)
    return samples * scratch_size(geo, g.oh), samples * g.ohw * width


cdef inline bint row_tiles(Geo* g) noexcept nogil:
    """Whether the weight gradient's tiles are whole kernel rows (kernel widths with a specialised tile)."""
    return (g.kw == 3 or g.kw == 5) and (g.dw == 1 or (g.kw == 3 and g.dw == 2))


cdef void weight_task(const float* gy, const float* x, float* out, float* scratch, Py_ssize_t sample,
                      float* packed, const Py_ssize_t* rows, const Py_ssize_t* taps, Geo* g, Py_ssize_t xc,
                      Py_ssize_t n0, Py_ssize_t n1, Py_ssize_t grp, Py_ssize_t blk0, Py_ssize_t blk1) noexcept nogil:
    """One task of ``grad_weight``: ``out[oc, tap]`` for the output channels of blocks ``[blk0, blk1)``
    of group ``grp``, summed over samples ``[n0, n1)``, ``grad_samples`` of them at a time (``rows``
    lists the output rows of that many, a padded copy of each ``sample`` floats apart in ``scratch``)."""
    cdef int nv = grad_vectors(g)
    cdef Py_ssize_t width = FC_LANES * nv, oc0, nc, step, count, t0, tile, n, blk, k, ns
    cdef Py_ssize_t group = grad_samples(g)
    cdef fc_src s
    cdef fc_dst d
    s.taps, s.kw, s.dw, s.sw = rows, <int>g.ow, <int>g.sw, 0  # reduce over output rows
    if row_tiles(g):  # tiles of whole kernel rows (c, i): nearly equal numbers of rows
        s.ekw, s.edw, count = g.kw, g.dw, g.cig * g.kh
        step = max(1, fc_tile_width_max(count * g.kw, 3 * fc_wgrad3_rows(nv) if wgrad3_tiles(g) else FC_MAX_NJ)
                   // g.kw)
    else:             # tiles of nearly equal numbers of taps
        s.ekw, s.edw, count = 1, 0, g.taps
        step = fc_tile_width(count)
    if n0 == n1:  # a run without samples (the first sample's tiles write, later ones add)
        oc0 = grp * g.cog + blk0 * width
        fill(out + oc0 * g.taps, <float>0, (min(g.cog, blk1 * width) - blk0 * width) * g.taps)
    n = n0
    while n < n1:
        ns = min(group, n1 - n)
        s.ntaps = <int>(ns * g.oh)
        if padded(g):
            for k in range(ns):
                copy_band(x, scratch + k * sample, g, n + k, grp, 0, g.oh, xc)
            s.x = scratch
        else:
            s.x = x + (n * g.c_in + grp * g.cig) * g.hw
        for blk in range(blk0, blk1):
            oc0 = grp * g.cog + blk * width
            nc = min(width, g.cog - blk * width)
            # the block's output gradient, pixel-major (sample by sample): the micro-kernel's "weights"
            fc_pack_block(gy + (n * g.c_out + oc0) * g.ohw, g.ohw, <int>ns, g.c_out * g.ohw, <int>g.ohw, 0,
                          <int>nc, <int>width, packed, 1)
            d.yc, d.ys, d.nc, d.bias, d.add = g.taps, 1, nc, NULL, n > n0
            for tile in range((count + step - 1) // step):
                t0 = tile * step
                s.cols = taps + t0
                d.y = out + oc0 * g.taps + t0 * s.ekw
                if not fc_wgrad3_any(&s, packed, <int>min(step, count - t0), nv, &d):
                    fc_tile_any(&s, packed, min(step, count - t0) * s.ekw, nv, &d)
        n += ns


def grad_weight(const float[:, :, :, ::1] gy, const float[:, :, :, ::1] x, float[:, :, ::1] out,
                float[:, ::1] scratch, float[:, ::1] packed, tuple geo, Py_ssize_t chunk, int threads):
    """The weight gradient: ``out[k, oc, tap]`` sums it over the ``k``-th of ``out.shape[0]`` equal
    runs of samples (the caller sums over ``k``), in tasks of ``chunk`` blocks of output channels.

    The same micro-kernel with the roles turned: the reduction runs over output pixels (of
    ``grad_samples`` samples at a time), the tile holds up to ``FC_MAX_NJ`` kernel taps by a block of
    output channels. A task (run of samples, group, blocks) copies those samples' zero-padded inputs to
    ``scratch[thread]`` and transposes each block's output gradient to pixel-major rows in
    ``packed[thread]`` (they play the weights); sizes: ``grad_weight_scratch``. ``threads``: of the
    parallel region.
    """
    cdef Geo g = make_geo(geo)
    cdef Py_ssize_t width = FC_LANES * grad_vectors(&g), blocks = (g.cog + width - 1) // width
    cdef Py_ssize_t runs = out.shape[0], per_run = (g.n + runs - 1) // runs
    cdef Py_ssize_t chunks = (blocks + chunk - 1) // chunk, task, run, k, oy, xc, xr
    cdef Py_ssize_t group = grad_samples(&g), sample = scratch_size(geo, g.oh)
    cdef Py_ssize_t* rows
    cdef Py_ssize_t* taps
    if gy.size == 0 or x.size == 0 or g.taps == 0:
        out[...] = 0
        return
    xc, xr = strides(&g, g.oh, padded(&g))
    taps = tap_offsets(&g, xc, xr, row_tiles(&g))
    rows = <Py_ssize_t*>malloc(group * g.oh * sizeof(Py_ssize_t))
    if taps == NULL or rows == NULL:
        free(taps)
        free(rows)
        raise MemoryError()
    for k in range(group):  # output row oy of the group's k-th sample: in its padded copy, or in x
        for oy in range(g.oh):
            rows[k * g.oh + oy] = (k * sample if padded(&g) else k * g.c_in * g.hw) + oy * g.sh * xr
    with nogil, parallel(num_threads=threads):
        for task in prange(runs * g.groups * chunks, schedule="dynamic"):
            k = task % chunks
            run = task // (chunks * g.groups)
            weight_task(&gy[0, 0, 0, 0], &x[0, 0, 0, 0], &out[run, 0, 0], &scratch[threadid(), 0], sample,
                        &packed[threadid(), 0], rows, taps, &g, xc, min(g.n, run * per_run),
                        min(g.n, (run + 1) * per_run), task // chunks % g.groups, k * chunk,
                        min(blocks, (k + 1) * chunk))
    free(taps)
    free(rows)
