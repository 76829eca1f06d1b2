"""The public ops, with PyTorch's names and semantics (``torch.nn.functional``).

Each op: turn its arguments into Tensors, validate them through ``fastconv.shapes`` (before any work),
plan its kernels through ``backends.plan``, compute, and record its backward beside the forward. Inputs may be
Tensors or arrays; the graph is recorded when an input requires grad. 1-D ops run as 2-D ops on a unit
height, and 3-D ops run the same kernels on specs with a depth (``backends.depth``), so every kernel exists
once.
"""
from __future__ import annotations

import numpy as np

from . import fusion, shapes
from .backends import depth, plan, separable
from .random import generator
from .tensor import Tensor, as_tensor, is_grad_enabled, make

__all__ = [
    "conv1d", "conv2d", "conv_transpose1d", "conv_transpose2d",
    "max_pool1d", "max_pool2d", "avg_pool1d", "avg_pool2d", "lp_pool1d", "lp_pool2d",
    "max_unpool1d", "max_unpool2d", "adaptive_avg_pool1d", "adaptive_avg_pool2d", "interpolate",
    "conv3d", "conv_transpose3d", "max_pool3d", "avg_pool3d", "lp_pool3d", "max_unpool3d", "adaptive_avg_pool3d",
    "linear", "relu", "tanh", "sigmoid", "flatten", "reshape", "softmax", "log_softmax",
    "cross_entropy", "nll_loss", "mse_loss", "dropout",
    "conv1d_local", "conv2d_local", "conv1d_tiled", "conv2d_tiled", "separable_conv2d",
]


# ------------------------------------------------------------------------------- helpers
def _tensors(**named):
    """Wrap arrays as Tensors and check they share one device; ``bias=None`` passes through."""
    out, device = [], None
    for name, value in named.items():
        if value is None and name == "bias":  # the one optional array argument
            out.append(None)
            continue
        t = as_tensor(value, name)
        if device is None:
            device = t.device
        elif t.device != device:
            raise ValueError(f"{name} is on {t.device} but the input is on {device}: move it with .to()")
        out.append(t)
    return out


def _floats(**tensors):
    shapes.check_float(**{k: (None if t is None else t.dtype) for k, t in tensors.items()})


def _as4(array, shape4):
    """The 4-D, C-contiguous array a kernel wants (a view for contiguous input)."""
    array = array.reshape(shape4)
    return array if array.flags.c_contiguous else array.copy()


# --------------------------------------------------------------------- kernel-backed ops
# Each op: its spec (validation, before any work), the plans of its kernels (forward and gradients
# together, see ``backends.plan``), the forward kernel, and the gradient kernels in ``backward``.
def _planned(label, spec, x, backend, forward, **gradients):
    """The plans of an op's ``forward`` kernel and of the gradient kernels it will need (``gradients``:
    kernel name -> the tensor whose gradient it computes), for ``x``'s dtype and device."""
    needed = [op for op, t in gradients.items() if is_grad_enabled() and t is not None and t.requires_grad]
    return plan.layer(label, [forward] + needed, spec, x.dtype, x.device, backend)


def _grad(t, compute):
    """``compute()`` when ``t`` needs a gradient, else None (gradients nobody asked for are not computed)."""
    return compute() if t is not None and t.requires_grad else None


def _result(y, user_shape, parents, backward):
    parents = tuple(p for p in parents if p is not None)
    return make(y.reshape(user_shape), parents, backward)


def _conv(input, weight, bias, dims, stride, padding, dilation, groups, backend, activation):
    x, w, b = _tensors(input=input, weight=weight, bias=bias)
    _floats(input=x, weight=w, bias=b)
    spec = shapes.conv_spec(x.shape, w.shape, None if b is None else b.shape,
                            stride, padding, dilation, groups, dims)
    act = fusion.check_activation(activation)
    run = _planned(f"conv{dims}d", spec, x, backend, "conv2d", conv2d_grad_input=x, conv2d_grad_weight=w)
    x4, w4 = _as4(x.data, spec.x_shape), _as4(w.data, spec.w_shape)
    y = fusion.conv2d(run, x.xp, x4, w4, None if b is None else b.data, spec, act)

    def backward(g):
        need = tuple(t is not None and t.requires_grad for t in (x, w, b))
        gx, gw, gb = fusion.conv2d_grads(run, x.xp, _as4(g, spec.y_shape), x4, w4, y, spec, act, need)
        return (None if gx is None else gx.reshape(x.shape)), (None if gw is None else gw.reshape(w.shape)), gb
    return _result(y, spec.user_shape(spec.y_shape), (x, w, b), backward)


def conv1d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, backend="auto",
           activation=None):
    """1-D cross-correlation of ``input (N, C_in, L)`` with ``weight (C_out, C_in/groups, K)``.

    ``activation``: ``"relu"``, ``"tanh"`` or ``"sigmoid"`` applied to the output in the same op (one
    kernel on the GPU; the same numbers as calling it afterwards).
    """
    return _conv(input, weight, bias, 1, stride, padding, dilation, groups, backend, activation)


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, backend="auto",
           activation=None):
    """2-D cross-correlation of ``input (N, C_in, H, W)`` with ``weight (C_out, C_in/groups, KH, KW)``.

    ``padding``: an int, a pair, ``"valid"`` (none) or ``"same"`` (output size = input size, stride 1).
    ``backend``: ``"auto"``, a backend (``"cython"``) or one of its algorithms (``"cython:blocked"``).
    ``activation``: as in :func:`conv1d`.
    """
    return _conv(input, weight, bias, 2, stride, padding, dilation, groups, backend, activation)


def _conv_transpose(input, weight, bias, dims, stride, padding, output_padding, groups, dilation, backend):
    x, w, b = _tensors(input=input, weight=weight, bias=bias)
    _floats(input=x, weight=w, bias=b)
    spec = shapes.conv_transpose_spec(x.shape, w.shape, None if b is None else b.shape, stride, padding,
                                      output_padding, groups, dilation, dims)
    # ``spec`` is the convolution this op is the adjoint of: its output has x's shape, its input y's.
    run = _planned(f"conv_transpose{dims}d", spec, x, backend, "conv2d_grad_input", conv2d=x,
                   conv2d_grad_weight=w)
    x4, w4 = _as4(x.data, spec.y_shape), _as4(w.data, spec.w_shape)
    y = run.conv2d_grad_input(x4, w4, spec)
    if b is not None:
        y += b.data.reshape((1, -1) + (1,) * (y.ndim - 2))

    def backward(g):
        g4 = _as4(g, spec.x_shape)
        with depth.one_backward():  # a volume's two gradients fold g4 once
            return (_grad(x, lambda: run.conv2d(g4, w4, None, spec).reshape(x.shape)),
                    _grad(w, lambda: run.conv2d_grad_weight(x4, g4, spec).reshape(w.shape)),
                    _grad(b, lambda: fusion.bias_grad(x.xp, g4)))
    return _result(y, spec.user_shape(spec.x_shape), (x, w, b), backward)


def conv_transpose1d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1, backend="auto"):
    """Transposed 1-D convolution (the adjoint of conv1d); ``weight (C_in, C_out/groups, K)``."""
    return _conv_transpose(input, weight, bias, 1, stride, padding, output_padding, groups, dilation, backend)


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1, backend="auto"):
    """Transposed 2-D convolution (the adjoint of conv2d); ``weight (C_in, C_out/groups, KH, KW)``."""
    return _conv_transpose(input, weight, bias, 2, stride, padding, output_padding, groups, dilation, backend)


# -------------------------------------------------------------------------------- pooling
def _pool_input(input, dims, **spec_args):
    (x,) = _tensors(input=input)
    _floats(input=x)
    spec = shapes.pool_spec(x.shape, dims=dims, **spec_args)
    return x, spec, _as4(x.data, spec.x_shape)


def _pool(kind, input, dims, backend, activation, indices=False, **spec_args):
    """``kind`` ("max", "avg") pooling of ``activation(input)``: ``(output, indices or None)``;
    ``indices``: whether the caller returns the max pool's."""
    x, spec, x4 = _pool_input(input, dims, **spec_args)
    act = fusion.check_activation(activation)
    op = f"{kind}_pool2d"
    run = _planned(f"{kind}_pool{dims}d", spec, x, backend, op, **{f"{op}_grad": x})
    y, saved = fusion.pool(run, x.xp, kind, x4, spec, act, indices)
    y, where = y if kind == "max" else (y, None)

    def backward(g):
        gx = fusion.pool_grad(run, x.xp, kind, _as4(g, spec.y_shape), where, spec, act, saved, indices)
        return (gx.reshape(x.shape),)
    return _result(y, spec.user_shape(spec.y_shape), (x,), backward), where


def _max_pool(input, dims, kernel_size, stride, padding, dilation, ceil_mode, return_indices, backend,
              activation):
    return_indices = shapes.flag("return_indices", return_indices)
    out, indices = _pool("max", input, dims, backend, activation, return_indices, kernel_size=kernel_size,
                         stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode)
    if return_indices:
        return out, Tensor(indices.reshape(out.shape))
    return out


def max_pool1d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False, backend="auto", activation=None):
    """Max over sliding windows of ``(N, C, L)``; with ``return_indices`` also the argmax positions.

    ``activation``: ``"relu"``, ``"tanh"`` or ``"sigmoid"`` applied to the input in the same op (one
    kernel on the GPU; the same numbers as calling it first).
    """
    return _max_pool(input, 1, kernel_size, stride, padding, dilation, ceil_mode, return_indices, backend,
                     activation)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False, backend="auto", activation=None):
    """Max over sliding windows of ``(N, C, H, W)``; indices are flat (``row * W + col``) per plane.
    ``activation``: as in :func:`max_pool1d`."""
    return _max_pool(input, 2, kernel_size, stride, padding, dilation, ceil_mode, return_indices, backend,
                     activation)


def _avg_pool(input, dims, kernel_size, stride, padding, ceil_mode, count_include_pad, backend, activation):
    return _pool("avg", input, dims, backend, activation, kernel_size=kernel_size, stride=stride,
                 padding=padding, ceil_mode=ceil_mode, count_include_pad=count_include_pad)[0]


def avg_pool1d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               backend="auto", activation=None):
    """Mean over sliding windows of ``(N, C, L)``; ``activation`` as in :func:`max_pool1d`."""
    return _avg_pool(input, 1, kernel_size, stride, padding, ceil_mode, count_include_pad, backend, activation)


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               backend="auto", activation=None):
    """Mean over sliding windows of ``(N, C, H, W)``; ``count_include_pad`` counts zero padding;
    ``activation`` as in :func:`max_pool1d`."""
    return _avg_pool(input, 2, kernel_size, stride, padding, ceil_mode, count_include_pad, backend, activation)


def _lp_pool(input, dims, norm_type, kernel_size, stride, ceil_mode, backend):
    norm_type = shapes.real("norm_type", norm_type, 0, None, low_open=True)
    x = _float_input(input)
    spec = shapes.pool_spec(x.shape, kernel_size, stride, 0, 1, ceil_mode, dims=dims)  # before x ** p
    plan.plan("avg_pool2d", spec, x.dtype, x.device, backend)  # so is a bad backend
    # As in PyTorch: the p-th root of the window sum of x**p (an average times the window size).
    pooled = _avg_pool(x ** norm_type, dims, kernel_size, stride, 0, ceil_mode, True, backend, None)
    return (pooled * float(spec.kd * spec.kh * spec.kw)) ** (1.0 / norm_type)


def lp_pool1d(input, norm_type, kernel_size, stride=None, ceil_mode=False, backend="auto"):
    """Power-average pooling ``(sum x**p)**(1/p)`` over windows; ``norm_type=2`` is L2 pooling."""
    return _lp_pool(input, 1, norm_type, kernel_size, stride, ceil_mode, backend)


def lp_pool2d(input, norm_type, kernel_size, stride=None, ceil_mode=False, backend="auto"):
    """Power-average pooling ``(sum x**p)**(1/p)`` over windows; ``norm_type=2`` is L2 pooling."""
    return _lp_pool(input, 2, norm_type, kernel_size, stride, ceil_mode, backend)


def _max_unpool(input, indices, dims, kernel_size, stride, padding, output_size, backend):
    x, idx = _tensors(input=input, indices=indices)
    _floats(input=x)
    kernel = shapes.ints("kernel_size", kernel_size, dims, 1)
    stride = kernel if stride is None else shapes.ints("stride", stride, dims, 1)
    padding = shapes.ints("padding", padding, dims, 0)
    if x.ndim != dims + 2:
        raise ValueError(f"input must be {dims + 2}-D, got shape {x.shape}")
    if idx.shape != x.shape:
        raise ValueError(f"indices must have the input's shape {x.shape}, got {idx.shape}")
    if idx.dtype.kind not in "iu":
        raise TypeError(f"indices must be an integer array (from max_pool with return_indices), got {idx.dtype}")
    out = shapes.unpool_output_size(x.shape, kernel, stride, padding, output_size, dims)
    out_hw = shapes.as_4d((0, 0) + out, dims)[2:]  # a volume's planes stacked: indices are flat either way
    if idx.size and (int(idx.numpy().min()) < 0 or int(idx.numpy().max()) >= out_hw[0] * out_hw[1]):
        raise ValueError(f"indices must lie in [0, {out_hw[0] * out_hw[1]}) for output size {out}")
    shape4 = shapes.as_4d(x.shape, dims)
    x4, i4 = _as4(x.data, shape4), _as4(idx.data, shape4)
    run = _planned(f"max_unpool{dims}d", None, x, backend, "max_unpool2d", max_unpool2d_grad=x)
    y = run.max_unpool2d(x4, i4, out_hw)

    def backward(g):
        return (run.max_unpool2d_grad(_as4(g, (x.shape[0], x.shape[1]) + out_hw), i4).reshape(x.shape),)
    return _result(y, x.shape[:2] + out, (x,), backward)


def max_unpool1d(input, indices, kernel_size, stride=None, padding=0, output_size=None, backend="auto"):
    """Inverse of max_pool1d: each value goes back to its argmax position, zeros elsewhere."""
    return _max_unpool(input, indices, 1, kernel_size, stride, padding, output_size, backend)


def max_unpool2d(input, indices, kernel_size, stride=None, padding=0, output_size=None, backend="auto"):
    """Inverse of max_pool2d: each value goes back to its argmax position, zeros elsewhere."""
    return _max_unpool(input, indices, 2, kernel_size, stride, padding, output_size, backend)


# ------------------------------------------------------------ resampling (linear per axis)
def _resample(x, matrices):
    """Apply one (out, in) matrix per spatial axis: ``y = A_h @ x @ A_w.T`` (a linear map, so its
    backward is the transposed map). Interpolation and adaptive pooling are both of this form."""
    xp = x.xp
    mats = [m.astype(x.dtype) if x.device == "cpu" else xp.asarray(m.astype(x.dtype)) for m in matrices]
    if len(mats) == 3:  # the depth's matrix on (N, C, D, H*W), then the planes' as in 2-D
        ad, ah, aw = mats
        n, c, d, h, w = x.shape

        def forward(a):
            a = xp.matmul(ad, a.reshape(n, c, d, h * w)).reshape(n, c, ad.shape[0], h, w)
            return xp.matmul(xp.matmul(ah, a), aw.T)

        def backward(g):
            g = xp.matmul(xp.matmul(ah.T, g), aw)
            return (xp.matmul(ad.T, g.reshape(n, c, ad.shape[0], h * w)).reshape(x.shape),)
        return make(forward(x.data), (x,), backward)
    if len(mats) == 1:
        (aw,) = mats
        return make(xp.matmul(x.data, aw.T), (x,), lambda g: (xp.matmul(g, aw),))
    ah, aw = mats
    return make(xp.matmul(xp.matmul(ah, x.data), aw.T), (x,),
                lambda g: (xp.matmul(xp.matmul(ah.T, g), aw),))


def _adaptive_matrix(size, out):
    """Row k averages input cells ``[floor(k*size/out), ceil((k+1)*size/out))``, as in PyTorch."""
    m = np.zeros((out, size))
    for k in range(out):  # one row per output cell (a handful), not per pixel
        start, end = (k * size) // out, -(-((k + 1) * size) // out)
        m[k, start:end] = 1.0 / (end - start)
    return m


def _adaptive_avg_pool(input, output_size, dims):
    (x,) = _tensors(input=input)
    _floats(input=x)
    out = shapes.adaptive_size(x.shape, output_size, dims)
    return _resample(x, [_adaptive_matrix(s, o) for s, o in zip(x.shape[2:], out)])


def adaptive_avg_pool1d(input, output_size):
    """Average pooling to a fixed output length (``output_size=1`` is global average pooling)."""
    return _adaptive_avg_pool(input, output_size, 1)


def adaptive_avg_pool2d(input, output_size):
    """Average pooling to a fixed output size (``output_size=1`` is global average pooling)."""
    return _adaptive_avg_pool(input, output_size, 2)


def _interp_matrix(size, out, scale, mode, align_corners):
    """(out, size) matrix of nearest or linear interpolation along one axis, PyTorch's coordinates."""
    dst = np.arange(out, dtype=np.float64)
    if out == size:  # PyTorch copies an axis whose size does not change, whatever scale_factor says
        return np.eye(size)
    m = np.zeros((out, size))
    if mode == "nearest":
        # PyTorch's rule: exact doubling is an index map, otherwise floor(dst * scale) in float32
        if out == 2 * size:
            src = np.arange(out) // 2
        else:
            src = np.floor(dst.astype(np.float32) * np.float32(scale)).astype(np.int64)
        src = np.minimum(src, size - 1)
        m[np.arange(out), src] = 1.0
        return m
    if align_corners:
        src = dst * ((size - 1) / (out - 1)) if out > 1 else np.zeros(out)
    else:
        src = np.maximum((dst + 0.5) * scale - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), size - 1)
    hi = np.minimum(lo + 1, size - 1)
    frac = src - lo
    np.add.at(m, (np.arange(out), lo), 1.0 - frac)
    np.add.at(m, (np.arange(out), hi), frac)
    return m


def interpolate(input, size=None, scale_factor=None, mode="nearest", align_corners=None):
    """Resize ``(N, C, L)``, ``(N, C, H, W)`` or ``(N, C, D, H, W)``: modes ``nearest``, ``linear`` (1-D),
    ``bilinear`` (2-D), ``trilinear`` (3-D)."""
    (x,) = _tensors(input=input)
    _floats(input=x)
    out, scales = shapes.interpolate_size(x.shape, size, scale_factor, mode, align_corners)
    in_sizes = x.shape[2:]
    return _resample(x, [_interp_matrix(s, o, sc, mode, bool(align_corners))
                         for s, o, sc in zip(in_sizes, out, scales)])


# ------------------------------------------------------------------------- volumes (3-D)
def conv3d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, backend="auto",
           activation=None):
    """3-D cross-correlation of ``input (N, C_in, D, H, W)`` with ``weight (C_out, C_in/groups, KD, KH,
    KW)``; every argument as in :func:`conv2d`, per axis (depth first)."""
    return _conv(input, weight, bias, 3, stride, padding, dilation, groups, backend, activation)


def conv_transpose3d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1, backend="auto"):
    """Transposed 3-D convolution (the adjoint of conv3d); ``weight (C_in, C_out/groups, KD, KH, KW)``."""
    return _conv_transpose(input, weight, bias, 3, stride, padding, output_padding, groups, dilation, backend)


def max_pool3d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False, backend="auto", activation=None):
    """Max over sliding windows of ``(N, C, D, H, W)``; indices are flat (``(depth * H + row) * W + col``)
    per volume, as PyTorch's. ``activation``: as in :func:`max_pool1d`."""
    return _max_pool(input, 3, kernel_size, stride, padding, dilation, ceil_mode, return_indices, backend,
                     activation)


def avg_pool3d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               backend="auto", activation=None):
    """Mean over sliding windows of ``(N, C, D, H, W)``; ``count_include_pad`` counts zero padding;
    ``activation`` as in :func:`max_pool1d`."""
    return _avg_pool(input, 3, kernel_size, stride, padding, ceil_mode, count_include_pad, backend, activation)


def lp_pool3d(input, norm_type, kernel_size, stride=None, ceil_mode=False, backend="auto"):
    """Power-average pooling ``(sum x**p)**(1/p)`` over windows of ``(N, C, D, H, W)``."""
    return _lp_pool(input, 3, norm_type, kernel_size, stride, ceil_mode, backend)


def max_unpool3d(input, indices, kernel_size, stride=None, padding=0, output_size=None, backend="auto"):
    """Inverse of max_pool3d: each value goes back to its argmax position, zeros elsewhere."""
    return _max_unpool(input, indices, 3, kernel_size, stride, padding, output_size, backend)


def adaptive_avg_pool3d(input, output_size):
    """Average pooling to a fixed output size (``output_size=1`` is global average pooling)."""
    return _adaptive_avg_pool(input, output_size, 3)


# ------------------------------------------------------------------ layers' glue
def linear(input, weight, bias=None, activation=None):
    """``input @ weight.T + bias`` with ``weight (out_features, in_features)``; ``activation`` (``"relu"``,
    ``"tanh"``, ``"sigmoid"``) is applied in the same op (one GEMM on the GPU)."""
    x, w, b = _tensors(input=input, weight=weight, bias=bias)
    _floats(input=x, weight=w, bias=b)
    if w.ndim != 2 or x.ndim < 1 or x.shape[-1] != w.shape[1]:
        raise ValueError(f"linear: input's last dim ({x.shape[-1] if x.ndim else None}) must equal "
                         f"weight.shape[1] of a 2-D weight, got input {x.shape} and weight {w.shape}")
    if b is not None and b.shape != (w.shape[0],):
        raise ValueError(f"bias must have shape ({w.shape[0]},), got {b.shape}")
    shapes.check_memory("the output", x.shape[:-1] + w.shape[:1], "the shapes of input and weight", x.dtype.itemsize)
    act = fusion.check_activation(activation)
    xp = x.xp
    x2 = x.data.reshape(-1, w.shape[1])
    y = xp.linear(x2, w.data, None if b is None else b.data, act)

    def backward(g):
        need = (x.requires_grad, w.requires_grad, b is not None and b.requires_grad)
        gx, gw, gb = xp.linear_grad(g.reshape(-1, w.shape[0]), x2, w.data, y, act, need)
        return (None if gx is None else gx.reshape(x.shape)), gw, gb
    return make(y.reshape(x.shape[:-1] + (w.shape[0],)), (x, w) + ((b,) if b is not None else ()), backward)


def _float_input(input):
    (x,) = _tensors(input=input)
    _floats(input=x)
    return x


def relu(input):
    return _float_input(input).relu()


def tanh(input):
    return _float_input(input).tanh()


def sigmoid(input):
    return _float_input(input).sigmoid()


def flatten(input, start_dim=1):
    return as_tensor(input).flatten(start_dim)


def reshape(input, shape):
    return as_tensor(input).reshape(shape)


def log_softmax(input, dim=-1):
    """``x - logsumexp(x)`` along ``dim``, computed stably."""
    x = _float_input(input)
    dim = shapes.axis("dim", dim, x.ndim)
    xp = x.xp
    out = xp.log_softmax(x.data, dim)
    return make(out, (x,), lambda g: (xp.log_softmax_grad(g, out, dim),))


def softmax(input, dim=-1):
    return log_softmax(input, dim).exp()


def _targets(target, n, classes):
    t = as_tensor(target, "target")
    if t.dtype.kind not in "iu":
        raise TypeError(f"target must hold integer class labels, got dtype {t.dtype}")
    if t.shape != (n,):
        raise ValueError(f"target must have shape ({n},), got {t.shape}")
    labels = t.numpy()
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(f"target labels must lie in [0, {classes}), got values from {labels.min()} to {labels.max()}")
    return t


def _check_reduction(reduction):
    shapes.choice("reduction", reduction, ("mean", "sum", "none"))


def _loss_args(input, target, reduction):
    """Validated ``(input, target)`` of a classification loss: float (N, classes) and labels in range."""
    x = _float_input(input)
    if x.ndim != 2:
        raise ValueError(f"input must be 2-D (N, classes), got shape {x.shape}")
    _check_reduction(reduction)
    return x, _targets(target, *x.shape)


def nll_loss(input, target, reduction="mean"):
    """Negative log-likelihood of integer ``target`` under log-probabilities ``input (N, classes)``."""
    logp, t = _loss_args(input, target, reduction)
    xp = logp.xp
    picked = xp.take_along_axis(logp.data, t.data.reshape(-1, 1).astype(np.int64), axis=1)[:, 0]
    n = logp.shape[0]
    scale = {"mean": 1.0 / max(n, 1), "sum": 1.0, "none": None}[reduction]
    loss = -picked if scale is None else -xp.sum(picked) * scale

    def backward(g):
        full = xp.zeros(logp.shape, dtype=logp.dtype)
        rows = -(g if scale is None else g * scale) * xp.ones((n,), dtype=logp.dtype)
        xp.put_along_axis(full, t.data.reshape(-1, 1).astype(np.int64), rows.reshape(-1, 1), axis=1)
        return (full,)
    return make(xp.asarray(loss, dtype=logp.dtype), (logp,), backward)


def cross_entropy(input, target, reduction="mean"):
    """Softmax cross-entropy of ``logits (N, classes)`` against integer labels ``target (N,)``: log-softmax
    and NLL as one op (one kernel each way on the GPU)."""
    x, t = _loss_args(input, target, reduction)  # validate before any work
    xp = x.xp
    loss, logp = xp.cross_entropy(x.data, t.data, reduction)
    return make(loss, (x,), lambda g: (xp.cross_entropy_grad(g, logp, t.data, reduction),))


def mse_loss(input, target, reduction="mean"):
    """Mean (or summed) squared error; shapes must match."""
    x, y = _tensors(input=input, target=target)
    _floats(input=x, target=y)
    if x.shape != y.shape:
        raise ValueError(f"input and target must have the same shape, got {x.shape} and {y.shape}")
    _check_reduction(reduction)
    sq = (x - y) ** 2
    return {"mean": lambda: sq.mean(), "sum": lambda: sq.sum(), "none": lambda: sq}[reduction]()


def dropout(input, p=0.5, training=True):
    """Zero each element with probability ``p`` and scale the rest by ``1/(1-p)`` (training only)."""
    p, training = shapes.real("p", p, 0, 1), shapes.flag("training", training)
    x = _float_input(input)
    if not training or p == 0.0:
        return x
    keep = (generator().random(x.shape) >= p).astype(x.dtype) * (1.0 / (1.0 - p) if p < 1 else 0.0)
    if x.device == "cuda":
        keep = x.xp.asarray(keep)
    return make(x.data * keep, (x,), lambda g: (g * keep,))



# ------------------------------------------------------------ tiled and locally-connected
def _tiled(input, weight, bias, dims, stride, padding, dilation, groups, tiles, local, backend):
    x, w, b = _tensors(input=input, weight=weight, bias=bias)
    _floats(input=x, weight=w, bias=b)
    spec = shapes.tiled_spec(x.shape, w.shape, None if b is None else b.shape, stride, padding, dilation,
                             groups, dims, tiles, local)
    run = _planned(f"conv{dims}d_{'local' if local else 'tiled'}", spec, x, backend, "tiled_conv2d",
                   tiled_conv2d_grad_input=x, tiled_conv2d_grad_weight=w)
    x4, w6 = _as4(x.data, spec.x_shape), _as4(w.data, spec.w_shape)
    b3 = None if b is None else _as4(b.data, (spec.c_out, 1, 1) if b.ndim == 1 else (spec.c_out, spec.oh, spec.ow))
    y = run.tiled_conv2d(x4, w6, b3, spec)

    def backward(g):
        g4 = _as4(g, spec.y_shape)
        return (_grad(x, lambda: run.tiled_conv2d_grad_input(g4, w6, spec).reshape(x.shape)),
                _grad(w, lambda: run.tiled_conv2d_grad_weight(g4, x4, spec).reshape(w.shape)),
                _grad(b, lambda: (fusion.bias_grad(x.xp, g4) if b.ndim == 1 else x.xp.sum(g4, axis=0)).reshape(b.shape)))
    return _result(y, spec.user_shape(spec.y_shape), (x, w, b), backward)


def conv1d_local(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, backend="auto"):
    """Locally-connected 1-D layer: a convolution whose every output position has its own kernel.

    ``input (N, C_in, L)``, ``weight (OL, C_out, C_in/groups, K)`` with ``OL`` the output length;
    ``bias`` ``(C_out,)`` or one per output position, ``(C_out, OL)``.
    """
    return _tiled(input, weight, bias, 1, stride, padding, dilation, groups, None, True, backend)


def conv2d_local(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, backend="auto"):
    """Locally-connected 2-D layer (unshared convolution): output ``(oy, ox)`` uses its own kernel.

    ``input (N, C_in, H, W)``, ``weight (OH, OW, C_out, C_in/groups, KH, KW)`` with ``(OH, OW)`` the
    output size (``weight[oy, ox]`` is the kernel of output ``(oy, ox)``); ``bias`` ``(C_out,)`` or one per
    output position, ``(C_out, OH, OW)``. Stride, padding (ints, pairs, ``"valid"``, ``"same"``),
    dilation and groups as in :func:`conv2d`. It is :func:`conv2d_tiled` with tiles the output size.
    """
    return _tiled(input, weight, bias, 2, stride, padding, dilation, groups, None, True, backend)


def conv1d_tiled(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, tiles=None,
                 backend="auto"):
    """Tiled 1-D convolution: ``T`` kernels used in turn, output ``ox`` with kernel ``ox % T``.

    ``weight (T, C_out, C_in/groups, K)``; ``T`` (``tiles``, if given, must match) divides the output
    length. ``bias`` ``(C_out,)`` or ``(C_out, OL)``.
    """
    return _tiled(input, weight, bias, 1, stride, padding, dilation, groups, tiles, False, backend)


def conv2d_tiled(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, tiles=None,
                 backend="auto"):
    """Tiled 2-D convolution (Le et al., 2010): output ``(oy, ox)`` uses kernel ``(oy % TH, ox % TW)``.

    ``weight (TH, TW, C_out, C_in/groups, KH, KW)``; the tiles ``(TH, TW)`` (``tiles``, if given, must
    match) divide the output size. Tiles ``(1, 1)`` is :func:`conv2d`; tiles equal to the output size is
    :func:`conv2d_local`. ``bias`` ``(C_out,)`` or ``(C_out, OH, OW)``.
    """
    return _tiled(input, weight, bias, 2, stride, padding, dilation, groups, tiles, False, backend)


# ------------------------------------------------------------------------------ separable kernels
def separable_conv2d(input, row_kernels, col_kernels, bias=None, stride=1, padding=0, dilation=1, groups=1,
                     backend="auto"):
    """2-D convolution with the kernel ``w[o, c, i, j] = col_kernels[o, c, i] * row_kernels[o, c, j]``, run
    as a column pass and a row pass (``KH + KW`` multiply-adds per output and channel pair, not ``KH * KW``).

    ``row_kernels (C_out, C_in/groups, KW)``, ``col_kernels (C_out, C_in/groups, KH)``; with a leading rank
    ``R`` (``(R, C_out, C_in/groups, K)``, as ``fc.separate`` gives them) the kernel is the sum of ``R``
    such products. Other arguments as in :func:`conv2d`. The passes are planned convolutions, the same
    path the planner takes for rank-1 weights; the factors' gradients come from the full kernel's.
    """
    x, rows, cols, b = _tensors(input=input, row_kernels=row_kernels, col_kernels=col_kernels, bias=bias)
    _floats(input=x, row_kernels=rows, col_kernels=cols, bias=b)
    spec = shapes.separable_spec(x.shape, rows.shape, cols.shape, None if b is None else b.shape, stride, padding,
                                 dilation, groups)
    factors = (spec.c_out, spec.c_in // spec.groups)
    u, v = cols.data.reshape((-1,) + factors + (spec.kh,)), rows.data.reshape((-1,) + factors + (spec.kw,))
    first, second = separable.pass_specs(spec)
    layers = {s: _planned(f"separable_conv2d ({name})", s, x, backend, "conv2d", conv2d_grad_input=x)
              for s, name in ((first, "columns"), (second, "rows"))}

    def passes(op, pass_spec):
        return getattr(layers[pass_spec], op)
    x4 = _as4(x.data, spec.x_shape)
    y = separable.conv2d(x4, u[0], v[0], None if b is None else b.data, spec, passes)
    for r in range(1, len(u)):
        y += separable.conv2d(x4, u[r], v[r], None, spec, passes)
    # The factors' gradients come from the full kernel's: w = sum_r outer(u_r, v_r), so dL/du_r = gw v_r
    # and dL/dv_r = gw^T u_r, kernel by kernel.
    full = _planned("separable_conv2d (kernel)", spec, x, backend, "conv2d_grad_weight") \
        if is_grad_enabled() and (rows.requires_grad or cols.requires_grad) else None

    def backward(g):
        g4, xp = _as4(g, spec.y_shape), x.xp
        gw = None if full is None else full.conv2d_grad_weight(g4, x4, spec)
        gw = None if gw is None else gw.reshape((1,) + gw.shape)
        return (_grad(x, lambda: sum(separable.conv2d_grad_input(g4, u[r], v[r], spec, passes)
                                     for r in range(len(u))).reshape(x.shape)),
                _grad(rows, lambda: xp.matmul(gw.swapaxes(-1, -2), u.reshape(u.shape + (1,))).reshape(rows.shape)),
                _grad(cols, lambda: xp.matmul(gw, v.reshape(v.shape + (1,))).reshape(cols.shape)),
                _grad(b, lambda: fusion.bias_grad(xp, g4)))
    return _result(y, spec.y_shape, (x, rows, cols, b), backward)
