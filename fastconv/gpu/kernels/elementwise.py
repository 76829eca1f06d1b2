"""Elementwise kernels, the activations as device functions, and gather / scatter along an axis.

Strided operands arrive as a flat device buffer plus an element offset and a strides tuple; the host code
merges dims that are contiguous in every operand first (``fastconv.gpu.array.collapse``), so the common
case is a rank-1 loop.
"""
import functools
import math

import numpy as np
from numba import cuda

from ..launch import category


def device(fn):
    """``fn`` as a CUDA device function (compiled where a kernel calls it)."""
    return cuda.jit(device=True)(fn)


# ------------------------------------------------------------------------------ activations
def _relu(a, b, c):  # NaN stays NaN, as np.maximum(x, 0)
    return a if (a > 0 or a != a) else 0.0


def _sigmoid(a, b, c):
    return 1 / (1 + (math.exp(-a) if a > -709.0 else math.inf))  # no OverflowError when simulated


# The activations every epilogue and prologue fuses (fastconv.fusion.ACTIVATIONS) are elementwise ops below:
# ``<act>(x)``, and ``<act>_grad(g, y)``, the gradient given the activation's *output* ``y`` (``y > 0``,
# ``1 - y*y``, ``y*(1 - y)``).
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
    "sign": (lambda a, b, c: 1 if a > 0 else (-1 if a < 0 else a * 0), np.sign),  # a * 0: 0, or NaN for NaN
    "square": (lambda a, b, c: a * a, np.square),
    "maximum": (lambda a, b, c: a if (a != a or a > b) else b, np.maximum),  # NaN wins, as np.maximum
    "minimum": (lambda a, b, c: a if (a != a or a < b) else b, np.minimum),
    "where": (lambda a, b, c: b if a else c, np.where),
    "greater": (lambda a, b, c: a > b, np.greater),
    "greater_equal": (lambda a, b, c: a >= b, np.greater_equal),
    "less": (lambda a, b, c: a < b, np.less),
    "less_equal": (lambda a, b, c: a <= b, np.less_equal),
    "equal": (lambda a, b, c: a == b, np.equal),
    "not_equal": (lambda a, b, c: a != b, np.not_equal),
    "logical_not": (lambda a, b, c: not a, np.logical_not),
    "relu": (_relu, np.positive),
    "sigmoid": (_sigmoid, np.positive),
    "relu_grad": (lambda a, b, c: a if b > 0 else a * 0, np.multiply),  # a * 0: as g * mask on the CPU
    "tanh_grad": (lambda a, b, c: a * (1 - b * b), np.multiply),
    "sigmoid_grad": (lambda a, b, c: a * b * (1 - b), np.multiply),
}


@functools.lru_cache(maxsize=None)
def op(name):
    """The device function of elementwise op ``name``; ``""`` is the identity (no activation)."""
    return device(OPS[name or "copy"][0])


def _load_array(buf, i):
    return buf[i]


def _load_scalar(value, i):
    return value


_LOADS = {"a": device(_load_array), "s": device(_load_scalar)}


@cuda.jit(device=True)
def broadcast_offsets(i, shape, offsets, s0, s1, s2, s3):
    """Element offsets of the ``i``-th position (C order) of ``shape`` in four strided operands."""
    o0, o1, o2, o3 = offsets[0], offsets[1], offsets[2], offsets[3]
    for d in range(len(shape) - 1, -1, -1):
        q = i // shape[d]
        x = i - q * shape[d]
        i = q
        o0 += x * s0[d]
        o1 += x * s1[d]
        o2 += x * s2[d]
        o3 += x * s3[d]
    return o0, o1, o2, o3


@category("elementwise")
def elementwise_kernel(name, rank, kinds):
    """``out = op(a, b, c)`` over a broadcast shape of ``rank`` dims; ``kinds[k]`` says whether operand k
    is an array ("a": flat buffer + offset + strides) or a scalar kernel argument ("s")."""
    fn = op(name)
    la, lb, lc = (_LOADS[k] for k in kinds)

    @cuda.jit
    def elementwise(a, b, c, out, offsets, shape, sa, sb, sc, so, n):
        start, step = cuda.grid(1), cuda.gridsize(1)
        for i in range(start, n, step):
            ia, ib, ic, io = broadcast_offsets(i, shape, offsets, sa, sb, sc, so)
            out[io] = fn(la(a, ia), lb(b, ib), lc(c, ic))
    return elementwise


# ------------------------------------------------------------------- gather / scatter along an axis
@category("gather")
def along_kernel(mode, rank):
    """For every position p of a broadcast shape: ``j = idx[p]`` (negative counts from the end);
    take: ``val[p] = arr[p with axis = j]``; put: ``arr[...] = val[p]``; add: atomic ``arr[...] += val[p]``.
    Out-of-range ``j`` is skipped (kernels cannot raise)."""
    @cuda.jit
    def along(arr, idx, val, offsets, shape, sarr, sidx, sval, length, axis_stride, n):
        start, step = cuda.grid(1), cuda.gridsize(1)
        for i in range(start, n, step):
            ia, ii, iv, _ = broadcast_offsets(i, shape, offsets, sarr, sidx, sval, sval)
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
