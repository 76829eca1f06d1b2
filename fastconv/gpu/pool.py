"""Pooling on GPU arrays: max and average pooling and their gradients, and max-unpooling.

Same signatures as ``backends/reference.py``, plus ``act``: the activation that precedes the pooling,
applied to each element the window reads (and its derivative in the gradient), in the same launch. Both
gradients are gathers (``kernels/pool.py``): one launch, no zero-fill.
"""
import numpy as np

from . import xp
from .kernels.pool import pool_grad_kernel, pool_kernel
from .launch import grid_1d, launch

_divisors = {}  # (spec, dtype) -> the average-pool divisors on the GPU, copied once per spec


def _divisors_of(spec, dtype):
    """``spec.divisors()`` on the GPU, flat (cached: a copy per spec, not per call)."""
    key = (spec, np.dtype(dtype))
    found = _divisors.get(key)
    if found is None:
        found = _divisors[key] = xp.asarray(spec.divisors(dtype).ravel())
    return found


def _contiguous(a, shape, name):
    a = xp.ascontiguousarray(a)
    if a.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {a.shape}")
    return a


def _pool(kind, x, spec, act):
    x = _contiguous(x, spec.x_shape, "x")
    y = xp.empty(spec.y_shape, x.dtype)
    idx = xp.empty(spec.y_shape, np.int64) if kind == "max" else y
    if y.size:
        blocks, threads = grid_1d(y.size)
        launch(pool_kernel, (kind, xp.act_key(act)), blocks, threads, x._flat(), y._flat(), idx._flat(),
               _divisors_of(spec, x.dtype)._flat(), spec.geometry(), y.size)
    return y, idx


def max_pool2d(x, spec, act=None):
    """``(values, indices)``: the max of ``act(x)`` over each window and its flat position per plane."""
    return _pool("max", x, spec, act)


def avg_pool2d(x, spec, act=None):
    return _pool("avg", x, spec, act)[0]


def _pool_grad(kind, gy, indices, spec, act, x):
    gy = _contiguous(gy, spec.y_shape, "gy")
    gx = xp.empty(spec.x_shape, gy.dtype)
    act = xp.act_key(act)
    if gx.size:
        idx = gy if indices is None else _contiguous(indices, spec.y_shape, "indices")
        source = _contiguous(x, spec.x_shape, "x") if act else gy
        blocks, threads = grid_1d(gx.size)
        launch(pool_grad_kernel, (kind, act), blocks, threads, gy._flat(), idx._flat(), source._flat(),
               gx._flat(), _divisors_of(spec, gy.dtype)._flat(), spec.geometry(), gx.size)
    return gx


def max_pool2d_grad(gy, indices, spec, act=None, x=None):
    """Each window's gradient goes back to its maximum (gathered per input element)."""
    return _pool_grad("max", gy, indices, spec, act, x)


def avg_pool2d_grad(gy, spec, act=None, x=None):
    return _pool_grad("avg", gy, None, spec, act, x)


def _planes(a, n, c):
    return xp.ascontiguousarray(a).reshape(n, c, -1)


def max_unpool2d(x, indices, out_hw):
    n, c = x.shape[:2]
    out = xp.zeros((n, c) + tuple(out_hw), x.dtype)
    xp.put_along_axis(out.reshape(n, c, -1), _planes(indices, n, c), _planes(x, n, c), axis=2)
    return out


def max_unpool2d_grad(gy, indices):
    n, c = gy.shape[:2]
    return xp.take_along_axis(_planes(gy, n, c), _planes(indices, n, c), axis=2).reshape(indices.shape)
