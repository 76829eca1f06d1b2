"""Optimizer updates over every parameter of a group in few launches (``fastconv.optim`` on the GPU).

The optimizer keeps each state (Adam's moments, SGD's momentum) in one flat buffer whose slices are the
parameters' states (``bounds``: where each begins). Parameters and gradients stay where they are: they
live in a few slabs of the allocator (``alloc.locate``), so one launch per (parameter slab, gradient slab)
pair - in practice one - updates all of them, as PyTorch's fused optimizers do with lists of pointers.
"""
import numpy as np

from . import alloc
from .kernels.optim import TABLE, adam_kernel, sgd_kernel
from .launch import config, launch

MAX_TENSORS = 64  # tensors per launch (the table is a kernel argument: 4 ints each)


def _launches(params, grads, bounds):
    """Per launch: (parameter buffer, gradient buffer, table, tensors, largest size), the table padded to
    a power of two of tensors (few kernel signatures)."""
    groups = {}
    grads = [g if g.flags.c_contiguous else g.copy() for g in grads]
    for i, (p, g) in enumerate(zip(params, grads)):
        (pb, po), (gb, go) = alloc.locate(p), alloc.locate(g)
        groups.setdefault((id(pb), id(gb)), (pb, gb, []))[2].append((po, go, bounds[i], p.size))
    for pb, gb, rows in groups.values():
        for start in range(0, len(rows), MAX_TENSORS):
            chunk = rows[start:start + MAX_TENSORS]
            width = 1 << (len(chunk) - 1).bit_length()
            table = tuple(int(v) for row in chunk for v in row) + (0,) * (TABLE * (width - len(chunk)))
            yield pb, gb, table, len(chunk), max(row[3] for row in chunk)


def _grid(n_tensors, largest):
    cfg = config()
    return (max(1, min(-(-largest // cfg.threads), cfg.max_blocks, 1024)), n_tensors), cfg.threads


def _bytes(params, per_element):
    return sum(p.size for p in params) * params[0].dtype.itemsize * per_element


def adam(params, grads, m, v, bounds, step, lr, betas, eps, weight_decay, decoupled):
    """One Adam (``decoupled``: AdamW) step of every array in ``params`` with ``grads``; ``m``, ``v``: the
    flat moment buffers."""
    dt = params[0].dtype.type
    b1, b2 = betas
    hyper = (dt(1.0 - lr * weight_decay), dt(weight_decay), dt(b1), dt(1.0 - b1), dt(b2), dt(1.0 - b2),
             dt(np.sqrt(1.0 - b2 ** step)), dt(eps), dt(lr / (1.0 - b1 ** step)))
    key = (params[0].dtype.str, bool(decoupled and weight_decay), bool(weight_decay and not decoupled))
    for pb, gb, table, n, largest in _launches(params, grads, bounds):
        grid, block = _grid(n, largest)
        launch(adam_kernel, key, grid, block, pb, gb, m._buf, v._buf, table, n, *hyper,
               nbytes=_bytes(params, 7))


def sgd(params, grads, buf, bounds, first, lr, momentum, dampening, weight_decay, nesterov):
    """One SGD step of every array in ``params`` with ``grads``; ``buf``: the flat momentum buffer (None
    without momentum), set to the step on the ``first`` one."""
    dt = params[0].dtype.type
    key = (params[0].dtype.str, bool(weight_decay), bool(momentum), bool(dampening), bool(nesterov))
    buffer = params[0]._buf if buf is None else buf._buf
    for pb, gb, table, n, largest in _launches(params, grads, bounds):
        grid, block = _grid(n, largest)
        launch(sgd_kernel, key, grid, block, pb, gb, buffer, table, n, int(first), dt(lr), dt(weight_decay),
               dt(momentum), dt(1.0 - dampening), nbytes=_bytes(params, 5 if momentum else 3))
