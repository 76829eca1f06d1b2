"""The FFT backend: the three convolution kernels as products of spectra (``scipy.fft``).

Why: a direct convolution costs ``kh * kw`` multiply-adds per output pixel and channel pair; through the
FFT the cost per pixel grows with ``log(H * W)`` instead, so large kernels (15x15 and up) run several
times faster. Only the convolution kernels live here; pooling goes to the automatic choice.

How, per spatial axis (the two axes are independent):

* Dense domain: every kernel works at stride 1 with the kernel dilated by zeros (extent
  ``E = d * (k - 1) + 1``). A strided output is the dense one read at every ``s``-th index; a strided
  output gradient is spread out with zeros first.
* Three circular convolutions on one grid of ``L >= H + pad_before + pad_after`` points, with ``xr`` the
  input reversed, ``g`` the dense output gradient and ``p`` the padding before::

      forward       y[m]  = (xr (*) w)[H - 1 + p - m]
      grad input    gx[q] = (g  (*) w)[q + p]
      grad weight   gw[a] = (g  (*) xr)[H - 1 + p - a]       (indices mod L)

  On that grid no wrapped-around term reaches an index that is read, so the padding is never
  materialised, no spectrum is conjugated, and each operand's spectrum serves two kernels: the spectrum
  cache (keyed by array content, see :class:`_SpectrumCache`) lets the backward pass reuse the forward's.
* Channels are summed per frequency: one small complex matrix product per frequency and group, batched
  in ``numpy.matmul`` (or a broadcast product when the matrices are tiny, as in depthwise convolution).
* Long 1-D signals (length > 8 E and > 1024) are cut into blocks that become batch entries, so the FFT
  length follows the kernel, not the signal: overlap-save for the forward pass and the weight gradient,
  overlap-add for the input gradient.

float32 stays float32 / complex64 end to end (``scipy.fft`` keeps single precision); float64 is complex128.

Error. A direct sum's rounding error stays local (each output's error scales with its own window), an
FFT's is spread over the plane: every output of channel ``o`` may be off by up to

    eps * log2(L) * sum_c ||x[n, c]||_2 * ||w[o, c]||_2          (L: the grid's points; the input
                                                                    gradient and the weight gradient
                                                                    likewise, with their operands)

(``eps`` of the dtype; measured at most half of it over random cases, one input of 1e30 included:
tests/test_fft.py). So one huge input value leaks into far outputs (1e30 gives ~1e23 in float32) and
small outputs next to large ones lose relative precision. ``fc.set_exact(True)`` keeps the automatic
choice off the FFT; NaN and inf never reach here (the planner runs them on the reference).
"""
from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import scipy.fft as sfft

from .. import runtime
from ..shapes import ConvSpec
from .registry import RESULT
from .workspaces import workspace

#: The blocked (overlap-add / overlap-save) path runs when a 1-D signal is longer than both of these:
#: ``BLOCK_MIN_RATIO`` times the dilated kernel extent, and ``BLOCK_MIN_LENGTH`` samples.
BLOCK_MIN_RATIO = 8
BLOCK_MIN_LENGTH = 1024
#: The spectra the cache may hold, with the copies of their sources (bytes); 0 disables it.
CACHE_BYTES = 64 * 2**20
# Cost model constants: seconds on one core (single-thread CPU time on a 2-core development machine; only
# their ratios to the direct kernels' constants matter).
#: Seconds per grid point and per log2(grid points) of one real 2-D transform, copies included.
SECONDS_PER_FFT_POINT = 2.5e-10
#: Seconds per complex multiply-add of the per-frequency channel products.
SECONDS_PER_SPECTRAL_MAC = 5e-10
#: Fixed cost of one call: planning, transposes, small arrays.
FFT_CALL_SECONDS = 1e-4
#: Per-frequency matrix products of at most this many multiply-adds run as broadcast products;
#: larger ones go through ``numpy.matmul`` (whose per-matrix call overhead dominates tiny products).
SMALL_PRODUCT = 16
#: The weight's spectrum comes from DFT matrices (one matrix product per axis, over the taps only, so
#: dilation costs nothing) when every transformed axis has at most this many taps per log2 of its grid
#: length, and from FFTs of the zero-padded kernel otherwise (measured crossover: about 3).
DFT_TAPS_PER_LOG2 = 3


# ------------------------------------------------------------------------------------ geometry
@dataclass(frozen=True)
class _Axis:
    """One spatial axis of a convolution, with the FFT grid length and the indices each kernel reads."""
    size: int        # input length H
    kernel: int      # taps k
    dilation: int
    stride: int
    before: int      # padding before (top / left)
    after: int
    out: int         # output length
    transformed: bool  # False: a 1-tap, unpadded, stride-1 axis, kept as independent rows
    fft: int         # grid length L (== size when not transformed)

    @property
    def extent(self):
        return self.dilation * (self.kernel - 1) + 1

    @property
    def dense(self):
        """Stride-1 output positions that the strided output reads: ``(out - 1) * stride + 1``."""
        return (self.out - 1) * self.stride + 1

    def forward_index(self):
        m = np.arange(self.out) * self.stride
        if not self.transformed:
            return m
        return (self.size - 1 + self.before - m) % self.fft

    def grad_input_index(self):
        return np.arange(self.size) + self.before

    def grad_weight_index(self):
        if not self.transformed:
            return np.zeros(1, dtype=np.intp)  # the rows were summed before the inverse transform
        return (self.size - 1 + self.before - np.arange(self.kernel) * self.dilation) % self.fft


def _axis(size, kernel, dilation, stride, before, after, out, last):
    """An axis is transformed unless it is a plain 1-tap axis, each input row one output row (the last
    axis always is: it holds rfft). A transposed convolution's output padding adds input rows that no
    output reads: then the axis is transformed like any other."""
    transformed = last or not (kernel == 1 and before == after == 0 and stride == 1 and size == out)
    padded = size + before + after
    length = sfft.next_fast_len(padded, real=last) if transformed else size
    return _Axis(size, kernel, dilation, stride, before, after, out, transformed, length)


@lru_cache(maxsize=512)
def _geometry(spec):
    """The (row, column) axes of ``spec``."""
    pt, pb, pl, pr = spec.padding
    rows = _axis(spec.h, spec.kh, spec.dilation[0], spec.stride[0], pt, pb, spec.oh, last=False)
    cols = _axis(spec.w, spec.kw, spec.dilation[1], spec.stride[1], pl, pr, spec.ow, last=True)
    return rows, cols


def _selector(index):
    """A slice equal to the index array when it is an arithmetic progression (no gather), else the array."""
    if len(index) == 1:
        return slice(int(index[0]), int(index[0]) + 1)
    step = int(index[1] - index[0])
    if step != 0 and np.all(np.diff(index) == step):
        stop = int(index[-1]) + step
        return slice(int(index[0]), None if stop < 0 else stop, step)
    return index


# --------------------------------------------------------------------------------- transforms
def _workers():
    return runtime.threads()


def _spectrum(a, rows, cols):
    """Spectrum of the NCHW array ``a`` on the grid of ``rows`` x ``cols``, laid out ``(R, F, A, B)``.

    Frequencies lead (``R`` rows, ``F`` rfft columns), so that every frequency's channel matrix is one
    contiguous block of the per-frequency product. The row transform runs after the rfft, on the rows of
    ``a`` only (a kernel much smaller than the grid costs little).
    """
    workers = _workers()
    s = sfft.rfft(a, n=cols.fft, axis=-1, workers=workers)
    if rows.transformed:
        s = sfft.fft(s, n=rows.fft, axis=-2, workers=workers, overwrite_x=True)
    return np.ascontiguousarray(s.transpose(2, 3, 0, 1))


def _inverse(z, rows, cols, row_index, col_index, sum_rows=False):
    """The real NCHW array read at ``row_index`` x ``col_index`` from the product spectrum ``z (R, F, A, B)``.

    Rows are inverted first and only the rows read go through the (last) column inverse. ``sum_rows``
    adds untransformed rows together instead (the weight gradient sums over them).
    """
    workers = _workers()
    s = z.transpose(2, 3, 0, 1)  # (A, B, R, F)
    if not rows.transformed:
        if sum_rows:
            s = s.sum(axis=-2, keepdims=True)
    else:  # in place, in a reused buffer (see workspaces)
        s = sfft.ifft(_copy_to("fft_rows", s), n=rows.fft, axis=-2, workers=workers, overwrite_x=True)
    s = s[..., _selector(row_index), :]
    out = sfft.irfft(s, n=cols.fft, axis=-1, workers=workers)
    return np.ascontiguousarray(out[..., _selector(col_index)])


def _copy_to(name, a):
    """A contiguous copy of ``a`` in the reused buffer ``name``."""
    out = workspace(name, a.shape, a.dtype)
    np.copyto(out, a)
    return out


def _product(a, b):
    """Per-frequency matrix products ``a @ b`` (leading axes broadcast), ``a (..., M, K)``, ``b (..., K, N)``,
    in a reused buffer: the caller consumes it before the next product.

    Tiny matrices (depthwise convolution) go through broadcast multiply-adds: ``numpy.matmul`` would make
    one BLAS call per frequency and group.
    """
    m, k = a.shape[-2:]
    if m * k * b.shape[-1] > SMALL_PRODUCT:
        shape = np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (m, b.shape[-1])
        return np.matmul(a, b, out=workspace("fft_product", shape, np.result_type(a, b)))
    out = a[..., :, 0:1] * b[..., 0:1, :]
    for i in range(1, k):
        out += a[..., :, i:i + 1] * b[..., i:i + 1, :]
    return out


def _grouped(s, groups):
    """``(R, F, A, C)`` spectrum -> ``(R, F, groups, A, C / groups)`` view."""
    r, f, a, c = s.shape
    return s.reshape(r, f, a, groups, c // groups).transpose(0, 1, 3, 2, 4)


def _ungrouped(s):
    """``(R, F, groups, A, C / groups)`` -> ``(R, F, A, C)``."""
    r, f, g, a, c = s.shape
    return np.ascontiguousarray(s.swapaxes(2, 3)).reshape(r, f, a, g * c)


# ----------------------------------------------------------------------------------- operands
def _spread(a, step_h, step_w, shape_hw):
    """``a`` placed every ``step`` samples in a zero array of spatial shape ``shape_hw``."""
    if step_h == step_w == 1 and a.shape[2:] == tuple(shape_hw):
        return a
    out = np.zeros(a.shape[:2] + tuple(shape_hw), dtype=a.dtype)
    out[:, :, :a.shape[2] * step_h:step_h, :a.shape[3] * step_w:step_w] = a
    return out


def _input_spectrum(x, rows, cols):
    """Spectrum of the input reversed along the transformed axes, ``(R, F, N, C_in)``."""
    def compute():
        xr = x[:, :, ::-1] if rows.transformed else x
        return _spectrum(xr[..., ::-1], rows, cols)
    return _cache.get(("x", rows, cols), x, compute)


def _weight_spectrum(w, rows, cols):
    """Spectrum of the dilated kernel, ``(R or 1, F, C_out, C_in / groups)``."""
    def compute():
        if _by_dft(rows, cols):
            return _kernel_dft(w, rows, cols)
        wd = _spread(w, rows.dilation, cols.dilation, (rows.extent, cols.extent))
        return _spectrum(wd, rows, cols)
    return _cache.get(("w", rows, cols), w, compute)


def _grad_spectrum(gy, rows, cols):
    """Spectrum of the dense (zero-spread) output gradient, ``(R, F, N, C_out)``."""
    def compute():
        return _spectrum(_spread(gy, rows.stride, cols.stride, (rows.dense, cols.dense)), rows, cols)
    return _cache.get(("g", rows, cols), gy, compute)


# ------------------------------------------------------------------------- kernel spectrum by DFT
def _by_dft(rows, cols):
    """Whether the kernel's spectrum comes from DFT matrices: few taps for the grid length."""
    def few(axis):
        return not axis.transformed or axis.kernel <= DFT_TAPS_PER_LOG2 * math.log2(axis.fft)
    return few(rows) and few(cols)


@lru_cache(maxsize=128)
def _phases(positions, length, freqs, sign, dtype):
    """``exp(sign * 2 pi i * positions[a] * f / length)`` for ``f < freqs``: ``(len(positions), freqs)``."""
    angle = (2 * np.pi / length) * np.outer(np.asarray(positions, dtype=np.float64) % length, np.arange(freqs))
    return np.exp(sign * 1j * angle).astype(dtype)


def _complex(dtype):
    return np.complex64 if dtype == np.float32 else np.complex128


def _kernel_dft(w, rows, cols):
    """The kernel's spectrum on the grid as two matrix products over its taps (dilation needs no zeros):
    ``W[k1, k2] = sum_ij w[i, j] exp(-2 pi i (k1 i dh / L1 + k2 j dw / L2))``, laid out ``(R, F, O, C)``."""
    n_out, n_in, kh, kw = w.shape
    freqs = cols.fft // 2 + 1
    ctype = _complex(w.dtype)
    e2 = _phases(tuple(range(0, kw * cols.dilation, cols.dilation)), cols.fft, freqs, -1, ctype)
    taps = np.ascontiguousarray(w.transpose(2, 0, 1, 3)).reshape(-1, kw)       # (kh * O * C, kw)
    half = np.empty((kh, freqs, n_out, n_in), ctype)
    half.real = (taps @ e2.real).reshape(kh, n_out, n_in, freqs).transpose(0, 3, 1, 2)
    half.imag = (taps @ e2.imag).reshape(kh, n_out, n_in, freqs).transpose(0, 3, 1, 2)
    if not rows.transformed:
        return half
    e1 = _phases(tuple(range(0, kh * rows.dilation, rows.dilation)), rows.fft, rows.fft, -1, ctype)
    return (e1.T @ half.reshape(kh, -1)).reshape(rows.fft, freqs, n_out, n_in)


# --------------------------------------------------------------------------------- the kernels
ALGORITHMS = ("whole", "overlap")
#: Every operand: each output mixes every input of its plane, so one NaN or inf reaches them all (the
#: planner checks the operands, the weight gradient's by its small result, and runs non-finite ones on the
#: reference).
_EVERY_OPERAND = {"conv2d": ("x", "w"), "conv2d_grad_input": ("gy", "w"), "conv2d_grad_weight": (RESULT,)}
NONFINITE_CHECKS = {"whole": _EVERY_OPERAND, "overlap": _EVERY_OPERAND}


def supports(op, spec, dtype, algorithm):
    """``"whole"`` runs any convolution; ``"overlap"`` (overlap-save / overlap-add in blocks) runs 1-D
    convolutions, whose blocks become batch entries."""
    return algorithm == "whole" or (spec.h == 1 and spec.kh == 1 and spec.padding[:2] == (0, 0))


def _empty(spec):
    return spec.n == 0 or spec.c_in == 0 or spec.c_out == 0


def conv2d(x, w, b, spec, algorithm):
    if _empty(spec):
        y = np.zeros(spec.y_shape, dtype=x.dtype)
    elif algorithm == "overlap":
        y = _overlap_conv2d(x, w, spec)
    else:
        rows, cols = _geometry(spec)
        xs = _grouped(_input_spectrum(x, rows, cols), spec.groups)                     # (R, F, G, N, Cig)
        ws = _grouped(_weight_spectrum(w, rows, cols).swapaxes(-1, -2), spec.groups)   # (R, F, G, Cig, Cog)
        ys = _ungrouped(_product(xs, ws))                                              # (R, F, N, Cout)
        y = _inverse(ys, rows, cols, rows.forward_index(), cols.forward_index())
    if b is not None:
        y += b.reshape(1, -1, 1, 1)
    return y


def conv2d_grad_input(gy, w, spec, algorithm):
    if _empty(spec):
        return np.zeros(spec.x_shape, dtype=gy.dtype)
    if algorithm == "overlap":
        return _overlap_grad_input(gy, w, spec)
    rows, cols = _geometry(spec)
    gs = _grouped(_grad_spectrum(gy, rows, cols), spec.groups)                         # (R, F, G, N, Cog)
    ws = _weight_spectrum(w, rows, cols)                                               # (R, F, Cout, Cig)
    ws = ws.reshape(ws.shape[:2] + (spec.groups, spec.c_out // spec.groups, -1))       # (R, F, G, Cog, Cig)
    xs = _ungrouped(_product(gs, ws))                                                  # (R, F, N, Cin)
    return _inverse(xs, rows, cols, rows.grad_input_index(), cols.grad_input_index())


def conv2d_grad_weight(gy, x, spec, algorithm):
    if _empty(spec):
        return np.zeros(spec.w_shape, dtype=gy.dtype)
    if algorithm == "overlap":
        return _overlap_grad_weight(gy, x, spec)
    rows, cols = _geometry(spec)
    gs = _grouped(_grad_spectrum(gy, rows, cols), spec.groups).swapaxes(-1, -2)        # (R, F, G, Cog, N)
    xs = _grouped(_input_spectrum(x, rows, cols), spec.groups)                         # (R, F, G, N, Cig)
    ws = _product(gs, xs)                                                              # (R, F, G, Cog, Cig)
    ws = ws.reshape(ws.shape[:2] + (spec.c_out, -1))
    return _inverse(ws, rows, cols, rows.grad_weight_index(), cols.grad_weight_index(), sum_rows=True)


# ------------------------------------------------------------------------------- cost model
def seconds(op, spec, dtype, algorithm):
    """Model time of one kernel (forward and both gradients cost about the same): real transforms of the
    input and output planes (the kernel's, mostly zeros, counts as half a plane per channel pair) plus
    the per-frequency channel products. ``"overlap"`` prices its blocks: ``N * count`` batch entries of
    one block's length each."""
    if algorithm == "overlap":
        _, count, one = _block_plan(spec)
        spec = one
    rows, cols = _geometry(spec)
    grid = (rows.fft if rows.transformed else 1) * cols.fft
    planes = spec.n * (spec.c_in + spec.c_out) + 0.5 * spec.c_out * (spec.c_in // spec.groups)
    transform = SECONDS_PER_FFT_POINT * planes * rows.fft * cols.fft * math.log2(max(grid, 2))
    products = SECONDS_PER_SPECTRAL_MAC * spec.n * spec.c_out * (spec.c_in // spec.groups) * (
        rows.fft * (cols.fft // 2 + 1))
    return FFT_CALL_SECONDS + transform + products


# --------------------------------------------------------------------------- long 1-D signals
def long_signal(spec):
    """Whether a 1-D ``spec`` is long enough for blocks to pay: longer than ``BLOCK_MIN_RATIO`` dilated
    kernel extents and than ``BLOCK_MIN_LENGTH`` samples."""
    if not supports("conv2d", spec, None, "overlap"):
        return False
    _, cols = _geometry(spec)
    padded = spec.w + spec.padding[2] + spec.padding[3]
    return padded > BLOCK_MIN_RATIO * cols.extent and padded > BLOCK_MIN_LENGTH


def block_length(extent):
    """FFT length of one block: about eight kernel extents (the cost per output is flat around there)."""
    return sfft.next_fast_len(max(8 * extent, 64), real=True)


def _block_plan(spec, block=None):
    """``(outputs per block, number of blocks, the spec of one block)`` for a 1-D ``spec``."""
    _, cols = _geometry(spec)
    length = block or block_length(cols.extent)
    if length < cols.extent:
        raise ValueError(f"block must be at least the dilated kernel extent {cols.extent}, got {length}")
    step = length - cols.extent + 1
    count = -(-cols.dense // step)
    one = ConvSpec(spec.n * count, spec.c_in, 1, length, spec.c_out, 1, spec.kw, 1, step, (1, 1),
                   (0, 0, 0, 0), (1, cols.dilation), spec.groups, dims=1)
    return step, count, one


def _windows(x, spec, step, count, length):
    """The padded input cut into ``count`` windows of ``length`` samples ``step`` apart, as a batch
    ``(N * count, C, 1, length)`` (overlap-save: each window gives ``step`` outputs)."""
    _, _, pl, pr = spec.padding
    total = (count - 1) * step + length
    xp = np.zeros((spec.n, spec.c_in, total), dtype=x.dtype)
    keep = min(spec.w, total - pl)
    xp[:, :, pl:pl + keep] = x[:, :, 0, :keep]
    win = np.lib.stride_tricks.sliding_window_view(xp, length, axis=-1)[:, :, ::step]  # (N, C, count, L)
    return np.ascontiguousarray(win.transpose(0, 2, 1, 3)).reshape(spec.n * count, spec.c_in, 1, length)


def _grad_blocks(gy, spec, step, count):
    """The dense output gradient cut into ``count`` blocks of ``step`` samples, ``(N * count, C_out, 1, step)``."""
    stride = spec.stride[1]
    dense = np.zeros((spec.n, spec.c_out, count * step), dtype=gy.dtype)
    dense[:, :, :spec.ow * stride:stride] = gy[:, :, 0]
    blocks = dense.reshape(spec.n, spec.c_out, count, step).transpose(0, 2, 1, 3)
    return np.ascontiguousarray(blocks).reshape(spec.n * count, spec.c_out, 1, step)


def _overlap_conv2d(x, w, spec, block=None):
    """Overlap-save: each window of the padded input gives ``step`` outputs. The blocks run as one
    ``"whole"`` convolution (a block is never cut again, whatever its length)."""
    step, count, one = _block_plan(spec, block)
    y = conv2d(_windows(x, spec, step, count, one.w), w, None, one, "whole")           # (N * count, Cout, 1, step)
    y = y.reshape(spec.n, count, spec.c_out, step).transpose(0, 2, 1, 3).reshape(spec.n, spec.c_out, -1)
    return np.ascontiguousarray(y[:, :, :spec.ow * spec.stride[1]:spec.stride[1]]).reshape(spec.y_shape)


def _overlap_grad_input(gy, w, spec, block=None):
    """Overlap-add: each block's full convolution lands ``step`` samples after the previous one's."""
    step, count, one = _block_plan(spec, block)
    parts = conv2d_grad_input(_grad_blocks(gy, spec, step, count), w, one, "whole")    # (N * count, C, 1, L)
    parts = parts.reshape(spec.n, count, spec.c_in, one.w).transpose(0, 2, 1, 3)
    total = max((count + -(-one.w // step)) * step, spec.padding[2] + spec.w)
    out = np.zeros((spec.n, spec.c_in, total), dtype=gy.dtype)
    for start in range(0, one.w, step):  # ceil(L / step) <= a few passes (step ~ 7/8 of L)
        piece = parts[..., start:start + step]
        view = out[:, :, start:start + count * step].reshape(spec.n, spec.c_in, count, step)  # a view
        view[..., :piece.shape[-1]] += piece
    pl = spec.padding[2]
    return np.ascontiguousarray(out[:, :, pl:pl + spec.w]).reshape(spec.x_shape)


def _overlap_grad_weight(gy, x, spec, block=None):
    """The weight gradient sums over the batch, so the blocks (batch entries) add up by themselves."""
    step, count, one = _block_plan(spec, block)
    return conv2d_grad_weight(_grad_blocks(gy, spec, step, count), _windows(x, spec, step, count, one.w),
                              one, "whole")


# ----------------------------------------------------------------------------- spectrum cache
class _SpectrumCache:
    """Recent spectra, found again by the exact content of the array they came from.

    A training step transforms each operand twice (the input in the forward pass and for the weight
    gradient, the weight in the forward pass and for the input gradient, the output gradient for both
    gradients); keeping the last few spectra with a copy of their source removes the second transform.
    Content, not identity, is the key: arrays are updated in place (optimizer steps), and an exact
    comparison costs one read of the source, much less than a transform.
    """

    def __init__(self, max_bytes):
        self.max_bytes = max_bytes
        self._entries = OrderedDict()  # token -> (meta, source copy, spectrum)
        self._bytes = 0
        self._lock = threading.Lock()
        self._token = 0

    def clear(self):
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def get(self, meta, array, compute):
        meta = meta + (array.shape, array.dtype.str)
        with self._lock:
            candidates = [(t, e) for t, e in self._entries.items() if e[0] == meta]
        for token, (_, source, spectrum) in candidates:
            if _same(source, array):
                with self._lock:
                    if token in self._entries:
                        self._entries.move_to_end(token)
                return spectrum
        spectrum = compute()
        size = array.nbytes + spectrum.nbytes
        if size <= self.max_bytes:
            with self._lock:
                self._token += 1
                self._entries[self._token] = (meta, array.copy(), spectrum)
                self._bytes += size
                while self._bytes > self.max_bytes:
                    _, (_, src, spec) = self._entries.popitem(last=False)
                    self._bytes -= src.nbytes + spec.nbytes
        return spectrum


def _same(a, b):
    """Exact equality, rejecting most mismatches after a cheap look at a sample."""
    fa, fb = a.reshape(-1), b.reshape(-1)
    step = max(1, fa.size // 256)
    if not np.array_equal(fa[::step], fb[::step]):
        return False
    return bool(np.array_equal(fa, fb))


_cache = _SpectrumCache(CACHE_BYTES)


def clear_cache():
    """Forget every cached spectrum."""
    _cache.clear()


def set_cache_bytes(n):
    """Let the spectrum cache hold ``n`` bytes (0 disables it)."""
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    _cache.max_bytes = n
    _cache.clear()
