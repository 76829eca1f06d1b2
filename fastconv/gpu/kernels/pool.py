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
from .conv import source_out, split3
from .elementwise import op

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


@category("pool")
def pool_kernel(kind, act):
    """One thread per output element loops over its window of ``act(x)``: the max and the flat index
    ``row * W + col`` of its first maximum (padding counts as -inf, NaN wins), or the average."""
    is_max = kind == "max"
    activate = op(act)

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
                y[e] = acc / avg_divisor(geo, oy, ox)
    return pool


@category("pool")
def pool_grad_kernel(kind, act):
    """One thread per input element gathers from every window that covers it: ``gy / divisor`` (average),
    or ``gy`` of the windows whose maximum it is (max: ``idx`` from the forward pass); then the
    activation's derivative at ``x``."""
    is_max = kind == "max"
    activate, through = op(act), op(f"{act}_grad" if act else "")

    @cuda.jit
    def pool_grad(gy, idx, x, gx, geo, total):
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
                        o = (plane * oh + oy) * ow + ox
                        if not is_max:
                            acc += gy[o] / avg_divisor(geo, oy, ox)
                        elif idx[o] == iy * w + ix:
                            acc += gy[o]
            gx[e] = through(acc, activate(x[e], 0, 0), 0) if act else acc
    return pool_grad
