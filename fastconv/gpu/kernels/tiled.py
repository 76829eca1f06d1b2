"""Tiled and locally-connected convolution kernels: one thread per element of the result, walking that
element's window, so nothing is materialised and no two threads write the same element.

- forward: one output ``(n, o, oy, ox)``, over its window, with kernel ``(oy % th, ox % tw)``;
- input gradient: one input element, gathering every output whose window reads it (``source_out``);
- weight gradient: one weight element ``(a, b, o, c, i, j)``, over the samples and the output positions
  that use kernel ``(a, b)``: for a locally-connected layer the samples only.

The geometry is ``conv.conv_geometry`` (``spec.geometry()``, the extra flags a bias), the tiles ``(th,
tw)`` passed beside it.
"""
import numba
import numpy as np
from numba import cuda

from ..launch import category
from .conv import CIN, COUT, DH, DW, EXTRA, GROUPS, KH, KW, OH, OW, PL, PT, SH, SW, H, N, W, source_out, split3


@category("conv")
def forward_kernel(dtype):
    dt = numba.from_dtype(np.dtype(dtype))

    @cuda.jit
    def forward(x, w, bias, y, geo, th, tw, bh, bw, total):
        cig, cog = geo[CIN] // geo[GROUPS], geo[COUT] // geo[GROUPS]
        kh, kw, h, wd = geo[KH], geo[KW], geo[H], geo[W]
        for e in range(cuda.grid(1), total, cuda.gridsize(1)):
            no, oy, ox = split3(e, geo[OH], geo[OW])
            n, o = no // geo[COUT], no % geo[COUT]
            g = o // cog
            kernel = (((oy % th) * tw + ox % tw) * geo[COUT] + o) * cig * kh * kw
            acc = dt(0)
            for c in range(cig):
                plane = (n * geo[CIN] + g * cig + c) * h * wd
                for i in range(kh):
                    iy = oy * geo[SH] - geo[PT] + i * geo[DH]
                    if iy < 0 or iy >= h:
                        continue
                    for j in range(kw):
                        ix = ox * geo[SW] - geo[PL] + j * geo[DW]
                        if 0 <= ix < wd:
                            acc += x[plane + iy * wd + ix] * w[kernel + (c * kh + i) * kw + j]
            if geo[EXTRA]:
                acc += bias[(o * bh + (oy if bh > 1 else 0)) * bw + (ox if bw > 1 else 0)]
            y[e] = acc
    return forward


@category("conv")
def grad_input_kernel(dtype):
    dt = numba.from_dtype(np.dtype(dtype))

    @cuda.jit
    def grad_input(gy, w, gx, geo, th, tw, total):
        cig, cog = geo[CIN] // geo[GROUPS], geo[COUT] // geo[GROUPS]
        kh, kw, oh, ow = geo[KH], geo[KW], geo[OH], geo[OW]
        for e in range(cuda.grid(1), total, cuda.gridsize(1)):
            nc, iy, ix = split3(e, geo[H], geo[W])
            n, ci = nc // geo[CIN], nc % geo[CIN]
            g, c = ci // cig, ci % cig
            acc = dt(0)
            for i in range(kh):
                oy = source_out(iy, oh, geo[SH], geo[PT], i, geo[DH])
                if oy < 0:
                    continue
                for j in range(kw):
                    ox = source_out(ix, ow, geo[SW], geo[PL], j, geo[DW])
                    if ox < 0:
                        continue
                    kernel = ((oy % th) * tw + ox % tw) * geo[COUT]
                    for o in range(g * cog, (g + 1) * cog):
                        acc += (gy[((n * geo[COUT] + o) * oh + oy) * ow + ox]
                                * w[(((kernel + o) * cig + c) * kh + i) * kw + j])
            gx[e] = acc
    return grad_input


@category("conv")
def grad_weight_kernel(dtype):
    dt = numba.from_dtype(np.dtype(dtype))

    @cuda.jit
    def grad_weight(gy, x, gw, geo, th, tw, total):
        cig, cog = geo[CIN] // geo[GROUPS], geo[COUT] // geo[GROUPS]
        kh, kw, h, wd, oh, ow = geo[KH], geo[KW], geo[H], geo[W], geo[OH], geo[OW]
        for e in range(cuda.grid(1), total, cuda.gridsize(1)):
            ab_o, c, ij = split3(e, cig, kh * kw)
            ab, o = ab_o // geo[COUT], ab_o % geo[COUT]
            a, b = ab // tw, ab % tw
            i, j = ij // kw, ij % kw
            g = o // cog
            acc = dt(0)
            for n in range(geo[N]):
                plane = (n * geo[CIN] + g * cig + c) * h * wd
                for oy in range(a, oh, th):
                    iy = oy * geo[SH] - geo[PT] + i * geo[DH]
                    if iy < 0 or iy >= h:
                        continue
                    for ox in range(b, ow, tw):
                        ix = ox * geo[SW] - geo[PL] + j * geo[DW]
                        if 0 <= ix < wd:
                            acc += gy[((n * geo[COUT] + o) * oh + oy) * ow + ox] * x[plane + iy * wd + ix]
            gw[e] = acc
    return grad_weight
