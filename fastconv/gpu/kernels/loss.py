"""Log-softmax and cross-entropy (log-softmax + NLL) as single kernels, forward and backward."""
import math

import numba
import numpy as np
from numba import cuda

from ..launch import category, config
from .reduce import block_reducer, flat_offset


@category("loss")
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


@category("loss")
def cross_entropy_kernel(reduction, dtype):
    """Forward of log-softmax + NLL over contiguous ``(rows, classes)`` logits, in one block: each thread
    takes whole rows (max, log-sum-exp, ``logp`` written for the backward pass, the target's entry), then
    the block sums the picked log-probabilities. ``loss``: ``-sum * scale`` (mean, sum) or one per row
    (none)."""
    width = config().red_threads
    dt = numba.from_dtype(np.dtype(dtype))
    tree_sum = block_reducer("sum")
    per_row = reduction == "none"

    @cuda.jit
    def cross_entropy(x, target, logp, loss, n_rows, n_cls, scale):
        partial = cuda.shared.array(width, dt)
        t, nt = cuda.threadIdx.x, cuda.blockDim.x
        acc = 0.0
        for row in range(t, n_rows, nt):
            base = row * n_cls
            m = -math.inf
            for j in range(n_cls):
                v = x[base + j]
                m = v if (v > m or v != v) else m
            total = 0.0
            for j in range(n_cls):
                total += math.exp(x[base + j] - m)
            shift = m + math.log(total)
            for j in range(n_cls):
                logp[base + j] = x[base + j] - shift
            picked = logp[base + target[row]]
            if per_row:
                loss[row] = -picked
            else:
                acc += picked
        if not per_row:
            acc = tree_sum(partial, acc, t, nt)
            if t == 0:
                loss[0] = -acc * scale
    return cross_entropy


@category("loss")
def cross_entropy_grad_kernel(reduction):
    """Gradient of the logits: ``(exp(logp) - onehot(target)) * g * scale``, one thread per element;
    ``g`` is the loss's gradient (one value, or one per row for reduction none)."""
    per_row = reduction == "none"

    @cuda.jit
    def cross_entropy_grad(g, logp, target, out, n_rows, n_cls, scale):
        start, step = cuda.grid(1), cuda.gridsize(1)
        for i in range(start, n_rows * n_cls, step):
            row = i // n_cls
            s = (g[row] if per_row else g[0]) * scale
            p = math.exp(logp[i]) * s
            out[i] = p - s if i - row * n_cls == target[row] else p
    return cross_entropy_grad
