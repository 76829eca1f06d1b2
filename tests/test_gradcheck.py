"""Every op's backward against central finite differences in float64, independent of PyTorch.

For an op ``y = f(x1, x2, ...)`` and a fixed random ``r``, the gradient that backward sends to ``xi`` for
the output gradient ``r`` must equal the numerical derivative of ``<f(...), r>`` with respect to ``xi``.
Shapes are small (a few hundred elements); max-pooling inputs are permutations (no ties, gaps of 1), and
piecewise functions (relu, max) are evaluated away from their kinks, so the derivative exists.
"""
import numpy as np
import pytest

import fastconv as fc
import fastconv.functional as F

EPS = 1e-6
TOL = 1e-7  # relative to the gradient's scale; central differences err by ~eps^2 and ~1e-16 / eps


def _forward(fn, arrays):
    with fc.no_grad():
        return np.asarray(fn(*[fc.tensor(a) for a in arrays]).numpy(), dtype=np.float64)


def gradcheck(fn, arrays, what, eps=EPS, tol=TOL):
    """Analytic gradients of ``fn`` (fastconv) for every array argument against central differences."""
    arrays = [np.array(a, dtype=np.float64) for a in arrays]
    ts = [fc.tensor(a, requires_grad=True) for a in arrays]
    y = fn(*ts)
    r = np.random.default_rng(123).standard_normal(y.shape)
    y.backward(r)
    for i, (a, t) in enumerate(zip(arrays, ts)):
        assert t.grad is not None and t.grad.shape == a.shape, f"{what}: no gradient for argument {i}"
        numeric = np.empty_like(a)
        for idx in np.ndindex(a.shape):
            orig = a[idx]
            a[idx] = orig + eps
            plus = float(np.sum(_forward(fn, arrays) * r))
            a[idx] = orig - eps
            minus = float(np.sum(_forward(fn, arrays) * r))
            a[idx] = orig
            numeric[idx] = (plus - minus) / (2 * eps)
        scale = max(1.0, float(np.max(np.abs(numeric))) if numeric.size else 1.0)
        err = float(np.max(np.abs(t.grad - numeric))) if numeric.size else 0.0
        assert err <= tol * scale, f"{what}: gradient of argument {i} off by {err:.3g} (scale {scale:.3g})"


def _rng(seed=0):
    return np.random.default_rng(seed)


def _normal(*shape, seed=0):
    return _rng(seed).standard_normal(shape)


def _distinct(*shape, seed=0):
    """Values without ties (a shuffled 0..n-1, centred), so max pooling is differentiable."""
    n = int(np.prod(shape))
    return (_rng(seed).permutation(n).reshape(shape) - n / 2) * 0.25


# ------------------------------------------------------------------------------- convolution
CONV = [  # (dims, x shape, C_out, kernel, stride, padding, dilation, groups, bias)
    (1, (2, 2, 9), 3, 3, 1, 0, 1, 1, True),
    (1, (2, 2, 10), 2, 3, 3, 2, 2, 1, True),   # stride does not divide, dilation with stride
    (1, (1, 4, 7), 4, 2, 2, 1, 1, 2, False),   # groups
    (1, (1, 3, 8), 3, 4, 1, "same", 2, 3, True),  # depthwise, 'same' with an even dilated kernel
    (2, (2, 2, 5, 6), 2, (3, 2), (2, 1), (1, 0), (1, 2), 1, True),
    (2, (1, 4, 6, 5), 2, 2, 3, 1, 2, 2, True),
    (2, (1, 2, 5, 5), 3, 3, 1, "same", 1, 1, False),
]


@pytest.mark.parametrize("dims, xs, c_out, k, s, p, d, g, bias", CONV)
def test_conv(dims, xs, c_out, k, s, p, d, g, bias):
    kernel = (k,) * dims if isinstance(k, int) else k
    arrays = [_normal(*xs), _normal(c_out, xs[1] // g, *kernel, seed=1)] + ([_normal(c_out, seed=2)] if bias else [])
    op = getattr(F, f"conv{dims}d")
    gradcheck(lambda x, w, *b: op(x, w, *b, stride=s, padding=p, dilation=d, groups=g, backend="numpy"),
              arrays, f"conv{dims}d k={k} s={s} p={p} d={d} g={g}")


CONV_T = [  # (dims, x shape, C_out/groups, kernel, stride, padding, output_padding, dilation, groups, bias)
    (1, (2, 2, 4), 3, 3, 2, 1, 1, 1, 1, True),
    (1, (1, 2, 5), 2, 2, 1, 0, 1, 2, 2, True),  # output_padding from dilation
    (1, (1, 3, 3), 2, 3, 3, 2, 2, 2, 1, False),  # stride != dilation
    (2, (1, 2, 3, 4), 2, (2, 3), (2, 3), (0, 1), (1, 2), (1, 2), 1, True),
    (2, (2, 4, 3, 3), 1, 3, 2, 1, 0, 1, 4, True),  # depthwise
]


@pytest.mark.parametrize("dims, xs, cog, k, s, p, op_, d, g, bias", CONV_T)
def test_conv_transpose(dims, xs, cog, k, s, p, op_, d, g, bias):
    kernel = (k,) * dims if isinstance(k, int) else k
    arrays = [_normal(*xs), _normal(xs[1], cog, *kernel, seed=1)] + ([_normal(cog * g, seed=2)] if bias else [])
    fn = getattr(F, f"conv_transpose{dims}d")
    gradcheck(lambda x, w, *b: fn(x, w, *b, stride=s, padding=p, output_padding=op_, groups=g, dilation=d,
                                  backend="numpy"),
              arrays, f"conv_transpose{dims}d k={k} s={s} p={p} op={op_} d={d} g={g}")


# ----------------------------------------------------------------------------------- pooling
POOL = [  # (dims, x shape, kernel, stride, padding, dilation, ceil_mode)
    (1, (2, 2, 9), 3, 2, 1, 1, False),
    (1, (1, 2, 10), 3, 1, 1, 2, True),   # overlapping windows, dilation
    (1, (1, 1, 8), 4, 3, 2, 1, True),    # ceil_mode overhang
    (2, (1, 2, 7, 6), 3, 2, 1, 1, True),
    (2, (2, 1, 6, 7), (2, 3), (1, 2), (1, 0), (2, 1), False),
]


@pytest.mark.parametrize("dims, xs, k, s, p, d, ceil", POOL)
def test_max_pool(dims, xs, k, s, p, d, ceil):
    op = getattr(F, f"max_pool{dims}d")
    gradcheck(lambda x: op(x, k, s, p, d, ceil_mode=ceil, backend="numpy"), [_distinct(*xs)],
              f"max_pool{dims}d k={k} s={s} p={p} d={d} ceil={ceil}")


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("dims, xs, k, s, p, d, ceil", POOL)
def test_avg_pool(dims, xs, k, s, p, d, ceil, count_include_pad):
    op = getattr(F, f"avg_pool{dims}d")
    gradcheck(lambda x: op(x, k, s, p, ceil_mode=ceil, count_include_pad=count_include_pad, backend="numpy"),
              [_normal(*xs)], f"avg_pool{dims}d k={k} s={s} p={p} ceil={ceil} incl={count_include_pad}")


@pytest.mark.parametrize("norm", [2, 3, 1.5])
@pytest.mark.parametrize("dims, xs, k, s, ceil", [(1, (2, 2, 9), 3, 2, True), (2, (1, 2, 5, 6), 2, (1, 2), False)])
def test_lp_pool(dims, xs, k, s, ceil, norm):
    x = np.abs(_normal(*xs)) + 0.2  # p-th powers and roots are smooth away from 0
    op = getattr(F, f"lp_pool{dims}d")
    gradcheck(lambda t: op(t, norm, k, s, ceil_mode=ceil, backend="numpy"), [x], f"lp_pool{dims}d p={norm}")


UNPOOL = [  # (dims, pooled-from shape, kernel, stride, padding, output_size); windows do not overlap, so
    # indices are unique and the output is a differentiable function of independent values
    (1, (2, 2, 9), 2, 2, 0, None),
    (1, (1, 2, 11), 3, 3, 1, (11,)),
    (2, (1, 2, 6, 7), 2, (2, 3), 0, (6, 7)),
    (2, (1, 1, 5, 5), 2, 2, 1, (1, 1, 5, 5)),
]


@pytest.mark.parametrize("dims, zs, k, s, p, out", UNPOOL)
def test_max_unpool(dims, zs, k, s, p, out):
    with fc.no_grad():
        values, idx = getattr(F, f"max_pool{dims}d")(_distinct(*zs), k, s, p, return_indices=True, backend="numpy")
    op = getattr(F, f"max_unpool{dims}d")
    gradcheck(lambda v: op(v, idx, k, s, p, output_size=out, backend="numpy"), [_normal(*values.shape)],
              f"max_unpool{dims}d k={k} s={s} p={p} out={out}")


@pytest.mark.parametrize("xs, out", [((2, 2, 7), 3), ((1, 2, 5), 8), ((1, 2, 7, 5), (3, 2)), ((2, 1, 4, 6), 1)])
def test_adaptive_avg_pool(xs, out):
    op = getattr(F, f"adaptive_avg_pool{len(xs) - 2}d")
    gradcheck(lambda x: op(x, out), [_normal(*xs)], f"adaptive_avg_pool {xs} -> {out}")


INTERP = [  # (x shape, keyword arguments)
    ((2, 2, 5), dict(size=9, mode="nearest")),
    ((1, 2, 6), dict(scale_factor=0.5, mode="nearest")),
    ((1, 2, 5), dict(size=8, mode="linear")),
    ((1, 2, 5), dict(scale_factor=1.7, mode="linear", align_corners=True)),
    ((1, 2, 4, 5), dict(size=(7, 3), mode="bilinear")),
    ((1, 1, 4, 3), dict(scale_factor=(2.0, 1.5), mode="bilinear", align_corners=True)),
    ((1, 2, 4, 3), dict(scale_factor=2, mode="nearest")),
]


@pytest.mark.parametrize("xs, kwargs", INTERP)
def test_interpolate(xs, kwargs):
    gradcheck(lambda x: F.interpolate(x, **kwargs), [_normal(*xs)], f"interpolate {xs} {kwargs}")


# ------------------------------------------------------------------------- glue and losses
@pytest.mark.parametrize("xs, bias", [((4, 5), True), ((2, 3, 4), False), ((5,), True)])
def test_linear(xs, bias):
    arrays = [_normal(*xs), _normal(3, xs[-1], seed=1)] + ([_normal(3, seed=2)] if bias else [])
    gradcheck(F.linear, arrays, f"linear {xs}")


@pytest.mark.parametrize("name", ["tanh", "sigmoid", "relu"])
def test_activation(name):
    x = _normal(3, 4, 5)
    x = np.where(np.abs(x) < 0.01, 0.5, x)  # relu: away from its kink
    gradcheck(getattr(F, name), [x], name)


@pytest.mark.parametrize("dim", [-1, 0, 1])
@pytest.mark.parametrize("name", ["log_softmax", "softmax"])
def test_softmax(name, dim):
    gradcheck(lambda x: getattr(F, name)(x, dim), [3 * _normal(3, 4, 2)], f"{name} dim={dim}")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name", ["cross_entropy", "nll_loss"])
def test_classification_loss(name, reduction):
    target = _rng(5).integers(0, 4, 6)
    gradcheck(lambda x: getattr(F, name)(x, target, reduction=reduction), [2 * _normal(6, 4)],
              f"{name} {reduction}")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_loss(reduction):
    gradcheck(lambda a, b: F.mse_loss(a, b, reduction=reduction), [_normal(3, 4), _normal(3, 4, seed=1)],
              f"mse_loss {reduction}")


def test_tensor_expression():
    """Arithmetic, broadcasting, matmul, reductions and shape ops chained in one graph."""
    def fn(a, b, c):
        h = (a @ b).tanh() * c - (a.sum(axis=1, keepdims=True) / (abs(c) + 1.0)) ** 2
        return (h.exp().log() + h.transpose(1, 0).reshape(4, 3).T * 0.5).mean(axis=0) + h[1:, ::2].sum()
    gradcheck(fn, [_normal(3, 2), _normal(2, 4, seed=1), _normal(1, 4, seed=2)], "tensor expression")


def test_conv_net():
    """A small network (conv, pool, relu, flatten, linear, cross-entropy) end to end."""
    target = np.array([1, 0])

    def net(x, w1, w2, b2):
        h = F.max_pool2d(F.relu(F.conv2d(x, w1, padding=1, backend="numpy")), 2, backend="numpy")
        return F.cross_entropy(F.linear(F.flatten(h), w2, b2), target)
    x = _distinct(2, 1, 4, 4) * 0.37
    gradcheck(net, [x, _normal(2, 1, 3, 3, seed=1), _normal(3, 8, seed=2), _normal(3, seed=3)], "conv net")


def test_gradcheck_detects_a_wrong_gradient():
    """The check itself can fail: a backward that forgets the factor 2 of x**2 is caught."""
    from fastconv.tensor import make

    def square_wrong(x):
        return make(x.data ** 2, (x,), lambda g: (g * x.data,))
    with pytest.raises(AssertionError, match="gradient of argument 0"):
        gradcheck(square_wrong, [_normal(3)], "wrong square")
