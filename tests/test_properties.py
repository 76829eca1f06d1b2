"""Mathematical properties of the ops, checked without an oracle, on every CPU backend and algorithm.

Convolution is translation-equivariant and is multiplication by a sparse, weight-shared matrix whose
transpose is the transposed convolution; max pooling ignores small shifts inside a window; NaN and inf
propagate as IEEE arithmetic says; an empty batch gives an empty result of the right shape.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import fastconv as fc
import fastconv.functional as F
from fastconv import shapes
from fastconv.backends import registry

import cases
from helpers import assert_close, backend_or_skip

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])
SEEDS = st.integers(0, 2**32 - 1)
#: Every property must hold on every plan a user can force, not only on the reference.
PLANS = cases.cpu_plans()
#: Pooling has no algorithms: its backends.
POOL_BACKENDS = ["numpy", "numba", "cython"]


def _need(backend):
    backend_or_skip(registry.parse(backend)[0])
    return backend


def _try_conv(case, x, w, b=None, backend="numpy"):
    """The conv of ``case`` under plan ``backend``, or None where that plan cannot run it."""
    y = cases.runs_here(backend, lambda: cases.call(F, case, [x, w] + ([b] if b is not None else []),
                                                    backend=backend))
    return None if y is None else y.numpy()


def _conv(case, x, w, b=None, backend="numpy"):
    """:func:`_try_conv`, with a hypothesis rejection where the plan cannot run the case."""
    y = _try_conv(case, x, w, b, backend)
    assume(y is not None)
    return y


def _spec(case):
    """The ConvSpec of a conv case: explicit padding, 4-D geometry."""
    x_shape = (case["n"], case["c_in"]) + case["size"]
    w_shape = (case["c_out"], case["c_in"] // case["groups"]) + case["kernel"]
    return shapes.conv_spec(x_shape, w_shape, None, case["stride"], case["padding"], case["dilation"],
                            case["groups"], case["dims"])


# ------------------------------------------------------------------- translation equivariance
@pytest.mark.parametrize("plan", PLANS)
@settings(max_examples=15, **SETTINGS)
@given(data=st.data(), dims=st.sampled_from([1, 2]), seed=SEEDS)
def test_conv_translation_equivariance(plan, data, dims, seed):
    """Shifting the input by the stride shifts the output by one, wherever no padding is involved."""
    case = data.draw(cases.conv_cases(dims))
    if plan == "cython:blocked":
        case["dtype"] = np.float32  # float32-only kernel
    case["size"] = tuple(size + 3 * s + 4 for size, s in zip(case["size"], case["stride"]))
    x, w = cases.make_args(case, np.random.default_rng(seed))[:2]
    spec = _spec(case)
    strides = spec.stride[-dims:]
    pads = (spec.padding[0], spec.padding[2])[-dims:]
    reach = tuple(d * (k - 1) for d, k in zip(spec.dilation, (spec.kh, spec.kw)))[-dims:]
    axes = tuple(range(2, 2 + dims))
    shifted = np.roll(x, strides, axis=axes)
    y, y_shift = _conv(case, x, w, backend=plan), _conv(case, shifted, w, backend=plan)
    # output j of the shifted input sees input j*s - p + s.. of x, as output j-1 of x does: compare output
    # positions j >= 1 whose window lies inside the input and away from the wrapped-around columns
    index, index_shift = [slice(None)] * 2, [slice(None)] * 2
    for s, p, r, length in zip(strides, pads, reach, case["size"]):
        lo = -(-p // s)  # first j with j*s - p >= 0
        hi = (length - 1 - r + p) // s - 1  # last j with (j+1)*s - p + r <= length - 1
        assume(hi >= lo)
        index.append(slice(lo, hi + 1))
        index_shift.append(slice(lo + 1, hi + 2))
    assert_close(y_shift[tuple(index_shift)], y[tuple(index)], x.dtype, f"shift {case}")


@pytest.mark.parametrize("dims", [1, 2])
def test_max_pool_invariant_to_shifts_within_a_window(dims):
    """A peak moved inside its pooling window leaves the pooled map unchanged; moved out, it does not."""
    rng = np.random.default_rng(0)
    shape = (1, 1, 8) if dims == 1 else (1, 1, 8, 8)
    background = rng.random(shape)  # values in [0, 1)
    pool = getattr(F, f"max_pool{dims}d")
    cell = [(2, 2), (2, 3), (3, 2), (3, 3)] if dims == 2 else [(2,), (3,)]
    outputs = []
    for pos in cell:
        x = background.copy()
        x[(0, 0) + pos] = 10.0
        outputs.append(pool(x, 2, backend="numpy").numpy())
    for out in outputs[1:]:
        np.testing.assert_array_equal(out, outputs[0])
    assert outputs[0][(0, 0) + (1,) * dims] == 10.0
    x = background.copy()
    x[(0, 0) + (4,) * dims] = 10.0  # the next window
    assert not np.array_equal(pool(x, 2, backend="numpy").numpy(), outputs[0])


# -------------------------------------------------------------------- convolution as a matrix
@st.composite
def small_conv_cases(draw, dims):
    """Conv cases with symmetric padding (so that a transposed convolution can undo the geometry)."""
    case = draw(cases.conv_cases(dims, max_size=4))
    if case["padding"] == "valid":
        case["padding"] = 0
    assume(case["padding"] != "same")
    case["n"] = 1
    return case


def explicit_matrix(w, spec):
    """The matrix of a convolution, entry by entry from the loop nest of ``spec`` (no fastconv op):
    ``M[(o, oy, ox), (c, iy, ix)] = w[o, c - g*cig, i, j]`` where tap ``(i, j)`` of output ``(oy, ox)``
    lands on input pixel ``(iy, ix)``; zero elsewhere."""
    w4 = w.reshape(spec.w_shape)
    (sh, sw), (dh, dw), pt, pl = spec.stride, spec.dilation, spec.padding[0], spec.padding[2]
    cig, cog = spec.c_in // spec.groups, spec.c_out // spec.groups
    m = np.zeros((spec.c_out, spec.oh, spec.ow, spec.c_in, spec.h, spec.w))
    for o in range(spec.c_out):
        g = o // cog
        for c in range(cig):
            for i in range(spec.kh):
                for j in range(spec.kw):
                    for oy in range(spec.oh):
                        iy = oy * sh - pt + i * dh
                        for ox in range(spec.ow):
                            ix = ox * sw - pl + j * dw
                            if 0 <= iy < spec.h and 0 <= ix < spec.w:
                                m[o, oy, ox, g * cig + c, iy, ix] += w4[o, c, i, j]
    return m.reshape(spec.c_out * spec.oh * spec.ow, spec.c_in * spec.h * spec.w)


def impulse_matrix(case, w):
    """The matrix of the convolution, column by column: column k is the response to unit impulse k."""
    shape = (1, case["c_in"]) + case["size"]
    columns = []
    for k in range(int(np.prod(shape))):
        e = np.zeros(int(np.prod(shape)))
        e[k] = 1.0
        columns.append(_conv(case, e.reshape(shape), w).ravel())
    return np.stack(columns, axis=1)


@pytest.mark.parametrize("plan", PLANS)
@settings(max_examples=12, **SETTINGS)
@given(data=st.data(), dims=st.sampled_from([1, 2]), seed=SEEDS)
def test_conv_is_its_explicit_matrix(plan, data, dims, seed):
    case = data.draw(small_conv_cases(dims))
    case["dtype"] = np.float32 if plan == "cython:blocked" else np.float64  # float32-only kernel
    rng = np.random.default_rng(seed)
    x, w = cases.make_args(case, rng)[:2]
    w64 = w.astype(np.float64)
    spec = _spec(case)
    m = impulse_matrix(dict(case, dtype=np.float64), w64)
    np.testing.assert_allclose(m, explicit_matrix(w64, spec), rtol=0, atol=1e-12, err_msg=f"{case}")
    # every entry is zero or a weight (weight sharing), and the matrix is sparse when the kernel is small
    assert np.all(np.isin(m[m != 0], w64))
    xs = rng.standard_normal((3,) + x.shape[1:]).astype(case["dtype"])
    b = rng.standard_normal(case["c_out"]).astype(case["dtype"])
    y = _conv(dict(case, n=3), xs, w, b, backend=plan).reshape(3, -1)
    expected = xs.reshape(3, -1).astype(np.float64) @ m.T + np.repeat(b, y.shape[1] // case["c_out"])
    assert_close(y, expected, case["dtype"], f"{plan}: M @ x for {case}")


def _transpose_case(case, spec):
    """The transposed convolution whose output has the conv's input shape (output_padding fills the rest)."""
    dims = case["dims"]
    stride, dilation = spec.stride[-dims:], spec.dilation[-dims:]
    pads = (spec.padding[0], spec.padding[2])[-dims:]
    kernel, out_size = case["kernel"], (spec.oh, spec.ow)[-dims:]
    output_padding = tuple(length - ((o - 1) * s - 2 * p + d * (k - 1) + 1)
                           for length, o, s, p, d, k in zip(case["size"], out_size, stride, pads, dilation, kernel))
    return dict(op=f"conv_transpose{dims}d", dims=dims, n=case["n"], c_in=case["c_out"], c_out=case["c_in"],
                size=out_size, kernel=kernel, stride=stride, padding=pads, output_padding=output_padding,
                dilation=dilation, groups=case["groups"], bias=False, dtype=case["dtype"])


@settings(max_examples=50, **SETTINGS)
@given(data=st.data(), dims=st.sampled_from([1, 2]), seed=SEEDS)
def test_conv_transpose_is_the_transposed_matrix(data, dims, seed):
    case = data.draw(small_conv_cases(dims))
    case["dtype"] = np.float64
    rng = np.random.default_rng(seed)
    w = cases.make_args(case, rng)[1]
    spec = _spec(case)
    tcase = _transpose_case(case, spec)
    m = explicit_matrix(w, spec)
    ys = rng.standard_normal((2, case["c_out"]) + tcase["size"])
    xt = cases.call(F, tcase, [ys, w], backend="numpy").numpy()
    assert xt.shape == (2, case["c_in"]) + case["size"]
    assert_close(xt.reshape(2, -1), ys.reshape(2, -1) @ m, np.float64, f"M.T @ y for {case}")
    # adjointness, <conv(x), y> == <x, conv_transpose(y)>, in float32 and float64
    for dtype in (np.float32, np.float64):
        xs = rng.standard_normal((2, case["c_in"]) + case["size"]).astype(dtype)
        y = ys.astype(dtype)
        lhs = np.vdot(_conv(dict(case, n=2), xs, w.astype(dtype)).astype(np.float64), y)
        rhs = np.vdot(xs.astype(np.float64), cases.call(F, tcase, [y, w.astype(dtype)], backend="numpy").numpy())
        scale = np.sum(np.abs(xs)) * np.sum(np.abs(w)) * np.max(np.abs(ys))
        assert abs(lhs - rhs) <= 10 * cases.RTOL[np.dtype(dtype)] * max(1.0, scale), f"adjoint {case}"


# ------------------------------------------------------------------------------- NaN and inf
def _affected(case, pos):
    """Mask of conv outputs whose window covers input position ``pos`` (conv of an indicator)."""
    ind = np.zeros((1, case["c_in"]) + case["size"])
    ind[pos] = 1.0
    w = np.ones((case["c_out"], case["c_in"] // case["groups"]) + case["kernel"])
    return _conv(case, ind, w) > 0


CONV_CASE = dict(op="conv2d", dims=2, n=1, c_in=2, c_out=2, size=(6, 7), kernel=(3, 2), stride=(2, 1),
                 padding=1, dilation=(1, 2), groups=1, bias=False, dtype=np.float64)


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # inf - inf, on purpose
@pytest.mark.parametrize("backend", PLANS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv_propagates_nan_and_inf(bad, dtype, backend):
    _need(backend)
    if _try_conv(CONV_CASE, np.ones((1, 2, 6, 7), dtype), np.ones((2, 2, 3, 2), dtype), backend=backend) is None:
        pytest.skip(f"{backend} does not run this case in {np.dtype(dtype).name}")
    pos = (0, 1, 3, 4)
    x = np.random.default_rng(0).standard_normal((1, 2, 6, 7)).astype(dtype)
    x[pos] = bad
    w = np.random.default_rng(1).random((2, 2, 3, 2)).astype(dtype) + 0.5  # positive: inf keeps its sign
    y = _conv(CONV_CASE, x, w, backend=backend)
    hit = _affected(CONV_CASE, pos)
    assert hit.any() and not hit.all()
    assert np.all(np.isfinite(y[~hit]))
    if np.isnan(bad):
        assert np.all(np.isnan(y[hit]))
    else:
        assert np.all(y[hit] == bad)
    # +inf and -inf in one window: inf - inf is NaN
    x[0, 0, 3, 4] = -bad if np.isinf(bad) else bad
    if np.isinf(bad):
        both = _affected(CONV_CASE, pos) & _affected(CONV_CASE, (0, 0, 3, 4))
        assert np.all(np.isnan(_conv(CONV_CASE, x, w, backend=backend)[both]))


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
@pytest.mark.parametrize("backend", POOL_BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pooling_propagates_nan_and_inf(dtype, backend):
    _need(backend)
    x = np.arange(16, dtype=dtype).reshape(1, 1, 4, 4)
    x[0, 0, 0, 0] = np.nan   # window (0, 0)
    x[0, 0, 1, 3] = np.inf   # window (0, 1)
    x[0, 0, 2, 1] = -np.inf  # window (1, 0): the max is finite, the mean is -inf
    y_max, idx = F.max_pool2d(x, 2, return_indices=True, backend=backend)
    y_max = y_max.numpy()
    assert np.isnan(y_max[0, 0, 0, 0]) and idx.numpy()[0, 0, 0, 0] == 0
    assert y_max[0, 0, 0, 1] == np.inf and y_max[0, 0, 1, 0] == 13 and y_max[0, 0, 1, 1] == 15
    y_avg = F.avg_pool2d(x, 2, backend=backend).numpy()
    assert np.isnan(y_avg[0, 0, 0, 0]) and y_avg[0, 0, 0, 1] == np.inf and y_avg[0, 0, 1, 0] == -np.inf
    assert y_avg[0, 0, 1, 1] == np.mean([10, 11, 14, 15])
    # a window holding +inf and -inf averages to NaN
    x[0, 0, 1, 2] = -np.inf
    assert np.isnan(F.avg_pool2d(x, 2, backend=backend).numpy()[0, 0, 0, 1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_elementwise_ops_propagate_nan_and_inf(dtype):
    x = np.array([np.nan, np.inf, -np.inf, 1.0], dtype=dtype)
    with np.errstate(over="ignore"):
        relu, tanh, sigmoid = F.relu(x).numpy(), F.tanh(x).numpy(), F.sigmoid(x).numpy()
    assert np.isnan(relu[0]) and relu[1] == np.inf and relu[2] == 0 and relu[3] == 1
    assert np.isnan(tanh[0]) and tanh[1] == 1 and tanh[2] == -1
    assert np.isnan(sigmoid[0]) and sigmoid[1] == 1 and sigmoid[2] == 0
    for out in (relu, tanh, sigmoid):
        assert out.dtype == dtype
    # a NaN logit makes its row's log-probabilities NaN and leaves the other rows alone
    logits = np.array([[1.0, np.nan, 0.0], [1.0, 2.0, 3.0]], dtype=dtype)
    logp = F.log_softmax(logits, dim=1).numpy()
    assert np.all(np.isnan(logp[0])) and np.all(np.isfinite(logp[1]))


# ------------------------------------------------------------------------------- empty batch
EMPTY = {  # name: (op on (backend, x, *params), x shape, parameter shapes)
    "conv1d": (lambda bk, x, w, b: F.conv1d(x, w, b, stride=2, padding=1, backend=bk), (0, 3, 9),
               [(4, 3, 3), (4,)]),
    "conv2d": (lambda bk, x, w, b: F.conv2d(x, w, b, padding="same", groups=3, backend=bk), (0, 3, 5, 6),
               [(6, 1, 3, 3), (6,)]),
    "conv_transpose1d": (lambda bk, x, w, b: F.conv_transpose1d(x, w, b, stride=2, output_padding=1, backend=bk),
                         (0, 3, 4), [(3, 2, 3), (2,)]),
    "conv_transpose2d": (lambda bk, x, w: F.conv_transpose2d(x, w, stride=2, padding=1, backend=bk), (0, 2, 3, 3),
                         [(2, 4, 3, 3)]),
    "max_pool1d": (lambda bk, x: F.max_pool1d(x, 3, 2, 1, backend=bk), (0, 2, 7), []),
    "max_pool2d": (lambda bk, x: F.max_pool2d(x, 2, ceil_mode=True, backend=bk), (0, 2, 5, 5), []),
    "avg_pool1d": (lambda bk, x: F.avg_pool1d(x, 3, 2, 1, count_include_pad=False, backend=bk), (0, 2, 7), []),
    "avg_pool2d": (lambda bk, x: F.avg_pool2d(x, 2, ceil_mode=True, backend=bk), (0, 2, 5, 5), []),
    "lp_pool2d": (lambda bk, x: F.lp_pool2d(x, 2, 2, backend=bk), (0, 2, 4, 4), []),
    "max_unpool2d": (lambda bk, x: F.max_unpool2d(x, np.zeros(x.shape, np.int64), 2, backend=bk), (0, 2, 3, 3), []),
    "adaptive_avg_pool2d": (lambda bk, x: F.adaptive_avg_pool2d(x, (2, 3)), (0, 2, 5, 5), []),
    "interpolate": (lambda bk, x: F.interpolate(x, scale_factor=2, mode="bilinear"), (0, 2, 3, 3), []),
    "linear": (lambda bk, x, w, b: F.linear(x, w, b), (0, 5), [(3, 5), (3,)]),
    "flatten": (lambda bk, x: F.flatten(x), (0, 2, 3, 3), []),
}
EMPTY_SHAPES = {"conv1d": (0, 4, 5), "conv2d": (0, 6, 5, 6), "conv_transpose1d": (0, 2, 10),
                "conv_transpose2d": (0, 4, 5, 5), "max_pool1d": (0, 2, 4), "max_pool2d": (0, 2, 3, 3),
                "avg_pool1d": (0, 2, 4), "avg_pool2d": (0, 2, 3, 3), "lp_pool2d": (0, 2, 2, 2),
                "max_unpool2d": (0, 2, 6, 6), "adaptive_avg_pool2d": (0, 2, 2, 3), "interpolate": (0, 2, 6, 6),
                "linear": (0, 3), "flatten": (0, 18)}


@pytest.mark.parametrize("backend", PLANS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(EMPTY))
def test_empty_batch(name, dtype, backend):
    """Forward gives an empty result of the right shape; backward gives empty input gradients and zero
    parameter gradients of the parameters' shapes."""
    fn, x_shape, param_shapes = EMPTY[name]
    x = fc.tensor(np.zeros(x_shape, dtype), requires_grad=True)
    params = [fc.tensor(np.ones(s, dtype), requires_grad=True) for s in param_shapes]
    y = cases.runs_here(backend, lambda: fn(backend, x, *params))
    if y is None:
        pytest.skip(f"{backend} does not run {name} in {np.dtype(dtype).name}")
    assert y.shape == EMPTY_SHAPES[name] and y.dtype == dtype
    y.backward(np.zeros(y.shape, dtype))
    assert x.grad.shape == x_shape and x.grad.dtype == dtype
    for p in params:
        assert p.grad.shape == p.shape and p.grad.dtype == dtype and not np.any(p.grad)


def test_max_pool_all_minus_inf_window_points_at_a_real_pixel():
    """A window of -inf values (padding included) reports its first real pixel, as PyTorch does."""
    x = np.full((1, 1, 5, 6), -np.inf)
    y, idx = F.max_pool2d(x, 3, 2, 1, return_indices=True, backend="numpy")
    rows, cols = np.divmod(idx.numpy(), 6)
    assert np.all(y.numpy() == -np.inf)
    assert rows.min() >= 0 and cols.min() >= 0
    assert idx.numpy()[0, 0, 0, 0] == 0 and idx.numpy()[0, 0, 1, 1] == 1 * 6 + 1
