"""NumPy-like arrays on the GPU: :class:`CudaArray`, conversions from and to the host, and allocation.

Numba's device arrays have no arithmetic, so ``Tensor`` (which writes ``self.data + other.data``) holds a
:class:`CudaArray` instead: a strided view (shape, element strides, offset) over a flat Numba device
buffer, with NumPy's operators (computed by the functions of ``fastconv.gpu.xp``), basic indexing,
``reshape``/``.T``/``astype``, ``copy_to_host`` and ``__cuda_array_interface__`` (CuPy and PyTorch can read
it without a copy). Views cost nothing: transposes and broadcasts are strides. Memory comes from the
caching allocator (``fastconv.gpu.alloc``); every view holds the block it lives in.
"""
from __future__ import annotations

import functools

import numba
import numpy as np
from numba import cuda

from . import alloc


# ------------------------------------------------------------------------------ the array type
class _Flags:
    def __init__(self, c, f):
        self.c_contiguous, self.f_contiguous = c, f
        self.contiguous, self.writeable, self.owndata = c, True, False

    def __getitem__(self, name):
        return {"C_CONTIGUOUS": self.c_contiguous, "F_CONTIGUOUS": self.f_contiguous,
                "CONTIGUOUS": self.contiguous, "WRITEABLE": True}[name.upper()]


@functools.lru_cache(maxsize=4096)
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
        self._flags = None  # worked out on first use (shape and strides never change)

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
        if self._flags is None:
            c = self._contiguous(_c_strides(self.shape))
            f = self._contiguous(tuple(reversed(_c_strides(tuple(reversed(self.shape))))))
            self._flags = _Flags(c, f)
        return self._flags

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
        return _xp.elementwise("copy", (self,), self.dtype)

    def astype(self, dtype, copy=True):
        dtype = np.dtype(dtype)
        if dtype == self.dtype and not copy:
            return self
        return _xp.elementwise("copy", (self,), dtype)

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
        if sorted(a % max(self.ndim, 1) for a in axes) != list(range(self.ndim)):
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
        _xp.elementwise("copy", (value,), self.dtype, out=self)

    # ---------------------------------------------------------------- indexing
    def __getitem__(self, index):
        index = _xp.unwrap_index(index)
        if _xp.is_int_array(index):
            return _xp.take_rows(self, index)
        return self._view(index)

    def __setitem__(self, index, value):
        index = _xp.unwrap_index(index)
        if _xp.is_int_array(index):
            _xp.put_rows(self, index, value)
            return
        view = self._view(index)
        if not is_scalar(value) and not isinstance(value, CudaArray):
            value = asarray(np.asarray(value, dtype=self.dtype))
        _xp.elementwise("copy", (value,), self.dtype, out=view)

    def _view(self, index):
        """Basic indexing (ints, slices, ``...``, ``None``) as a view."""
        index = index if isinstance(index, tuple) else (index,)
        if any(i is Ellipsis for i in index):
            at = [k for k, i in enumerate(index) if i is Ellipsis]
            if len(at) > 1:
                raise IndexError("an index can only have a single ellipsis ('...')")
            used = sum(1 for i in index if i is not None and i is not Ellipsis)
            index = index[:at[0]] + (slice(None),) * (self.ndim - used) + index[at[0] + 1:]
        used = sum(1 for i in index if i is not None)
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
        return _xp.add(self, other)

    def __radd__(self, other):
        return _xp.add(other, self)

    def __sub__(self, other):
        return _xp.subtract(self, other)

    def __rsub__(self, other):
        return _xp.subtract(other, self)

    def __mul__(self, other):
        return _xp.multiply(self, other)

    def __rmul__(self, other):
        return _xp.multiply(other, self)

    def __truediv__(self, other):
        return _xp.divide(self, other)

    def __rtruediv__(self, other):
        return _xp.divide(other, self)

    def __pow__(self, other):
        return _xp.power(self, other)

    def __rpow__(self, other):
        return _xp.power(other, self)

    def __matmul__(self, other):
        return _xp.matmul(self, other)

    def __rmatmul__(self, other):
        return _xp.matmul(other, self)

    def __neg__(self):
        return _xp.negative(self)

    def __pos__(self):
        return self

    def __abs__(self):
        return _xp.absolute(self)

    def __invert__(self):
        if self.dtype != np.bool_:
            raise TypeError("~ is supported for boolean arrays only on the GPU")
        return _xp.logical_not(self)

    def __iadd__(self, other):
        return _xp.add(self, other, out=self)

    def __isub__(self, other):
        return _xp.subtract(self, other, out=self)

    def __imul__(self, other):
        return _xp.multiply(self, other, out=self)

    def __itruediv__(self, other):
        return _xp.divide(self, other, out=self)

    def __gt__(self, other):
        return _xp.greater(self, other)

    def __ge__(self, other):
        return _xp.greater_equal(self, other)

    def __lt__(self, other):
        return _xp.less(self, other)

    def __le__(self, other):
        return _xp.less_equal(self, other)

    def __eq__(self, other):
        return _xp.equal(self, other)

    def __ne__(self, other):
        return _xp.not_equal(self, other)

    __hash__ = None

    # ---------------------------------------------------------------- reductions (methods)
    def sum(self, axis=None, keepdims=False, dtype=None):
        return _xp.sum(self, axis=axis, keepdims=keepdims, dtype=dtype)

    def max(self, axis=None, keepdims=False):
        return _xp.amax(self, axis=axis, keepdims=keepdims)

    def min(self, axis=None, keepdims=False):
        return _xp.amin(self, axis=axis, keepdims=keepdims)

    def mean(self, axis=None, keepdims=False):
        return _xp.mean(self, axis=axis, keepdims=keepdims)


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
        return from_host(obj.copy_to_host())
    shape = tuple(obj.shape)
    return CudaArray(obj.reshape(_prod(shape)) if shape != (_prod(shape),) else obj, shape)


def from_host(host, dtype=None):
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
    return from_host(obj, dtype)


def ascontiguousarray(obj, dtype=None):
    a = asarray(obj, dtype)
    return a if a.flags.c_contiguous else a.copy()


# ------------------------------------------------------------------------------ allocation
def empty(shape, dtype=np.float64):
    shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)
    dtype = np.dtype(dtype)
    size = _prod(shape)
    raw, owner = alloc.allocate(size * dtype.itemsize)
    out = CudaArray(raw.view(dtype), shape, owner=owner)
    if alloc.poisoned() and size:
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


# ------------------------------------------------------------------------- strides and shapes
def is_scalar(x):
    return isinstance(x, (int, float, bool, np.generic)) or (isinstance(x, np.ndarray) and x.ndim == 0)


def bstrides(a, shape):
    """Element strides of ``a`` broadcast to ``shape`` (0 along broadcast dims)."""
    pad = len(shape) - a.ndim
    return (0,) * pad + tuple(0 if n == 1 else s for n, s in zip(a.shape, a._strides))


def collapse(shape, stride_sets):
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


# The operators call the namespace's functions; it imports this module, so it comes last.
from . import xp as _xp  # noqa: E402
