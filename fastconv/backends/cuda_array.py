"""NumPy-like arrays on the GPU: :class:`CudaArray` and the namespace ``array_module("cuda")`` returns.

Numba's device arrays have no arithmetic, so ``Tensor`` (which writes ``self.data + other.data``) holds a
:class:`CudaArray` instead: a strided view (shape, element strides, offset) over a flat Numba device
buffer, with NumPy's operators, basic indexing, ``reshape``/``.T``/``astype``, ``copy_to_host`` and
``__cuda_array_interface__`` (CuPy and PyTorch can read it without a copy). The module-level functions
mirror the NumPy subset that ``tensor.py``, ``functional.py``, ``nn`` and ``optim.py`` call through ``xp``,
under NumPy's names and semantics (broadcasting, dtype promotion, ``out=``, ``axis``/``keepdims``).

A few generic kernels do all the work, each generated from one template per (operation, rank):
elementwise (up to three broadcast operands, scalars as kernel arguments), reduction (one block per
output element, tree in shared memory), gather/scatter along an axis, and a tiled GEMM (shared-memory
tiles, register micro-tiles) whose index maps are plugged in: ``matmul`` here, convolutions in ``cuda.py``.
Views cost nothing: transposes and broadcasts are strides, and adjacent dims that are contiguous in every
operand are merged before a launch, so the common case runs as a rank-1 loop.

Nothing touches the GPU at import time; kernels compile on first use. Under Numba's CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1``) blocks are kept small, since every simulated thread is a Python thread.
"""
from __future__ import annotations

import builtins
import weakref

import numba
import numpy as np
from numba import cuda

from ._cuda_kernels import (MAX_GRID_Z, OPS, along_kernel, config, elementwise_kernel, grid_1d, launch,
                            launch_gemm, log_softmax_kernel, reduce_kernel, threads_for)

__all__ = ["CudaArray", "asarray", "ascontiguousarray", "is_device_array", "empty", "zeros", "ones", "full",
           "empty_like", "zeros_like", "ones_like", "full_like", "copyto", "add", "subtract", "multiply",
           "divide", "true_divide", "power", "negative", "exp", "log", "tanh", "sqrt", "abs", "absolute",
           "sign", "square", "maximum", "minimum", "where", "greater", "greater_equal", "less",
           "less_equal", "equal", "not_equal", "logical_not", "sum", "max", "amax", "min", "amin", "mean",
           "matmul", "transpose", "swapaxes", "reshape", "broadcast_to", "take_along_axis",
           "put_along_axis", "add_at", "log_softmax", "log_softmax_grad", "synchronize", "empty_cache"]

# Builtins this module shadows with NumPy's names (sum, max, min, abs), kept for internal use.
_sum, _max, _min, _abs = builtins.sum, builtins.max, builtins.min, builtins.abs

float32, float64, int32, int64, bool_ = np.float32, np.float64, np.int32, np.int64, np.bool_
newaxis, inf, nan = None, np.inf, np.nan


def synchronize():
    """Wait for every kernel launched so far (timing needs it: launches are asynchronous)."""
    cuda.synchronize()


# ------------------------------------------------------------------------------ the array type
class _Flags:
    def __init__(self, c, f):
        self.c_contiguous, self.f_contiguous = c, f
        self.contiguous, self.writeable, self.owndata = c, True, False

    def __getitem__(self, name):
        return {"C_CONTIGUOUS": self.c_contiguous, "F_CONTIGUOUS": self.f_contiguous,
                "CONTIGUOUS": self.contiguous, "WRITEABLE": True}[name.upper()]


def _c_strides(shape):
    strides, step = [], 1
    for s in reversed(shape):
        strides.append(step)
        step *= s
    return tuple(reversed(strides))


def _prod(values):
    out = 1
    for v in values:
        out *= int(v)
    return out


class CudaArray:
    """A strided n-d view over a flat Numba device buffer, with NumPy's operators.

    ``shape``, ``dtype``, ``strides`` (bytes, as NumPy), ``offset`` (elements into the buffer). Build one
    with :func:`asarray`, :func:`empty` and friends; ``copy_to_host()`` returns a NumPy array.
    """
    __array_priority__ = 2000
    __array_ufunc__ = None  # ndarray <op> CudaArray defers to our reflected operators

    def __init__(self, buf, shape, strides=None, offset=0, owner=None):
        self._buf = buf
        self._owner = owner  # the pool block behind buf (see empty()); every view holds it
        self.shape = tuple(int(s) for s in shape)
        self._strides = _c_strides(self.shape) if strides is None else tuple(int(s) for s in strides)
        self.offset = int(offset)
        self.dtype = np.dtype(buf.dtype)

    # ---------------------------------------------------------------- properties
    @property
    def ndim(self):
        return len(self.shape)

    @property
    def size(self):
        return _prod(self.shape)

    @property
    def itemsize(self):
        return self.dtype.itemsize

    @property
    def nbytes(self):
        return self.size * self.itemsize

    @property
    def strides(self):
        return tuple(s * self.itemsize for s in self._strides)

    def _contiguous(self, strides):
        return all(s == e for n, s, e in zip(self.shape, self._strides, strides) if n != 1)

    @property
    def flags(self):
        c = self._contiguous(_c_strides(self.shape))
        f = self._contiguous(tuple(reversed(_c_strides(tuple(reversed(self.shape))))))
        return _Flags(c, f)

    @property
    def T(self):
        return self.transpose()

    @property
    def device(self):
        return "cuda"

    def __len__(self):
        if not self.shape:
            raise TypeError("len() of a 0-d array")
        return self.shape[0]

    def __repr__(self):
        return f"CudaArray({self.copy_to_host()!r})"

    @property
    def __cuda_array_interface__(self):
        base = self._buf.__cuda_array_interface__  # AttributeError under the simulator: no real memory
        ptr = base["data"][0] + self.offset * self.itemsize if self.size else 0
        return {"shape": self.shape, "typestr": self.dtype.str, "version": 3, "stream": base.get("stream"),
                "strides": None if self.flags.c_contiguous else self.strides, "data": (ptr, False)}

    # ---------------------------------------------------------------- host transfers
    def _flat(self):
        """The C-contiguous elements as a 1-D device array (a view when possible, else a copy)."""
        a = self if self.flags.c_contiguous else self.copy()
        if a.offset == 0 and a._buf.shape[0] == a.size:
            return a._buf
        return a._buf[a.offset:a.offset + a.size]

    def copy_to_host(self):
        """A NumPy copy of the values (waits for pending kernels)."""
        if self.size == 0:
            return np.zeros(self.shape, self.dtype)
        return self._flat().copy_to_host().reshape(self.shape)

    get = copy_to_host  # CuPy's name

    def copy_to_device(self, host):
        """Overwrite the values in place from a NumPy array (or anything of the same shape)."""
        self[...] = host

    def item(self):
        if self.size != 1:
            raise ValueError(f"item() needs an array of size 1, got shape {self.shape}")
        return self.copy_to_host().reshape(()).item()

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __bool__(self):
        if self.size != 1:
            raise ValueError("the truth value of an array with more than one element is ambiguous")
        return bool(self.item())

    def __array__(self, dtype=None, copy=None):
        raise TypeError("a CudaArray lives on the GPU: call .copy_to_host() (or Tensor.numpy()) to get a "
                        "NumPy array; implicit device-to-host copies are refused")

    # ---------------------------------------------------------------- views and copies
    def copy(self):
        return _elementwise("copy", (self,), self.dtype)

    def astype(self, dtype, copy=True):
        dtype = np.dtype(dtype)
        if dtype == self.dtype and not copy:
            return self
        return _elementwise("copy", (self,), dtype)

    def reshape(self, *shape, order="C"):
        if order != "C":
            raise ValueError("only C-order reshapes are supported on the GPU")
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        shape = _resolve_shape(tuple(int(s) for s in shape), self.size)
        a = self if self.flags.c_contiguous else self.copy()
        return a._restrided(shape, None, a.offset)

    def ravel(self):
        return self.reshape(-1)

    flatten = ravel

    def transpose(self, *axes):
        axes = axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
        axes = tuple(axes) or tuple(reversed(range(self.ndim)))
        if sorted(a % _max(self.ndim, 1) for a in axes) != list(range(self.ndim)):
            raise ValueError(f"axes {axes} are not a permutation of {self.ndim} dims")
        axes = tuple(a % self.ndim for a in axes)
        return self._restrided([self.shape[a] for a in axes], [self._strides[a] for a in axes], self.offset)

    def _restrided(self, shape, strides, offset):
        """Another view of the same memory."""
        return CudaArray(self._buf, shape, strides, offset, self._owner)

    def swapaxes(self, a, b):
        axes = list(range(self.ndim))
        axes[a], axes[b] = axes[b], axes[a]
        return self.transpose(axes)

    def fill(self, value):
        _elementwise("copy", (value,), self.dtype, out=self)

    # ---------------------------------------------------------------- indexing
    def __getitem__(self, index):
        index = _unwrap_index(index)
        if _is_int_array(index):
            return _take_rows(self, index)
        return self._view(index)

    def __setitem__(self, index, value):
        index = _unwrap_index(index)
        if _is_int_array(index):
            rows = _int_rows(index, self)
            target = (rows.shape[0],) + self.shape[1:]
            _along("put", self, 0, _rows_view(rows, target), broadcast_to(_device_values(value, self.dtype), target))
            return
        view = self._view(index)
        if not _is_scalar(value) and not isinstance(value, CudaArray):
            value = asarray(np.asarray(value, dtype=self.dtype))
        _elementwise("copy", (value,), self.dtype, out=view)

    def _view(self, index):
        """Basic indexing (ints, slices, ``...``, ``None``) as a view."""
        index = index if isinstance(index, tuple) else (index,)
        if any(i is Ellipsis for i in index):
            at = [k for k, i in enumerate(index) if i is Ellipsis]
            if len(at) > 1:
                raise IndexError("an index can only have a single ellipsis ('...')")
            used = _sum(1 for i in index if i is not None and i is not Ellipsis)
            index = index[:at[0]] + (slice(None),) * (self.ndim - used) + index[at[0] + 1:]
        used = _sum(1 for i in index if i is not None)
        if used > self.ndim:
            raise IndexError(f"too many indices for array: array is {self.ndim}-dimensional, but {used} "
                             "were indexed")
        index = index + (slice(None),) * (self.ndim - used)
        shape, strides, offset, dim = [], [], self.offset, 0
        for i in index:
            if i is None:
                shape.append(1)
                strides.append(0)
                continue
            size, stride = self.shape[dim], self._strides[dim]
            if isinstance(i, slice):
                start, stop, step = i.indices(size)
                shape.append(len(range(start, stop, step)))
                strides.append(stride * step)
                offset += start * stride
            elif isinstance(i, (int, np.integer)) and not isinstance(i, (bool, np.bool_)):
                k = int(i) + size if i < 0 else int(i)
                if not 0 <= k < size:
                    raise IndexError(f"index {i} is out of bounds for axis {dim} with size {size}")
                offset += k * stride
            else:
                raise TypeError(f"unsupported index {i!r} on the GPU: use ints, slices, '...', None, or one "
                                "integer array (rows of the first axis)")
            dim += 1
        return self._restrided(shape, strides, offset)

    # ---------------------------------------------------------------- operators
    def __add__(self, other):
        return add(self, other)

    def __radd__(self, other):
        return add(other, self)

    def __sub__(self, other):
        return subtract(self, other)

    def __rsub__(self, other):
        return subtract(other, self)

    def __mul__(self, other):
        return multiply(self, other)

    def __rmul__(self, other):
        return multiply(other, self)

    def __truediv__(self, other):
        return divide(self, other)

    def __rtruediv__(self, other):
        return divide(other, self)

    def __pow__(self, other):
        return power(self, other)

    def __rpow__(self, other):
        return power(other, self)

    def __matmul__(self, other):
        return matmul(self, other)

    def __rmatmul__(self, other):
        return matmul(other, self)

    def __neg__(self):
        return negative(self)

    def __pos__(self):
        return self

    def __abs__(self):
        return absolute(self)

    def __invert__(self):
        if self.dtype != np.bool_:
            raise TypeError("~ is supported for boolean arrays only on the GPU")
        return logical_not(self)

    def __iadd__(self, other):
        return add(self, other, out=self)

    def __isub__(self, other):
        return subtract(self, other, out=self)

    def __imul__(self, other):
        return multiply(self, other, out=self)

    def __itruediv__(self, other):
        return divide(self, other, out=self)

    def __gt__(self, other):
        return greater(self, other)

    def __ge__(self, other):
        return greater_equal(self, other)

    def __lt__(self, other):
        return less(self, other)

    def __le__(self, other):
        return less_equal(self, other)

    def __eq__(self, other):
        return equal(self, other)

    def __ne__(self, other):
        return not_equal(self, other)

    __hash__ = None

    # ---------------------------------------------------------------- reductions (methods)
    def sum(self, axis=None, keepdims=False, dtype=None):
        return sum(self, axis=axis, keepdims=keepdims, dtype=dtype)

    def max(self, axis=None, keepdims=False):
        return amax(self, axis=axis, keepdims=keepdims)

    def min(self, axis=None, keepdims=False):
        return amin(self, axis=axis, keepdims=keepdims)

    def mean(self, axis=None, keepdims=False):
        return mean(self, axis=axis, keepdims=keepdims)


def _resolve_shape(shape, size):
    """Replace a single -1 by what the size leaves, and check the total."""
    if shape.count(-1) > 1:
        raise ValueError("can only specify one unknown dimension")
    if -1 in shape:
        known = _prod(s for s in shape if s != -1)
        if known == 0 or size % known:
            raise ValueError(f"cannot reshape array of size {size} into shape {shape}")
        shape = tuple(size // known if s == -1 else s for s in shape)
    if _prod(shape) != size:
        raise ValueError(f"cannot reshape array of size {size} into shape {shape}")
    return shape


# -------------------------------------------------------------------------- conversions
def _fake_array_type():
    try:
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray
        return FakeCUDAArray
    except ImportError:
        return ()


def is_device_array(obj):
    """True for CudaArrays, Numba device arrays and any object exposing ``__cuda_array_interface__``."""
    if isinstance(obj, CudaArray):
        return True
    if isinstance(obj, (np.ndarray, np.generic, int, float, complex, bool, list, tuple)) or obj is None:
        return False
    if hasattr(obj, "__cuda_array_interface__"):
        return True
    if getattr(numba.config, "ENABLE_CUDASIM", False):
        return isinstance(obj, _fake_array_type())
    is_cuda = getattr(cuda, "is_cuda_array", None)
    return bool(is_cuda(obj)) if is_cuda is not None else False


def _wrap_device(obj):
    """A CudaArray sharing the memory of a Numba device array / ``__cuda_array_interface__`` object."""
    if not getattr(numba.config, "ENABLE_CUDASIM", False):
        obj = cuda.as_cuda_array(obj)
    contiguous = obj.is_c_contiguous() if hasattr(obj, "is_c_contiguous") else True
    if not contiguous:  # a foreign strided array: copy it through the host (rare; keeps views simple)
        return _from_host(obj.copy_to_host())
    shape = tuple(obj.shape)
    return CudaArray(obj.reshape(_prod(shape)) if shape != (_prod(shape),) else obj, shape)


def _from_host(host, dtype=None):
    host = np.asarray(host, dtype=dtype, order="C")  # (np.ascontiguousarray would make 0-d arrays 1-d)
    if host.dtype == np.float16 or host.dtype.kind not in "biuf":
        raise TypeError(f"unsupported dtype on the GPU: {host.dtype}")
    out = empty(host.shape, host.dtype)
    if host.size:
        out._buf.copy_to_device(host.reshape(-1))
    return out


def asarray(obj, dtype=None):
    """``obj`` on the GPU: CudaArrays pass through (cast to ``dtype`` if given), device arrays are wrapped
    without a copy, NumPy arrays / lists / scalars are copied from the host."""
    if isinstance(obj, CudaArray):
        return obj if dtype is None or np.dtype(dtype) == obj.dtype else obj.astype(dtype)
    if is_device_array(obj):
        return asarray(_wrap_device(obj), dtype)
    return _from_host(obj, dtype)


def ascontiguousarray(obj, dtype=None):
    a = asarray(obj, dtype)
    return a if a.flags.c_contiguous else a.copy()


# ------------------------------------------------------------------------------ allocation
class _Block:
    """Owner of one pooled device buffer: when the last array viewing it is gone, the buffer returns to
    the pool (a weakref finalizer). Kernels run in stream order, so a kernel still reading a returned
    buffer finishes before the next one writing it starts."""
    __slots__ = ("__weakref__",)


_pool = {}  # rounded size in bytes -> free uint8 device buffers
_pool_bytes = 0
POOL_LIMIT = 4 << 30  # bytes kept for reuse; beyond it buffers go back to the driver
_poison = False


def _release(size, raw):
    global _pool_bytes
    if _pool_bytes + size <= POOL_LIMIT:
        _pool.setdefault(size, []).append(raw)
        _pool_bytes += size


def empty_cache():
    """Give the pooled device buffers back to the driver (arrays in use are not affected)."""
    global _pool_bytes
    _pool.clear()
    _pool_bytes = 0


def _allocate(nbytes):
    """A device buffer of at least ``nbytes`` from the pool (sizes rounded up to 512 bytes), and its owner.

    Numba allocates with cuMemAlloc and frees with cuMemFree, which synchronises the device; a training
    step allocates the same sizes every iteration, so a size-keyed free list avoids both.
    """
    global _pool_bytes
    size = _max(512, -(-nbytes // 512) * 512)
    free = _pool.get(size)
    if free:
        raw = free.pop()
        _pool_bytes -= size
    else:
        raw = cuda.device_array(size, dtype=np.uint8)
    owner = _Block()
    weakref.finalize(owner, _release, size, raw).atexit = False
    return raw, owner


def poison_outputs(flag=True):
    """Debugging aid: fill every array :func:`empty` makes with NaN (floats) or the most negative int,
    so that an element a kernel forgets to write shows up in a comparison (bench/gpu_check.py, tests)."""
    global _poison
    _poison = bool(flag)


def empty(shape, dtype=np.float64):
    shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)
    dtype = np.dtype(dtype)
    size = _prod(shape)
    raw, owner = _allocate(size * dtype.itemsize)
    out = CudaArray(raw[:size * dtype.itemsize].view(dtype), shape, owner=owner)
    if _poison and size:
        out.fill(np.nan if dtype.kind == "f" else (True if dtype.kind == "b" else np.iinfo(dtype).min))
    return out


def full(shape, fill_value, dtype=None):
    dtype = np.asarray(fill_value).dtype if dtype is None else dtype
    out = empty(shape, dtype)
    out.fill(fill_value)
    return out


def zeros(shape, dtype=np.float64):
    return full(shape, 0, dtype)


def ones(shape, dtype=np.float64):
    return full(shape, 1, dtype)


def empty_like(a, dtype=None):
    return empty(a.shape, a.dtype if dtype is None else dtype)


def zeros_like(a, dtype=None):
    return zeros(a.shape, a.dtype if dtype is None else dtype)


def ones_like(a, dtype=None):
    return ones(a.shape, a.dtype if dtype is None else dtype)


def full_like(a, fill_value, dtype=None):
    return full(a.shape, fill_value, a.dtype if dtype is None else dtype)


def copyto(dst, src):
    """``dst[...] = src`` with broadcasting (``dst`` a CudaArray)."""
    _elementwise("copy", (src,), dst.dtype, out=dst)


# ------------------------------------------------------------------------- strides and shapes
def _is_scalar(x):
    return isinstance(x, (int, float, bool, np.generic)) or (isinstance(x, np.ndarray) and x.ndim == 0)


def _bstrides(a, shape):
    """Element strides of ``a`` broadcast to ``shape`` (0 along broadcast dims)."""
    pad = len(shape) - a.ndim
    return (0,) * pad + tuple(0 if n == 1 else s for n, s in zip(a.shape, a._strides))


def _collapse(shape, stride_sets):
    """Drop unit dims and merge neighbours contiguous in every operand: ``(shape, stride_sets)`` of the
    same elements with the fewest dims (at least one)."""
    dims = [(n, [st[d] for st in stride_sets]) for d, n in enumerate(shape) if n != 1]
    merged = []
    for n, sts in dims:
        if merged and all(p == s * n for p, s in zip(merged[-1][1], sts)):
            merged[-1] = (merged[-1][0] * n, sts)
        else:
            merged.append((n, sts))
    if not merged:
        merged = [(1, [0] * len(stride_sets))]
    return tuple(n for n, _ in merged), [tuple(sts[k] for _, sts in merged) for k in range(len(stride_sets))]


def broadcast_to(a, shape):
    a = asarray(a)
    shape = tuple(int(s) for s in shape)
    if np.broadcast_shapes(a.shape, shape) != shape:
        raise ValueError(f"cannot broadcast shape {a.shape} to {shape}")
    return a._restrided(shape, _bstrides(a, shape), a.offset)


def transpose(a, axes=None):
    return asarray(a).transpose(axes or ())


def swapaxes(a, axis1, axis2):
    return asarray(a).swapaxes(axis1, axis2)


def reshape(a, shape):
    return asarray(a).reshape(shape)


def _result_dtype(name, operands):
    """NumPy's result dtype for ``name`` on these operands (Python scalars are weak, as in NumPy 2)."""
    probes = [np.empty(0, x.dtype) if isinstance(x, CudaArray) else x for x in operands]
    with np.errstate(all="ignore"):
        return np.asarray(OPS[name][1](*probes)).dtype


def _elementwise(name, operands, dtype=None, out=None):
    """Apply elementwise op ``name`` to up to three operands (CudaArrays, device/host arrays or scalars),
    broadcasting as NumPy; write into ``out`` (any view, may alias an input) or a new array."""
    ops = []
    for x in operands:
        if isinstance(x, np.ndarray) and x.ndim == 0:
            x = x[()]
        if not _is_scalar(x):
            if isinstance(x, np.ndarray) and not is_device_array(x):
                raise TypeError("an operand is a NumPy array on the CPU and the other is on the GPU: move it "
                                "with fastconv's .to('cuda') or cuda_array.asarray() first")
            x = asarray(x)
        ops.append(x)
    arrays = [x for x in ops if isinstance(x, CudaArray)]
    if not arrays and out is None:  # scalars only: NumPy computes it
        return np.asarray(OPS[name][1](*ops)) if name != "copy" else np.asarray(ops[0], dtype)
    if dtype is None:
        dtype = _result_dtype(name, ops)
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
            strides.append(_bstrides(x, shape))
        else:  # scalars become kernel arguments in the dtype NumPy would compute in
            kinds += "s"
            args.append(np.asarray(x, np.result_type(common, x) if ops else dtype)[()])
            offsets.append(0)
            strides.append((0,) * len(shape))
    cshape, cstrides = _collapse(shape, strides + [out._strides])
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
        return _elementwise(name, args, None if dtype is None else np.dtype(dtype), out)
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
    return _elementwise("where", (condition, x, y))


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
    kshape, (kstrides,) = _collapse([a.shape[d] for d in kept], [[a._strides[d] for d in kept]])
    rshape, (rstrides,) = _collapse([a.shape[d] for d in axes], [[a._strides[d] for d in axes]])
    if name == "sum":
        init = dtype.type(0)
    elif dtype.kind == "f":
        init = dtype.type(-np.inf if name == "max" else np.inf)
    elif dtype.kind == "b":
        init = dtype.type(name == "min")
    else:
        info = np.iinfo(dtype)
        init = dtype.type(info.min if name == "max" else info.max)
    blocks = _min(n_out, config().max_blocks)
    threads = threads_for(n_red)
    launch(reduce_kernel, (name, dtype.str), blocks, threads, a._buf, a.offset, kshape, kstrides, rshape,
           rstrides, out._buf, n_out, n_red, init)
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


# ----------------------------------------------------------------------- fused log-softmax
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
    kshape, strides = _collapse([a.shape[d] for d in kept], [[x._strides[d] for d in kept] for x in (a, b, out)])
    launch(log_softmax_kernel, (mode, a.dtype.str), _min(n_rows, config().max_blocks), threads_for(a.shape[axis]),
           a._buf, b._buf, out._buf, (a.offset, b.offset, out.offset), kshape, *strides,
           a._strides[axis], b._strides[axis], out._strides[axis], n_rows, a.shape[axis])
    return out


def log_softmax(x, axis=-1):
    """Fused ``x - logsumexp(x, axis)`` (not a NumPy function: ``functional.log_softmax`` uses it on the GPU)."""
    return _rowwise("forward", x, None, axis)


def log_softmax_grad(g, out, axis=-1):
    """Fused gradient of :func:`log_softmax` given its output: ``g - exp(out) * sum(g, axis)``."""
    return _rowwise("backward", g, out, axis)


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
    strides = [_bstrides(flat, shape), _bstrides(idx, shape), _bstrides(val, shape)]
    cshape, cstrides = _collapse(shape, strides)
    blocks, threads = grid_1d(n)
    launch(along_kernel, (mode, len(cshape)), blocks, threads, arr._buf, idx._buf, val._buf,
           (arr.offset, idx.offset, val.offset), cshape, *cstrides, length, axis_stride, n)


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
    shape = np.broadcast_shapes(shape, np.shape(values) if _is_scalar(values) else asarray(values).shape)
    values = _device_values(values, arr.dtype)
    _along("put", arr, axis, broadcast_to(indices, shape), broadcast_to(values, shape))


def _device_values(values, dtype):
    """Values (scalar, host or device array) as a CudaArray of ``dtype``."""
    return asarray(np.asarray(values, dtype)) if _is_scalar(values) else asarray(values, dtype)


def _unwrap_index(index):
    data = getattr(index, "data", None)  # a fastconv Tensor used as an index
    if data is not None and not isinstance(index, (np.ndarray, CudaArray)) and hasattr(index, "requires_grad"):
        return data
    return index


def _is_int_array(index):
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


def _take_rows(a, index):
    rows = _int_rows(index, a)
    shape = (rows.shape[0],) + a.shape[1:]
    out = empty(shape, a.dtype)
    _along("take", a, 0, _rows_view(rows, shape), out)
    return out


def add_at(a, index, values):
    """``np.add.at(a, index, values)``: unbuffered in-place addition (repeated rows add up, atomically)."""
    index = _unwrap_index(index)
    if _is_int_array(index):
        rows = _int_rows(index, a)
        shape = (rows.shape[0],) + a.shape[1:]
        _along("add", a, 0, _rows_view(rows, shape), broadcast_to(_device_values(values, a.dtype), shape))
    else:
        view = a._view(index)
        add(view, values, out=view)


def _batch_stride(a, batch):
    """``(stride)`` such that flat batch index b starts at ``offset + b * stride`` for ``a`` broadcast
    over ``batch``, or None when the batch dims do not collapse to one stride."""
    strides = _bstrides(a._restrided(a.shape[:-2], a._strides[:-2], a.offset), batch)
    shape, (collapsed,) = _collapse(batch, [strides])
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
            launch_gemm("matmul", pa._buf, pb._buf, result._buf, result._buf, (M, N, K) + ga + gb + (z0,),
                        M, N, _min(MAX_GRID_Z, nb - z0), _abs(ga[3]) <= _abs(ga[2]), _abs(gb[2]) <= _abs(gb[3]))
    if a.ndim == 1:
        result = result.reshape(result.shape[:-2] + (N,))
    if b.ndim == 1:
        result = result.reshape(result.shape[:-1])
    if out is not None:
        copyto(out, result)
        return out
    return result
