"""The geometry of a convolution as index maps, the three convolution products as GEMM roles (their index
maps; the table of roles is in ``gemm.py``), and a direct kernel for few channels.

The ints of the op's ``ConvSpec`` reach the kernels as one tuple (``spec.geometry()`` and two extras,
:func:`conv_geometry`). The index maps
are written once: :func:`x_index` (im2col: which input element a kernel tap sees from an output pixel, or
padding), :func:`y_index`, and :func:`source_out` (its inverse: which output reads an input element
through a tap; pooling's gradients use it too).

- Forward (z = group): ``y[o, pixel] = sum_{k=(c,i,j)} W[o, k] * im2col[k, pixel] (+ bias[o])``.
- Input gradient (z = group): ``gx[c, (n,y,x)] = sum_{k=(o,i,j)} W[o, c, i, j] * gy[o, source]``,
  gathering for each input pixel the output pixels that read it, so strides and dilations need no flipped
  or dilated copies.
- Weight gradient (z = group * splits + split): ``gw[o, (c,i,j)] = sum over the split's pixels of
  gy[o, pixel] * im2col[(c,i,j), pixel]``; the bias gradient is the extra column of ones
  (``sum gy[o, pixel]``), written after the weights in the same buffer.
"""
import numba
import numpy as np
from numba import cuda

from ...shapes import GEOMETRY
from ..launch import category, config
from .elementwise import op

# Positions in the geometry tuple: ``spec.geometry()`` (``fastconv.shapes.GEOMETRY``, the layout every
# compiled kernel reads; a pooling op's is its depthwise convolution's), then two per-role extras.
N, CIN, H, W, COUT, KH, KW, OH, OW, SH, SW, PT, PL, DH, DW, GROUPS = (GEOMETRY.index(f) for f in (
    "n", "c_in", "h", "w", "c_out", "kh", "kw", "oh", "ow", "sh", "sw", "pt", "pl", "dh", "dw", "groups"))
EXTRA, EXTRA2 = len(GEOMETRY), len(GEOMETRY) + 1


def conv_geometry(spec, extra=0, extra2=0):
    """``spec.geometry()`` and the two extras of a kernel role, as the kernels read them."""
    return spec.geometry() + (int(extra), int(extra2))


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


# ------------------------------------------------------------- the index maps of the GEMM roles
# (plain functions, made device functions by gemm.ROLES: one calls another only if that is a device function)
def one_split(geo):
    return 1


def no_bias_grad(geo, z, m):
    return -1


def fwd_sizes(geo, z):
    return geo[COUT] // geo[GROUPS], geo[N] * geo[OH] * geo[OW], 0, \
        (geo[CIN] // geo[GROUPS]) * geo[KH] * geo[KW]


def fwd_a(geo, z, m, k):
    return (z * (geo[COUT] // geo[GROUPS]) + m) * ((geo[CIN] // geo[GROUPS]) * geo[KH] * geo[KW]) + k


def fwd_b(geo, z, k, n):
    return x_index(geo, z, k, n)


def fwd_out(geo, z, m, n):
    return y_index(geo, z, m, n)


def fwd_m_stride(geo):
    return geo[OH] * geo[OW]


def fwd_bias(geo, z, m, n):
    return z * (geo[COUT] // geo[GROUPS]) + m if geo[EXTRA] else -1


def gin_sizes(geo, z):
    return geo[CIN] // geo[GROUPS], geo[N] * geo[H] * geo[W], 0, \
        (geo[COUT] // geo[GROUPS]) * geo[KH] * geo[KW]


def gin_a(geo, z, m, k):
    o, i, j = split3(k, geo[KH], geo[KW])
    return (((z * (geo[COUT] // geo[GROUPS]) + o) * (geo[CIN] // geo[GROUPS]) + m) * geo[KH] + i) * geo[KW] + j


def gin_b(geo, z, k, n):
    o, i, j = split3(k, geo[KH], geo[KW])
    b, y, x = split3(n, geo[H], geo[W])
    oy = source_out(y, geo[OH], geo[SH], geo[PT], i, geo[DH])
    ox = source_out(x, geo[OW], geo[SW], geo[PL], j, geo[DW])
    if oy < 0 or ox < 0:
        return -1
    return ((b * geo[COUT] + z * (geo[COUT] // geo[GROUPS]) + o) * geo[OH] + oy) * geo[OW] + ox


def gin_out(geo, z, m, n):
    b, y, x = split3(n, geo[H], geo[W])
    return ((b * geo[CIN] + z * (geo[CIN] // geo[GROUPS]) + m) * geo[H] + y) * geo[W] + x


def gin_m_stride(geo):
    return geo[H] * geo[W]


def no_bias(geo, z, m, n):
    return -1


# Weight gradient: EXTRA = splits, EXTRA2 = pixels per split.
def gw_sizes(geo, z):
    k_lo = (z % geo[EXTRA]) * geo[EXTRA2]
    return geo[COUT] // geo[GROUPS], (geo[CIN] // geo[GROUPS]) * geo[KH] * geo[KW], k_lo, \
        min(geo[N] * geo[OH] * geo[OW], k_lo + geo[EXTRA2])


def gw_a(geo, z, m, k):
    return y_index(geo, z // geo[EXTRA], m, k)


def gw_b(geo, z, k, n):
    return x_index(geo, z // geo[EXTRA], n, k)


def gw_out(geo, z, m, n):
    return ((z // geo[EXTRA]) * (geo[COUT] // geo[GROUPS]) + m) * \
        ((geo[CIN] // geo[GROUPS]) * geo[KH] * geo[KW]) + n


def gw_m_stride(geo):
    return (geo[CIN] // geo[GROUPS]) * geo[KH] * geo[KW]


def gw_bias_grad(geo, z, m):
    """Where the bias gradient of output channel m goes: after the weight gradient."""
    weights = geo[COUT] * (geo[CIN] // geo[GROUPS]) * geo[KH] * geo[KW]
    return weights + (z // geo[EXTRA]) * (geo[COUT] // geo[GROUPS]) + m


def gw_splits(geo):
    return geo[EXTRA]


# ------------------------------------------------------------------------------ direct kernel
DIRECT_SMEM = 2048  # elements of shared memory: the input patch plus COB output channels' weights


@category("conv")
def direct_kernel(dtype, act):
    """Forward convolution for few channels: a block computes a TH x TW tile of output pixels for COB
    output channels of one image; for each input channel it stages the input patch the tile reads and
    the COB filters in shared memory, then each thread accumulates its pixel's COB outputs in registers.
    The epilogue adds the bias and applies ``act``."""
    tw, th, cob = config().direct
    nthreads = tw * th
    dt = numba.from_dtype(np.dtype(dtype))
    activate = op(act)

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
                    y[((b * geo[COUT] + oc) * geo[OH] + oy) * geo[OW] + ox] = activate(v, 0, 0)
    return direct
