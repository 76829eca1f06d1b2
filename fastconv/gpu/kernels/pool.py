"""Max and average pooling and their gradients, one thread per element; each may take a preceding
activation (``act``) into the same launch: the window reads ``act(x)``, and the gradient is multiplied
by the activation's derivative.

Both gradients are gathers: one thread per input element sums what the windows covering it send back
(through :func:`~fastconv.gpu.kernels.conv.source_out`), so they need no zero-fill and no atomics, and
the sums are deterministic.
"""
import math

from numba import cuda

from ..launch import category
from .conv import DH, DW, H, KH, KW, OH, OW, PL, PT, SH, SW, W, source_out, split3
from .elementwise import op

# The geometry tuple is ``spec.geometry()`` (a pooling op's is its depthwise convolution's); average
# pooling divides by ``PoolSpec.divisors()``, flat per output pixel.


@category("pool")
def pool_kernel(kind, act):
    """One thread per output element loops over its window of ``act(x)``: the max and the flat index
    ``row * W + col`` of its first maximum (padding counts as -inf, NaN wins), or the average."""
    is_max = kind == "max"
    activate = op(act)

    @cuda.jit
    def pool(x, y, idx, divisors, geo, total):
        h, w, kh, kw, oh, ow = geo[H], geo[W], geo[KH], geo[KW], geo[OH], geo[OW]
        start, step = cuda.grid(1), cuda.gridsize(1)
        for e in range(start, total, step):
            plane, oy, ox = split3(e, oh, ow)
            y0, x0 = oy * geo[SH] - geo[PT], ox * geo[SW] - geo[PL]
            base = plane * h * w
            best = -math.inf
            where = -1
            acc = 0.0
            for i in range(kh):
                iy = y0 + i * geo[DH]
                for j in range(kw):
                    ix = x0 + j * geo[DW]
                    inside = 0 <= iy < h and 0 <= ix < w
                    if is_max:
                        v = activate(x[base + iy * w + ix], 0, 0) if inside else -math.inf
                        if (i == 0 and j == 0) or (best == best and (v > best or v != v)):
                            best = v
                            where = iy * w + ix
                    elif inside:
                        acc += activate(x[base + iy * w + ix], 0, 0)
            if is_max:
                y[e] = best
                idx[e] = where
            else:
                y[e] = acc / divisors[oy * ow + ox]
    return pool


@category("pool")
def pool_grad_kernel(kind, act):
    """One thread per input element gathers from every window that covers it: ``gy / divisor`` (average),
    or ``gy`` of the windows whose maximum it is (max: ``idx`` from the forward pass); then the
    activation's derivative at ``x``."""
    is_max = kind == "max"
    activate, through = op(act), op(f"{act}_grad" if act else "")

    @cuda.jit
    def pool_grad(gy, idx, x, gx, divisors, geo, total):
        h, w, oh, ow = geo[H], geo[W], geo[OH], geo[OW]
        start, step = cuda.grid(1), cuda.gridsize(1)
        for e in range(start, total, step):
            plane, iy, ix = split3(e, h, w)
            acc = 0.0
            for i in range(geo[KH]):
                oy = source_out(iy, oh, geo[SH], geo[PT], i, geo[DH])
                if oy < 0:
                    continue
                for j in range(geo[KW]):
                    ox = source_out(ix, ow, geo[SW], geo[PL], j, geo[DW])
                    if ox >= 0:
                        o = (plane * oh + oy) * ow + ox
                        if not is_max:
                            acc += gy[o] / divisors[oy * ow + ox]
                        elif idx[o] == iy * w + ix:
                            acc += gy[o]
            gx[e] = through(acc, activate(x[e], 0, 0), 0) if act else acc
    return pool_grad
