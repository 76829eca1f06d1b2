"""The NumPy-like namespace of GPU arrays (``array_module("cuda")``), with the fused ops.

It mirrors the NumPy subset that ``tensor.py``, ``functional.py``, ``nn`` and ``optim.py`` call through
``xp``, under NumPy's names and semantics (broadcasting, dtype promotion, ``out=``, ``axis``/``keepdims``),
plus the fused ops that ``fastconv.numpy_xp`` has on the CPU under the same names: ``log_softmax`` and
``cross_entropy`` with their gradients, ``activation``/``activation_grad``, ``linear``/``linear_grad``
(bias and activation in the GEMM's epilogue; the activation's gradient in its prologue and the bias
gradient as an extra column), so that the glue ops never ask which device they run on; and the
optimizer's fused updates (``adam_update``, ``sgd_update``: ``fastconv.gpu.optim``).

A few generic kernels do the rest: elementwise (up to three broadcast operands, scalars as kernel
arguments), reductions, gather/scatter along an axis, and the tiled GEMM. Adjacent dims that are
contiguous in every operand are merged before a launch, so the common case runs as a rank-1 loop.
"""
from __future__ import annotations

import builtins
import functools

import numpy as np

from . import alloc
from .array import (CudaArray, asarray, ascontiguousarray, bstrides, collapse, empty, empty_like, full,  # noqa: F401
                    full_like, is_device_array, is_scalar, ones, ones_like, zeros, zeros_like, _prod)
from .kernels.elementwise import OPS, along_kernel, elementwise_kernel
from .kernels.gemm import launch_gemm
from .kernels.loss import cross_entropy_grad_kernel, cross_entropy_kernel, log_softmax_kernel
from .kernels.reduce import reduce_kernel
from .launch import MAX_GRID_Z, config, grid_1d, launch, synchronize, threads_for  # noqa: F401
from .optim import adam as adam_update, sgd as sgd_update  # noqa: F401  (fused optimizer steps)

# Builtins this module shadows with NumPy's names (sum, max, min, abs), kept for internal use.
_sum, _max, _min, _abs = builtins.sum, builtins.max, builtins.min, builtins.abs

float32, float64, int32, int64, bool_ = np.float32, np.float64, np.int32, np.int64, np.bool_
newaxis, inf, nan = None, np.inf, np.nan
empty_cache = alloc.empty_cache


# ------------------------------------------------------------------------------ elementwise
def transpose(a, axes=None):
    return asarray(a).transpose(axes or ())


def swapaxes(a, axis1, axis2):
    return asarray(a).swapaxes(axis1, axis2)


def reshape(a, shape):
    return asarray(a).reshape(shape)


def broadcast_to(a, shape):
    a = asarray(a)
    shape = tuple(int(s) for s in shape)
    if np.broadcast_shapes(a.shape, shape) != shape:
        raise ValueError(f"cannot broadcast shape {a.shape} to {shape}")
    return a._restrided(shape, bstrides(a, shape), a.offset)


@functools.lru_cache(maxsize=4096)
def _result_dtype(name, kinds):
    """NumPy's result dtype for ``name`` on operands of these dtypes (arrays) or types (Python scalars,
    weak as in NumPy 2)."""
    probes = [np.empty(0, k) if isinstance(k, np.dtype) else k(1) for k in kinds]
    with np.errstate(all="ignore"):
        return np.asarray(OPS[name][1](*probes)).dtype


def _kind(x):
    return x.dtype if isinstance(x, CudaArray) else (np.dtype(type(x)) if isinstance(x, np.generic) else type(x))


def elementwise(name, operands, dtype=None, out=None):
    """Apply elementwise op ``name`` to up to three operands (CudaArrays, device/host arrays or scalars),
    broadcasting as NumPy; write into ``out`` (any view, may alias an input) or a new array."""
    ops = []
    for x in operands:
        if isinstance(x, np.ndarray) and x.ndim == 0:
            x = x[()]
        if not is_scalar(x):
            if isinstance(x, np.ndarray) and not is_device_array(x):
                raise TypeError("an operand is a NumPy array on the CPU and the other is on the GPU: move it "
                                "with fastconv's .to('cuda') or fastconv.gpu.xp.asarray() first")
            x = asarray(x)
        ops.append(x)
    arrays = [x for x in ops if isinstance(x, CudaArray)]
    if not arrays and out is None:  # scalars only: NumPy computes it
        return np.asarray(OPS[name][1](*ops)) if name != "copy" else np.asarray(ops[0], dtype)
    if dtype is None:
        dtype = _result_dtype(name, tuple(_kind(x) for x in ops))
    shape = np.broadcast_shapes(*(x.shape for x in arrays)) if arrays else ()
    if out is not None:
        if np.broadcast_shapes(shape, out.shape) != out.shape:
            raise ValueError(f"output of shape {out.shape} does not match the broadcast shape {shape}")
        shape = out.shape
    else:
        out = empty(shape, dtype)
    n = _prod(shape)
    if n == 0:
        return out
    common = np.result_type(*(x.dtype for x in arrays)) if arrays else dtype
    kinds, args, offsets, strides = "", [], [], []
    for x in ops + [0] * (3 - len(ops)):
        if isinstance(x, CudaArray):
            kinds += "a"
            args.append(x._buf)
            offsets.append(x.offset)
            strides.append(bstrides(x, shape))
        else:  # scalars become kernel arguments in the dtype NumPy would compute in
            kinds += "s"
            args.append(np.asarray(x, np.result_type(common, x) if ops else dtype)[()])
            offsets.append(0)
            strides.append((0,) * len(shape))
    cshape, cstrides = collapse(shape, strides + [out._strides])
    blocks, threads = grid_1d(n)
    launch(elementwise_kernel, (name, len(cshape), kinds), blocks, threads, args[0], args[1], args[2],
           out._buf, tuple(offsets) + (out.offset,), cshape, *cstrides, n)
    return out


def _ufunc(name, nargs):
    def ufunc(*args, out=None, dtype=None):
        if len(args) != nargs:
            raise TypeError(f"{name}() takes {nargs} arguments, got {len(args)}")
        if out is not None and not isinstance(out, CudaArray):
            raise TypeError(f"out must be a CudaArray, got {type(out).__name__}")
        return elementwise(name, args, None if dtype is None else np.dtype(dtype), out)
    ufunc.__name__ = name
    ufunc.__doc__ = f"NumPy's ``{name}`` on GPU arrays (broadcasting, ``out=``)."
    return ufunc


add, subtract, multiply, divide, power = (_ufunc(n, 2) for n in ("add", "subtract", "multiply", "divide", "power"))
maximum, minimum = _ufunc("maximum", 2), _ufunc("minimum", 2)
greater, greater_equal, less, less_equal, equal, not_equal = (
    _ufunc(n, 2) for n in ("greater", "greater_equal", "less", "less_equal", "equal", "not_equal"))
negative, exp, log, tanh, sqrt, absolute, sign, square, logical_not = (
    _ufunc(n, 1) for n in ("negative", "exp", "log", "tanh", "sqrt", "absolute", "sign", "square",
                           "logical_not"))
true_divide, abs = divide, absolute


def where(condition, x, y):
    """``x`` where ``condition`` else ``y``, broadcasting all three."""
    return elementwise("where", (condition, x, y))


def copyto(dst, src):
    """``dst[...] = src`` with broadcasting (``dst`` a CudaArray)."""
    elementwise("copy", (src,), dst.dtype, out=dst)


# ------------------------------------------------------------------------------ reductions
def _axes(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    norm = tuple(sorted({int(a) % ndim if ndim else 0 for a in axes}))
    if any(not -ndim <= int(a) < _max(ndim, 1) for a in axes):
        raise ValueError(f"axis {axis} is out of bounds for an array of {ndim} dims")
    return norm


def _reduce(name, a, axis, keepdims, dtype=None):
    a = asarray(a)
    axes = _axes(axis, a.ndim)
    if dtype is None:
        dtype = np.add.reduce(np.empty(0, a.dtype)).dtype if name == "sum" else a.dtype
    dtype = np.dtype(dtype)
    if a.dtype != dtype and name == "sum":
        a = a.astype(dtype)
    kept = [d for d in range(a.ndim) if d not in axes]
    out_shape = tuple(1 if d in axes else a.shape[d] for d in range(a.ndim)) if keepdims \
        else tuple(a.shape[d] for d in kept)
    n_out, n_red = _prod(a.shape[d] for d in kept), _prod(a.shape[d] for d in axes)
    if n_red == 0 and name != "sum":
        raise ValueError(f"zero-size array to reduction operation {name} which has no identity")
    out = empty(out_shape, dtype)
    if n_out == 0:
        return out
    kshape, (kstrides,) = collapse([a.shape[d] for d in kept], [[a._strides[d] for d in kept]])
    rshape, (rstrides,) = collapse([a.shape[d] for d in axes], [[a._strides[d] for d in axes]])
    if name == "sum":
        init = dtype.type(0)
    elif dtype.kind == "f":
        init = dtype.type(-np.inf if name == "max" else np.inf)
    elif dtype.kind == "b":
        init = dtype.type(name == "min")
    else:
        info = np.iinfo(dtype)
        init = dtype.type(info.min if name == "max" else info.max)
    launch(reduce_kernel, (name, dtype.str), _min(n_out, config().max_blocks), threads_for(n_red), a._buf,
           a.offset, kshape, kstrides, rshape, rstrides, out._buf, n_out, n_red, init)
    return out


def sum(a, axis=None, keepdims=False, dtype=None):  # noqa: A001 (NumPy's name)
    """Sum over ``axis`` (int, tuple or None); integer and boolean inputs sum as int64, as NumPy."""
    return _reduce("sum", a, axis, keepdims, dtype)


def amax(a, axis=None, keepdims=False):
    """Maximum over ``axis``; NaN wins, as NumPy."""
    return _reduce("max", a, axis, keepdims)


def amin(a, axis=None, keepdims=False):
    return _reduce("min", a, axis, keepdims)


max, min = amax, amin  # noqa: A001


def mean(a, axis=None, keepdims=False):
    a = asarray(a)
    count = _prod(a.shape[d] for d in _axes(axis, a.ndim))
    total = sum(a, axis, keepdims, dtype=a.dtype if a.dtype.kind == "f" else np.float64)
    return divide(total, _max(count, 1), out=total)


# ------------------------------------------------------------------- gather / scatter along an axis
def _along(mode, arr, axis, idx, val):
    """Run an along-axis kernel: ``idx`` and ``val`` share one shape S; ``arr`` broadcasts to S except
    along ``axis``."""
    shape = idx.shape
    n = _prod(shape)
    if n == 0:
        return
    if idx.dtype.kind not in "iu":
        raise TypeError(f"indices must be integers, got {idx.dtype}")
    length, axis_stride = arr.shape[axis], arr._strides[axis]
    flat = arr._restrided(arr.shape[:axis] + (1,) + arr.shape[axis + 1:],
                          arr._strides[:axis] + (0,) + arr._strides[axis + 1:], arr.offset)
    strides = [bstrides(flat, shape), bstrides(idx, shape), bstrides(val, shape)]
    cshape, cstrides = collapse(shape, strides)
    blocks, threads = grid_1d(n)
    launch(along_kernel, (mode, len(cshape)), blocks, threads, arr._buf, idx._buf, val._buf,
           (arr.offset, idx.offset, val.offset, 0), cshape, *cstrides, length, axis_stride, n)


def _check_along(arr, indices, axis):
    arr, indices = asarray(arr), asarray(indices)
    if arr.ndim != indices.ndim:
        raise ValueError(f"indices must have the array's number of dims ({arr.ndim}), got {indices.ndim}")
    axis = int(axis) % arr.ndim
    others = np.broadcast_shapes(arr.shape[:axis] + (1,) + arr.shape[axis + 1:], indices.shape)
    return arr, indices, axis, others


def take_along_axis(arr, indices, axis):
    """NumPy's ``take_along_axis``: ``out[..., k, ...] = arr[..., indices[..., k, ...], ...]``."""
    arr, indices, axis, shape = _check_along(arr, indices, axis)
    out = empty(shape, arr.dtype)
    _along("take", arr, axis, broadcast_to(indices, shape), out)
    return out


def put_along_axis(arr, indices, values, axis):
    """NumPy's ``put_along_axis`` (in place); with repeated indices one of the values wins."""
    if not isinstance(arr, CudaArray):
        raise TypeError("put_along_axis writes in place: arr must be a CudaArray")
    _, indices, axis, shape = _check_along(arr, indices, axis)
    shape = np.broadcast_shapes(shape, np.shape(values) if is_scalar(values) else asarray(values).shape)
    values = _device_values(values, arr.dtype)
    _along("put", arr, axis, broadcast_to(indices, shape), broadcast_to(values, shape))


def _device_values(values, dtype):
    """Values (scalar, host or device array) as a CudaArray of ``dtype``."""
    return asarray(np.asarray(values, dtype)) if is_scalar(values) else asarray(values, dtype)


def unwrap_index(index):
    """The array behind a fastconv Tensor used as an index; anything else as it is."""
    data = getattr(index, "data", None)
    if data is not None and not isinstance(index, (np.ndarray, CudaArray)) and hasattr(index, "requires_grad"):
        return data
    return index


def is_int_array(index):
    """True for an index that selects rows by an array (rather than ints, slices, ...)."""
    if isinstance(index, list):
        index = np.asarray(index)
    return (isinstance(index, (np.ndarray, CudaArray)) and index.ndim >= 1) or is_device_array(index)


def _int_rows(index, a):
    rows = asarray(np.asarray(index) if isinstance(index, list) else index)
    if rows.ndim != 1 or rows.dtype.kind not in "iu":
        raise TypeError(f"only one 1-D integer array can index a GPU array (rows of the first axis), got "
                        f"{rows.dtype} of shape {rows.shape}")
    if a.ndim == 0:
        raise IndexError("a 0-d array cannot be indexed by an array")
    return rows


def _rows_view(rows, shape):
    """Row indices ``(k,)`` as a view broadcast to ``shape = (k, ...)``."""
    return broadcast_to(rows.reshape((rows.shape[0],) + (1,) * (len(shape) - 1)), shape)


def take_rows(a, index):
    """``a[index]`` for an integer array ``index`` (rows of the first axis)."""
    rows = _int_rows(index, a)
    shape = (rows.shape[0],) + a.shape[1:]
    out = empty(shape, a.dtype)
    _along("take", a, 0, _rows_view(rows, shape), out)
    return out


def put_rows(a, index, values):
    """``a[index] = values`` for an integer array ``index`` (rows of the first axis)."""
    rows = _int_rows(index, a)
    shape = (rows.shape[0],) + a.shape[1:]
    _along("put", a, 0, _rows_view(rows, shape), broadcast_to(_device_values(values, a.dtype), shape))


def add_at(a, index, values):
    """``np.add.at(a, index, values)``: unbuffered in-place addition (repeated rows add up, atomically)."""
    index = unwrap_index(index)
    if is_int_array(index):
        rows = _int_rows(index, a)
        shape = (rows.shape[0],) + a.shape[1:]
        _along("add", a, 0, _rows_view(rows, shape), broadcast_to(_device_values(values, a.dtype), shape))
    else:
        view = a._view(index)
        add(view, values, out=view)


# ------------------------------------------------------------------------------------ matmul
def _batch_stride(a, batch):
    """``(stride)`` such that flat batch index b starts at ``offset + b * stride`` for ``a`` broadcast
    over ``batch``, or None when the batch dims do not collapse to one stride."""
    strides = bstrides(a._restrided(a.shape[:-2], a._strides[:-2], a.offset), batch)
    shape, (collapsed,) = collapse(batch, [strides])
    return collapsed[0] if len(shape) == 1 else None


def matmul(a, b, out=None):
    """NumPy's ``matmul`` for float32/float64: 2-D, batched, with broadcast batch dims (1-D operands are
    promoted and the unit dim removed, as NumPy). Transposed views are read in place through strides."""
    a, b = asarray(a), asarray(b)
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError("matmul: input operands must not be scalars")
    a2 = a.reshape((1,) + a.shape) if a.ndim == 1 else a
    b2 = b.reshape(b.shape + (1,)) if b.ndim == 1 else b
    dtype = np.result_type(a.dtype, b.dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"matmul on the GPU supports float32 and float64, got {a.dtype} and {b.dtype}")
    a2, b2 = a2.astype(dtype, copy=False), b2.astype(dtype, copy=False)
    (M, K), (K2, N) = a2.shape[-2:], b2.shape[-2:]
    if K != K2:
        raise ValueError(f"matmul: mismatch in the core dimension: {a.shape} @ {b.shape}")
    batch = np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
    parts = []
    for x in (a2, b2):
        stride = _batch_stride(x, batch)
        if stride is None:  # batch dims that no single stride describes: materialise them
            x = broadcast_to(x, batch + x.shape[-2:]).copy()
            stride = _batch_stride(x, batch)
        parts.append((x, (x.offset, stride, x._strides[-2], x._strides[-1])))
    (pa, ga), (pb, gb) = parts
    result = empty(batch + (M, N), dtype)
    nb = _prod(batch)
    if M and N and nb:
        for z0 in range(0, nb, MAX_GRID_Z):
            launch_gemm("matmul", pa._buf, pb._buf, result._buf, (M, N, K) + ga + gb + (z0, 0, 0), M, N,
                        _min(MAX_GRID_Z, nb - z0), _abs(ga[3]) <= _abs(ga[2]), _abs(gb[2]) <= _abs(gb[3]))
    if a.ndim == 1:
        result = result.reshape(result.shape[:-2] + (N,))
    if b.ndim == 1:
        result = result.reshape(result.shape[:-1])
    if out is not None:
        copyto(out, result)
        return out
    return result


def _product(a, b, M, N, K, out, **fused):
    """One 2-D GEMM ``a (M, K) @ b (K, N)`` of strided views into ``out``'s buffer, with the fused
    epilogue / prologue of ``fused`` (see ``kernels/gemm.py``); ``bias_out``: where a bias column goes."""
    bias_out = fused.pop("bias_out", 0)
    bias = fused.pop("bias", None)
    geo = (M, N, K, a.offset, 0, a._strides[0], a._strides[1], b.offset, 0, b._strides[0], b._strides[1], 0,
           int(bias is not None), bias_out)
    launch_gemm("matmul", a._buf, b._buf, out._buf, geo, M, N, 1, _abs(a._strides[1]) <= _abs(a._strides[0]),
                _abs(b._strides[0]) <= _abs(b._strides[1]), bias=None if bias is None else bias._flat(), **fused)


# ------------------------------------------------------------------------------------ fused ops
def act_key(act):
    """The kernels' name of activation ``act`` (one of ``fastconv.fusion.ACTIVATIONS``, or None: ``""``)."""
    return act or ""


def activation(x, act):
    """``act(x)`` (``"relu"``, ``"tanh"``, ``"sigmoid"``; None: ``x`` itself), one launch."""
    return elementwise(act, (x,)) if act else x


def activation_grad(g, y, act):
    """The gradient through ``act`` given its output ``y``: ``g * act'(x)``, one launch."""
    return elementwise(f"{act}_grad", (g, y)) if act else g


def linear(x, w, b=None, act=None):
    """``act(x @ w.T + b)`` for ``x (M, K)``, ``w (N, K)``: one GEMM with the bias and the activation in
    its epilogue."""
    x, w = asarray(x), asarray(w)
    out = empty((x.shape[0], w.shape[0]), np.result_type(x.dtype, w.dtype))
    if out.size:
        _product(x, w.T, x.shape[0], w.shape[0], x.shape[1], out, bias=b, act=act_key(act))
    return out


def linear_grad(g, x, w, y, act=None, need=(True, True, True)):
    """Gradients ``(gx, gw, gb)`` of :func:`linear` (None where ``need`` says no): two GEMM launches, the
    activation's gradient applied as ``g`` is loaded (from ``y``, the layer's output) and the bias
    gradient written by the weight gradient's launch as an extra column."""
    act = act_key(act)
    need_x, need_w, need_b = need
    g = asarray(g)
    if act and (g._strides != y._strides or g.offset != y.offset):
        g = g.copy()  # the prologue reads g and y at the same index
    M, N = g.shape
    K = w.shape[1]
    through = dict(grad_act=act, grad_on="a", aux=y._buf) if act else {}
    gx = gw = gb = None
    if need_x:
        gx = empty((M, K), g.dtype)
        if gx.size:
            _product(g, w, M, K, N, gx, **through)
    if need_w:
        both = empty(N * K + (N if need_b else 0), g.dtype)
        gw = both[:N * K].reshape(N, K)
        gb = both[N * K:] if need_b else None
        if both.size:
            _product(g.T, x, N, K, M, both, bias_col=need_b, bias_out=N * K, **through)
    elif need_b:
        gb = sum(activation_grad(g, y, act), axis=0)
    return gx, gw, gb


def _rowwise(mode, a, b, axis):
    a = asarray(a)
    b = a if b is None else asarray(b)
    if a.dtype not in (np.float32, np.float64) or b.shape != a.shape:
        raise TypeError(f"log_softmax needs float32/float64 arrays of one shape, got {a.dtype} {a.shape}")
    axis = int(axis) % a.ndim
    out = empty(a.shape, a.dtype)
    kept = [d for d in range(a.ndim) if d != axis]
    n_rows = _prod(a.shape[d] for d in kept)
    if out.size == 0:
        return out
    kshape, strides = collapse([a.shape[d] for d in kept], [[x._strides[d] for d in kept] for x in (a, b, out)])
    launch(log_softmax_kernel, (mode, a.dtype.str), _min(n_rows, config().max_blocks), threads_for(a.shape[axis]),
           a._buf, b._buf, out._buf, (a.offset, b.offset, out.offset), kshape, *strides,
           a._strides[axis], b._strides[axis], out._strides[axis], n_rows, a.shape[axis])
    return out


def log_softmax(x, axis=-1):
    """``x - logsumexp(x, axis)`` in one launch."""
    return _rowwise("forward", x, None, axis)


def log_softmax_grad(g, out, axis=-1):
    """Gradient of :func:`log_softmax` given its output, ``g - exp(out) * sum(g, axis)``, in one launch."""
    return _rowwise("backward", g, out, axis)


def _scale(reduction, n):
    return 1.0 / _max(n, 1) if reduction == "mean" else 1.0


def cross_entropy(logits, target, reduction="mean"):
    """Log-softmax + NLL of ``logits (N, C)`` against integer ``target (N,)`` in one launch: ``(loss,
    logp)``, ``logp`` being what :func:`cross_entropy_grad` needs."""
    x, t = ascontiguousarray(logits), ascontiguousarray(target)
    n, c = x.shape
    logp = empty(x.shape, x.dtype)
    loss = empty((n,) if reduction == "none" else (), x.dtype)
    if loss.size:
        launch(cross_entropy_kernel, (reduction, x.dtype.str), 1, threads_for(n), x._flat(), t._flat(),
               logp._flat(), loss._flat(), n, c, x.dtype.type(_scale(reduction, n)))
    return loss, logp


def cross_entropy_grad(g, logp, target, reduction="mean"):
    """Gradient of :func:`cross_entropy` for the logits, ``(exp(logp) - onehot) * g * scale``, in one
    launch."""
    g, t = ascontiguousarray(g, logp.dtype), ascontiguousarray(target)
    n, c = logp.shape
    out = empty(logp.shape, logp.dtype)
    if out.size:
        blocks, threads = grid_1d(out.size)
        launch(cross_entropy_grad_kernel, (reduction,), blocks, threads, g._flat(), logp._flat(), t._flat(),
               out._flat(), n, c, logp.dtype.type(_scale(reduction, n)))
    return out


def constant(value, shape, dtype):
    """A read-only array of ``value`` (the seed gradient of ``backward()``): made once per (value,
    shape, dtype) and kept, so a training step launches nothing for it."""
    key = (float(value), tuple(shape), np.dtype(dtype))
    found = _constants.get(key)
    if found is None:
        found = _constants[key] = asarray(np.full(shape, value, dtype))
    return found


_constants = {}
