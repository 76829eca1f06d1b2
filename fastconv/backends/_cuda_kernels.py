"""The CUDA kernel templates behind ``cuda_array`` and ``cuda``: each factory builds one kernel per key
(operation, rank, dtype, ...), compiled by Numba on first launch.

- :func:`elementwise_kernel`: ``out = op(a, b, c)`` over a broadcast shape, operands strided or scalar.
- :func:`reduce_kernel`: one block per output element, a tree in shared memory (:func:`block_reducer`).
- :func:`log_softmax_kernel`: fused row-wise log-softmax and its gradient.
- :func:`along_kernel`: gather / scatter / atomic add along one axis (take/put_along_axis, add_at,
  max-pool gradient, unpooling).
- :func:`gemm_kernel`: a tiled GEMM (shared-memory tiles, register micro-tiles) whose index maps are
  plugged in as a :class:`GemmRole`: matmul here, every convolution product in ``cuda.py``.

Strided operands arrive as a flat device buffer plus an element offset and a strides tuple; host code
merges dims that are contiguous in every operand first (``cuda_array._collapse``), so the common case is a
rank-1 loop. :func:`launch` is the one launch path (and can record signatures: ``bench/gpu_check.py
--ptx`` compiles every recorded kernel for real GPUs without one). Launch shapes are small under the
simulator (:func:`config`), where every GPU thread is a Python thread.
"""
import functools
import importlib
import math
from collections import namedtuple

import numba
import numpy as np
from numba import cuda


# ------------------------------------------------------------------------------ configuration
Config = namedtuple("Config", "threads max_blocks red_threads gemm direct")


@functools.lru_cache(maxsize=None)
def config():
    """Launch shapes: full-size blocks on a GPU, tiny ones under the simulator (one Python thread each).

    ``gemm`` is ``(BM, BN, BK, TM, TN)``: a block computes a BM x BN output tile with (BM/TM) x (BN/TN)
    threads, each accumulating a TM x TN micro-tile in registers over K in steps of BK. ``direct`` is
    ``(TW, TH, COB)`` for the direct convolution kernel (see ``cuda.py``).
    """
    if getattr(numba.config, "ENABLE_CUDASIM", False):
        _lock_simulated_shared_arrays()
        return Config(threads=32, max_blocks=2, red_threads=8, gemm=(8, 8, 4, 2, 2), direct=(4, 4, 2))
    return Config(threads=256, max_blocks=16384, red_threads=256, gemm=(64, 64, 16, 4, 4), direct=(16, 8, 4))


def _lock_simulated_shared_arrays():
    """Make the simulator's ``cuda.shared.array`` thread-safe (numba-cuda 0.30 checks and fills its table
    of a block's arrays without a lock: two simulated threads entering together could get two different
    arrays, and a block-wide reduction then loses partial sums, rarely and only under load)."""
    import sys
    import threading
    from numba.cuda.simulator import kernelapi
    shared = kernelapi.FakeCUDAShared
    if getattr(shared, "_fastconv_locked", False):
        return
    unlocked, lock = shared.array, threading.Lock()

    def array(self, shape, dtype, alignment=None):
        if alignment is not None or shape == 0:
            return unlocked(self, shape, dtype, alignment)
        if isinstance(dtype, kernelapi.types.Type):
            dtype = kernelapi.numpy_support.as_dtype(dtype)
        frame = sys._getframe(1)  # one array per call site, as the simulator keys them
        caller = (frame.f_code.co_filename, frame.f_lineno)
        with lock:
            found = self._allocations.get(caller)
            if found is None:
                found = self._allocations[caller] = np.empty(shape, dtype)
        return found

    shared.array = array
    shared._fastconv_locked = True


def grid_1d(n):
    """(blocks, threads) for a grid-stride loop over ``n`` items."""
    cfg = config()
    return max(1, min(cfg.max_blocks, -(-n // cfg.threads))), cfg.threads


# -------------------------------------------------------------------------- kernel registry
_kernels = {}
_recorded = None  # a list while recording launches (bench/gpu_check.py --ptx compiles them for a real GPU)


def kernel(factory, key):
    """The kernel ``factory(*key)`` builds, built once per key (compilation itself is lazy)."""
    k = _kernels.get((factory, key))
    if k is None:
        k = _kernels[(factory, key)] = factory(*key)
    return k


def _numba_type(arg):
    return numba.typeof(getattr(arg, "_ary", arg))


def launch(factory, key, grid, block, *args):
    """Launch ``kernel(factory, key)`` on ``grid`` x ``block`` (recording its signature if asked)."""
    k = kernel(factory, key)
    if _recorded is not None:
        _recorded.append((factory.__module__, factory.__name__, key, tuple(_numba_type(a) for a in args)))
    k[grid, block](*args)


def record_launches(records):
    """Append ``(module, factory, key, argument types)`` of every launch to ``records`` (None: stop)."""
    global _recorded
    _recorded = records


# ------------------------------------------------------------------------ elementwise kernels
def _dev(fn):
    return cuda.jit(device=True)(fn)


def _maximum_op(a, b, c):  # NaN wins, as np.maximum
    return a if (a != a or a > b) else b


def _minimum_op(a, b, c):
    return a if (a != a or a < b) else b


def _sign_op(a, b, c):
    if a > 0:
        return 1
    if a < 0:
        return -1
    return a * 0  # 0, or NaN for NaN


OPS = {  # name -> (device function of up to three operands, NumPy function giving the result dtype)
    "copy": (lambda a, b, c: a, None),
    "add": (lambda a, b, c: a + b, np.add),
    "subtract": (lambda a, b, c: a - b, np.subtract),
    "multiply": (lambda a, b, c: a * b, np.multiply),
    "divide": (lambda a, b, c: a / b, np.divide),
    "power": (lambda a, b, c: a ** b, np.power),
    "negative": (lambda a, b, c: -a, np.negative),
    "exp": (lambda a, b, c: math.inf if a > 709.0 else math.exp(a), np.exp),  # no OverflowError when simulated
    "log": (lambda a, b, c: math.log(a) if a > 0 else (-math.inf if a == 0 else math.nan), np.log),
    "tanh": (lambda a, b, c: math.tanh(a), np.tanh),
    "sqrt": (lambda a, b, c: math.sqrt(a) if a >= 0 else math.nan, np.sqrt),
    "absolute": (lambda a, b, c: abs(a), np.absolute),
    "sign": (_sign_op, np.sign),
    "square": (lambda a, b, c: a * a, np.square),
    "maximum": (_maximum_op, np.maximum),
    "minimum": (_minimum_op, np.minimum),
    "where": (lambda a, b, c: b if a else c, np.where),
    "greater": (lambda a, b, c: a > b, np.greater),
    "greater_equal": (lambda a, b, c: a >= b, np.greater_equal),
    "less": (lambda a, b, c: a < b, np.less),
    "less_equal": (lambda a, b, c: a <= b, np.less_equal),
    "equal": (lambda a, b, c: a == b, np.equal),
    "not_equal": (lambda a, b, c: a != b, np.not_equal),
    "logical_not": (lambda a, b, c: not a, np.logical_not),
}


@functools.lru_cache(maxsize=None)
def _op(name):
    return _dev(OPS[name][0])


def _load_array(buf, i):
    return buf[i]


def _load_scalar(value, i):
    return value


_LOADS = {"a": _dev(_load_array), "s": _dev(_load_scalar)}


def elementwise_kernel(name, rank, kinds):
    """``out = op(a, b, c)`` over a broadcast shape of ``rank`` dims; ``kinds[k]`` says whether operand k
    is an array ("a": flat buffer + offset + strides) or a scalar kernel argument ("s")."""
    op = _op(name)
    la, lb, lc = (_LOADS[k] for k in kinds)

    @cuda.jit
    def elementwise(a, b, c, out, offsets, shape, sa, sb, sc, so, n):
        start, step = cuda.grid(1), cuda.gridsize(1)
        for i in range(start, n, step):
            ia, ib, ic, io = offsets[0], offsets[1], offsets[2], offsets[3]
            r = i
            for d in range(rank - 1, -1, -1):
                q = r // shape[d]
                x = r - q * shape[d]
                r = q
                ia += x * sa[d]
                ib += x * sb[d]
                ic += x * sc[d]
                io += x * so[d]
            out[io] = op(la(a, ia), lb(b, ib), lc(c, ic))
    return elementwise


# ---------------------------------------------------------------------------- reductions
def _sum_op(acc, v):
    return acc + v


def _max_op(acc, v):  # NaN wins, as np.max
    return v if (v > acc or v != v) else acc


def _min_op(acc, v):
    return v if (v < acc or v != v) else acc


REDUCE_OPS = {"sum": _dev(_sum_op), "max": _dev(_max_op), "min": _dev(_min_op)}


@cuda.jit(device=True)
def flat_offset(i, shape, strides):
    """Element offset of the ``i``-th element (C order) of a strided view of ``shape``."""
    off = 0
    for d in range(len(shape) - 1, -1, -1):
        q = i // shape[d]
        off += (i - q * shape[d]) * strides[d]
        i = q
    return off


@functools.lru_cache(maxsize=None)
def block_reducer(name):
    """A device function ``(partial, value, t, nt) -> combined value of the block``: a tree over the
    block's ``nt`` threads (a power of two) in the shared array ``partial``; every thread gets the result."""
    combine = REDUCE_OPS[name]

    @cuda.jit(device=True)
    def block_reduce(partial, value, t, nt):
        partial[t] = value
        cuda.syncthreads()
        s = nt // 2
        while s > 0:
            if t < s:
                partial[t] = combine(partial[t], partial[t + s])
            cuda.syncthreads()
            s //= 2
        result = partial[0]
        cuda.syncthreads()
        return result
    return block_reduce


def reduce_kernel(name, dtype):
    """One block per output element (grid-stride): threads stride over the reduced elements, then a tree
    in shared memory combines their partial results."""
    combine, tree = REDUCE_OPS[name], block_reducer(name)
    width = config().red_threads
    dt = numba.from_dtype(np.dtype(dtype))

    @cuda.jit
    def reduce(a, offset, kshape, kstrides, rshape, rstrides, out, n_out, n_red, init):
        partial = cuda.shared.array(width, dt)
        t, nt = cuda.threadIdx.x, cuda.blockDim.x
        for o in range(cuda.blockIdx.x, n_out, cuda.gridDim.x):
            base = offset + flat_offset(o, kshape, kstrides)
            acc = init
            for r in range(t, n_red, nt):
                acc = combine(acc, a[base + flat_offset(r, rshape, rstrides)])
            acc = tree(partial, acc, t, nt)
            if t == 0:
                out[o] = acc
    return reduce


def threads_for(n):
    """Block size for a block-wide reduction over ``n`` elements: a power of two, at most the width."""
    width, threads = config().red_threads, 1
    while threads < min(n, width):
        threads *= 2
    return threads


# ----------------------------------------------------------------------- fused log-softmax
def log_softmax_kernel(mode, dtype):
    """One block per row along ``axis`` (grid-stride). forward (a = x): ``out = x - max - log(sum(exp(x -
    max)))``; backward (a = g, b = out): ``out = g - exp(b) * sum(g)``. One launch instead of six / four."""
    width = config().red_threads
    dt = numba.from_dtype(np.dtype(dtype))
    tree_max, tree_sum = block_reducer("max"), block_reducer("sum")
    forward = mode == "forward"

    @cuda.jit
    def log_softmax(a, b, out, offsets, kshape, ka, kb, ko, sa, sb, so, n_rows, length):
        partial = cuda.shared.array(width, dt)
        t, nt = cuda.threadIdx.x, cuda.blockDim.x
        for row in range(cuda.blockIdx.x, n_rows, cuda.gridDim.x):
            ia = offsets[0] + flat_offset(row, kshape, ka)
            ib = offsets[1] + flat_offset(row, kshape, kb)
            io = offsets[2] + flat_offset(row, kshape, ko)
            if forward:
                m = -math.inf
                for j in range(t, length, nt):
                    v = a[ia + j * sa]
                    m = v if (v > m or v != v) else m
                m = tree_max(partial, m, t, nt)
                total = 0.0
                for j in range(t, length, nt):
                    total += math.exp(a[ia + j * sa] - m)
                shift = m + math.log(tree_sum(partial, total, t, nt))
                for j in range(t, length, nt):
                    out[io + j * so] = a[ia + j * sa] - shift
            else:
                total = 0.0
                for j in range(t, length, nt):
                    total += a[ia + j * sa]
                total = tree_sum(partial, total, t, nt)
                for j in range(t, length, nt):
                    out[io + j * so] = a[ia + j * sa] - math.exp(b[ib + j * sb]) * total
    return log_softmax


# ------------------------------------------------------------------- gather / scatter along an axis
def along_kernel(mode, rank):
    """For every position p of a broadcast shape: ``j = idx[p]`` (negative counts from the end);
    take: ``val[p] = arr[p with axis = j]``; put: ``arr[...] = val[p]``; add: atomic ``arr[...] += val[p]``.
    Out-of-range ``j`` is skipped (kernels cannot raise)."""
    @cuda.jit
    def along(arr, idx, val, offsets, shape, sarr, sidx, sval, length, axis_stride, n):
        start, step = cuda.grid(1), cuda.gridsize(1)
        for i in range(start, n, step):
            ia, ii, iv = offsets[0], offsets[1], offsets[2]
            r = i
            for d in range(rank - 1, -1, -1):
                q = r // shape[d]
                x = r - q * shape[d]
                r = q
                ia += x * sarr[d]
                ii += x * sidx[d]
                iv += x * sval[d]
            j = idx[ii]
            if j < 0:
                j += length
            if 0 <= j < length:
                if mode == "take":
                    val[iv] = arr[ia + j * axis_stride]
                elif mode == "put":
                    arr[ia + j * axis_stride] = val[iv]
                else:
                    cuda.atomic.add(arr, ia + j * axis_stride, val[iv])
    return along


# ------------------------------------------------------------------------------- tiled GEMM
MAX_GRID_Z = 65535  # blocks along grid z (batches, groups x splits)

GemmRole = namedtuple("GemmRole", "sizes a_index b_index out_index out_m_stride bias_index atomic")
GemmRole.__doc__ = """Index maps that turn the tiled GEMM kernel into one product (matmul here, every convolution
product in cuda.py, as implicit GEMMs: nothing is materialised). Device functions of ``(geo, z, ...)``,
with ``geo`` a tuple of ints and ``z`` the block's grid z (batch, group, split):
``sizes -> (M, N, k_lo, k_hi)``; ``a_index(m, k)``, ``b_index(k, n)``: flat index into P / Q, or -1 for an
implicit zero (padding); ``out_index(m, n)``: flat index into out, which must grow by ``out_m_stride(geo)``
per unit of m; ``bias_index(m, n)``: index into the bias (growing by 1 per m), or -1; ``atomic``: add into
``out`` (split-K partial sums) rather than store."""
GEMM_ROLES = {}


def gemm_kernel(role, dtype, a_k_fast, b_k_fast):
    """The tiled GEMM kernel of ``role``. ``a_k_fast``/``b_k_fast``: consecutive threads load consecutive
    k (else consecutive m / n) when filling the shared tiles, whichever is contiguous in memory."""
    if role not in GEMM_ROLES:
        importlib.import_module(".cuda", __package__)  # registers the convolution roles
    sizes, a_index, b_index, out_index, out_m_stride, bias_index, atomic = GEMM_ROLES[role]
    bm, bn, bk, tm, tn = config().gemm
    thx, thy = bn // tn, bm // tm
    nthreads = thx * thy
    a_tile, b_tile = (bk, bm + 1), (bk, bn + 1)  # +1: k-fast stores hit different banks
    dt = numba.from_dtype(np.dtype(dtype))

    @cuda.jit
    def gemm(P, Q, out, bias, geo):
        As = cuda.shared.array(a_tile, dt)
        Bs = cuda.shared.array(b_tile, dt)
        acc = cuda.local.array((tm, tn), dt)
        a_reg = cuda.local.array(tm, dt)
        b_reg = cuda.local.array(tn, dt)
        z = cuda.blockIdx.z
        M, N, k_lo, k_hi = sizes(geo, z)
        m0, n0 = cuda.blockIdx.y * bm, cuda.blockIdx.x * bn
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        tid = ty * thx + tx
        for r in range(tm):
            for c in range(tn):
                acc[r, c] = 0
        for k0 in range(k_lo, k_hi, bk):
            for e in range(tid, bm * bk, nthreads):
                if a_k_fast:
                    kk, mm = e % bk, e // bk
                else:
                    kk, mm = e // bm, e % bm
                m, k = m0 + mm, k0 + kk
                ai = a_index(geo, z, m, k) if m < M and k < k_hi else -1
                if ai >= 0:
                    As[kk, mm] = P[ai]
                else:
                    As[kk, mm] = 0
            for e in range(tid, bn * bk, nthreads):
                if b_k_fast:
                    kk, nn = e % bk, e // bk
                else:
                    kk, nn = e // bn, e % bn
                n, k = n0 + nn, k0 + kk
                bi = b_index(geo, z, k, n) if n < N and k < k_hi else -1
                if bi >= 0:
                    Bs[kk, nn] = Q[bi]
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
        # Epilogue: index maps once per column, then small loops that unroll, so acc stays in registers.
        o_base = cuda.local.array(tn, numba.int64)
        b_base = cuda.local.array(tn, numba.int64)
        for c in range(tn):
            n = n0 + tx + c * thx
            o_base[c] = out_index(geo, z, m0 + ty, n) if n < N else -1
            b_base[c] = bias_index(geo, z, m0 + ty, n) if n < N else -1
        step = thy * out_m_stride(geo)
        for r in range(tm):
            if m0 + ty + r * thy < M:
                for c in range(tn):
                    if o_base[c] >= 0:
                        v = acc[r, c]
                        if b_base[c] >= 0:
                            v += bias[b_base[c] + r * thy]
                        if atomic:
                            cuda.atomic.add(out, o_base[c] + r * step, v)
                        else:
                            out[o_base[c] + r * step] = v
    return gemm


def launch_gemm(role, P, Q, out, bias, geo, M, N, batches, a_k_fast, b_k_fast):
    """Launch ``role``'s GEMM over an M x N output for ``batches`` values of z (blockIdx.z)."""
    bm, bn, _, tm, tn = config().gemm
    launch(gemm_kernel, (role, np.dtype(out.dtype).str, bool(a_k_fast), bool(b_k_fast)),
           (-(-N // bn), -(-M // bm), batches), (bn // tn, bm // tm), P, Q, out, bias, geo)


# matmul geometry: (M, N, K, a_off, a_batch, a_row, a_col, b_off, b_batch, b_row, b_col, z0)
def _mm_sizes(geo, z):
    return geo[0], geo[1], 0, geo[2]


def _mm_a(geo, z, m, k):
    return geo[3] + (z + geo[11]) * geo[4] + m * geo[5] + k * geo[6]


def _mm_b(geo, z, k, n):
    return geo[7] + (z + geo[11]) * geo[8] + k * geo[9] + n * geo[10]


def _mm_out(geo, z, m, n):
    return ((z + geo[11]) * geo[0] + m) * geo[1] + n


def _no_bias(geo, z, m, n):
    return -1


def _mm_m_stride(geo):
    return geo[1]


GEMM_ROLES["matmul"] = GemmRole(*map(_dev, (_mm_sizes, _mm_a, _mm_b, _mm_out, _mm_m_stride, _no_bias)), False)


