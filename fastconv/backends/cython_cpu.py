"""The Cython/OpenMP CPU backend (``"cython"``): wraps the extension modules built from ``src_cython/``.

Convolutions run one of three algorithms, the one they are handed (``algorithm=``; the planner chooses,
see ``model.cython_algorithm`` for where each wins):

- ``"direct"``: loops over kernel taps (``_cy._conv``), for thin layers (depthwise-like, or a few
  channel pairs per group under a wide kernel), where a matrix product would be too thin to pay for
  unfolding the input. A stride-1 tap is one long vector operation over a zero-padded copy of the plane;
- ``"gemm"``: im2col of a tile of outputs at a time (rows of a large plane, or several small planes)
  into a per-thread workspace that stays in cache, then BLAS ``?gemm`` (``_cy._im2col``); a 1x1,
  stride-1, unpadded convolution multiplies the input planes directly, and one whose single window is
  the whole input (LeNet-5's C5) is one product of the flattened batch (:func:`_whole_input`);
- ``"blocked"`` (float32): register-blocked direct convolution (``_cy._blocked``): a tile of a few
  output pixels by one or two vectors of output channels stays in registers through the whole
  reduction, reading the input in place, so nothing is unfolded. It runs forward passes, weight
  gradients (the same tile turned: kernel taps by output channels, reduced over output pixels) and the
  input gradients of stride-1 convolutions (the forward pass of the adjoint convolution: flipped
  kernels, channels swapped; see :func:`supports`). Its packed weights are kept per weight array
  (``packed_weights``) and checked against the array on every call; the split into tasks comes from
  ``_blocked_plan`` / ``_grad_weight_plan``; a portable build picks the kernel's build for the widest
  vectors the CPU has (``_widest_blocked``).

Pooling and unpooling run ``_cy._pool``. Every kernel is parallel over OpenMP threads
(``fastconv.set_num_threads`` / ``OMP_NUM_THREADS``). The GEMM kernels either run tiles in parallel with
a one-thread BLAS, or, with fewer tiles than threads, one tile at a time with a threaded BLAS, so the
two thread pools never compete. (SciPy's BLAS thread count is process-wide: it is set for the duration
of a call and restored.) Scratch comes from ``workspaces`` (per Python thread and dtype, grown as needed).
"""
import collections
import contextlib
import functools
import importlib
import threading

import numpy as np

from .. import runtime
from ..numpy_xp import gemm
from .._cy import not_built
from ..shapes import adjoint_spec, input_phases
from .registry import RESULT
from .workspaces import clear_workspaces, result, workspace  # noqa: F401 (part of this module's API)

runtime.start_pools()  # before the extension loads OpenMP, which reads its wait policy only then
try:
    from .._cy import _blocked, _conv, _im2col, _omp, _pool
except ImportError as err:  # extension not compiled (no C compiler at install time)
    _IMPORT_ERROR = err
else:
    _IMPORT_ERROR = None


def _widest_blocked():
    """The build of the register-blocked kernel for the widest vectors this CPU has: a portable build
    (FASTCONV_PORTABLE=1, baseline instructions) also compiles it for AVX2+FMA and AVX-512 (``setup.py``);
    a native build has the one for its CPU."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as cpu
    except ImportError:  # NumPy < 2
        from numpy.core._multiarray_umath import __cpu_features__ as cpu
    if _blocked.isa() == "AVX-512":
        return _blocked
    names = ["_blocked_avx512"] if cpu.get("AVX512_SKX") else []
    if cpu.get("AVX2") and cpu.get("FMA3") and _blocked.isa() != "AVX2+FMA":
        names.append("_blocked_avx2")
    for name in names:
        with contextlib.suppress(ImportError):
            return importlib.import_module(f"fastconv._cy.{name}")
    return _blocked


if _IMPORT_ERROR is None:
    _blocked = _widest_blocked()

ALGORITHMS = ("direct", "gemm", "blocked")
#: Operands whose NaN or inf an algorithm does not propagate as the reference does (it skips the padding
#: that the reference multiplies): the planner checks them (see ``registry.nonfinite_checks``).
NONFINITE_CHECKS = {"direct": {"conv2d": ("w",), "conv2d_grad_input": ("w",), "conv2d_grad_weight": (RESULT,)},
                    "blocked": {"conv2d_grad_input": ("w",)}}
_TILE_BYTES = 1 << 20  # im2col tile per thread: stays in a core's L2
_BAND_BYTES = 1 << 19  # padded input rows of one "blocked" task: stay in L2 beside the weights
_MIN_TILE = 64  # outputs: thinner matrix products waste the GEMM
_SMALL_GEMM = 1 << 20  # m * n * k up to which OpenBLAS multiplies without packing (cheaper when small)


def check_available():
    """Raise ImportError naming the fix when the compiled extension is missing."""
    if _IMPORT_ERROR is not None:
        raise ImportError(f"fastconv's Cython extension is {not_built(_IMPORT_ERROR)}")


def num_threads():
    """OpenMP threads the kernels use."""
    return _omp.max_threads()


# ------------------------------------------------------------------------------- geometry
def supports(op, spec, dtype, algorithm):
    """``"direct"`` and ``"gemm"`` run every convolution; ``"blocked"`` float32 forward passes and weight
    gradients, and the input gradients of stride-1 convolutions (as the forward pass of their adjoint,
    which must exist: ``shapes.adjoint_spec``), or of strided ones as one such pass per input phase
    (``shapes.input_phases``)."""
    if algorithm != "blocked":
        return algorithm in ALGORITHMS
    if dtype is None or np.dtype(dtype) != np.float32:
        return False
    return op != "conv2d_grad_input" or adjoint_spec(spec) is not None or (
        spec.stride != (1, 1) and input_phases(spec) is not None)


def pixel_tiles(op, spec):
    """Whether the blocked kernel runs ``op`` (forward pass or input gradient) on ``spec`` with its tile of
    pixel vectors, made for few channels (the input gradient: the adjoint's few output channels)."""
    if op == "conv2d_grad_input":
        spec = adjoint_spec(spec)
    return spec is not None and _blocked.runs_pixel_tiles(spec.geometry())


#: Seconds per multiply-add of the convolution kernels on one core (the cost model's constant; only its
#: ratio to the FFT's constants matters).
SECONDS_PER_MAC = 6e-11


def seconds(op, spec, dtype, algorithm):
    """Model time of one convolution kernel (forward and both gradients cost the same)."""
    return SECONDS_PER_MAC * spec.flops / 2


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
    if not runtime.blas_controllable():  # can't keep the BLAS to one thread: let it parallelise each product
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
    return workspace("planes", (num_threads(), _conv.wide_size(spec.geometry())), dtype)


#: Passes of fewer flops than this run on one thread: waking a second would cost more than it saves.
BLOCKED_PARALLEL_FLOPS = 1e6


def _threads(spec):
    """OpenMP threads for a blocked pass of ``spec``."""
    return num_threads() if spec.flops >= BLOCKED_PARALLEL_FLOPS else 1


@functools.lru_cache(maxsize=512)
def _blocked_plan(spec, threads, band_bytes):
    """``(geo, rows, chunk, scratch)`` of a blocked forward pass on ``threads`` threads: tasks of ``rows``
    output rows of one sample by ``chunk`` blocks of output channels, ``scratch`` elements of padded band
    per thread.

    Picks the split with the shortest estimated makespan (tasks per thread times a task's time: its
    multiply-adds, its band copy and its weights read from the shared cache), among bands whose input
    stays within ``band_bytes`` (L2) beside one block of weights: a thread that runs every block of a
    band copies it once; splitting the blocks feeds more threads (batch 1 and small maps) at the price
    of copying the band once per chunk, and splitting the rows at the price of reading the weights
    once per band.
    """
    geo = spec.geometry()
    cig, cog = spec.c_in // spec.groups, spec.c_out // spec.groups
    width = _blocked.block_width(geo)
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
    shape and packing. Every call checks the packed copy against the weights (bit for bit, in the kernel's
    packing pass: one read of each) and rewrites the blocks that differ, so an optimizer step,
    ``load_state_dict`` or any write into the array is seen, while inference repacks nothing. Least
    recently used entries go beyond ``PACKED_WEIGHTS_BYTES``."""

    def __init__(self):
        self.entries = collections.OrderedDict()  # (address, shape, form) -> packed
        self.bytes = 0
        self.blocks_written = 0  # blocks packed or repacked (tests read it)

    def get(self, w, geo, form):
        """``(packed, fresh)``: the packed copy of ``w`` for ``geo`` and ``form``, and whether it is new
        (to be packed whole) rather than to be checked against ``w``."""
        key = (_blocked.address(w), w.shape, form)
        packed = self.entries.get(key)
        if packed is not None:
            self.entries.move_to_end(key)
            return packed, False
        packed = self.entries[key] = np.empty(_blocked.packed_size(geo), np.float32)
        self.bytes += packed.nbytes
        self._evict()
        return packed, True

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
    threads = _threads(spec)
    geo, rows, chunk, scratch = _blocked_plan(spec, threads, _BAND_BYTES)
    packed, fresh = packed_weights.get(w, geo, ("adjoint" if adjoint else "forward", spec.groups))
    packed_weights.blocks_written += _blocked.conv2d(
        x, w, packed, adjoint is not None, fresh, b, y, workspace("band", (threads, scratch), np.float32),
        geo, rows, chunk, threads)
    return y


# ----------------------------------------------------------------------------- convolution
def _whole_input(spec):
    """Whether the convolution's one window is its whole input (no padding, no groups): its column matrix
    is then the input itself, ``(N, C*H*W)``, and each pass one product (a fully connected layer; LeNet-5's
    C5 at batch 128, forward / input / weight gradient: 0.10 ms each against 0.19 through im2col)."""
    return (spec.groups == 1 and spec.oh == spec.ow == 1 and spec.kh == spec.h and spec.kw == spec.w
            and spec.dilation == (1, 1) and spec.padding[0] == spec.padding[2] == 0)


def conv2d(x, w, b, spec, algorithm):
    b = None if b is None else np.ascontiguousarray(b, x.dtype)
    if algorithm == "gemm" and _whole_input(spec):
        y = gemm(x.reshape(spec.n, -1), w.reshape(spec.c_out, -1).T)
        if b is not None:
            y += b
        return y.reshape(spec.y_shape)
    y = result(spec.y_shape, x.dtype)
    if algorithm == "blocked":
        return _blocked_conv2d(x, w, b, y, spec)
    if algorithm == "direct":
        _conv.conv2d(x, w, b, y, _wide_workspace(spec, x.dtype), spec.geometry())
        return y
    tile, threads, blas = _gemm_plan(spec, x.itemsize)
    with runtime.blas_threads(blas):
        _im2col.conv2d_gemm(x, w, b, y, _cols_workspace(spec, tile, threads, x.dtype), spec.geometry(),
                            tile, threads)
    return y


@functools.lru_cache(maxsize=64)
def _phase_kernels(spec):
    """Per input phase of strided ``spec``, the flat indices into its weight of the phase's kernels (taps
    that reach the phase, in and out channels swapped per group), or None: ``w.ravel()[index]`` is one
    gather (``_blocked.gather``, on every thread), faster than slicing and transposing the weight. int32:
    a weight has fewer than 2**31 elements (``shapes`` refuses larger), and the index is half the bytes."""
    g, cog, cig = spec.groups, spec.c_out // spec.groups, spec.c_in // spec.groups
    flat = np.arange(int(np.prod(spec.w_shape)), dtype=np.int32).reshape(g, cog, cig, spec.kh, spec.kw)
    return tuple(None if phase.spec is None else
                 np.ascontiguousarray(flat[:, :, :, phase.kh_taps, phase.kw_taps].transpose(0, 2, 1, 3, 4)).ravel()
                 for phase in input_phases(spec))


def _blocked_grad_input_phases(gy, w, spec):
    """The input gradient of strided ``spec``, one input phase (pixels ``ph::sh, pw::sw``) at a time: each is
    the stride-1 blocked forward pass of the output gradient with the kernel taps that reach that phase
    (``shapes.input_phases``), so no multiply-add meets a zero of a dilated gradient. Each pass writes
    its phase's pixels in place."""
    gx = result(spec.x_shape, np.float32)
    flat = np.ascontiguousarray(w, np.float32).reshape(-1)
    for k, (phase, index) in enumerate(zip(input_phases(spec), _phase_kernels(spec))):
        out = gx[:, :, phase.ph::spec.stride[0], phase.pw::spec.stride[1]]
        if phase.spec is None:
            out[...] = 0
            continue
        s = phase.spec
        wp = workspace(f"phase_weight{k}", s.w_shape, np.float32)  # one address: packed once, then checked
        _blocked.gather(flat, index, wp.reshape(-1), _threads(s))  # resnet_s2: 0.21 -> 0.07 ms (np.take)
        _blocked_conv2d(gy, wp, None, out, s)
    return gx


def conv2d_grad_input(gy, w, spec, algorithm):
    if algorithm == "gemm" and _whole_input(spec):
        return gemm(gy.reshape(spec.n, spec.c_out), w.reshape(spec.c_out, -1)).reshape(spec.x_shape)
    if algorithm == "blocked" and spec.stride != (1, 1):
        return _blocked_grad_input_phases(gy, w, spec)
    gx = result(spec.x_shape, gy.dtype)
    if algorithm == "blocked":
        return _blocked_conv2d(gy, w, None, gx, adjoint_spec(spec), adjoint=spec)
    if algorithm == "direct":
        _conv.conv2d_grad_input(gy, w, gx, _wide_workspace(spec, gy.dtype), spec.geometry())
        return gx
    tile, threads, blas = _gemm_plan(spec, gy.itemsize, whole_samples=True)
    with runtime.blas_threads(blas):
        _im2col.conv2d_grad_input_gemm(gy, w, gx, _cols_workspace(spec, tile, threads, gy.dtype),
                                       spec.geometry(), tile, threads)
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
    geo = spec.geometry()
    cig, cog = spec.c_in // spec.groups, spec.c_out // spec.groups
    width = _blocked.block_width(geo, forward=False)
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
    threads = _threads(spec)
    geo, runs, chunk = _grad_weight_plan(spec, threads)
    scratch_size, packed_size = _blocked.grad_weight_scratch(geo)
    if runs == 1:
        gw = result(spec.w_shape, np.float32)
        out = gw.reshape(1, spec.c_out, -1)
    else:
        out = workspace("grad_weight", (runs, spec.c_out, int(np.prod(spec.w_shape[1:]))), np.float32)
    _blocked.grad_weight(gy, x, out, workspace("band", (threads, max(1, scratch_size)), np.float32),
                         workspace("packed_grad", (threads, max(1, packed_size)), np.float32), geo, chunk, threads)
    return gw if runs == 1 else out.sum(axis=0).reshape(spec.w_shape)


def conv2d_grad_weight(gy, x, spec, algorithm):
    if algorithm == "blocked":
        return _blocked_grad_weight(gy, x, spec)
    if algorithm == "gemm" and _whole_input(spec):
        return gemm(gy.reshape(spec.n, spec.c_out).T, x.reshape(spec.n, -1)).reshape(spec.w_shape)
    if algorithm == "direct":
        gw = result(spec.w_shape, gy.dtype)
        acc = workspace("tap_sums", (num_threads(), spec.kh * spec.kw), np.float64)
        _conv.conv2d_grad_weight(gy, x, gw, acc, _wide_workspace(spec, gy.dtype), spec.geometry())
        return gw
    tile, threads, blas = _gemm_plan(spec, gy.itemsize)
    acc = workspace("grad_weight", (threads, int(np.prod(spec.w_shape))), gy.dtype)
    acc.fill(0)
    with runtime.blas_threads(blas):
        _im2col.conv2d_grad_weight_gemm(gy, x, acc, _cols_workspace(spec, tile, threads, gy.dtype),
                                        spec.geometry(), tile, threads)
    return acc.sum(axis=0).reshape(spec.w_shape)


# -------------------------------------------------------------------------------- pooling
def max_pool2d(x, spec):
    y = result(spec.y_shape, x.dtype)
    indices = result(spec.y_shape, np.int64)
    _pool.max_pool2d(x, y, indices, spec.geometry())
    return y, indices


def max_pool2d_grad(gy, indices, spec):
    gx = result(spec.x_shape, gy.dtype)
    _pool.scatter(gy, np.ascontiguousarray(indices, np.int64), gx, True)
    return gx


def avg_pool2d(x, spec):
    y = result(spec.y_shape, x.dtype)
    _pool.avg_pool2d(x, y, spec.divisors(x.dtype), spec.geometry())
    return y


def avg_pool2d_grad(gy, spec):
    gx = result(spec.x_shape, gy.dtype)
    scratch = workspace("avg_grad", (num_threads(), max(1, spec.oh * spec.ow)), gy.dtype)
    _pool.avg_pool2d_grad(gy, gx, scratch, spec.divisors(gy.dtype), spec.geometry())
    return gx


def max_unpool2d(x, indices, out_hw):
    y = result(x.shape[:2] + tuple(out_hw), x.dtype)
    _pool.scatter(x, np.ascontiguousarray(indices, np.int64), y, False)
    return y


def max_unpool2d_grad(gy, indices):
    gx = result(indices.shape, gy.dtype)
    _pool.gather(gy, np.ascontiguousarray(indices, np.int64), gx)
    return gx
