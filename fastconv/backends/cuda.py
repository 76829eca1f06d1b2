"""The CUDA backend (``backend="cuda"``): convolution and pooling kernels on GPU arrays, with Numba CUDA.

Same signatures as ``reference.py``, on :class:`~fastconv.backends.cuda_array.CudaArray` inputs (NCHW,
float32 or float64), returning CudaArrays. The geometry of every loop nest comes from the op's
``ConvSpec``/``PoolSpec``, passed to the kernels as one tuple of ints (:func:`conv_geometry`,
:func:`pool_geometry`), and the index maps are written once, as device functions:
:func:`x_index` (im2col: which input element a kernel tap sees from an output pixel, or padding),
:func:`y_index`, and :func:`source_out` (its inverse: which output reads an input element through a tap).

- Convolution as an implicit GEMM: the tiled GEMM of ``cuda_array`` (shared-memory tiles of output
  channels x output pixels, register micro-tiles) with index maps instead of matrices, so nothing is
  materialised. Forward: ``W (C_out, C_in*kh*kw) @ im2col(x)``. Input gradient: the same product
  transposed, gathering for each input pixel the output pixels that read it (``source_out``), so strides
  and dilations need no flipped or dilated copies. Weight gradient: ``gy @ im2col(x)^T``, a reduction over
  every output pixel, split over blocks (split-K) that add their partial sums atomically.
- A direct kernel for small channel counts (LeNet, depthwise): a block stages an input patch and the
  weights of a few output channels in shared memory, one output pixel per thread.
- Pooling: one window loop for max and average (first maximum wins, NaN wins, as the reference);
  average-pool gradient gathers through ``source_out``; max-pool gradient and unpooling scatter or
  gather along the flattened plane with ``cuda_array``'s along-axis kernels.
"""
import math

import numba
import numpy as np
from numba import cuda

from . import cuda_array as ca
from ._cuda_kernels import GEMM_ROLES, MAX_GRID_Z, GemmRole, config, grid_1d, launch, launch_gemm


def check_available():
    """Raise BackendUnavailable unless CUDA kernels can run here (a GPU or the simulator)."""
    from .. import cuda as fc_cuda
    if not fc_cuda.is_available():
        from .registry import BackendUnavailable
        raise BackendUnavailable("backend 'cuda' needs an NVIDIA GPU with a working driver "
                                 "(numba.cuda.is_available() is False), or NUMBA_ENABLE_CUDASIM=1")


# ------------------------------------------------------------------------------- geometry
# Positions in the geometry tuple of a convolution (ConvSpec fields as ints, then two per-role extras).
N, CIN, H, W, COUT, KH, KW, OH, OW, SH, SW, PT, PL, DH, DW, GROUPS, EXTRA, EXTRA2 = range(18)


def conv_geometry(spec, extra=0, extra2=0):
    """The ints of ``spec`` that every convolution kernel reads, in the order of the constants above."""
    (sh, sw), (pt, _, pl, _), (dh, dw) = spec.stride, spec.padding, spec.dilation
    return (spec.n, spec.c_in, spec.h, spec.w, spec.c_out, spec.kh, spec.kw, spec.oh, spec.ow,
            sh, sw, pt, pl, dh, dw, spec.groups, int(extra), int(extra2))


@cuda.jit(device=True)
def split3(i, b, c):
    """``i`` -> ``(i // (b*c), (i // c) % b, i % c)``: unflatten an index over (., b, c)."""
    q = i // c
    p = q // b
    return p, q - p * b, i - q * c


@cuda.jit(device=True)
def x_index(geo, g, tap, pix):
    """Flat index into x of tap ``(c, i, j)`` of group ``g`` seen from output pixel ``(n, oy, ox)``, or -1
    where the tap falls in the padding."""
    c, i, j = split3(tap, geo[KH], geo[KW])
    n, oy, ox = split3(pix, geo[OH], geo[OW])
    iy = oy * geo[SH] - geo[PT] + i * geo[DH]
    ix = ox * geo[SW] - geo[PL] + j * geo[DW]
    if iy < 0 or iy >= geo[H] or ix < 0 or ix >= geo[W]:
        return -1
    return ((n * geo[CIN] + g * (geo[CIN] // geo[GROUPS]) + c) * geo[H] + iy) * geo[W] + ix


@cuda.jit(device=True)
def y_index(geo, g, o, pix):
    """Flat index into y (or gy) of output channel ``o`` of group ``g`` at output pixel ``(n, oy, ox)``."""
    n, oy, ox = split3(pix, geo[OH], geo[OW])
    return ((n * geo[COUT] + g * (geo[COUT] // geo[GROUPS]) + o) * geo[OH] + oy) * geo[OW] + ox


@cuda.jit(device=True)
def source_out(i, n_out, stride, pad, tap, dil):
    """The output position whose window reads input position ``i`` through ``tap``, or -1."""
    q = i + pad - tap * dil
    if q < 0 or q % stride != 0:
        return -1
    q //= stride
    return q if q < n_out else -1


# ------------------------------------------------------------- convolution as implicit GEMM
# Forward (z = group): out[m = o, n = pixel] = sum_k W[o, k = (c, i, j)] * im2col[k, pixel] (+ bias[o]).
def _fwd_sizes(geo, z):
    return geo[COUT] // geo[GROUPS], geo[N] * geo[OH] * geo[OW], 0, \
        (geo[CIN] // geo[GROUPS]) * geo[KH] * geo[KW]


def _fwd_a(geo, z, m, k):
    return (z * (geo[COUT] // geo[GROUPS]) + m) * ((geo[CIN] // geo[GROUPS]) * geo[KH] * geo[KW]) + k


def _fwd_b(geo, z, k, n):
    return x_index(geo, z, k, n)


def _fwd_out(geo, z, m, n):
    return y_index(geo, z, m, n)


def _fwd_bias(geo, z, m, n):
    return z * (geo[COUT] // geo[GROUPS]) + m if geo[EXTRA] else -1


# Input gradient (z = group): gx[m = c, n = (n, y, x)] = sum_{k = (o, i, j)} W[o, c, i, j] * gy[o, source].
def _gin_sizes(geo, z):
    return geo[CIN] // geo[GROUPS], geo[N] * geo[H] * geo[W], 0, \
        (geo[COUT] // geo[GROUPS]) * geo[KH] * geo[KW]


def _gin_a(geo, z, m, k):
    o, i, j = split3(k, geo[KH], geo[KW])
    return (((z * (geo[COUT] // geo[GROUPS]) + o) * (geo[CIN] // geo[GROUPS]) + m) * geo[KH] + i) * geo[KW] + j


def _gin_b(geo, z, k, n):
    o, i, j = split3(k, geo[KH], geo[KW])
    b, y, x = split3(n, geo[H], geo[W])
    oy = source_out(y, geo[OH], geo[SH], geo[PT], i, geo[DH])
    ox = source_out(x, geo[OW], geo[SW], geo[PL], j, geo[DW])
    if oy < 0 or ox < 0:
        return -1
    return ((b * geo[COUT] + z * (geo[COUT] // geo[GROUPS]) + o) * geo[OH] + oy) * geo[OW] + ox


def _gin_out(geo, z, m, n):
    b, y, x = split3(n, geo[H], geo[W])
    return ((b * geo[CIN] + z * (geo[CIN] // geo[GROUPS]) + m) * geo[H] + y) * geo[W] + x


# Weight gradient (z = group * splits + split; EXTRA = splits, EXTRA2 = pixels per split):
# gw[m = o, n = (c, i, j)] += sum over this split's pixels k of gy[o, k] * im2col[(c, i, j), k].
def _gw_sizes(geo, z):
    k_lo = (z % geo[EXTRA]) * geo[EXTRA2]
    return geo[COUT] // geo[GROUPS], (geo[CIN] // geo[GROUPS]) * geo[KH] * geo[KW], k_lo, \
        min(geo[N] * geo[OH] * geo[OW], k_lo + geo[EXTRA2])


def _gw_a(geo, z, m, k):
    return y_index(geo, z // geo[EXTRA], m, k)


def _gw_b(geo, z, k, n):
    return x_index(geo, z // geo[EXTRA], n, k)


def _gw_out(geo, z, m, n):
    return ((z // geo[EXTRA]) * (geo[COUT] // geo[GROUPS]) + m) * \
        ((geo[CIN] // geo[GROUPS]) * geo[KH] * geo[KW]) + n


def _no_bias(geo, z, m, n):
    return -1


def _fwd_m_stride(geo):
    return geo[OH] * geo[OW]


def _gin_m_stride(geo):
    return geo[H] * geo[W]


def _gw_m_stride(geo):
    return (geo[CIN] // geo[GROUPS]) * geo[KH] * geo[KW]


def _role(*fns, atomic=False):
    return GemmRole(*(cuda.jit(device=True)(f) for f in fns), atomic)


GEMM_ROLES["conv_fwd"] = _role(_fwd_sizes, _fwd_a, _fwd_b, _fwd_out, _fwd_m_stride, _fwd_bias)
GEMM_ROLES["conv_grad_input"] = _role(_gin_sizes, _gin_a, _gin_b, _gin_out, _gin_m_stride, _no_bias)
GEMM_ROLES["conv_grad_weight"] = _role(_gw_sizes, _gw_a, _gw_b, _gw_out, _gw_m_stride, _no_bias, atomic=True)


# ------------------------------------------------------------------------------ direct kernel
DIRECT_SMEM = 2048  # elements of shared memory: the input patch plus COB output channels' weights


def _direct_kernel(dtype):
    """Forward convolution for few channels: a block computes a TH x TW tile of output pixels for COB
    output channels of one image; for each input channel it stages the input patch the tile reads and
    the COB filters in shared memory, then each thread accumulates its pixel's COB outputs in registers."""
    tw, th, cob = config().direct
    nthreads = tw * th
    dt = numba.from_dtype(np.dtype(dtype))

    @cuda.jit
    def direct(x, w, bias, y, geo, tiles_x, ph, pw):
        smem = cuda.shared.array(DIRECT_SMEM, dt)
        acc = cuda.local.array(cob, dt)
        kh, kw, h, wd = geo[KH], geo[KW], geo[H], geo[W]
        taps = kh * kw
        cig, cog = geo[CIN] // geo[GROUPS], geo[COUT] // geo[GROUPS]
        n_ob = (cog + cob - 1) // cob
        g = cuda.blockIdx.y // n_ob
        o0 = (cuda.blockIdx.y - g * n_ob) * cob
        b = cuda.blockIdx.z
        ty0 = (cuda.blockIdx.x // tiles_x) * th
        tx0 = (cuda.blockIdx.x - (cuda.blockIdx.x // tiles_x) * tiles_x) * tw
        oy, ox = ty0 + cuda.threadIdx.y, tx0 + cuda.threadIdx.x
        iy0, ix0 = ty0 * geo[SH] - geo[PT], tx0 * geo[SW] - geo[PL]
        tid = cuda.threadIdx.y * tw + cuda.threadIdx.x
        patch = ph * pw
        for o in range(cob):
            acc[o] = 0
        for c in range(cig):
            plane = (b * geo[CIN] + g * cig + c) * h * wd
            for e in range(tid, patch, nthreads):
                py = e // pw
                iy, ix = iy0 + py, ix0 + e - py * pw
                if 0 <= iy < h and 0 <= ix < wd:
                    smem[e] = x[plane + iy * wd + ix]
                else:
                    smem[e] = 0
            for e in range(tid, cob * taps, nthreads):
                o = e // taps
                if o0 + o < cog:
                    smem[patch + e] = w[((g * cog + o0 + o) * cig + c) * taps + e - o * taps]
                else:
                    smem[patch + e] = 0
            cuda.syncthreads()
            if oy < geo[OH] and ox < geo[OW]:
                for i in range(kh):
                    row = (cuda.threadIdx.y * geo[SH] + i * geo[DH]) * pw + cuda.threadIdx.x * geo[SW]
                    for j in range(kw):
                        v = smem[row + j * geo[DW]]
                        for o in range(cob):
                            acc[o] += v * smem[patch + o * taps + i * kw + j]
            cuda.syncthreads()
        if oy < geo[OH] and ox < geo[OW]:
            for o in range(cob):
                if o0 + o < cog:
                    oc = g * cog + o0 + o
                    v = acc[o]
                    if geo[EXTRA]:
                        v += bias[oc]
                    y[((b * geo[COUT] + oc) * geo[OH] + oy) * geo[OW] + ox] = v
    return direct


def _direct_patch(spec):
    """(rows, cols) of the input patch one direct-kernel block reads."""
    tw, th, _ = config().direct
    return ((th - 1) * spec.stride[0] + (spec.kh - 1) * spec.dilation[0] + 1,
            (tw - 1) * spec.stride[1] + (spec.kw - 1) * spec.dilation[1] + 1)


def use_direct(spec):
    """Few output channels per group (the GEMM tile would be mostly empty) and a patch that fits."""
    ph, pw = _direct_patch(spec)
    cob = config().direct[2]
    return spec.c_out // spec.groups <= 16 and ph * pw + cob * spec.kh * spec.kw <= DIRECT_SMEM \
        and spec.n <= MAX_GRID_Z


# ----------------------------------------------------------------------------- convolution ops
def _contiguous(a, shape, name):
    a = ca.ascontiguousarray(a)
    if a.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {a.shape}")
    return a


def conv2d_direct(x, w, b, spec):
    """Forward convolution with the direct kernel (any spec whose patch fits; see :func:`use_direct`)."""
    x, w = _contiguous(x, spec.x_shape, "x"), _contiguous(w, spec.w_shape, "w")
    y = ca.empty(spec.y_shape, x.dtype)
    if y.size == 0:
        return y
    tw, th, cob = config().direct
    ph, pw = _direct_patch(spec)
    if ph * pw + cob * spec.kh * spec.kw > DIRECT_SMEM:
        raise ValueError(f"the direct kernel's patch ({ph}x{pw}) does not fit in shared memory")
    tiles_x, tiles_y = -(-spec.ow // tw), -(-spec.oh // th)
    n_ob = -(-(spec.c_out // spec.groups) // cob)
    bias = y._flat() if b is None else _contiguous(b, (spec.c_out,), "b")._flat()
    launch(_direct_kernel, (x.dtype.str,), (tiles_x * tiles_y, spec.groups * n_ob, spec.n), (tw, th),
           x._flat(), w._flat(), bias, y._flat(), conv_geometry(spec, b is not None), tiles_x, ph, pw)
    return y


def conv2d_gemm(x, w, b, spec):
    """Forward convolution as an implicit GEMM (one z-slice of the grid per group)."""
    x, w = _contiguous(x, spec.x_shape, "x"), _contiguous(w, spec.w_shape, "w")
    y = ca.empty(spec.y_shape, x.dtype)
    if y.size == 0:
        return y
    bias = y._flat() if b is None else _contiguous(b, (spec.c_out,), "b")._flat()
    launch_gemm("conv_fwd", w._flat(), x._flat(), y._flat(), bias, conv_geometry(spec, b is not None),
                spec.c_out // spec.groups, spec.n * spec.oh * spec.ow, spec.groups, True, False)
    return y


def conv2d(x, w, b, spec):
    return (conv2d_direct if use_direct(spec) else conv2d_gemm)(x, w, b, spec)


def conv2d_grad_input(gy, w, spec):
    """Input gradient (also the transposed convolution's forward) as an implicit GEMM gathering gy."""
    gy, w = _contiguous(gy, spec.y_shape, "gy"), _contiguous(w, spec.w_shape, "w")
    gx = ca.empty(spec.x_shape, gy.dtype)
    if gx.size == 0:
        return gx
    if gy.size == 0:
        gx.fill(0)
        return gx
    launch_gemm("conv_grad_input", w._flat(), gy._flat(), gx._flat(), gx._flat(), conv_geometry(spec),
                spec.c_in // spec.groups, spec.n * spec.h * spec.w, spec.groups, True, False)
    return gx


def _splits(spec):
    """Split-K for the weight gradient: enough blocks to fill the GPU, at least a few tiles of K each."""
    bm, bn, bk, _, _ = config().gemm
    k = spec.n * spec.oh * spec.ow
    tiles = -(-(spec.c_out // spec.groups) // bm) * -(-(spec.c_in // spec.groups * spec.kh * spec.kw) // bn)
    target = 2 if getattr(numba.config, "ENABLE_CUDASIM", False) else 256
    splits = max(1, min(-(-target // (tiles * spec.groups)), -(-k // (4 * bk)), MAX_GRID_Z // spec.groups))
    per_split = -(-k // splits)
    chunk = -(-per_split // bk) * bk  # a whole number of K tiles
    return -(-k // chunk), chunk


def conv2d_grad_weight(gy, x, spec):
    """Weight gradient as an implicit GEMM over every output pixel, split-K with atomic partial sums.
    (The bias slot of the GEMM is unused: its buffer argument is a placeholder.)"""
    gy, x = _contiguous(gy, spec.y_shape, "gy"), _contiguous(x, spec.x_shape, "x")
    gw = ca.zeros(spec.w_shape, gy.dtype)
    if gy.size == 0 or gw.size == 0:
        return gw
    splits, chunk = _splits(spec)
    launch_gemm("conv_grad_weight", gy._flat(), x._flat(), gw._flat(), gw._flat(),
                conv_geometry(spec, splits, chunk), spec.c_out // spec.groups,
                spec.c_in // spec.groups * spec.kh * spec.kw, spec.groups * splits, True, True)
    return gw


def conv2d_grad_bias(gy):
    return ca.sum(gy, axis=(0, 2, 3))


# --------------------------------------------------------------------------------- pooling
# Positions in the geometry tuple of a pooling op (PoolSpec fields as ints).
P_H, P_W, P_KH, P_KW, P_OH, P_OW, P_SH, P_SW, P_PT, P_PL, P_DH, P_DW, P_CIP = range(13)


def pool_geometry(spec):
    sh, sw, pt, pl, dh, dw = spec.window
    return (spec.h, spec.w, spec.kh, spec.kw, spec.oh, spec.ow, sh, sw, pt, pl, dh, dw,
            int(spec.count_include_pad))


@cuda.jit(device=True)
def avg_divisor(geo, oy, ox):
    """Divisor of average-pool output (oy, ox): PyTorch's rule for ceil_mode and count_include_pad."""
    y0, x0 = oy * geo[P_SH] - geo[P_PT], ox * geo[P_SW] - geo[P_PL]
    y1, x1 = min(y0 + geo[P_KH], geo[P_H] + geo[P_PT]), min(x0 + geo[P_KW], geo[P_W] + geo[P_PL])
    if geo[P_CIP]:
        return (y1 - y0) * (x1 - x0)
    return (min(y1, geo[P_H]) - max(y0, 0)) * (min(x1, geo[P_W]) - max(x0, 0))


def _pool_kernel(kind):
    """One thread per output element loops over its window: the max and the flat index ``row * W + col``
    of its first maximum (padding counts as -inf, NaN wins), or the average."""
    is_max = kind == "max"

    @cuda.jit
    def pool(x, y, idx, geo, total):
        h, w, kh, kw, oh, ow = geo[P_H], geo[P_W], geo[P_KH], geo[P_KW], geo[P_OH], geo[P_OW]
        start, step = cuda.grid(1), cuda.gridsize(1)
        for e in range(start, total, step):
            plane, oy, ox = split3(e, oh, ow)
            y0, x0 = oy * geo[P_SH] - geo[P_PT], ox * geo[P_SW] - geo[P_PL]
            base = plane * h * w
            best = -math.inf
            where = -1
            acc = 0.0
            for i in range(kh):
                iy = y0 + i * geo[P_DH]
                for j in range(kw):
                    ix = x0 + j * geo[P_DW]
                    inside = 0 <= iy < h and 0 <= ix < w
                    if is_max:
                        v = x[base + iy * w + ix] if inside else -math.inf
                        if (i == 0 and j == 0) or (best == best and (v > best or v != v)):
                            best = v
                            where = iy * w + ix
                    elif inside:
                        acc += x[base + iy * w + ix]
            if is_max:
                y[e] = best
                idx[e] = where
            else:
                y[e] = acc / avg_divisor(geo, oy, ox)
    return pool


def _avg_grad_kernel():
    """One thread per input element gathers ``gy / divisor`` of every window that covers it."""
    @cuda.jit
    def avg_grad(gy, gx, geo, total):
        h, w, oh, ow = geo[P_H], geo[P_W], geo[P_OH], geo[P_OW]
        start, step = cuda.grid(1), cuda.gridsize(1)
        for e in range(start, total, step):
            plane, iy, ix = split3(e, h, w)
            acc = 0.0
            for i in range(geo[P_KH]):
                oy = source_out(iy, oh, geo[P_SH], geo[P_PT], i, geo[P_DH])
                if oy < 0:
                    continue
                for j in range(geo[P_KW]):
                    ox = source_out(ix, ow, geo[P_SW], geo[P_PL], j, geo[P_DW])
                    if ox >= 0:
                        acc += gy[(plane * oh + oy) * ow + ox] / avg_divisor(geo, oy, ox)
            gx[e] = acc
    return avg_grad


def _pool(kind, x, spec):
    x = _contiguous(x, spec.x_shape, "x")
    y = ca.empty(spec.y_shape, x.dtype)
    idx = ca.empty(spec.y_shape, np.int64) if kind == "max" else y
    if y.size:
        blocks, threads = grid_1d(y.size)
        launch(_pool_kernel, (kind,), blocks, threads, x._flat(), y._flat(), idx._flat(), pool_geometry(spec),
               y.size)
    return y, idx


def max_pool2d(x, spec):
    return _pool("max", x, spec)


def avg_pool2d(x, spec):
    return _pool("avg", x, spec)[0]


def avg_pool2d_grad(gy, spec):
    gy = _contiguous(gy, spec.y_shape, "gy")
    gx = ca.empty(spec.x_shape, gy.dtype)
    if gx.size:
        blocks, threads = grid_1d(gx.size)
        launch(_avg_grad_kernel, (), blocks, threads, gy._flat(), gx._flat(), pool_geometry(spec), gx.size)
    return gx


def _planes(a, n, c):
    return ca.ascontiguousarray(a).reshape(n, c, -1)


def max_pool2d_grad(gy, indices, spec):
    """Each output's gradient is added (atomically) at its argmax."""
    gx = ca.zeros(spec.x_shape, gy.dtype)
    ca._along("add", gx.reshape(spec.n, spec.c, -1), 2, _planes(indices, spec.n, spec.c),
              _planes(gy, spec.n, spec.c))
    return gx


def max_unpool2d(x, indices, out_hw):
    n, c = x.shape[:2]
    out = ca.zeros((n, c) + tuple(out_hw), x.dtype)
    ca.put_along_axis(out.reshape(n, c, -1), _planes(indices, n, c), _planes(x, n, c), axis=2)
    return out


def max_unpool2d_grad(gy, indices):
    n, c = gy.shape[:2]
    return ca.take_along_axis(_planes(gy, n, c), _planes(indices, n, c), axis=2).reshape(indices.shape)
