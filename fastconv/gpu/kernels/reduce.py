"""Reductions: sums, maxima and minima over axes, one block per output element with a tree in shared
memory; the block-wide tree is a device function other kernels reuse (log-softmax, cross-entropy)."""
import functools

import numba
import numpy as np
from numba import cuda

from ..launch import category, config
from .elementwise import device


def _sum_op(acc, v):
    return acc + v


def _max_op(acc, v):  # NaN wins, as np.max
    return v if (v > acc or v != v) else acc


def _min_op(acc, v):
    return v if (v < acc or v != v) else acc


REDUCE_OPS = {"sum": device(_sum_op), "max": device(_max_op), "min": device(_min_op)}


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


@category("reduction")
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
