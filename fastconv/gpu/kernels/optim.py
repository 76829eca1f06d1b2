"""Optimizer updates over many tensors in one launch (as PyTorch's fused / foreach optimizers).

The parameters and gradients of a model live in a few slabs of device memory (``fastconv.gpu.alloc``),
the optimizer's states in one flat buffer per state. A launch gets the slabs, the state buffers and a
table of ``(parameter offset, gradient offset, state offset, size)`` per tensor (a tuple argument); block
row ``blockIdx.y`` updates tensor ``blockIdx.y``. The arithmetic is ``fastconv.optim``'s, step for step in
the parameters' dtype (scalars arrive in that dtype), so the GPU follows the CPU's path.
"""
import math

from numba import cuda

from ..launch import category

TABLE = 4  # ints per tensor in the table


@cuda.jit(device=True)
def tensor(table, n_tensors):
    """``(parameter offset, gradient offset, state offset, size)`` of this block row's tensor (size 0 for
    the rows of the padding)."""
    t = cuda.blockIdx.y
    if t >= n_tensors:
        return 0, 0, 0, 0
    return table[TABLE * t], table[TABLE * t + 1], table[TABLE * t + 2], table[TABLE * t + 3]


@category("optimizer")
def adam_kernel(dtype, decoupled, l2):
    """Adam (``decoupled``: AdamW's ``p *= 1 - lr*wd`` first; ``l2``: ``g += wd*p``), PyTorch's order:
    ``m = b1*m + (1-b1)*g``; ``v = b2*v + (1-b2)*g*g``; ``p -= step_size * m / (sqrt(v)/bc2 + eps)``."""
    @cuda.jit
    def adam(P, G, M, V, table, n_tensors, decay, wd, b1, c1, b2, c2, bc2, eps, step_size):
        p0, g0, s0, n = tensor(table, n_tensors)
        for i in range(cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x, n, cuda.gridDim.x * cuda.blockDim.x):
            w = P[p0 + i]
            if decoupled:
                w = w * decay
            g = G[g0 + i]
            if l2:
                g = w * wd + g
            m = M[s0 + i] * b1 + g * c1
            v = V[s0 + i] * b2 + (g * g) * c2
            M[s0 + i] = m
            V[s0 + i] = v
            P[p0 + i] = w - m / (math.sqrt(v) / bc2 + eps) * step_size
    return adam


@category("optimizer")
def sgd_kernel(dtype, weight_decay, momentum, dampening, nesterov):
    """SGD with PyTorch's momentum (``buf = d`` on the ``first`` step), dampening, Nesterov and weight
    decay: ``d = g + wd*p``; ``buf = momentum*buf + (1-dampening)*d``; ``p -= lr*(d + momentum*buf)``
    (Nesterov) or ``p -= lr*buf``."""
    @cuda.jit
    def sgd(P, G, B, table, n_tensors, first, lr, wd, mom, c_damp):
        p0, g0, s0, n = tensor(table, n_tensors)
        for i in range(cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x, n, cuda.gridDim.x * cuda.blockDim.x):
            w = P[p0 + i]
            d = G[g0 + i]
            if weight_decay:
                d = w * wd + d
            if momentum:
                if first:
                    buf = d
                elif dampening:
                    buf = B[s0 + i] * mom + d * c_damp
                else:
                    buf = B[s0 + i] * mom + d
                B[s0 + i] = buf
                d = d + buf * mom if nesterov else buf
            P[p0 + i] = w - d * lr
    return sgd
