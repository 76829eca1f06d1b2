# cython: language_level=3
"""Winograd convolution F(m x m, 3 x 3), m = 4 or 2, float32: forward pass (which also runs input
gradients, as the forward pass of the adjoint convolution) and weight gradient.

The transforms and the per-coordinate matrix products are in ``winograd.h``; here they are driven over
OpenMP threads. Tiles are enumerated by the rows table of the caller (``fastconv.backends.winograd``)
and processed in chunks of whole tile rows, each chunk in two phases:

1. every input channel's tiles are transformed into ``v`` (for the weight gradient, also every panel
   of output channels' output-gradient tiles into ``z``);
2. forward: per block of output channels, the block's weights are transformed (once per thread and
   block), multiplied per transform coordinate and the output tiles written; weight gradient: per
   block of input by output channels, the products are reduced over the chunk's tiles and the
   transformed-back gradient added to ``gw``.

Large layers share each chunk among the threads: each phase is a parallel loop (over channels, then
over blocks and ranges of tiles), ``v`` and ``z`` are shared. Layers with few channels per group run
privately: each thread runs whole items, one group of one chunk each, both phases, with its own ``v``
and ``z`` (one group's tiles), in one parallel region.

Buffer layouts (per group; ``L = lanes()``, ``a2 = (m + 2)^2``, ``sp`` a chunk's tiles rounded up to
``L``): ``v[t // L][xi][c][t % L]``, ``z[xi][k // L][t][k % L]`` (panels of ``L`` output channels);
consecutive coordinates ``xi`` lie ``skew(n)`` floats apart (``n`` the floats of one).
"""
from cython.parallel cimport parallel, prange, threadid

import numpy as np

cdef extern from "winograd.h" nogil:
    ctypedef struct wg_row:
        pass
    int WG_LANES
    int WG_STRAIGHT
    Py_ssize_t wg_round(Py_ssize_t n)
    Py_ssize_t wg_skew(Py_ssize_t n)
    Py_ssize_t wg_line_floats(int m, Py_ssize_t widest)
    void wg_input_channel(int m, const float* x, const float* next, const wg_row* rows, Py_ssize_t nrows,
                          Py_ssize_t t0, float* line, float* s, float* v, Py_ssize_t vt, Py_ssize_t vx)
    void wg_gy_block(int m, const float* gy, Py_ssize_t yk, Py_ssize_t nk, const wg_row* rows,
                     Py_ssize_t nrows, Py_ssize_t t0, float* line, float* s, float* z, Py_ssize_t zx)
    void wg_weights(int m, const float* w, Py_ssize_t ks, Py_ssize_t cs, int flip, Py_ssize_t k0,
                    Py_ssize_t nk, Py_ssize_t cin, float* u, Py_ssize_t us)
    void wg_multiply(int m, const float* u, Py_ssize_t us, Py_ssize_t nk, Py_ssize_t cin, const float* v,
                     Py_ssize_t vt, Py_ssize_t vx, Py_ssize_t n, float* m_, Py_ssize_t ms)
    void wg_output(int m, const float* m_, Py_ssize_t us, Py_ssize_t ms, Py_ssize_t nk, const float* bias,
                   Py_ssize_t t_lo, Py_ssize_t n, const wg_row* rows, Py_ssize_t nrows, Py_ssize_t t0,
                   float* o, float* y, Py_ssize_t yk, float* chk)
    void wg_weight_grad(int m, const float* v, Py_ssize_t vt, Py_ssize_t vx, const float* z, Py_ssize_t zx,
                        Py_ssize_t sp, Py_ssize_t nc, Py_ssize_t nk, float* mt, float* gw, Py_ssize_t cin,
                        int acc)

ROW_FIELDS = 16  # int64 fields of one tile row (wg_row)


def lanes():
    """Tiles per vector of this build (16 with AVX-512, 8 with AVX2)."""
    return WG_LANES


def straight():
    """Whether this build moves every row of tiles straight between its plane and the tiles, any column
    stride (AVX-512); else narrow rows go in groups and dilation sub-grids through scratch lines."""
    return bool(WG_STRAIGHT)


def round_tiles(Py_ssize_t n):
    """``n`` rounded up to whole vectors: the padded length of every per-tile buffer."""
    return wg_round(n)


def skew(Py_ssize_t n):
    """The stride of a buffer's transform coordinates that hold ``n`` floats each (``wg_skew``)."""
    return wg_skew(n)


def line_floats(int m, Py_ssize_t widest):
    """Floats of the line scratch the staging and scattering of tile rows of at most ``widest`` tiles
    take (``wg_line_floats``)."""
    return wg_line_floats(m, widest)


cdef inline const wg_row* row_ptr(const Py_ssize_t[:, ::1] rows, Py_ssize_t r) noexcept nogil:
    return <const wg_row*>&rows[r, 0]


cdef inline Py_ssize_t chunk_tiles(const Py_ssize_t[:, ::1] rows, Py_ssize_t ra,
                                   Py_ssize_t rb) noexcept nogil:
    """Tiles of rows [ra, rb)."""
    return rows[rb - 1, 14] + rows[rb - 1, 13] - rows[ra, 14]


cdef inline Py_ssize_t v_coordinate(Py_ssize_t cin) noexcept nogil:
    """Floats between transform coordinates of ``v``: a vector of tiles of each of ``cin`` channels."""
    return wg_skew(cin * WG_LANES)


cdef inline Py_ssize_t v_group(int m, Py_ssize_t cin, Py_ssize_t sp) noexcept nogil:
    """Floats of one group's transformed tiles in ``v`` (``sp`` tiles)."""
    return sp // WG_LANES * (m + 2) * (m + 2) * v_coordinate(cin)


cdef void transform_inputs(int m, const float[:, :, :, ::1] x, Py_ssize_t groups,
                           const Py_ssize_t[:, ::1] rows, Py_ssize_t ra, Py_ssize_t rb, Py_ssize_t sp,
                           float* v, Py_ssize_t g0, float[:, ::1] stage, Py_ssize_t line,
                           Py_ssize_t channel) noexcept nogil:
    """Phase 1 for one input channel: its transformed tiles in ``v``, which holds groups ``g0`` on (the
    next channel's rows prefetched as this one's are staged)."""
    cdef Py_ssize_t cin = x.shape[1] // groups, tid = threadid(), vx = v_coordinate(cin)
    cdef const float* plane = &x[0, channel, 0, 0]
    wg_input_channel(m, plane, plane + x.shape[2] * x.shape[3] if channel + 1 < x.shape[1] else NULL,
                     row_ptr(rows, ra), rb - ra, rows[ra, 14], &stage[tid, line], &stage[tid, 0],
                     v + (channel // cin - g0) * v_group(m, cin, sp) + channel % cin * WG_LANES,
                     (m + 2) * (m + 2) * vx, vx)


cdef void transform_output_gradients(int m, const float[:, :, :, ::1] gy, Py_ssize_t groups,
                                     const Py_ssize_t[:, ::1] rows, Py_ssize_t ra, Py_ssize_t rb,
                                     Py_ssize_t sp, float* z, Py_ssize_t g0, float[:, ::1] stage,
                                     Py_ssize_t line, Py_ssize_t panel) noexcept nogil:
    """Phase 1 for one panel of ``lanes()`` output channels: their transformed tiles in ``z``, which
    holds groups ``g0`` on."""
    cdef Py_ssize_t cout = gy.shape[1] // groups, panels = (cout + WG_LANES - 1) // WG_LANES
    cdef Py_ssize_t g = panel // panels, k0 = panel % panels * WG_LANES, tid = threadid()
    cdef Py_ssize_t zx = wg_skew(panels * sp * WG_LANES)
    wg_gy_block(m, &gy[0, g * cout + k0, 0, 0], gy.shape[2] * gy.shape[3], min(WG_LANES, cout - k0),
                row_ptr(rows, ra), rb - ra, rows[ra, 14], &stage[tid, line], &stage[tid, 0],
                z + (g - g0) * (m + 2) * (m + 2) * zx + k0 * sp, zx)


cdef void products(int m, const float* u, Py_ssize_t us, Py_ssize_t nk, Py_ssize_t cin, const float* v,
                   Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t tsub, const float* bias, const wg_row* rows,
                   Py_ssize_t nrows, Py_ssize_t t0, float* mbuf, float* obuf, float* y,
                   Py_ssize_t ohw, float* chk) noexcept nogil:
    """Output tiles [lo, hi) of one block of ``nk`` output channels, ``tsub`` tiles at a time (``chk``:
    the thread's check of them, ``wg_output``)."""
    cdef Py_ssize_t s0 = lo, vx = v_coordinate(cin), vt = (m + 2) * (m + 2) * vx
    while s0 < hi:
        wg_multiply(m, u, us, nk, cin, v + s0 // WG_LANES * vt, vt, vx, min(tsub, hi - s0), mbuf, tsub)
        wg_output(m, mbuf, us, tsub, nk, bias, s0, min(tsub, hi - s0), rows, nrows, t0, obuf, y, ohw, chk)
        s0 += tsub


cdef void private_forward(int m, const float[:, :, :, ::1] x, const float[:, :, :, ::1] w, const float* bp,
                          float[:, :, :, ::1] y, const Py_ssize_t[:, ::1] rows,
                          const Py_ssize_t[:, ::1] chunks, Py_ssize_t groups, bint flip, Py_ssize_t nkb,
                          Py_ssize_t tsub, float[:, ::1] v, float[:, ::1] stage, Py_ssize_t line,
                          float[:, ::1] ubuf, float[:, ::1] mbuf, float[:, ::1] obuf, float[:, ::1] chk,
                          int threads):
    """``forward`` with each thread running whole items (one group's channels of one chunk), both
    phases, in one parallel region: its tiles stay in its cache, and no thread waits for another. Each
    thread transforms a block's weights the first time it meets the block (``ubuf[thread]`` holds them
    all): for layers with few channels per group."""
    cdef Py_ssize_t c_in = x.shape[1], c_out = y.shape[1], cin = c_in // groups, cout = c_out // groups
    cdef Py_ssize_t ohw = y.shape[2] * y.shape[3], kblocks = (cout + nkb - 1) // nkb, us = wg_round(nkb)
    cdef Py_ssize_t ks = 9 if flip else cin * 9, cs = cout * 9 if flip else 9
    cdef Py_ssize_t block = (m + 2) * (m + 2) * wg_skew(cin * us)
    cdef Py_ssize_t item, ci, ra, rb, sp, tiles, tid, c, key, g, k0
    cdef unsigned char[:, ::1] done = np.zeros((ubuf.shape[0], groups * kblocks), np.uint8)  # per thread
    with nogil, parallel(num_threads=threads):
        for item in prange(chunks.shape[0] * groups, schedule="dynamic"):
            tid = threadid()
            ci = item // groups
            g = item % groups
            ra = chunks[ci, 0]
            rb = chunks[ci, 1]
            tiles = chunk_tiles(rows, ra, rb)
            sp = wg_round(tiles)
            for c in range(g * cin, (g + 1) * cin):
                transform_inputs(m, x, groups, rows, ra, rb, sp, &v[tid, 0], g, stage, line, c)
            for key in range(g * kblocks, (g + 1) * kblocks):
                k0 = key % kblocks * nkb
                if not done[tid, key]:
                    wg_weights(m, &w[0, 0, 0, 0] + g * cout * cin * 9, ks, cs, flip, k0, min(nkb, cout - k0),
                               cin, &ubuf[tid, key * block], us)
                    done[tid, key] = 1
                products(m, &ubuf[tid, key * block], us, min(nkb, cout - k0), cin, &v[tid, 0], 0, tiles, tsub,
                         bp + g * cout + k0 if bp != NULL else NULL, row_ptr(rows, ra), rb - ra, rows[ra, 14],
                         &mbuf[tid, 0], &obuf[tid, 0], &y[0, 0, 0, 0] + (g * cout + k0) * ohw, ohw,
                         &chk[tid, 0])


def forward(const float[:, :, :, ::1] x, const float[:, :, :, ::1] w, const float[::1] b,
            float[:, :, :, ::1] y, const Py_ssize_t[:, ::1] rows, const Py_ssize_t[:, ::1] chunks, int m,
            Py_ssize_t groups, bint flip, Py_ssize_t nkb, Py_ssize_t span, Py_ssize_t tsub, float[:, ::1] v,
            float[:, ::1] stage, Py_ssize_t line, float[:, ::1] ubuf, float[:, ::1] mbuf, float[:, ::1] obuf,
            float[:, ::1] chk, bint private, int threads):
    """``y = conv(x, w) + b`` (``b`` may be None) for a stride-1 3x3 convolution whose tiles ``rows``
    lists, in ``chunks`` (row ranges). With ``flip`` the kernels are ``w`` flipped in space with in and
    out channels swapped (the adjoint convolution: ``w`` is then ``(C_in, C_out/groups, 3, 3)`` of
    this convolution's channels). Output channels run in blocks of ``nkb``, tiles in ranges of at most
    ``span`` per task and ``tsub`` per product (both multiples of ``lanes()``), on ``threads`` threads.

    Without ``private`` the chunks run one after the other, each in the two phases (``v`` shared);
    with it each thread runs whole items (``private_forward``; a row of ``v`` per thread). Scratch
    otherwise per thread; ``stage[thread, line:]`` holds the line scratch (sizes:
    ``fastconv.backends.winograd``). Each thread adds every output it computes, times 0, to its row of
    ``chk`` (``lanes()`` floats of a zeroed row): NaN there where one is not finite."""
    cdef Py_ssize_t c_in = x.shape[1], c_out = y.shape[1], cin = c_in // groups, cout = c_out // groups
    cdef Py_ssize_t ohw = y.shape[2] * y.shape[3], kblocks = (cout + nkb - 1) // nkb, us = wg_round(nkb)
    cdef Py_ssize_t ks = 9 if flip else cin * 9, cs = cout * 9 if flip else 9
    cdef Py_ssize_t ci, ra, rb, t0, sp, tiles, splits, task, tid, g, k0, nk, lo, key
    cdef const float* bp = NULL
    cdef Py_ssize_t[::1] last = np.full(ubuf.shape[0], -1, np.intp)
    if y.size == 0 or rows.shape[0] == 0:
        return
    if b is not None:
        bp = &b[0]
    if private:
        private_forward(m, x, w, bp, y, rows, chunks, groups, flip, nkb, tsub, v, stage, line, ubuf, mbuf,
                        obuf, chk, threads)
        return
    for ci in range(chunks.shape[0]):
        ra, rb = chunks[ci, 0], chunks[ci, 1]
        t0, tiles = rows[ra, 14], chunk_tiles(rows, ra, rb)
        sp = wg_round(tiles)
        with nogil, parallel(num_threads=threads):
            for task in prange(c_in, schedule="dynamic"):
                transform_inputs(m, x, groups, rows, ra, rb, sp, &v[0, 0], 0, stage, line, task)
        splits = (sp + span - 1) // span
        with nogil, parallel(num_threads=threads):
            for task in prange(groups * kblocks * splits, schedule="static"):
                tid = threadid()
                key = task // splits
                g = key // kblocks
                k0 = key % kblocks * nkb
                nk = min(nkb, cout - k0)
                if last[tid] != key:
                    wg_weights(m, &w[0, 0, 0, 0] + g * cout * cin * 9, ks, cs, flip, k0, nk, cin,
                               &ubuf[tid, 0], us)
                    last[tid] = key
                lo = task % splits * span
                products(m, &ubuf[tid, 0], us, nk, cin, &v[0, g * v_group(m, cin, sp)], lo,
                         min(lo + span, tiles), tsub, bp + g * cout + k0 if bp != NULL else NULL,
                         row_ptr(rows, ra), rb - ra, t0,
                         &mbuf[tid, 0], &obuf[tid, 0], &y[0, 0, 0, 0] + (g * cout + k0) * ohw, ohw,
                         &chk[tid, 0])


cdef void weight_task(int m, float[:, ::1] gw, Py_ssize_t part, Py_ssize_t groups, Py_ssize_t cin,
                      Py_ssize_t cout, Py_ssize_t cb, Py_ssize_t kb, const float* v, const float* z,
                      Py_ssize_t g0, Py_ssize_t sp, float[:, ::1] mbuf, Py_ssize_t task,
                      int acc) noexcept nogil:
    """Phase 2 of the weight gradient for one block of input by output channels, into ``gw[part]``
    (``v`` and ``z`` hold groups ``g0`` on)."""
    cdef Py_ssize_t kblocks = (cout + kb - 1) // kb, cblocks = (cin + cb - 1) // cb
    cdef Py_ssize_t g = task // (cblocks * kblocks), c0 = task // kblocks % cblocks * cb
    cdef Py_ssize_t k0 = task % kblocks * kb
    cdef Py_ssize_t a2 = (m + 2) * (m + 2), vx = v_coordinate(cin)
    cdef Py_ssize_t zx = wg_skew((cout + WG_LANES - 1) // WG_LANES * sp * WG_LANES)
    wg_weight_grad(m, v + (g - g0) * v_group(m, cin, sp) + c0 * WG_LANES, a2 * vx, vx,
                   z + (g - g0) * a2 * zx + k0 * sp, zx, sp, min(cb, cin - c0), min(kb, cout - k0),
                   &mbuf[threadid(), 0], &gw[part, ((g * cout + k0) * cin + c0) * 9], cin, acc)


def grad_weight(const float[:, :, :, ::1] gy, const float[:, :, :, ::1] x, float[:, ::1] gw,
                const Py_ssize_t[:, ::1] rows, const Py_ssize_t[:, ::1] chunks, int m, Py_ssize_t groups,
                Py_ssize_t cb, Py_ssize_t kb, float[:, ::1] v, float[:, ::1] z, float[:, ::1] stage,
                Py_ssize_t line, float[:, ::1] mbuf, bint private, int threads):
    """The weight gradient of the stride-1 3x3 convolution whose tiles ``rows`` lists, summed over
    ``chunks``, in ``gw`` (flat weights per row); tasks own blocks of ``cb`` input by ``kb`` output
    channels (``kb`` a multiple of ``lanes()``), on ``threads`` threads.

    Without ``private`` the chunks run one after the other, each in the two phases, into row 0 of
    ``gw``; with it each thread runs whole items, one group of one chunk each, in one parallel region (a
    row of ``v`` and ``z`` per thread), chunk ``i``'s gradient in row ``i`` of ``gw`` (the caller sums the
    rows in order: the result depends neither on which thread ran which item nor on the thread count).
    Scratch otherwise per thread (``stage[thread, line:]``: the line scratch)."""
    cdef Py_ssize_t c_in = x.shape[1], c_out = gy.shape[1], cin = c_in // groups, cout = c_out // groups
    cdef Py_ssize_t gpanels = (cout + WG_LANES - 1) // WG_LANES, panels = groups * gpanels
    cdef Py_ssize_t gtasks = ((cin + cb - 1) // cb) * ((cout + kb - 1) // kb), tasks = groups * gtasks
    cdef Py_ssize_t item, ci, g, ra, rb, sp, task, tid
    if gw.size == 0:
        return
    if rows.shape[0] == 0:
        gw[...] = 0
        return
    if private:
        with nogil, parallel(num_threads=threads):
            for item in prange(chunks.shape[0] * groups, schedule="dynamic"):
                tid = threadid()
                ci = item // groups
                g = item % groups
                ra = chunks[ci, 0]
                rb = chunks[ci, 1]
                sp = wg_round(chunk_tiles(rows, ra, rb))
                for task in range(g * cin, (g + 1) * cin):
                    transform_inputs(m, x, groups, rows, ra, rb, sp, &v[tid, 0], g, stage, line, task)
                for task in range(g * gpanels, (g + 1) * gpanels):
                    transform_output_gradients(m, gy, groups, rows, ra, rb, sp, &z[tid, 0], g, stage, line,
                                               task)
                for task in range(g * gtasks, (g + 1) * gtasks):
                    weight_task(m, gw, ci, groups, cin, cout, cb, kb, &v[tid, 0], &z[tid, 0], g, sp, mbuf,
                                task, 0)
        return
    for ci in range(chunks.shape[0]):
        ra, rb = chunks[ci, 0], chunks[ci, 1]
        sp = wg_round(chunk_tiles(rows, ra, rb))
        with nogil, parallel(num_threads=threads):
            for task in prange(c_in + panels, schedule="dynamic"):
                if task < c_in:
                    transform_inputs(m, x, groups, rows, ra, rb, sp, &v[0, 0], 0, stage, line, task)
                else:
                    transform_output_gradients(m, gy, groups, rows, ra, rb, sp, &z[0, 0], 0, stage, line,
                                               task - c_in)
        with nogil, parallel(num_threads=threads):
            for task in prange(tasks, schedule="dynamic"):
                weight_task(m, gw, 0, groups, cin, cout, cb, kb, &v[0, 0], &z[0, 0], 0, sp, mbuf, task,
                            ci > 0)
