"""The Winograd backend (``"winograd"``): stride-1 3x3 convolutions in float32 with fewer multiplications.

Winograd's minimal filtering algorithm F(m x m, 3 x 3) computes a tile of m x m outputs from the
(m + 2) x (m + 2) input patch under it with (m + 2)^2 multiplications per channel pair instead of 9 m^2:
4x fewer for ``tile=4`` (F(4x4, 3x3)), 2.25x fewer for ``tile=2`` (F(2x2, 3x3)). The input patches,
the kernels and the output tiles go through small linear transforms, and the sum over input channels
becomes one matrix product per transform coordinate (``src_cython/winograd.h`` has the matrices and the
kernels, ``_winograd.pyx`` the parallel driver).

- forward: the weights are transformed on every call, by each task for its block of output channels
  (no cache: a weight array may change in place between calls, and comparing it with a saved copy
  reads as many bytes as transforming it). Measured share of the call, one thread: 512 channels at
  14x14, 0.8 ms of 2.7 (batch 1) and of 15 (batch 8); 256 channels at 28x28, 0.2 ms of 2.1 and of 14;
  64 channels, under 1%;
- input gradient: the forward pass of the adjoint convolution (the output gradient correlated with the
  kernels flipped in space, in and out channels swapped, padding ``2d - p``), read from the same
  weights;
- weight gradient: the adjoint of the same bilinear form, ``gw = G^T [sum over tiles of
  (A gy A^T) . (B^T x B)] G``: the sum over tiles is accumulated in the transformed domain.
- dilation d: the d x d interleaved sub-grids of the output are each a dense 3x3 convolution of one
  sub-grid of the input; each becomes its own plane of tiles.

Any padding, groups (depthwise included), batch and channel counts. ``supports(op, spec, dtype,
algorithm)`` says what runs here (strides, other kernels and float64, which exact paths keep, do not);
the two tiles are the algorithms ``"winograd:f4"`` and ``"winograd:f2"``. Where it pays (one thread, CPU
ms, Winograd ``tile=4`` against the kernel ``"auto"`` runs otherwise, forward / input gradient / weight
gradient, AMD EPYC Zen 5): with 32 or more channels per group it wins (vgg_3x3 5.4 / 5.3 / 5.9 against
10.6 / 11.0 / 12.3; 512 channels at 7x7, batch 8: 4.8 / 6.4 / 7.7 against 13 / 23 / 21; the dilated
shape 1.6 / 1.6 / 1.7 against 3.0 / 2.8 / 2.8; 128 channels in 4 groups at 28x28 1.2 / 1.2 / 1.4 against
2.2 / 2.2 / 2.2), and it loses on few channels (LeNet's 6 to 16: 0.50 / 0.74 / 0.55 against 0.22 /
0.44 / 0.24; 3 input channels at 224x224) and badly on depthwise layers (8.7 / 9.0 / 42 against 2.3 /
2.4 / 3.4): the planner's to weigh.

Error. The transforms' constants (up to 8 in A, 5 in B, 1/24 in G for ``tile=4``) amplify float32
rounding. The bound, for every output (``x``, ``w``: the operands; the reduction ``R = C_in/groups * 9``
for the forward pass, ``C_out/groups * 9`` for the input gradient with the output gradient in place of
``x``, ``N * OH * OW`` for the weight gradient with the output gradient and the input as operands)::

    max |y - y_ref| <= ERROR_BOUND * max|x| * max|w| * R        (ERROR_BOUND = 2e-6, both tiles)

and, on zero-mean data, ``||y - y_ref|| / ||y_ref|| <= NORM_BOUND[tile]`` (2e-5 for ``tile=4``, 5e-6 for
``tile=2``). Measured against the float64 reference on the benchmark shapes (vgg_3x3, a LeNet-sized 3x3
layer, dilated, 512 channels at 14x14) and 60 random configurations, each with both tiles, normal and
uniform data: largest elementwise ratio 6.5e-7 (``tile=4``) and 5.7e-7 (``tile=2``); norm-wise 5.6e-6
and 1.7e-6. The direct float32 kernel measures ~4e-7 norm-wise on the same data: F(2x2) is as
accurate, F(4x4) ~4x less.
``tests/test_winograd.py`` asserts both bounds. float64 is not offered: exact paths keep it.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from .. import runtime
from .registry import CHECKED, RESULT, NonFinite
from .workspaces import result, workspace

runtime.start_pools()  # before the extension loads OpenMP, which reads its wait policy only then
try:
    from .._cy import _omp, _winograd
except ImportError as err:  # extension not compiled
    _IMPORT_ERROR = err
else:
    _IMPORT_ERROR = None

#: The output tile sizes m of F(m x m, 3 x 3) this backend runs, and their names as algorithms.
TILES = (4, 2)
ALGORITHMS = ("f4", "f2")
TILE_OF = {"f4": 4, "f2": 2}
OPS = ("conv2d", "conv2d_grad_input", "conv2d_grad_weight")
#: A NaN or inf in a tile's input patch reaches all of its outputs through the transforms (and the
#: neighbouring tiles, whose patches overlap), more than the reference's, so each result is checked
#: (``registry.nonfinite_checks``) and the reference runs where it is not finite. That finds every
#: NaN and inf the reference would give: where an output depends on an input value or a weight, the
#: dependence is a sum over transform coordinates of products of entries of A, B and G, so some
#: coordinate carries the value to that output, and a NaN or inf stays one there (padded zeros are
#: multiplied, as the reference multiplies them, and 0 * inf is NaN). The forward pass checks its
#: outputs as it computes them (``_winograd.forward``'s ``chk``): reading the result after the call
#: instead took vgg_3x3's forward 2.44 -> 2.71 ms and forward + backward 6.96 -> 7.49 (medians,
#: alternating in one process), and reading the operands cost more still. The weight gradient's small
#: result is read after the call.
_RESULTS = {"conv2d": (CHECKED, "x", "w"), "conv2d_grad_input": (CHECKED, "gy", "w"),
            "conv2d_grad_weight": (RESULT,)}
NONFINITE_CHECKS = {"f4": _RESULTS, "f2": _RESULTS}
#: Seconds per multiply-add of the transformed-domain products on one core (the cost model's constant,
#: as the direct backends'), and what the transforms add to them: measured on one thread, vgg_3x3 ran
#: 5.4 ms against the direct kernel's 10.6, 2.04x fewer where the products alone are 4x fewer.
SECONDS_PER_MAC = 6e-11
TRANSFORM_FACTOR = 2.0
#: max |y - y_ref| / (max|x| * max|w| * reduction) and ||y - y_ref|| / ||y_ref|| (module docstring).
ERROR_BOUND = 2e-6
NORM_BOUND = {4: 2e-5, 2: 5e-6}
#: Transformed tiles of one chunk (all channels) held at once, bytes (the chunk stays in cache), unless
#: that is fewer than ``CHUNK_TILES`` tiles: the weights, transformed again for every chunk, must serve
#: many tiles.
CHUNK_BYTES = 4 << 20
CHUNK_TILES = 128
#: Layers whose transformed weights fit in this many bytes, with tiles for ``PRIVATE_CHUNKS`` items,
#: run privately: each thread runs whole items, one group's channels of a chunk of
#: ``PRIVATE_CHUNK_BYTES`` (its tiles stay in its L2), in a single parallel region, transforming the
#: weights it needs once itself. Larger layers share each chunk among the threads: two parallel regions
#: per chunk, each thread transforming some weights. (grouped_3x3, 32 channels in 4 groups, ran shared
#: chunks of all groups until items took one group: weight gradient 0.84 -> 0.74 ms, forward + both
#: gradients 2.49 -> 2.34, medians of 10 rounds alternating in one process; it held in slower spells
#: of the machine too, 0.91 -> 0.76 and 3.03 -> 2.72 over 40.)
PRIVATE_WEIGHT_BYTES = 1 << 20
PRIVATE_CHUNK_BYTES = 1 << 20
PRIVATE_CHUNKS = 4
#: A forward task's products per transform coordinate, bytes of output (stays in L2).
PRODUCT_BYTES = 256 << 10
#: Output channels per forward task (rows of the register tile: two blocks of 14 with AVX-512), fewer
#: where their transformed weights would outgrow this many bytes (they stay in L2 beside the tiles).
FORWARD_CHANNELS = 28
WEIGHT_BYTES = 1 << 20
#: The weight transform's cost per channel pair, in vectors of tiles multiplied (``default_tile``).
WEIGHT_TRANSFORM_VECTORS = 0.6
#: Direct-algorithm flops per thread below which a call runs on fewer threads (a parallel region and its
#: barriers cost more than they save on tiny layers).
FLOPS_PER_THREAD = 4e6


def check_available():
    """Raise ImportError naming the fix when the compiled extension is missing."""
    if _IMPORT_ERROR is not None:
        raise ImportError(f"fastconv's Cython extension is not built ({_IMPORT_ERROR}); reinstall fastconv "
                          f"with a C compiler available, e.g. `pip install --no-build-isolation -e .`")


def supports(op, spec, dtype, algorithm=None):
    """Whether this backend runs kernel ``op`` on ``spec`` in ``dtype`` (either tile): stride-1 3x3
    float32 convolutions (any padding, dilation, groups)."""
    return (op in OPS and dtype is not None and np.dtype(dtype) == np.float32 and spec.dims == 2
            and spec.kh == spec.kw == 3 and spec.stride == (1, 1))


def seconds(op, spec, dtype, algorithm):
    """Model time of one kernel: the direct multiply-adds times ``(m + 2)^2 / (9 m^2)``, times what the
    transforms add (``TRANSFORM_FACTOR``)."""
    m = TILE_OF[algorithm]
    return SECONDS_PER_MAC * spec.flops / 2 * (m + 2) ** 2 / (9 * m * m) * TRANSFORM_FACTOR


def tile_count(spec, tile):
    """Tiles of ``tile x tile`` outputs that cover the output, every sample and dilation sub-grid."""
    count = 0
    for r in range(spec.dilation[0]):
        for s in range(spec.dilation[1]):
            rows, cols = -(-(spec.oh - r) // spec.dilation[0]), -(-(spec.ow - s) // spec.dilation[1])
            count += -(-max(rows, 0) // tile) * -(-max(cols, 0) // tile)
    return spec.n * count


def dense_dilation():
    """The largest dilation whose sub-grids this build stages about as fast as undilated rows: 2 where
    rows go straight (AVX-512: a strided vector is two masked loads and a permute), else 1 (AVX2 and
    scalar builds copy strided columns one by one). Measured with AVX2 code on AVX-512 hardware, the
    dilated layer (32 channels at 64x64, dilation 2), forward / input gradient / weight gradient ms:
    Winograd 2.94 / 2.89 / 2.78 against the register-blocked kernel's 2.73 / 2.72 / 2.84."""
    return 2 if _IMPORT_ERROR is None and _winograd.straight() else 1


def default_tile(spec):
    """The tile with the smaller modelled cost: per channel pair, (tile + 2)^2 products per vector of
    tiles (vectors are padded, so 4x4 tiles lose on maps that leave most lanes empty) plus the weight
    transform, worth ``WEIGHT_TRANSFORM_VECTORS`` vectors. Measured on one thread, ms, tile 4 against 2:
    512 channels at 7x7, batch 1: 2.7 against 1.5 (4 tiles fill a quarter vector); batch 8: 4.8 against
    7.6; 512 at 14x14, batch 1: 2.7 against 3.4; vgg_3x3: 6.5 against 9.1."""
    lanes = _winograd.lanes() if _IMPORT_ERROR is None else 16
    costs = {tile: (tile + 2) ** 2 * (-(-tile_count(spec, tile) // lanes) + WEIGHT_TRANSFORM_VECTORS)
             for tile in TILES}
    return min(TILES, key=costs.get)


def _check_tile(tile):
    if tile is not None and tile not in TILES:
        raise ValueError(f"tile must be None or one of {TILES}, got {tile!r}")


# ------------------------------------------------------------------------------- geometry
@lru_cache(maxsize=256)
def _plan(geo, m, weight_grad=False):
    """``(rows, chunks, longest, private)`` for the convolution ``geo = (n, c_in, h, w, c_out, oh, ow, pt,
    pl, dh, dw, groups)`` (stride 1, 3x3; negative padding crops) and tile ``m``: the tile rows, the
    chunks (row ranges of nearly equal tile counts), the longest chunk's tiles rounded up to vectors,
    and whether each thread runs whole items (see ``PRIVATE_WEIGHT_BYTES``). The thread count decides
    nothing here, so that results do not depend on it."""
    rows = _tile_rows(geo, m)
    n, c_in, _, _, c_out, *_, groups = geo
    a2 = (m + 2) ** 2
    per_tile = 4 * a2 * max(1, (c_in + c_out if weight_grad else c_in) // groups)  # of one group
    total = int(rows[:, 13].sum())
    per_chunk = max(CHUNK_TILES, PRIVATE_CHUNK_BYTES // per_tile)
    private = (4 * a2 * c_in // groups * c_out <= PRIVATE_WEIGHT_BYTES
               and total * groups >= PRIVATE_CHUNKS * per_chunk)
    if not private:
        per_chunk = max(CHUNK_TILES, CHUNK_BYTES // (per_tile * groups))
    count = -(-total // per_chunk)
    if private and count > 1 and count * groups % 2:  # an even count of items (chunks x groups): two
        count += 1  # threads end together (vgg_3x3, 13 -> 14 chunks: forward + backward 7.0-7.2 -> 6.7-6.8
                    # ms, forward 1.90-1.99 -> 1.86-1.90)
    # chunk i ends at the first row whose end passes i/count of the tiles
    ends = np.searchsorted(rows[:, 14] + rows[:, 13], np.arange(1, count + 1) * total / count, "left") + 1
    bounds = np.unique(np.concatenate([[0], np.minimum(ends, len(rows))]))
    chunks = np.stack([bounds[:-1], bounds[1:]], axis=1).astype(np.intp)
    longest = max((int(rows[b - 1, 14] + rows[b - 1, 13] - rows[a, 14]) for a, b in chunks), default=0)
    return rows, chunks, _winograd.round_tiles(longest), private


def _tile_rows(geo, m):
    """The rows of tiles (``wg_row`` in ``winograd.h``) of every sample and dilation sub-grid."""
    n, c_in, h, w, c_out, oh, ow, pt, pl, dh, dw, _ = geo
    planes = []
    for r in range(dh):
        for s in range(dw):
            out_h, out_w = -(-(oh - r) // dh), -(-(ow - s) // dw)
            if out_h <= 0 or out_w <= 0:
                continue
            top, left = (r - pt) // dh, (s - pl) // dw  # first input row / column of the sub-grid's tiles
            er, es = r - pt - top * dh, s - pl - left * dw  # the input sub-grid they read
            in_h, in_w = max(0, -(-(h - er) // dh)), max(0, -(-(w - es) // dw))
            planes.append((er * w + es, r * ow + s, in_h, in_w, dh * w, dw, out_h, out_w, dh * ow, dw,
                           top, left, -(-out_h // m), -(-out_w // m)))
    rows, t = [], 0
    for b in range(n):
        for x0, y0, in_h, in_w, xr, xc, out_h, out_w, yr, yc, top, left, tiles_y, tiles_x in planes:
            for ty in range(tiles_y):
                rows.append((b * c_in * h * w + x0, b * c_out * oh * ow + y0, in_h, in_w, xr, xc, out_h,
                             out_w, yr, yc, top + ty * m, left, ty * m, tiles_x, t, 0))
                t += tiles_x
    return np.array(rows, dtype=np.int64).reshape(-1, _winograd.ROW_FIELDS)


def _geo(spec):
    return (spec.n, spec.c_in, spec.h, spec.w, spec.c_out, spec.oh, spec.ow, spec.padding[0],
            spec.padding[2], *spec.dilation, spec.groups)


def _adjoint_geo(spec):
    """The stride-1 convolution of the output gradient whose output is the input gradient: kernels
    flipped, channels swapped, padding ``2d - p`` (negative: a crop)."""
    dh, dw = spec.dilation
    return (spec.n, spec.c_out, spec.oh, spec.ow, spec.c_in, spec.h, spec.w, 2 * dh - spec.padding[0],
            2 * dw - spec.padding[2], dh, dw, spec.groups)


def _blocks(total, most):
    """Block size for ``total`` items in blocks of at most ``most``, as even as possible."""
    count = -(-total // most)
    return -(-total // count)


# ----------------------------------------------------------------------------- kernels
def _threads(spec):
    """Threads for one call: all of OpenMP's, fewer on tiny convolutions."""
    return max(1, min(_omp.max_threads(), int(spec.flops / FLOPS_PER_THREAD)))


def _line(m, rows):
    """Floats of the line scratch for staging and writing rows of tiles: one zero-padded row (the widest,
    rounded up to vectors of tiles) or two lines of a group of narrow rows (``wg_line_floats``)."""
    return _winograd.line_floats(m, int(rows[:, 13].max()) if len(rows) else 0)


def _stage(threads, m, longest, rows, per_tile):
    """Per-thread stage of ``per_tile`` rows of tiles, then the line scratch (``_line``)."""
    line = per_tile * _winograd.skew(longest)
    return workspace("winograd_stage", (threads, _cache_lines(line + _line(m, rows))), np.float32), line


def _cache_lines(floats):
    """``floats`` rounded up to whole cache lines: the length of a per-thread row of scratch, so that
    every thread's row starts on a line as the workspace does."""
    return -(-floats // 16) * 16


def _tile_span(tiles, blocks, threads, lanes):
    """Tiles per forward task (a multiple of ``lanes``): the chunk's ``tiles`` are split until the tasks
    (``blocks`` of output channels times splits) give every thread four, in a multiple of the threads so
    that the static schedule is even, each split keeping at least two vectors of tiles."""
    most = max(1, tiles // (2 * lanes))
    splits = max(1, min(most, -(-4 * threads // blocks)))
    while blocks * splits % threads and splits < most:
        splits += 1
    return _winograd.round_tiles(-(-tiles // splits)) if tiles else lanes


def _v_size(m, cin, groups, longest):
    """Floats of the transformed input tiles of a chunk of ``longest`` tiles (``_winograd``'s layout)."""
    return groups * longest // _winograd.lanes() * (m + 2) ** 2 * _winograd.skew(cin * _winograd.lanes())


def _forward(x, w, b, y, geo, m, flip, threads):
    rows, chunks, longest, private = _plan(geo, m)
    lanes, a2, groups = _winograd.lanes(), (m + 2) ** 2, geo[-1]
    cin, cout = x.shape[1] // groups, y.shape[1] // groups
    nkb = _blocks(cout, max(lanes, min(FORWARD_CHANNELS, WEIGHT_BYTES // (4 * a2 * cin) // lanes * lanes)))
    us = _winograd.round_tiles(nkb)
    kblocks = -(-cout // nkb)
    span = _tile_span(longest, groups * kblocks, threads, lanes)
    # whole pairs of vectors: the register tile's two (c512_14 forward: 112 tiles, 7 vectors, 7.7 ms;
    # 96 or 128, 7.3)
    tsub = max(lanes, min(span, PRODUCT_BYTES // (4 * a2 * us) // (2 * lanes) * (2 * lanes)))
    copies, held = (threads, 1) if private else (1, groups)  # private: a group per thread
    v = workspace("winograd_v", (copies, max(1, _v_size(m, cin, held, longest))), np.float32)
    stage, line = _stage(threads, m, longest, rows, a2)
    blocks = groups * kblocks if private else 1
    ubuf = workspace("winograd_u", (threads, blocks * a2 * _winograd.skew(cin * us)), np.float32)
    mbuf = workspace("winograd_m", (threads, a2 * _winograd.skew(us * tsub)), np.float32)
    obuf = workspace("winograd_o", (threads, _cache_lines(m * m * tsub + lanes + _line(m, rows))), np.float32)
    chk = workspace("winograd_chk", (threads, _cache_lines(lanes)), np.float32)
    chk[...] = 0
    _winograd.forward(x, w, b, y, rows, chunks, m, groups, flip, nkb, span, tsub, v, stage, line, ubuf, mbuf,
                      obuf, chk, private, threads)
    if not np.isfinite(chk).all():
        raise NonFinite("a Winograd result is not finite (NaN or inf in its operands, or overflow)")
    return y


def _tile(algorithm, tile):
    """The tile of ``algorithm`` (``"f4"``, ``"f2"``) or ``tile`` (None: ``default_tile``)."""
    _check_tile(tile)
    return TILE_OF[algorithm] if algorithm is not None else tile


def conv2d(x, w, b, spec, algorithm=None, tile=None):
    """``conv(x, w) + b`` by F(tile x tile, 3 x 3) (``algorithm="f4"``/``"f2"`` or ``tile``; neither:
    ``default_tile``). Raises ``registry.NonFinite`` where an output is not finite (plans then run the
    reference)."""
    m = _tile(algorithm, tile) or default_tile(spec)
    y = result(spec.y_shape, np.float32)
    b = None if b is None else np.ascontiguousarray(b, np.float32)
    return _forward(np.ascontiguousarray(x), np.ascontiguousarray(w), b, y, _geo(spec), m, False,
                    _threads(spec))


def conv2d_grad_input(gy, w, spec, algorithm=None, tile=None):
    """The input gradient: the forward pass of the adjoint convolution (``_adjoint_geo``; ``NonFinite``
    as ``conv2d``)."""
    m = _tile(algorithm, tile) or default_tile(spec)
    gx = result(spec.x_shape, np.float32)
    return _forward(np.ascontiguousarray(gy), np.ascontiguousarray(w), None, gx, _adjoint_geo(spec), m, True,
                    _threads(spec))


def _grad_weight_blocks(cin, cout, groups, threads, lanes):
    """Input x output channels per weight-gradient task: large blocks (each task reads its channels'
    transformed tiles once), cut until every thread has two tasks."""
    cb, kb = _blocks(cin, 28), min(_winograd.round_tiles(cout), 64)
    while groups * -(-cin // cb) * -(-cout // kb) < 2 * threads and (cb > 7 or kb > lanes):
        if kb > lanes and (kb >= 2 * cb or cb <= 7):
            kb = _winograd.round_tiles(kb // 2)
        else:
            cb = _blocks(cin, -(-cb // 2))
    return cb, kb


def conv2d_grad_weight(gy, x, spec, algorithm=None, tile=None):
    """The weight gradient, summed over tiles in the transformed domain."""
    m = _tile(algorithm, tile) or default_tile(spec)
    threads = _threads(spec)
    rows, chunks, longest, private = _plan(_geo(spec), m, weight_grad=True)
    lanes, a2 = _winograd.lanes(), (m + 2) ** 2
    cin, cout = spec.c_in // spec.groups, spec.c_out // spec.groups
    cb, kb = _grad_weight_blocks(cin, cout, spec.groups, 1 if private else threads, lanes)
    kz = _winograd.round_tiles(cout)
    copies, held = (threads, 1) if private else (1, spec.groups)  # private: a group per thread
    v = workspace("winograd_v", (copies, max(1, _v_size(m, cin, held, longest))), np.float32)
    z = workspace("winograd_z", (copies, max(1, held * a2 * _winograd.skew(longest * kz))), np.float32)
    stage, line = _stage(threads, m, longest, rows, max(a2, lanes * m * m))
    mbuf = workspace("winograd_m", (threads, a2 * _winograd.skew(cb * kb)), np.float32)
    size = int(np.prod(spec.w_shape))
    if private:  # one gradient per chunk, summed below
        parts = workspace("winograd_gw", (len(chunks), size), np.float32)
    else:
        parts = result((1, size), np.float32)
    _winograd.grad_weight(np.ascontiguousarray(gy), np.ascontiguousarray(x), parts, rows, chunks, m,
                          spec.groups, cb, kb, v, z, stage, line, mbuf, private, threads)
    return (parts.sum(axis=0) if private else parts[0]).reshape(spec.w_shape)
