"""The Cython/OpenMP CPU backend (``"cython"``): wraps the extension modules built from ``src_cython/``.

Convolutions run one of three algorithms, chosen per shape by :func:`conv_algorithm` (or forced with
``algorithm=``):

- ``"direct"``: loops over kernel taps (``_cy._conv``), for depthwise-like convolutions (one or two
  channels per group in and out), where a matrix product would be too thin to pay for unfolding the
  input. A stride-1 tap is one long vector operation over a zero-padded copy of the plane;
- ``"gemm"``: im2col of a tile of outputs at a time (rows of a large plane, or several small planes)
  into a per-thread workspace that stays in cache, then BLAS ``?gemm`` (``_cy._im2col``); a 1x1,
  stride-1, unpadded convolution multiplies the input planes directly;
- ``"blocked"`` (float32): register-blocked direct convolution (``_cy._blocked``): a tile of a few
  output pixels by one or two vectors of output channels stays in registers through the whole
  reduction, reading the input in place, so nothing is unfolded. It runs forward passes, weight
  gradients (the same tile turned: kernel taps by output channels, reduced over output pixels) and the
  input gradients of stride-1 convolutions (the forward pass of the adjoint convolution: flipped
  kernels, channels swapped), where :func:`conv_algorithm` found it faster; asked for float64 or for a
  strided input gradient, it means the automatic choice between the other two.

Pooling and unpooling run ``_cy._pool``. Every kernel is parallel over OpenMP threads
(``fastconv.set_num_threads`` / ``OMP_NUM_THREADS``). The GEMM kernels either run tiles in parallel with
a one-thread BLAS, or, with fewer tiles than threads, one tile at a time with a threaded BLAS, so the
two thread pools never compete. (SciPy's BLAS thread count is process-wide: it is set for the duration
of a call and restored.) Scratch comes from ``workspaces`` (per Python thread and dtype, grown as needed).
"""
import collections
import contextlib
import ctypes
import functools
import glob
import os
import sys
import threading

import numpy as np

from ..shapes import ConvSpec
from .workspaces import clear_workspaces, workspace  # noqa: F401 (part of this module's API)

try:
    from .._cy import _blocked, _conv, _im2col, _omp, _pool
except ImportError as err:  # extension not compiled (no C compiler at install time)
    _IMPORT_ERROR = err
else:
    _IMPORT_ERROR = None

ALGORITHMS = ("direct", "gemm", "blocked")
_TILE_BYTES = 1 << 20  # im2col tile per thread: stays in a core's L2
_BAND_BYTES = 1 << 19  # padded input rows of one "blocked" task: stay in L2 beside the weights
_MIN_TILE = 64  # outputs: thinner matrix products waste the GEMM
_SMALL_GEMM = 1 << 20  # m * n * k up to which OpenBLAS multiplies without packing (cheaper when small)


def check_available():
    """Raise ImportError naming the fix when the compiled extension is missing."""
    if _IMPORT_ERROR is not None:
        raise ImportError(f"fastconv's Cython extension is not built ({_IMPORT_ERROR}); reinstall fastconv "
                          f"with a C compiler available, e.g. `pip install --no-build-isolation -e .`")


def num_threads():
    """OpenMP threads the kernels use."""
    return _omp.max_threads()


# ------------------------------------------------------------------------------- geometry
def conv_geo(spec):
    """The tuple the kernels turn into their ``Geo`` struct (``src_cython/_loops.pxi``)."""
    return (spec.n, spec.c_in, spec.h, spec.w, spec.c_out, spec.kh, spec.kw, spec.oh, spec.ow,
            *spec.stride, spec.padding[0], spec.padding[2], *spec.dilation, spec.groups)


def pool_geo(spec):
    """A pooling op as a depthwise convolution: one channel per group."""
    return (spec.n, spec.c, spec.h, spec.w, spec.c, spec.kh, spec.kw, spec.oh, spec.ow,
            *spec.stride, *spec.padding, *spec.dilation, max(spec.c, 1))


def is_pointwise(spec):
    """1x1, stride 1, no padding: a convolution that is a plain matrix product."""
    return (spec.kh == spec.kw == 1 and spec.stride == (1, 1) and not any(spec.padding))


def adjoint_spec(spec):
    """The stride-1 convolution whose forward pass is the input gradient of stride-1 ``spec``: ``gy``
    correlated with the flipped kernels (in and out channels swapped, :func:`adjoint_weight`), padded by
    the kernel's reach minus the padding. None when ``spec`` is strided or padded beyond that reach."""
    reach_h, reach_w = spec.dilation[0] * (spec.kh - 1), spec.dilation[1] * (spec.kw - 1)
    pt, pl = reach_h - spec.padding[0], reach_w - spec.padding[2]
    pb, pr = spec.h - spec.oh + reach_h - pt, spec.w - spec.ow + reach_w - pl
    if spec.stride != (1, 1) or min(pt, pb, pl, pr) < 0:
        return None
    return ConvSpec(spec.n, spec.c_out, spec.oh, spec.ow, spec.c_in, spec.kh, spec.kw, spec.h, spec.w,
                    (1, 1), (pt, pb, pl, pr), spec.dilation, spec.groups, spec.dims)


def adjoint_weight(w, spec):
    """``w`` flipped in space with in and out channels swapped per group: the weights of ``adjoint_spec``."""
    g, cog, cig = spec.groups, spec.c_out // spec.groups, spec.c_in // spec.groups
    flipped = w.reshape(g, cog, cig, spec.kh, spec.kw)[..., ::-1, ::-1].transpose(0, 2, 1, 3, 4)
    return np.ascontiguousarray(flipped).reshape(spec.c_in, cog, spec.kh, spec.kw)


def _blocked_applies(spec, dtype, op):
    """Whether the register-blocked kernel can run ``op``: float32 forward passes and weight gradients,
    and the input gradients of stride-1 convolutions (as the forward pass of their adjoint)."""
    if np.dtype(dtype) != np.float32:
        return False
    return op != "conv2d_grad_input" or adjoint_spec(spec) is not None


#: Below these the register-blocked kernel loses to the GEMM path (see ``conv_algorithm``).
BLOCKED_MIN_CHANNELS = 8     # output channels per group of the tile (input channels for the input gradient)
BLOCKED_MIN_PIXELS = 32      # output pixels per sample: the weight gradient's reduction
BLOCKED_MAX_PADDING = 0.25   # share of the adjoint's input that is padding (input gradient)
BLOCKED_MIN_TAPS = 16        # reduction length of a forward tile (input channels per group x kernel taps)
BLOCKED_MIN_FLOPS = 2e6      # forward passes smaller than this are dominated by the call's set-up


def _adjoint_padding(spec):
    """The share of padding in the input of the adjoint convolution (zeros the input gradient reads)."""
    rh, rw = spec.dilation[0] * (spec.kh - 1), spec.dilation[1] * (spec.kw - 1)
    return 1 - spec.oh * spec.ow / ((spec.oh + 2 * rh) * (spec.ow + 2 * rw))


def conv_algorithm(spec, dtype=np.float32, op="conv2d"):
    """The algorithm for ``op`` (``"conv2d"``, ``"conv2d_grad_input"`` or ``"conv2d_grad_weight"``) on
    this convolution. The matrix products of im2col + GEMM have ``C_out/groups`` rows and
    ``C_in/groups * kh * kw`` columns; when both channel counts per group are tiny (depthwise: 1 and 1)
    they are too thin to beat the direct loops, which are memory-bound. Elsewhere the register-blocked
    kernel runs where it applies and was measured faster (2 threads, ms, blocked against GEMM):

    - forward passes with 8 or more output channels per group (a tile's vector of channels is then
      mostly full: LeNet's C1, 6 channels, 0.99 against 0.72 at batch 128), pointwise too
      (x(16, 256, 28, 28), w(128, 256, 1, 1): 4.8 against 6.1), except one-pixel outputs (LeNet's C5),
      reductions of fewer than 16 taps (MNIST-1D's first layer, one input channel: 0.066 against
      0.021) and passes under 2 MFLOP (its third: 0.085 against 0.060; its second, 3.8 MFLOP: 0.116
      against 0.149);
    - input gradients with 8 or more input channels per group (lenet_c3's 6: 0.78 against 0.32) whose
      adjoint reads at most 25% padding (vgg_3x3 9.3 against 11.5; LeNet's C5, 1x1 outputs padded to
      9x9: 2.1 against 0.35), pointwise excepted (5.7 against 4.9);
    - weight gradients of stride-1 convolutions with 8 or more output channels per group and at least
      32 output pixels per sample to reduce over (vgg_3x3 11.8 against 14.0, dilated 3.6 against 5.1,
      lenet_c3 0.75 against 1.8; 4x4 outputs: 1.0 against 0.8; resnet_s2's stride 2: 6.1 against 5.6),
      pointwise excepted (5.9 against 5.3).
    """
    cig, cog = spec.c_in // spec.groups, spec.c_out // spec.groups
    pointwise, pixels = is_pointwise(spec), spec.oh * spec.ow
    if not pointwise and cig * cog <= 4:
        return "direct"
    wins = {"conv2d": (cog >= BLOCKED_MIN_CHANNELS and pixels > 1 and spec.flops >= BLOCKED_MIN_FLOPS
                       and cig * spec.kh * spec.kw >= BLOCKED_MIN_TAPS),
            "conv2d_grad_input": (cig >= BLOCKED_MIN_CHANNELS and not pointwise
                                  and _adjoint_padding(spec) <= BLOCKED_MAX_PADDING),
            "conv2d_grad_weight": (cog >= BLOCKED_MIN_CHANNELS and pixels >= BLOCKED_MIN_PIXELS
                                   and spec.stride == (1, 1) and not pointwise)}[op]
    return "blocked" if wins and _blocked_applies(spec, dtype, op) else "gemm"


def _algorithm(spec, algorithm, dtype, op):
    if algorithm is None:
        return conv_algorithm(spec, dtype, op)
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be None or one of {ALGORITHMS}, got {algorithm!r}")
    if algorithm == "blocked" and not _blocked_applies(spec, dtype, op):
        return conv_algorithm(spec, np.float64, op)  # the choice among the other two
    return algorithm


# ------------------------------------------------------------------------------ BLAS threads
def _openblas_library():
    """SciPy's OpenBLAS, loaded with ctypes, if SciPy's BLAS is one (Linux/macOS wheels)."""
    import scipy
    root = os.path.dirname(os.path.dirname(scipy.__file__))
    patterns = [os.path.join(root, "scipy.libs", "*openblas*"),
                os.path.join(os.path.dirname(scipy.__file__), ".dylibs", "*openblas*")]
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError), open("/proc/self/maps") as maps:
            patterns = sorted({line.split()[-1] for line in maps
                               if "openblas" in line and "scipy" in line and "numpy" not in line}) + patterns
    for pattern in patterns:
        for path in glob.glob(pattern):
            with contextlib.suppress(OSError):
                lib = ctypes.CDLL(path)
                for prefix in ("scipy_openblas", "openblas"):
                    get = getattr(lib, f"{prefix}_get_num_threads", None)
                    set_ = getattr(lib, f"{prefix}_set_num_threads", None)
                    if get is not None and set_ is not None:
                        get.restype, set_.argtypes = ctypes.c_int, [ctypes.c_int]
                        return get, set_
    return None


_blas_threads = None if _IMPORT_ERROR is not None else _openblas_library()


@contextlib.contextmanager
def blas_threads(n):
    """Run the block with SciPy's BLAS on ``n`` threads (a no-op if its thread count is unknown)."""
    if _blas_threads is None:
        yield
        return
    get, set_ = _blas_threads
    old = get()
    if old != n:
        set_(n)
    try:
        yield
    finally:
        if old != n:
            set_(old)


def _gemm_plan(spec, itemsize, whole_samples=False):
    """``(tile, threads, blas)``: outputs per matrix product (flattened over sample and pixel: whole
    rows of one sample within the cache budget, or several whole samples when they are tiny), OpenMP
    threads for the tile loop and BLAS threads inside each product. ``whole_samples``: tasks own whole
    samples (input gradient)."""
    threads = num_threads()
    ohw, total = spec.oh * spec.ow, spec.n * spec.oh * spec.ow
    taps, cog = spec.c_in // spec.groups * spec.kh * spec.kw, spec.c_out // spec.groups
    tile = _TILE_BYTES // ((taps + cog) * itemsize)
    if ohw < _MIN_TILE:  # tiny planes (1-D signals): whole samples, in BLAS's small-matrix range
        tile = ohw * max(1, min(tile, _SMALL_GEMM // max(1, cog * taps)) // ohw)
    else:
        tile = min(max(_MIN_TILE, tile), ohw)
        tile -= tile % spec.ow if tile >= spec.ow else 0
    tile = max(1, min(tile, total))
    if _blas_threads is None:  # can't keep the BLAS to one thread: let it parallelise each product
        return tile, 1, threads

    def tasks(tile):
        if whole_samples:
            return spec.groups * -(-spec.n // max(1, tile // ohw))
        return spec.groups * -(-total // tile)
    if tasks(tile) < threads:  # cut smaller tiles to feed every thread
        if whole_samples and tile > ohw:
            tile = ohw * max(1, spec.n * spec.groups // threads)
        elif not whole_samples:
            tile = max(_MIN_TILE, total * spec.groups // threads)
    return (tile, threads, 1) if tasks(tile) >= threads else (tile, 1, threads)


def _cols_workspace(spec, tile, threads, dtype):
    """Per thread: a tile's columns, then an output-shaped block (``(taps + cog) * tile``)."""
    taps, cog = spec.c_in // spec.groups * spec.kh * spec.kw, spec.c_out // spec.groups
    return workspace("cols", (threads, (taps + cog) * tile), dtype)


def _wide_workspace(spec, dtype):
    return workspace("planes", (num_threads(), _conv.wide_size(conv_geo(spec))), dtype)


@functools.lru_cache(maxsize=512)
def _blocked_plan(spec, threads, band_bytes):
    """``(geo, rows, chunk, scratch)`` of a blocked forward pass: tasks of ``rows`` output rows of one
    sample by ``chunk`` blocks of output channels, ``scratch`` elements of padded band per thread.

    Picks the split with the shortest estimated makespan (tasks per thread times a task's time: its
    multiply-adds, its band copy and its weights read from the shared cache), among bands whose input
    stays within ``band_bytes`` (L2) beside one block of weights: a thread that runs every block of a
    band copies it once; splitting the blocks feeds more threads (batch 1 and small maps) at the price
    of copying the band once per chunk, and splitting the rows at the price of reading the weights
    once per band.
    """
    geo = conv_geo(spec)
    cig, cog = spec.c_in // spec.groups, spec.c_out // spec.groups
    width = _blocked.block_width(cog)
    blocks = max(1, -(-cog // width))
    block_bytes = 4 * width * cig * spec.kh * spec.kw
    best = None
    for rows in range(spec.oh, 0, -1):
        band = 4 * _blocked.scratch_size(geo, rows) or 4 * cig * ((rows - 1) * spec.stride[0] + 1) * spec.w
        if band + block_bytes > band_bytes and rows > 1:
            continue
        bands = -(-spec.oh // rows)
        for chunk in sorted({-(-blocks // k) for k in range(1, blocks + 1)}, reverse=True):
            tasks = spec.n * spec.groups * bands * -(-blocks // chunk)
            # cycles at 64 flop, 16 copied bytes or 32 bytes of weights per cycle
            task = (2 * rows * spec.ow * chunk * width * cig * spec.kh * spec.kw / 64
                    + 4 * _blocked.scratch_size(geo, rows) / 16 + chunk * block_bytes / 32)
            cost = (-(-tasks // threads) * task, tasks)
            if best is None or cost < best[0]:
                best = cost, rows, chunk
    _, rows, chunk = best
    return geo, rows, chunk, max(1, _blocked.scratch_size(geo, rows))


class _PackedWeights(threading.local):
    """Weights packed for the blocked kernel, per Python thread, keyed by the weight array's address,
    shape and packing. Every call checks the packed copy against the weights (bit for bit, in the
    packing pass itself: one read of each) and rewrites what differs, so an optimizer step,
    ``load_state_dict`` or any write into the array is seen, while inference repacks nothing. Least
    recently used entries go beyond ``PACKED_WEIGHTS_BYTES``."""

    def __init__(self):
        self.entries = collections.OrderedDict()  # (address, shape, form) -> packed
        self.bytes = 0
        self.blocks_written = 0  # blocks packed or repacked (tests read it)

    def get(self, w, geo, form, adjoint):
        key = (w.ctypes.data, w.shape, form)
        packed = self.entries.get(key)
        if packed is None:
            packed = self.entries[key] = np.empty(_blocked.packed_size(geo), np.float32)
            self.bytes += packed.nbytes
            self.blocks_written += _blocked.pack_weights(w, packed, geo, adjoint, True)
            self._evict()
        else:
            self.entries.move_to_end(key)
            self.blocks_written += _blocked.pack_weights(w, packed, geo, adjoint, False)
        return packed

    def _evict(self):
        while self.bytes > PACKED_WEIGHTS_BYTES and len(self.entries) > 1:
            self.bytes -= self.entries.popitem(last=False)[1].nbytes

    def clear(self):
        self.entries.clear()
        self.bytes = 0


#: Bytes of packed weights kept per Python thread.
PACKED_WEIGHTS_BYTES = 256 << 20
packed_weights = _PackedWeights()


def _blocked_conv2d(x, w, b, y, spec, adjoint=None):
    """The blocked forward pass of ``spec``, or with ``adjoint`` (the forward's spec) its input
    gradient: ``x`` is then the output gradient and ``w`` the forward's weights."""
    geo, rows, chunk, scratch = _blocked_plan(spec, num_threads(), _BAND_BYTES)
    form = ("adjoint" if adjoint else "forward", spec.groups)
    packed = packed_weights.get(w, geo, form, adjoint is not None)
    _blocked.conv2d(x, packed, b, y, workspace("band", (num_threads(), scratch), np.float32), geo, rows, chunk)
    return y


# ----------------------------------------------------------------------------- convolution
def conv2d(x, w, b, spec, algorithm=None):
    y = np.empty(spec.y_shape, x.dtype)
    b = None if b is None else np.ascontiguousarray(b, x.dtype)
    algorithm = _algorithm(spec, algorithm, x.dtype, "conv2d")
    if algorithm == "blocked":
        return _blocked_conv2d(x, w, b, y, spec)
    if algorithm == "direct":
        _conv.conv2d(x, w, b, y, _wide_workspace(spec, x.dtype), conv_geo(spec))
        return y
    tile, threads, blas = _gemm_plan(spec, x.itemsize)
    with blas_threads(blas):
        _im2col.conv2d_gemm(x, w, b, y, _cols_workspace(spec, tile, threads, x.dtype), conv_geo(spec),
                            tile, threads)
    return y


def conv2d_grad_input(gy, w, spec, algorithm=None):
    gx = np.empty(spec.x_shape, gy.dtype)
    algorithm = _algorithm(spec, algorithm, gy.dtype, "conv2d_grad_input")
    if algorithm == "blocked":
        return _blocked_conv2d(gy, w, None, gx, adjoint_spec(spec), adjoint=spec)
    if algorithm == "direct":
        _conv.conv2d_grad_input(gy, w, gx, _wide_workspace(spec, gy.dtype), conv_geo(spec))
        return gx
    tile, threads, blas = _gemm_plan(spec, gy.itemsize, whole_samples=True)
    with blas_threads(blas):
        _im2col.conv2d_grad_input_gemm(gy, w, gx, _cols_workspace(spec, tile, threads, gy.dtype),
                                       conv_geo(spec), tile, threads)
    return gx


@functools.lru_cache(maxsize=512)
def _grad_weight_plan(spec, threads):
    """``(geo, runs, chunk)`` of a blocked weight gradient: tasks of ``chunk`` blocks of output channels
    of one group over one of ``runs`` runs of samples.

    A task copies each sample's padded input once and transposes each block's output gradient once; its
    sums go straight into the gradient (one run) or into one partial gradient per run, added up after.
    Picks the shortest estimated makespan (tasks per thread times a task's multiply-adds and copies,
    plus the partial gradients' sum): many blocks (large layers, small batches) give every thread its
    own blocks, few blocks (LeNet's 16 channels) cut the batch into runs.
    """
    geo = conv_geo(spec)
    cig, cog = spec.c_in // spec.groups, spec.c_out // spec.groups
    width = _blocked.block_width(cog)
    blocks = max(1, -(-cog // width))
    taps, pixels = cig * spec.kh * spec.kw, spec.oh * spec.ow
    sample_bytes = 4 * max(_blocked.scratch_size(geo, spec.oh), 0)
    best = None
    for runs in range(1, max(1, min(spec.n, 4 * threads)) + 1):
        per_run = -(-spec.n // runs)
        for chunk in sorted({-(-blocks // k) for k in range(1, blocks + 1)}, reverse=True):
            tasks = runs * spec.groups * -(-blocks // chunk)
            # cycles at 64 flop, 16 copied or summed bytes per cycle
            task = per_run * (2 * chunk * width * taps * pixels / 64 + sample_bytes / 16
                              + 4 * chunk * width * pixels / 16)
            total = 4 * spec.c_out * taps * runs / 16 if runs > 1 else 0
            cost = (-(-tasks // threads) * task + total, tasks)
            if best is None or cost < best[0]:
                best = cost, runs, chunk
    return geo, best[1], best[2]


def _blocked_grad_weight(gy, x, spec):
    geo, runs, chunk = _grad_weight_plan(spec, num_threads())
    scratch_size, packed_size = _blocked.grad_weight_scratch(geo)
    threads = num_threads()
    if runs == 1:
        gw = np.empty(spec.w_shape, np.float32)
        out = gw.reshape(1, spec.c_out, -1)
    else:
        out = workspace("grad_weight", (runs, spec.c_out, int(np.prod(spec.w_shape[1:]))), np.float32)
    _blocked.grad_weight(gy, x, out, workspace("band", (threads, max(1, scratch_size)), np.float32),
                         workspace("packed_grad", (threads, max(1, packed_size)), np.float32), geo, chunk)
    return gw if runs == 1 else out.sum(axis=0).reshape(spec.w_shape)


def conv2d_grad_weight(gy, x, spec, algorithm=None):
    algorithm = _algorithm(spec, algorithm, gy.dtype, "conv2d_grad_weight")
    if algorithm == "blocked":
        return _blocked_grad_weight(gy, x, spec)
    if algorithm == "direct":
        gw = np.empty(spec.w_shape, gy.dtype)
        acc = workspace("tap_sums", (num_threads(), spec.kh * spec.kw), np.float64)
        _conv.conv2d_grad_weight(gy, x, gw, acc, _wide_workspace(spec, gy.dtype), conv_geo(spec))
        return gw
    tile, threads, blas = _gemm_plan(spec, gy.itemsize)
    acc = workspace("grad_weight", (threads, int(np.prod(spec.w_shape))), gy.dtype)
    acc.fill(0)
    with blas_threads(blas):
        _im2col.conv2d_grad_weight_gemm(gy, x, acc, _cols_workspace(spec, tile, threads, gy.dtype),
                                        conv_geo(spec), tile, threads)
    return acc.sum(axis=0).reshape(spec.w_shape)


# -------------------------------------------------------------------------------- pooling
def max_pool2d(x, spec):
    y = np.empty(spec.y_shape, x.dtype)
    indices = np.empty(spec.y_shape, np.int64)
    _pool.max_pool2d(x, y, indices, pool_geo(spec))
    return y, indices


def max_pool2d_grad(gy, indices, spec):
    gx = np.empty(spec.x_shape, gy.dtype)
    _pool.scatter(gy, np.ascontiguousarray(indices, np.int64), gx, True)
    return gx


def avg_pool2d(x, spec):
    y = np.empty(spec.y_shape, x.dtype)
    _pool.avg_pool2d(x, y, pool_geo(spec), spec.count_include_pad)
    return y


def avg_pool2d_grad(gy, spec):
    gx = np.empty(spec.x_shape, gy.dtype)
    scratch = workspace("avg_grad", (num_threads(), max(1, spec.oh * spec.ow)), gy.dtype)
    _pool.avg_pool2d_grad(gy, gx, scratch, pool_geo(spec), spec.count_include_pad)
    return gx


def max_unpool2d(x, indices, out_hw):
    y = np.empty(x.shape[:2] + tuple(out_hw), x.dtype)
    _pool.scatter(x, np.ascontiguousarray(indices, np.int64), y, False)
    return y


def max_unpool2d_grad(gy, indices):
    gx = np.empty(indices.shape, gy.dtype)
    _pool.gather(gy, np.ascontiguousarray(indices, np.int64), gx)
    return gx
