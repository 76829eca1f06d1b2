"""Tensor: an array, its gradient, and the recorded graph of the ops that made it.

Each op builds its output and, right beside it, a ``backward`` closure mapping the output's gradient to
one gradient per parent (``None`` where a parent needs none). ``Tensor.backward()`` sorts the graph
topologically, runs the closures in reverse order, accumulates gradients with ``+`` (a tensor used twice
gets both contributions), stores them on leaf tensors only, and frees the graph.

Arrays are NumPy arrays on the CPU and ``CudaArray``s on the GPU; ``xp`` is the matching namespace.
"""
from __future__ import annotations

import contextlib

import numpy as np

from . import shapes
from .device import array_module, check_device, device_of, to_device

_grad_enabled = True


@contextlib.contextmanager
def no_grad():
    """Within this block ops record no graph (inference, optimizer updates)."""
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, False
    try:
        yield
    finally:
        _grad_enabled = previous


def is_grad_enabled():
    return _grad_enabled


def tensor(data, requires_grad=False, dtype=None, device="cpu"):
    """Make a Tensor from an array, a (nested) list or a scalar.

    NumPy float32/float64 arrays keep their dtype; Python floats and lists default to float32; integer
    arrays stay integer (labels). The data is copied, as ``torch.tensor`` does, so that in-place updates
    (an optimizer step) never write into the caller's array. ``device="cuda"`` copies to the GPU.
    """
    if isinstance(data, Tensor):
        data = data.data
    requires_grad = shapes.flag("requires_grad", requires_grad)
    dtype = None if dtype is None else shapes.dtype_arg("dtype", dtype)
    device = check_device(device)
    if device_of(data) == "cuda":
        array = data
    else:
        from_python = not isinstance(data, (np.ndarray, np.generic))
        array = np.array(shapes.as_array("data", data), dtype=dtype, order="C")  # a C-contiguous copy
        if dtype is None and from_python and array.dtype == np.float64:
            array = array.astype(np.float32)
    if requires_grad and np.dtype(array.dtype).kind != "f":
        raise TypeError(f"only float tensors can require grad, got dtype {array.dtype}")
    return Tensor(to_device(array, device), requires_grad=requires_grad)


def from_dlpack(obj):
    """A Tensor sharing the memory of ``obj`` (a PyTorch tensor, NumPy, JAX or CuPy array, or any object
    with ``__dlpack__``): no copy. GPU arrays are read through ``__cuda_array_interface__`` (or DLPack)."""
    if not hasattr(obj, "__dlpack__") and not hasattr(obj, "__cuda_array_interface__"):
        raise TypeError(f"from_dlpack needs an object with __dlpack__ (a tensor or array), got "
                        f"{type(obj).__name__}")
    on_gpu = hasattr(obj, "__cuda_array_interface__") or (
        hasattr(obj, "__dlpack_device__") and obj.__dlpack_device__()[0] != 1)  # 1: kDLCPU
    if on_gpu:
        from .cuda import require
        from .gpu import array
        require()
        return Tensor(array.asarray(obj))
    return Tensor(np.from_dlpack(obj))


def as_tensor(value, name="input"):
    """Tensors pass through; arrays and scalars are wrapped (no copy for NumPy arrays). Anything else
    (None, strings, objects) is a TypeError naming the argument ``name``."""
    if isinstance(value, Tensor):
        return value
    return Tensor(shapes.as_array(name, value) if device_of(value) == "cpu" else value)


def make(data, parents, backward):
    """The output of an op: records ``backward`` when grad is on and some parent requires grad."""
    if _grad_enabled and any(p.requires_grad for p in parents):
        return Tensor(data, True, tuple(parents), backward)
    return Tensor(data)


def unbroadcast(xp, grad, shape):
    """Sum ``grad`` over the axes that broadcasting added or stretched, back to ``shape``."""
    if tuple(grad.shape) == tuple(shape):
        return grad
    extra = grad.ndim - len(shape)
    axes = tuple(range(extra)) + tuple(i + extra for i, s in enumerate(shape)
                                       if s == 1 and grad.shape[i + extra] != 1)
    return xp.sum(grad, axis=axes, keepdims=True).reshape(shape)


class Tensor:
    """An n-d array with autograd. Build one with :func:`fastconv.tensor`."""
    __array_priority__ = 1000  # ndarray <op> Tensor defers to Tensor's reflected operators

    def __init__(self, data, requires_grad=False, _parents=(), _backward=None):
        self.data = data
        self._grad = None
        self.requires_grad = bool(requires_grad)
        self._parents = _parents
        self._backward = _backward

    # ------------------------------------------------------------------ properties
    @property
    def grad(self):
        """The gradient that ``backward()`` accumulated, a Tensor on this tensor's device (or ``None``)."""
        return self._grad

    @grad.setter
    def grad(self, value):
        if value is not None:
            value = value if isinstance(value, Tensor) else Tensor(value)  # arrays are wrapped, not copied
            if value.shape != self.shape:
                raise ValueError(f"grad must have the tensor's shape {self.shape}, got {value.shape}")
        self._grad = value

    @property
    def device(self):
        return device_of(self.data)

    @property
    def xp(self):
        return array_module(self.device)

    @property
    def shape(self):
        return tuple(self.data.shape)

    @property
    def dtype(self):
        return np.dtype(self.data.dtype)

    @property
    def ndim(self):
        return len(self.data.shape)

    @property
    def size(self):
        return int(np.prod(self.data.shape))

    @property
    def is_leaf(self):
        return self._backward is None

    def __len__(self):
        return self.data.shape[0]

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        where = ", device='cuda'" if self.device == "cuda" else ""
        return f"tensor({self.numpy()!r}{where}{grad})"

    # ------------------------------------------------------------------ conversion
    def numpy(self):
        """The values as a NumPy array (a copy from the GPU; the array itself on the CPU)."""
        return self.data if self.device == "cpu" else self.data.copy_to_host()

    def item(self):
        return self.numpy().item()

    def __array__(self, dtype=None, copy=None):
        """``np.asarray(tensor)``: the values on the host (no copy on the CPU unless one is asked for)."""
        array = np.asarray(self.numpy())
        if dtype is not None and np.dtype(dtype) != array.dtype:
            return array.astype(dtype)
        return array.copy() if copy else array

    # ------------------------------------------------------------------ DLPack
    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        """Share this tensor's memory through DLPack (``np.from_dlpack``, ``torch.from_dlpack``, JAX):
        no copy. On the GPU, use ``__cuda_array_interface__`` (``torch.as_tensor``, ``cupy.asarray``)."""
        if self.device != "cpu":
            raise BufferError("DLPack export of GPU tensors is not supported: read them without a copy "
                              "through __cuda_array_interface__ (torch.as_tensor(t, device='cuda'), "
                              "cupy.asarray(t))")
        kwargs = {k: v for k, v in (("stream", stream), ("max_version", max_version), ("dl_device", dl_device),
                                    ("copy", copy)) if v is not None}
        return self.data.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        if self.device == "cuda":
            from numba import cuda
            return 2, cuda.get_current_device().id  # kDLCUDA
        return self.data.__dlpack_device__()

    @property
    def __cuda_array_interface__(self):
        """The GPU array's interface (CuPy, PyTorch and Numba read GPU tensors without a copy)."""
        if self.device != "cuda":
            raise AttributeError("__cuda_array_interface__ exists on GPU tensors only")
        return self.data.__cuda_array_interface__

    def detach(self):
        return Tensor(self.data)

    def to(self, device):
        """This tensor on ``device`` (itself when it is already there); the copy is a new leaf."""
        device = check_device(device)
        if device == self.device:
            return self
        return Tensor(to_device(self.data, device), requires_grad=self.requires_grad)

    def cpu(self):
        return self.to("cpu")

    def cuda(self):
        return self.to("cuda")

    def float(self):
        return self.astype(np.float32)

    def double(self):
        return self.astype(np.float64)

    def astype(self, dtype):
        dtype = shapes.dtype_arg("dtype", dtype)
        if self.dtype == dtype:
            return self
        src = self.dtype
        return make(self.data.astype(dtype), (self,), lambda g: (g.astype(src),))

    def requires_grad_(self, flag=True):
        flag = shapes.flag("flag", flag)
        if flag and self.dtype.kind != "f":
            raise TypeError(f"only float tensors can require grad, got dtype {self.dtype}")
        self.requires_grad = flag
        return self

    # ------------------------------------------------------------------ autograd
    def backward(self, grad=None):
        """Send ``grad`` (default 1 for a scalar) back through the graph; leaves accumulate ``.grad``."""
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad (no graph was recorded)")
        xp = self.xp
        if grad is None:
            if self.size != 1:
                raise ValueError(f"grad must be given for a non-scalar output of shape {self.shape}")
            # read-only for the graph: the GPU keeps one per shape instead of launching a fill each time
            grad = xp.ones(self.shape, dtype=self.dtype) if self.is_leaf else xp.constant(1, self.shape, self.dtype)
        else:
            grad = grad.data if isinstance(grad, Tensor) else grad
            grad = shapes.as_array("grad", grad) if device_of(grad) == "cpu" else grad
            grad = to_device(grad, self.device)
            if tuple(grad.shape) != self.shape:
                raise ValueError(f"grad must have the output's shape {self.shape}, got {tuple(grad.shape)}")
            if np.dtype(grad.dtype) != self.dtype:
                grad = grad.astype(self.dtype)
        order, seen = [], set()
        stack = [(self, False)]
        while stack:  # iterative depth-first topological sort (deep graphs must not hit the recursion limit)
            node, done = stack.pop()
            if done:
                order.append(node)
                continue
            if id(node) in seen:
                continue
            seen.add(id(node))
            stack.append((node, True))
            stack.extend((p, False) for p in node._parents if p.requires_grad and id(p) not in seen)
        grads = {id(self): grad}
        for node in reversed(order):
            g = grads.pop(id(node), None)
            if node._backward is None:
                if g is not None:
                    node.grad = g if node.grad is None else node.grad.data + g
                continue
            if g is not None:
                for parent, pg in zip(node._parents, node._backward(g)):
                    if pg is None or not parent.requires_grad:
                        continue
                    key = id(parent)
                    grads[key] = pg if key not in grads else grads[key] + pg
            node._parents, node._backward = (), _freed  # free the graph as we go

    # ------------------------------------------------------------------ arithmetic
    def _other(self, other):
        if isinstance(other, Tensor):
            return other
        if isinstance(other, (int, float, np.generic)):
            # scalars stay scalars: no parent, dtype follows the tensor (a NumPy scalar would promote
            # float32 to float64 under NEP 50, so it becomes a Python number first)
            return other.item() if isinstance(other, np.generic) else other
        return as_tensor(other, "other")

    def _broadcast(self, other):
        """Check that ``other`` broadcasts with this tensor into a result that fits in memory."""
        if other.shape != self.shape:
            shapes.broadcast_shape("other", self.shape, other.shape,
                                   max(self.dtype.itemsize, other.dtype.itemsize))

    def __add__(self, other):
        other = self._other(other)
        if not isinstance(other, Tensor):
            return make(self.data + other, (self,), lambda g: (g,))
        self._broadcast(other)
        xp = self.xp
        a, b = self.shape, other.shape
        return make(self.data + other.data, (self, other),
                    lambda g: (unbroadcast(xp, g, a), unbroadcast(xp, g, b)))

    __radd__ = __add__

    def __neg__(self):
        return make(-self.data, (self,), lambda g: (-g,))

    def __sub__(self, other):
        return self + (-self._other(other))

    def __rsub__(self, other):
        return (-self) + other

    def __mul__(self, other):
        other = self._other(other)
        if not isinstance(other, Tensor):
            return make(self.data * other, (self,), lambda g: (g * other,))
        self._broadcast(other)
        xp, x, y = self.xp, self, other

        def backward(g):
            gx = unbroadcast(xp, g * y.data, x.shape) if x.requires_grad else None
            gy = unbroadcast(xp, g * x.data, y.shape) if y.requires_grad else None
            return gx, gy
        return make(x.data * y.data, (x, y), backward)

    __rmul__ = __mul__

    def __truediv__(self, other):
        other = self._other(other)
        if not isinstance(other, Tensor):  # x / 0 is inf or nan, as in NumPy: no ZeroDivisionError
            return make(self.data / other, (self,), lambda g: (g / other,))
        return self * other ** -1

    def __rtruediv__(self, other):
        return self ** -1 * other

    def __pow__(self, exponent):
        if not isinstance(exponent, (int, float)):
            raise TypeError(f"exponent must be a Python number, got {type(exponent).__name__}")
        x = self
        return make(x.data ** exponent, (x,), lambda g: (g * exponent * x.data ** (exponent - 1),))

    def __matmul__(self, other):
        other = as_tensor(other, "other")
        shapes.matmul_shape("other", self.shape, other.shape, max(self.dtype.itemsize, other.dtype.itemsize))
        xp, a, b = self.xp, self, other

        def backward(g):
            ga = unbroadcast(xp, xp.matmul(g, xp.swapaxes(b.data, -1, -2)), a.shape) if a.requires_grad else None
            gb = unbroadcast(xp, xp.matmul(xp.swapaxes(a.data, -1, -2), g), b.shape) if b.requires_grad else None
            return ga, gb
        return make(xp.matmul(a.data, b.data), (a, b), backward)

    # ------------------------------------------------------------------ elementwise functions
    def exp(self):
        out = self.xp.exp(self.data)
        return make(out, (self,), lambda g: (g * out,))

    def log(self):
        x = self
        return make(self.xp.log(x.data), (x,), lambda g: (g / x.data,))

    def _activation(self, name):
        """``name(x)``; its gradient from the output (one launch each way on the GPU)."""
        xp = self.xp
        out = xp.activation(self.data, name)
        return make(out, (self,), lambda g: (xp.activation_grad(g, out, name),))

    def tanh(self):
        return self._activation("tanh")

    def sigmoid(self):
        return self._activation("sigmoid")

    def relu(self):
        return self._activation("relu")

    def abs(self):
        xp, x = self.xp, self
        return make(xp.abs(x.data), (x,), lambda g: (g * xp.sign(x.data),))

    __abs__ = abs

    # ------------------------------------------------------------------ reductions
    def sum(self, axis=None, keepdims=False):
        xp, shape = self.xp, self.shape
        axes = shapes.axes("axis", axis, self.ndim)
        keepdims = shapes.flag("keepdims", keepdims)

        def backward(g):
            if not keepdims:
                g = g.reshape(tuple(1 if i in axes else s for i, s in enumerate(shape)))
            return (xp.broadcast_to(g, shape).astype(g.dtype),)
        return make(xp.asarray(xp.sum(self.data, axis=axes, keepdims=keepdims)), (self,), backward)

    def mean(self, axis=None, keepdims=False):
        axes = shapes.axes("axis", axis, self.ndim)
        count = int(np.prod([self.shape[a] for a in axes])) if axes else 1
        return self.sum(axes, keepdims) * (1.0 / max(count, 1))

    # ------------------------------------------------------------------ shape
    def reshape(self, *shape):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        shape = shapes.reshape_shape("shape", shape, self.size)
        src = self.shape
        return make(self.data.reshape(shape), (self,), lambda g: (g.reshape(src),))

    view = reshape

    def flatten(self, start_dim=1):
        start_dim = shapes.axis("start_dim", start_dim, self.ndim)
        return self.reshape(self.shape[:start_dim] + (int(np.prod(self.shape[start_dim:])),))  # -1: not if empty

    def transpose(self, *axes):
        axes = axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
        axes = shapes.axes("axes", tuple(axes), self.ndim) if axes else tuple(reversed(range(self.ndim)))
        if len(axes) != self.ndim:
            raise ValueError(f"axes must be a permutation of the {self.ndim} axes, got {axes}")
        inverse = tuple(np.argsort(axes))
        xp = self.xp
        return make(xp.transpose(self.data, axes), (self,), lambda g: (xp.transpose(g, inverse),))

    permute = transpose

    @property
    def T(self):
        return self.transpose()

    def __getitem__(self, index):
        index = index.data if isinstance(index, Tensor) else index
        xp, shape, dtype = self.xp, self.shape, self.dtype

        def backward(g):
            full = xp.zeros(shape, dtype=dtype)
            xp.add_at(full, index, g)
            return (full,)
        return make(self.data[index], (self,), backward)


def _freed(g):
    raise RuntimeError("backward through a graph a second time: its intermediate results were freed by "
                       "the first backward(); recompute the forward pass")

