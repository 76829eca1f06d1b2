"""The tiled GEMM (shared-memory tiles, register micro-tiles) and the table of its roles.

A :class:`GemmRole` is a set of index maps that turns the kernel into one product: ``matmul`` (strided,
batched) here, every convolution product in ``conv.py`` as an implicit GEMM (nothing is materialised).
What a layer needs around the product is fused into the same launch, chosen per kernel by its key:

- epilogue: ``out = act(acc + bias)`` (bias by row for convolutions, by column for matmul);
- prologue ``grad_on="a"`` or ``"b"``: that operand is a gradient taken through ``grad_act``, multiplied
  as it is loaded by the activation's derivative read from ``aux`` (the activation's output, laid out as
  the operand);
- ``bias_col``: one more output column whose operand is all ones, so the same launch writes the bias
  gradient (row sums of A) after the weight gradient;
- ``split``: the reduction is split over blocks (``role.splits``); each writes its partial tile to
  ``scratch``, and the last block of a tile to arrive (a counter per tile, reset by that block) sums them
  in split order - deterministic, and no zero-fill before the launch.
"""
from collections import namedtuple

import numba
import numpy as np
from numba import cuda

from ..launch import category, config, launch
from . import conv
from .elementwise import device, op

GemmRole = namedtuple("GemmRole", "sizes a_index b_index out_index out_m_stride bias_index bias_grad_index splits")
GemmRole.__doc__ = """Index maps that turn the tiled GEMM kernel into one product. Device functions of
``(geo, z, ...)``, with ``geo`` a tuple of ints and ``z`` the block's grid z (batch, group, split):
``sizes -> (M, N, k_lo, k_hi)``; ``a_index(m, k)``, ``b_index(k, n)``: flat index into P / Q, or -1 for an
implicit zero (padding); ``out_index(m, n)``: flat index into out, which must grow by ``out_m_stride(geo)``
per unit of m; ``bias_index(m, n)``: index into the bias, or -1; ``bias_grad_index(m)``: where the extra
column of ``bias_col`` goes; ``splits(geo)``: blocks sharing one output tile (z = tile's z * splits +
split)."""


# matmul geometry: (M, N, K, a_off, a_batch, a_row, a_col, b_off, b_batch, b_row, b_col, z0, bias, bias_grad)
def _mm_sizes(geo, z):
    return geo[0], geo[1], 0, geo[2]


def _mm_a(geo, z, m, k):
    return geo[3] + (z + geo[11]) * geo[4] + m * geo[5] + k * geo[6]


def _mm_b(geo, z, k, n):
    return geo[7] + (z + geo[11]) * geo[8] + k * geo[9] + n * geo[10]


def _mm_out(geo, z, m, n):
    return ((z + geo[11]) * geo[0] + m) * geo[1] + n


def _mm_m_stride(geo):
    return geo[1]


def _mm_bias(geo, z, m, n):  # linear layers: one bias per output column
    return n if geo[12] else -1


def _mm_bias_grad(geo, z, m):
    return geo[13] + m


def _role(*maps):
    return GemmRole(*(device(f) for f in maps))


ROLES = {  # every product the tiled GEMM runs
    "matmul": _role(_mm_sizes, _mm_a, _mm_b, _mm_out, _mm_m_stride, _mm_bias, _mm_bias_grad, conv.one_split),
    "conv_fwd": _role(conv.fwd_sizes, conv.fwd_a, conv.fwd_b, conv.fwd_out, conv.fwd_m_stride, conv.fwd_bias,
                      conv.no_bias_grad, conv.one_split),
    "conv_grad_input": _role(conv.gin_sizes, conv.gin_a, conv.gin_b, conv.gin_out, conv.gin_m_stride,
                             conv.no_bias, conv.no_bias_grad, conv.one_split),
    "conv_grad_weight": _role(conv.gw_sizes, conv.gw_a, conv.gw_b, conv.gw_out, conv.gw_m_stride, conv.no_bias,
                              conv.gw_bias_grad, conv.gw_splits),
}


@cuda.jit(device=True)
def tile_slot(e, k_fast, bk, width):
    """``(k, row)`` of the ``e``-th element of a ``bk x width`` tile: consecutive ``e`` run along k
    (``k_fast``) or along the row, whichever is contiguous in memory."""
    if k_fast:
        return e % bk, e // bk
    return e // width, e % width


@category("gemm")
def gemm_kernel(role, dtype, a_k_fast, b_k_fast, act, grad_act, grad_on, bias_col, split):
    """The tiled GEMM of ``ROLES[role]`` with its fused epilogue / prologue (see the module). ``a_k_fast``
    / ``b_k_fast``: consecutive threads load consecutive k (else consecutive m / n) when filling the shared
    tiles, whichever is contiguous in memory."""
    sizes, a_index, b_index, out_index, out_m_stride, bias_index, bias_grad_index, splits = ROLES[role]
    bm, bn, bk, tm, tn = config().gemm
    thx, thy = bn // tn, bm // tm
    nthreads = thx * thy
    a_tile, b_tile = (bk, bm + 1), (bk, bn + 1)  # +1: k-fast stores hit different banks
    dt = numba.from_dtype(np.dtype(dtype))
    activate = op(act)
    through = op(f"{grad_act}_grad" if grad_on else "")
    grad_a, grad_b = grad_on == "a", grad_on == "b"

    @cuda.jit
    def gemm(P, Q, out, bias, aux, scratch, counters, geo):
        As = cuda.shared.array(a_tile, dt)
        Bs = cuda.shared.array(b_tile, dt)
        last = cuda.shared.array(1, numba.int32)
        acc = cuda.local.array((tm, tn), dt)
        a_reg = cuda.local.array(tm, dt)
        b_reg = cuda.local.array(tn, dt)
        o_base = cuda.local.array(tn, numba.int64)
        o_step = cuda.local.array(tn, numba.int64)
        z = cuda.blockIdx.z
        M, N, k_lo, k_hi = sizes(geo, z)
        NC = N + 1 if bias_col else N
        m0, n0 = cuda.blockIdx.y * bm, cuda.blockIdx.x * bn
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        tid = ty * thx + tx
        for r in range(tm):
            for c in range(tn):
                acc[r, c] = 0
        for k0 in range(k_lo, k_hi, bk):
            for e in range(tid, bm * bk, nthreads):
                kk, mm = tile_slot(e, a_k_fast, bk, bm)
                m, k = m0 + mm, k0 + kk
                ai = a_index(geo, z, m, k) if m < M and k < k_hi else -1
                if ai >= 0:
                    As[kk, mm] = through(P[ai], aux[ai], 0) if grad_a else P[ai]
                else:
                    As[kk, mm] = 0
            for e in range(tid, bn * bk, nthreads):
                kk, nn = tile_slot(e, b_k_fast, bk, bn)
                n, k = n0 + nn, k0 + kk
                bi = b_index(geo, z, k, n) if n < N and k < k_hi else -1
                if bi >= 0:
                    Bs[kk, nn] = through(Q[bi], aux[bi], 0) if grad_b else Q[bi]
                elif bias_col and n == N and k < k_hi:
                    Bs[kk, nn] = 1
                else:
                    Bs[kk, nn] = 0
            cuda.syncthreads()
            for kk in range(bk):
                for r in range(tm):
                    a_reg[r] = As[kk, ty + r * thy]
                for c in range(tn):
                    b_reg[c] = Bs[kk, tx + c * thx]
                for r in range(tm):
                    for c in range(tn):
                        acc[r, c] += a_reg[r] * b_reg[c]
            cuda.syncthreads()
        if split:  # partial tile to scratch; the last block of the tile sums the partials in split order
            S = splits(geo)
            zt = z // S
            tile = (zt * cuda.gridDim.y + cuda.blockIdx.y) * cuda.gridDim.x + cuda.blockIdx.x
            for r in range(tm):
                m = m0 + ty + r * thy
                for c in range(tn):
                    n = n0 + tx + c * thx
                    if m < M and n < NC:
                        scratch[(z * M + m) * NC + n] = acc[r, c]
            cuda.threadfence()
            cuda.syncthreads()
            if tid == 0:
                last[0] = cuda.atomic.add(counters, tile, 1)
            cuda.syncthreads()
            if last[0] != S - 1:
                return
            for r in range(tm):
                m = m0 + ty + r * thy
                for c in range(tn):
                    n = n0 + tx + c * thx
                    if m < M and n < NC:
                        total = scratch[(zt * S * M + m) * NC + n]
                        for s in range(1, S):
                            total += scratch[((zt * S + s) * M + m) * NC + n]
                        acc[r, c] = total
            if tid == 0:
                counters[tile] = 0
        # Epilogue: index maps once per column, then small loops that unroll, so acc stays in registers.
        for c in range(tn):
            n = n0 + tx + c * thx
            o_base[c], o_step[c] = -1, 0
            if n < N:
                o_base[c], o_step[c] = out_index(geo, z, m0 + ty, n), thy * out_m_stride(geo)
            elif bias_col and n == N:
                o_base[c], o_step[c] = bias_grad_index(geo, z, m0 + ty), thy
        for r in range(tm):
            m = m0 + ty + r * thy
            if m < M:
                for c in range(tn):
                    if o_base[c] >= 0:
                        n = n0 + tx + c * thx
                        v = acc[r, c]
                        if n < N:
                            bi = bias_index(geo, z, m, n)
                            if bi >= 0:
                                v += bias[bi]
                            v = activate(v, 0, 0)
                        out[o_base[c] + r * o_step[c]] = v
    return gemm


def launch_gemm(role, P, Q, out, geo, M, N, batches, a_k_fast, b_k_fast, bias=None, aux=None, act="",
                grad_act="", grad_on="", bias_col=False, scratch=None):
    """Launch ``role``'s GEMM over an M x N output (N + 1 with ``bias_col``) for ``batches`` values of z.
    Unused buffers are stood in for by ``out``; ``scratch`` (a partial tile per split) is needed exactly
    when the role splits the reduction."""
    bm, bn, _, tm, tn = config().gemm
    grid = (-(-(N + bool(bias_col)) // bn), -(-M // bm), batches)
    key = (role, np.dtype(out.dtype).str, bool(a_k_fast), bool(b_k_fast), act or "", grad_act or "",
           grad_on if grad_act else "", bool(bias_col), scratch is not None)
    launch(gemm_kernel, key, grid, (bn // tn, bm // tm), P, Q, out, out if bias is None else bias,
           out if aux is None else aux, out if scratch is None else scratch,
           tile_counters(grid[0] * grid[1] * batches if scratch is not None else 1), geo)


_counters = {}


def tile_counters(n):
    """A zeroed int32 device array of at least ``n`` counters, kept: every split GEMM resets the counters
    it used, so they are zero again for the next launch (copied from the host once: no launch)."""
    size = 1 << max(0, n - 1).bit_length()
    found = _counters.get("buffer")
    if found is None or found.shape[0] < size:
        found = _counters["buffer"] = cuda.to_device(np.zeros(max(size, 64), np.int32))
    return found
