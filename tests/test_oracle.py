"""fastconv.functional (NumPy reference backend) against torch.nn.functional: forward and every gradient.

Random configurations come from hypothesis (conv/pool strategies in ``cases.py``, the others here);
deliberate grids cover the cases from-scratch frameworks historically get wrong: sizes the stride does
not divide, dilation with stride, transposed convolution with stride != dilation and output_padding,
max-pool backward with overlapping windows, avg-pool ``count_include_pad`` x ``ceil_mode``.
Tolerances: float32 ~2e-5 and float64 ~1e-10, relative to the output's scale (``helpers.assert_close``).
"""
import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import mutually_broadcastable_shapes

torch = pytest.importorskip("torch")
import torch.nn.functional as TF  # noqa: E402

import fastconv as fc  # noqa: E402
import fastconv.functional as F  # noqa: E402

import cases  # noqa: E402
from helpers import assert_close, check_against, run_torch  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")  # torch's own note
torch.set_num_threads(1)  # tiny tensors: threads only add contention
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])
SEEDS = st.integers(0, 2**32 - 1)
DTYPES = st.sampled_from(cases.DTYPES)


def versus_torch(fc_fn, torch_fn, arrays, what):
    """Forward and the gradient of every array argument, fastconv against PyTorch; the output and the
    gradients keep the inputs' dtype."""
    inputs = []

    def fc_checked(*ts):
        inputs.extend(ts)
        y = fc_fn(*ts)
        assert y.dtype == ts[0].dtype, f"{what}: output dtype {y.dtype} for {ts[0].dtype} input"
        return y
    check_against(fc_checked, torch_fn, arrays, run_oracle=run_torch, what=what)
    for i, t in enumerate(inputs):
        assert t.grad.dtype == t.dtype, f"{what}: gradient {i} has dtype {t.grad.dtype}, input {t.dtype}"


def _rng(seed):
    return np.random.default_rng(seed)


# ------------------------------------------------------------------ convolution (random)
@pytest.mark.parametrize("dims", [1, 2])
@settings(max_examples=70, **SETTINGS)
@given(case=st.data(), seed=SEEDS)
def test_conv(dims, case, seed):
    case = case.draw(cases.conv_cases(dims))
    versus_torch(lambda *t: cases.call(F, case, t, backend="numpy"), lambda *t: cases.call(TF, case, t),
                 cases.make_args(case, _rng(seed)), f"{case}")


@pytest.mark.parametrize("dims", [1, 2])
@settings(max_examples=70, **SETTINGS)
@given(case=st.data(), seed=SEEDS)
def test_conv_transpose(dims, case, seed):
    case = case.draw(cases.conv_transpose_cases(dims))
    versus_torch(lambda *t: cases.call(F, case, t, backend="numpy"), lambda *t: cases.call(TF, case, t),
                 cases.make_args(case, _rng(seed)), f"{case}")


# ---------------------------------------------------------------------- pooling (random)
def _check_max_pool(case, x):
    versus_torch(lambda t: cases.call(F, case, [t], backend="numpy"), lambda t: cases.call(TF, case, [t]),
                 [x], f"{case}")
    y, idx = cases.call(F, case, [x], backend="numpy", return_indices=True)
    y_ref, idx_ref = cases.call(TF, case, [torch.from_numpy(x)], return_indices=True)
    assert idx.dtype == np.int64
    np.testing.assert_array_equal(idx.numpy(), idx_ref.numpy(), err_msg=f"indices of {case}")
    assert_close(y.numpy(), y_ref.numpy(), x.dtype, f"{case} values with indices")


@pytest.mark.parametrize("dims", [1, 2])
@settings(max_examples=70, **SETTINGS)
@given(case=st.data(), seed=SEEDS)
def test_max_pool(dims, case, seed):
    case = case.draw(cases.pool_cases("max", dims))
    _check_max_pool(case, cases.make_args(case, _rng(seed))[0])


@pytest.mark.parametrize("dims", [1, 2])
@settings(max_examples=70, **SETTINGS)
@given(case=st.data(), seed=SEEDS)
def test_avg_pool(dims, case, seed):
    case = case.draw(cases.pool_cases("avg", dims))
    versus_torch(lambda *t: cases.call(F, case, t, backend="numpy"), lambda *t: cases.call(TF, case, t),
                 cases.make_args(case, _rng(seed)), f"{case}")


@pytest.mark.parametrize("dims", [1, 2])
@settings(max_examples=50, **SETTINGS)
@given(case=st.data(), p=st.sampled_from([2, 2.0, 1, 3, 1.5]), seed=SEEDS)
def test_lp_pool(dims, case, p, seed):
    case = case.draw(cases.pool_cases("avg", dims))
    x = cases.make_args(case, _rng(seed))[0]
    if p != 2:  # odd and fractional powers of negative numbers are not real: positive inputs
        x = np.abs(x) + np.asarray(0.1, x.dtype)
    # torch's lp_pool1d multiplies by kernel_size, so it wants plain ints in 1-D
    k, s = (case["kernel"][0], case["stride"][0]) if dims == 1 else (case["kernel"], case["stride"])
    fc_op, torch_op = getattr(F, f"lp_pool{dims}d"), getattr(TF, f"lp_pool{dims}d")
    versus_torch(lambda t: fc_op(t, p, k, s, ceil_mode=case["ceil_mode"], backend="numpy"),
                 lambda t: torch_op(t, p, k, s, ceil_mode=case["ceil_mode"]), [x], f"p={p} {case}")


@st.composite
def unpool_cases(draw, dims):
    """Pooling geometry, output size (default, or within the allowed range) and an input to pool."""
    kernel = tuple(draw(st.integers(1, 4)) for _ in range(dims))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(dims))
    padding = tuple(draw(st.integers(0, k // 2)) for k in kernel)
    pooled = tuple(draw(st.integers(1, 5)) for _ in range(dims))
    default = tuple((n - 1) * s - 2 * p + k for n, k, s, p in zip(pooled, kernel, stride, padding))
    extra = tuple(draw(st.integers(0, s - 1)) for s in stride)
    # a size whose max pooling gives back ``pooled``: default + extra, extra < stride
    size = tuple(d + e for d, e in zip(default, extra))
    if min(size) < 1 or any(k > z + 2 * p for k, z, p in zip(kernel, size, padding)):
        return draw(unpool_cases(dims))
    form = draw(st.sampled_from(["none", "spatial", "full"]))
    return dict(dims=dims, n=draw(st.integers(1, 2)), c=draw(st.integers(1, 3)), kernel=kernel,
                stride=stride, padding=padding, size=size, extra=extra, form=form,
                dtype=draw(DTYPES))


@pytest.mark.parametrize("dims", [1, 2])
@settings(max_examples=60, **SETTINGS)
@given(data=st.data(), seed=SEEDS)
def test_max_unpool(dims, data, seed):
    case = data.draw(unpool_cases(dims))
    d = dims
    z = _rng(seed).standard_normal((case["n"], case["c"]) + case["size"]).astype(case["dtype"])
    pool = getattr(TF, f"max_pool{d}d")
    values, idx = pool(torch.from_numpy(z), case["kernel"], case["stride"], case["padding"], return_indices=True)
    out = {"none": None, "spatial": case["size"], "full": z.shape}[case["form"]]
    if case["form"] == "none" and any(case["extra"]):
        out = case["size"]  # the default size is smaller than z: ask for z's size explicitly
    idx = idx.numpy()
    fc_op, torch_op = getattr(F, f"max_unpool{d}d"), getattr(TF, f"max_unpool{d}d")
    args = (case["kernel"], case["stride"], case["padding"])
    versus_torch(lambda t: fc_op(t, idx, *args, output_size=out, backend="numpy"),
                 lambda t: torch_op(t, torch.from_numpy(idx), *args, output_size=out),
                 [values.numpy()], f"{case}")


# ------------------------------------------------------------ adaptive pooling, interpolation
@st.composite
def resample_shapes(draw, dims):
    return (draw(st.integers(1, 2)), draw(st.integers(1, 3))) + tuple(draw(st.integers(1, 9))
                                                                      for _ in range(dims))


@settings(max_examples=100, **SETTINGS)
@given(dims=st.sampled_from([1, 2]), data=st.data(), dtype=DTYPES, seed=SEEDS)
def test_adaptive_avg_pool(dims, data, dtype, seed):
    shape = data.draw(resample_shapes(dims))
    out = tuple(data.draw(st.integers(1, s + 3)) for s in shape[2:])
    out = out[0] if dims == 1 or data.draw(st.booleans()) and out[0] == out[-1] else out
    x = _rng(seed).standard_normal(shape).astype(dtype)
    name = f"adaptive_avg_pool{dims}d"
    versus_torch(lambda t: getattr(F, name)(t, out), lambda t: getattr(TF, name)(t, out), [x],
                 f"{name} {shape} -> {out}")


@settings(max_examples=150, **SETTINGS)
@given(dims=st.sampled_from([1, 2]), data=st.data(), dtype=DTYPES, seed=SEEDS)
def test_interpolate(dims, data, dtype, seed):
    shape = data.draw(resample_shapes(dims))
    mode = data.draw(st.sampled_from(["nearest", "linear" if dims == 1 else "bilinear"]))
    align = None if mode == "nearest" else data.draw(st.sampled_from([None, False, True]))
    kwargs = dict(mode=mode, align_corners=align)
    if data.draw(st.booleans()):
        size = tuple(data.draw(st.integers(1, 12)) for _ in range(dims))
        kwargs["size"] = size[0] if dims == 1 or data.draw(st.booleans()) else size
    else:
        factors = st.sampled_from([0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0]) | st.floats(0.3, 3.5)
        f = tuple(data.draw(factors) for _ in range(dims))
        if any(int(np.floor(s * v)) < 1 for s, v in zip(shape[2:], f)):
            f = tuple(max(v, 1.0) for v in f)
        kwargs["scale_factor"] = f[0] if dims == 1 or data.draw(st.booleans()) else f
        if not isinstance(kwargs["scale_factor"], tuple):
            kwargs["scale_factor"] = max(f)
    x = _rng(seed).standard_normal(shape).astype(dtype)
    versus_torch(lambda t: F.interpolate(t, **kwargs), lambda t: _torch_interpolate(t, **kwargs), [x],
                 f"interpolate {shape} {kwargs}")


def _torch_interpolate(t, mode, **kwargs):
    """PyTorch's interpolate; 1-D nearest runs as 2-D on a unit height: torch's 1-D nearest forward skips
    the same-size and 2x index rules that its own backward (and its 2-D forward) apply, so its gradient is
    not the adjoint of its forward there (e.g. L=2, scale_factor=1.25)."""
    if mode != "nearest" or t.ndim != 3:
        return TF.interpolate(t, mode=mode, **kwargs)
    if kwargs.get("scale_factor") is not None:
        kwargs["scale_factor"] = (1.0, kwargs["scale_factor"])
    if kwargs.get("size") is not None:
        kwargs["size"] = (1, kwargs["size"])
    return TF.interpolate(t[:, :, None], mode=mode, **kwargs)[:, :, 0]


# ------------------------------------------------------------------ glue ops and losses
@settings(max_examples=60, **SETTINGS)
@given(batch=st.lists(st.integers(1, 4), min_size=0, max_size=2), fin=st.integers(1, 6),
       fout=st.integers(1, 6), bias=st.booleans(), dtype=DTYPES, seed=SEEDS)
def test_linear(batch, fin, fout, bias, dtype, seed):
    rng = _rng(seed)
    arrays = [rng.standard_normal(tuple(batch) + (fin,)).astype(dtype),
              rng.standard_normal((fout, fin)).astype(dtype)]
    arrays += [rng.standard_normal(fout).astype(dtype)] if bias else []
    versus_torch(F.linear, TF.linear, arrays, f"linear {batch} {fin}->{fout} bias={bias}")


ACTIVATIONS = ["relu", "tanh", "sigmoid"]


@settings(max_examples=60, **SETTINGS)
@given(name=st.sampled_from(ACTIVATIONS), shape=st.lists(st.integers(1, 5), min_size=1, max_size=4),
       dtype=DTYPES, seed=SEEDS)
def test_activation(name, shape, dtype, seed):
    x = (3 * _rng(seed).standard_normal(shape)).astype(dtype)
    versus_torch(getattr(F, name), getattr(torch, name), [x], f"{name} {shape}")


@settings(max_examples=60, **SETTINGS)
@given(name=st.sampled_from(["softmax", "log_softmax"]), shape=st.lists(st.integers(1, 5), min_size=1,
       max_size=4), data=st.data(), dtype=DTYPES, seed=SEEDS)
def test_softmax(name, shape, data, dtype, seed):
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = (4 * _rng(seed).standard_normal(shape)).astype(dtype)
    versus_torch(lambda t: getattr(F, name)(t, dim), lambda t: getattr(TF, name)(t, dim), [x],
                 f"{name} {shape} dim={dim}")


REDUCTIONS = ["mean", "sum", "none"]


@settings(max_examples=100, **SETTINGS)
@given(name=st.sampled_from(["cross_entropy", "nll_loss"]), n=st.integers(1, 6), classes=st.integers(1, 6),
       reduction=st.sampled_from(REDUCTIONS), label_dtype=st.sampled_from([np.int64, np.int32]),
       dtype=DTYPES, seed=SEEDS)
def test_classification_loss(name, n, classes, reduction, label_dtype, dtype, seed):
    rng = _rng(seed)
    x = (3 * rng.standard_normal((n, classes))).astype(dtype)
    target = rng.integers(0, classes, n)
    versus_torch(lambda t: getattr(F, name)(t, target.astype(label_dtype), reduction=reduction),
                 lambda t: getattr(TF, name)(t, torch.from_numpy(target), reduction=reduction), [x],
                 f"{name} ({n}, {classes}) {reduction}")


@settings(max_examples=40, **SETTINGS)
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=4), reduction=st.sampled_from(REDUCTIONS),
       dtype=DTYPES, seed=SEEDS)
def test_mse_loss(shape, reduction, dtype, seed):
    rng = _rng(seed)
    arrays = [rng.standard_normal(shape).astype(dtype) for _ in range(2)]
    versus_torch(lambda a, b: F.mse_loss(a, b, reduction=reduction),
                 lambda a, b: TF.mse_loss(a, b, reduction=reduction), arrays, f"mse {shape} {reduction}")


@settings(max_examples=30, **SETTINGS)
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=5), data=st.data(), dtype=DTYPES, seed=SEEDS)
def test_flatten(shape, data, dtype, seed):
    start = data.draw(st.integers(0, len(shape) - 1))
    x = _rng(seed).standard_normal(shape).astype(dtype)
    versus_torch(lambda t: F.flatten(t, start), lambda t: torch.flatten(t, start), [x], f"flatten {shape} {start}")


# ------------------------------------------------------------------------ Tensor operations
def _positive(t):
    return abs(t) + 0.5


BINARY = {  # name: (fastconv, torch); operands broadcast against each other
    "add": (lambda a, b: a + b,) * 2,
    "sub": (lambda a, b: a - b,) * 2,
    "mul": (lambda a, b: a * b,) * 2,
    "div": (lambda a, b: a / _positive(b),) * 2,
    "mixed": (lambda a, b: (a - 2.0 * b) * (a + 1.5) - 3.0 / _positive(b) + 0.5 - a / 4.0,) * 2,
    "rsub": (lambda a, b: 1.0 - a * b,) * 2,
    "pow": (lambda a, b: a ** 2 * b + _positive(b) ** 0.5 - a ** 3 + _positive(a) ** -1.5,) * 2,
    "exp_log_abs": (lambda a, b: (a * 0.5).exp() + _positive(b).log() * abs(a),
                    lambda a, b: (a * 0.5).exp() + _positive(b).log() * abs(a)),
    "neg": (lambda a, b: -a + -b,) * 2,
    "self": (lambda a, b: a * a + a * b * a,) * 2,  # a used several times
}


@settings(max_examples=120, **SETTINGS)
@given(name=st.sampled_from(sorted(BINARY)),
       shapes=mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=4, max_side=4),
       dtype=DTYPES, seed=SEEDS)
def test_tensor_binary(name, shapes, dtype, seed):
    rng = _rng(seed)
    arrays = [rng.standard_normal(s).astype(dtype) for s in shapes.input_shapes]
    fc_fn, torch_fn = BINARY[name]
    versus_torch(fc_fn, torch_fn, arrays, f"{name} {shapes.input_shapes}")


@settings(max_examples=60, **SETTINGS)
@given(shapes=mutually_broadcastable_shapes(signature="(n,k),(k,m)->(n,m)", max_dims=3, max_side=4),
       dtype=DTYPES, seed=SEEDS)
def test_tensor_matmul(shapes, dtype, seed):
    rng = _rng(seed)
    arrays = [rng.standard_normal(s).astype(dtype) for s in shapes.input_shapes]
    versus_torch(lambda a, b: a @ b, lambda a, b: a @ b, arrays, f"matmul {shapes.input_shapes}")


@settings(max_examples=80, **SETTINGS)
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=4), data=st.data(),
       reduce=st.sampled_from(["sum", "mean"]), keepdims=st.booleans(), dtype=DTYPES, seed=SEEDS)
def test_tensor_reduction(shape, data, reduce, keepdims, dtype, seed):
    ndim = len(shape)
    axis = data.draw(st.none() | st.integers(-ndim, ndim - 1)
                     | st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True).map(tuple))
    x = _rng(seed).standard_normal(shape).astype(dtype)
    dim = tuple(range(ndim)) if axis is None else axis

    def torch_fn(t):
        return getattr(torch, reduce)(t, dim=dim, keepdim=keepdims)
    versus_torch(lambda t: getattr(t, reduce)(axis, keepdims), torch_fn, [x],
                 f"{reduce} {shape} axis={axis} keepdims={keepdims}")


SHAPE_OPS = {
    "reshape": (lambda t: t.reshape(-1, 2) * 1.0, lambda t: t.reshape(-1, 2) * 1.0),
    "transpose": (lambda t: t.transpose(2, 0, 1) * t.transpose(2, 0, 1), lambda t: t.permute(2, 0, 1) ** 2),
    "T": (lambda t: t.T @ t.reshape(2, -1).T.reshape(3, 2, 2).T[0], lambda t: t.permute(2, 1, 0) @ t.reshape(2, -1).T.reshape(3, 2, 2).permute(2, 1, 0)[0]),
    "getitem": (lambda t: t[1:, ::2, 0] * 2.0 + t[0, 0, 1], lambda t: t[1:, ::2, 0] * 2.0 + t[0, 0, 1]),
    "fancy": (lambda t: t[np.array([0, 0, 1])] * 1.0, lambda t: t[torch.tensor([0, 0, 1])] * 1.0),
    "cast": (lambda t: (t.double() * 2.0).astype(t.dtype), lambda t: (t.double() * 2.0).to(t.dtype)),
}


@pytest.mark.parametrize("name", sorted(SHAPE_OPS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tensor_shape_ops(name, dtype):
    x = _rng(1).standard_normal((2, 3, 2)).astype(dtype)
    fc_fn, torch_fn = SHAPE_OPS[name]
    versus_torch(fc_fn, torch_fn, [x], name)


# ============================================================ grids of historically buggy cases
def _grid_conv(dims, size, k, s, p, d, dtype=np.float64):
    case = dict(op=f"conv{dims}d", dims=dims, n=2, c_in=2, c_out=3, size=(size,) * dims, kernel=(k,) * dims,
                stride=(s,) * dims, padding=p, dilation=(d,) * dims, groups=1, bias=True, dtype=dtype)
    return case


def test_grid_conv_stride_not_dividing_with_dilation():
    """conv1d over sizes the stride does not divide, with dilation and padding (fwd + grads)."""
    count = 0
    for size, k, s, p, d in itertools.product(range(5, 12), [1, 2, 3], [1, 2, 3], [0, 1, 2], [1, 2, 3]):
        if size + 2 * p < d * (k - 1) + 1:
            continue
        case = _grid_conv(1, size, k, s, p, d)
        versus_torch(lambda *t: cases.call(F, case, t, backend="numpy"), lambda *t: cases.call(TF, case, t),
                     cases.make_args(case, _rng(count)), f"{case}")
        count += 1
    assert count > 400


def test_grid_conv2d_stride_not_dividing():
    """conv2d, anisotropic stride/dilation/padding where neither axis divides."""
    for i, (h, w, s, d) in enumerate(itertools.product([6, 7], [7, 9], [(2, 3), (3, 2)], [(1, 2), (2, 1)])):
        case = dict(_grid_conv(2, 1, 2, 1, 0, 1), size=(h, w), kernel=(3, 2), stride=s, dilation=d,
                    padding=(1, 2), groups=1, c_in=2, c_out=2)
        versus_torch(lambda *t: cases.call(F, case, t, backend="numpy"), lambda *t: cases.call(TF, case, t),
                     cases.make_args(case, _rng(i)), f"{case}")


def test_grid_conv_transpose_stride_dilation_output_padding():
    """Transposed conv with stride != dilation and every legal output_padding."""
    count = 0
    for size, k, s, d, p in itertools.product([1, 3, 4], [1, 2, 3], [1, 2, 3], [1, 2, 3], [0, 1, 2]):
        for op in range(max(s, d)):
            if (size - 1) * s - 2 * p + d * (k - 1) + op + 1 < 1:
                continue
            case = dict(op="conv_transpose1d", dims=1, n=2, c_in=2, c_out=4, size=(size,), kernel=(k,),
                        stride=(s,), padding=(p,), output_padding=(op,), dilation=(d,), groups=2, bias=True,
                        dtype=np.float64)
            versus_torch(lambda *t: cases.call(F, case, t, backend="numpy"),
                         lambda *t: cases.call(TF, case, t), cases.make_args(case, _rng(count)), f"{case}")
            count += 1
    assert count > 300
    # one 2-D case per (stride, dilation) pair with anisotropic output_padding
    for s, d in itertools.product([(2, 3), (3, 1)], [(1, 2), (3, 2)]):
        op = tuple(max(a, b) - 1 for a, b in zip(s, d))
        case = dict(op="conv_transpose2d", dims=2, n=1, c_in=2, c_out=2, size=(3, 4), kernel=(2, 3), stride=s,
                    padding=(1, 0), output_padding=op, dilation=d, groups=1, bias=False, dtype=np.float64)
        versus_torch(lambda *t: cases.call(F, case, t, backend="numpy"), lambda *t: cases.call(TF, case, t),
                     cases.make_args(case, _rng(7)), f"{case}")


def test_grid_max_pool_overlapping_windows():
    """Max-pool backward where windows overlap (stride < kernel): the gradient must accumulate."""
    count = 0
    for size, k, s, p, d, ceil in itertools.product([5, 6, 7, 8], [2, 3, 4], [1, 2, 3], [0, 1, 2], [1, 2],
                                                    [False, True]):
        if p > k // 2 or size + 2 * p < d * (k - 1) + 1:
            continue
        case = dict(op="max_pool1d", dims=1, n=1, c=2, size=(size,), kernel=(k,), stride=(s,), padding=(p,),
                    dilation=(d,), ceil_mode=ceil, count_include_pad=True, dtype=np.float64)
        _check_max_pool(case, _rng(count).permutation(2 * size).reshape(1, 2, size).astype(np.float64))
        count += 1
    assert count > 150
    x = _rng(0).permutation(2 * 7 * 8).reshape(1, 2, 7, 8).astype(np.float32)
    for s in [(1, 1), (1, 2), (2, 1)]:
        case = dict(op="max_pool2d", dims=2, n=1, c=2, size=(7, 8), kernel=(3, 3), stride=s, padding=(1, 1),
                    dilation=(1, 1), ceil_mode=True, count_include_pad=True, dtype=np.float32)
        _check_max_pool(case, x)


def test_grid_avg_pool_count_include_pad_ceil_mode():
    """avg pool over count_include_pad x ceil_mode, with padding and sizes the stride does not divide."""
    count = 0
    for size, k, s, p, ceil, incl in itertools.product([4, 5, 6, 7], [1, 2, 3, 4], [1, 2, 3], [0, 1, 2],
                                                       [False, True], [False, True]):
        if p > k // 2 or size + 2 * p < k:
            continue
        case = dict(op="avg_pool1d", dims=1, n=1, c=2, size=(size,), kernel=(k,), stride=(s,), padding=(p,),
                    dilation=(1,), ceil_mode=ceil, count_include_pad=incl, dtype=np.float64)
        versus_torch(lambda *t: cases.call(F, case, t, backend="numpy"), lambda *t: cases.call(TF, case, t),
                     cases.make_args(case, _rng(count)), f"{case}")
        count += 1
    assert count > 250
    for i, (ceil, incl) in enumerate(itertools.product([False, True], [False, True])):
        case = dict(op="avg_pool2d", dims=2, n=1, c=1, size=(5, 7), kernel=(3, 2), stride=(2, 3), padding=(1, 1),
                    dilation=(1, 1), ceil_mode=ceil, count_include_pad=incl, dtype=np.float32)
        versus_torch(lambda *t: cases.call(F, case, t, backend="numpy"), lambda *t: cases.call(TF, case, t),
                     cases.make_args(case, _rng(i)), f"{case}")


def test_fc_tensor_inputs_match_array_inputs():
    """Ops accept fastconv Tensors and plain arrays alike (no graph is recorded for arrays)."""
    x = _rng(0).standard_normal((1, 2, 5, 5)).astype(np.float32)
    w = _rng(1).standard_normal((3, 2, 3, 3)).astype(np.float32)
    a = F.conv2d(x, w, backend="numpy")
    b = F.conv2d(fc.tensor(x), fc.tensor(w), backend="numpy")
    assert not a.requires_grad and not b.requires_grad
    np.testing.assert_array_equal(a.numpy(), b.numpy())


DEFAULTS = {  # ops called with their default arguments (stride = kernel, no padding, ...)
    "max_pool1d": (lambda m, t: m.max_pool1d(t, 3), (2, 3, 10)),
    "max_pool2d": (lambda m, t: m.max_pool2d(t, 2), (2, 3, 7, 6)),
    "avg_pool1d": (lambda m, t: m.avg_pool1d(t, 2), (2, 3, 9)),
    "avg_pool2d": (lambda m, t: m.avg_pool2d(t, (3, 2)), (1, 2, 7, 6)),
    "lp_pool2d": (lambda m, t: m.lp_pool2d(t, 2, 2), (1, 2, 6, 5)),
    "conv1d": (lambda m, t: m.conv1d(t, t[:2, :, :3]), (3, 2, 8)),
    "conv2d": (lambda m, t: m.conv2d(t, t[:, :, :2, :2]), (2, 2, 5, 5)),
    "conv_transpose2d": (lambda m, t: m.conv_transpose2d(t, t[:, :, :2, :3]), (2, 2, 4, 4)),
    "interpolate": (lambda m, t: m.interpolate(t, scale_factor=2), (1, 2, 3, 4)),
    "log_softmax": (lambda m, t: m.log_softmax(t, -1), (3, 5)),
}


@pytest.mark.parametrize("name", sorted(DEFAULTS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_default_arguments(name, dtype):
    fn, shape = DEFAULTS[name]
    x = _rng(3).standard_normal(shape).astype(dtype)
    versus_torch(lambda t: fn(F, t), lambda t: fn(TF, t), [x], f"{name} defaults")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_unpool_default_stride(dtype):
    z = torch.from_numpy(_rng(4).standard_normal((2, 2, 6, 4)).astype(dtype))
    values, idx = TF.max_pool2d(z, 2, return_indices=True)
    versus_torch(lambda t: F.max_unpool2d(t, idx.numpy(), 2), lambda t: TF.max_unpool2d(t, idx, 2),
                 [values.numpy()], "max_unpool2d defaults")
