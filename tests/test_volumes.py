"""3-D ops (volumes) against PyTorch and the NumPy reference, and every CPU plan against the reference.

The random configurations are the 1-D and 2-D suites' strategies (``cases.py``) at three spatial dims, with
smaller sizes: sizes the stride does not divide, dilation, groups, every padding form, ``ceil_mode`` and
``count_include_pad``. Deliberate cases cover the depth decomposition's own paths: depth taps that read
only padding, planes stacked for pointwise and ``1 x 1 x k`` kernels, overlapping depth windows of a max
pool with ties and NaN.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import fastconv as fc
import fastconv.functional as F
from fastconv import shapes
from fastconv.backends import depth, plan

import cases
from helpers import assert_close, check_against, run_torch, torch

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch (the oracle) is not installed")
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                                      HealthCheck.function_scoped_fixture])
SEEDS = st.integers(0, 2**16)
# fft:overlap runs long 1-D signals in blocks, never a volume (test_depth_paths_match_reference: it says so)
PLANS = [name for name in cases.cpu_plans() if name not in ("numpy", "fft:overlap")]


def _volumes():
    """Every 3-D op family, on small volumes (a few hundred voxels)."""
    return st.one_of(cases.conv_cases(3, max_size=4), cases.conv_transpose_cases(3), cases.pool_cases("max", 3),
                     cases.pool_cases("avg", 3))


def _torch_F():
    return torch.nn.functional


# ------------------------------------------------------------------- reference against PyTorch
@needs_torch
@settings(max_examples=40, **SETTINGS)
@given(data=st.data(), seed=SEEDS)
def test_reference_matches_torch(data, seed):
    case = data.draw(_volumes())
    check_against(lambda *t: cases.call(F, case, t, backend="numpy"), lambda *t: cases.call(_torch_F(), case, t),
                  cases.make_args(case, np.random.default_rng(seed)), run_oracle=run_torch, what=f"{case}")


@needs_torch
@settings(max_examples=25, **SETTINGS)
@given(case=cases.pool_cases("max", 3), seed=SEEDS, backend=st.sampled_from(["numpy", "auto"]))
def test_max_pool3d_indices_match_torch(case, seed, backend):
    x = cases.make_args(case, np.random.default_rng(seed))[0]
    x = np.round(x * 2) / 2  # ties between and within depth slices: the first maximum wins, as PyTorch
    y, idx = cases.call(F, case, [x], backend=backend, return_indices=True)
    y_ref, idx_ref = cases.call(_torch_F(), case, [torch.from_numpy(x)], return_indices=True)
    np.testing.assert_array_equal(idx.numpy(), idx_ref.numpy(), err_msg=f"indices of {case}")
    assert_close(y.numpy(), y_ref.numpy(), x.dtype, f"{case}")


# --------------------------------------------------------------------- every plan, the reference
@pytest.mark.parametrize("name", PLANS)
@settings(max_examples=12, **SETTINGS)
@given(data=st.data(), seed=SEEDS)
def test_plan_matches_reference(name, data, seed):
    case = data.draw(cases.for_plan(name, _volumes(), dims=3, max_size=4))
    assume(cases.matches_reference(name, case, seed) is not None)


DEPTH_PATHS = [  # (x shape, weight shape, keyword arguments): the decomposition's own cases
    ((1, 2, 3, 5, 5), (3, 2, 3, 3, 3), dict(padding=(4, 1, 1))),                  # taps reading only padding
    ((2, 4, 3, 4, 5), (6, 4, 1, 1, 1), {}),                                      # pointwise: stacked planes
    ((2, 4, 3, 4, 9), (6, 2, 1, 1, 3), dict(padding=(0, 0, 2), stride=(1, 1, 2), groups=2)),  # 1x1xk
    ((1, 3, 7, 4, 4), (3, 1, 3, 2, 2), dict(stride=(3, 1, 1), dilation=(2, 1, 1), groups=3)),  # depthwise
    ((1, 2, 5, 4, 4), (2, 2, 2, 3, 3), dict(padding="same", dilation=(3, 1, 2))),  # even, dilated, 'same'
    ((0, 2, 4, 4, 4), (2, 2, 3, 3, 3), dict(padding=1)),                         # an empty batch
]


@pytest.mark.parametrize("name", cases.cpu_plans())
@pytest.mark.parametrize("xs, ws, kwargs", DEPTH_PATHS)
def test_depth_paths_match_reference(name, xs, ws, kwargs):
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(xs).astype(np.float32), rng.standard_normal(ws).astype(np.float32),
              rng.standard_normal(ws[0]).astype(np.float32)]
    ran = cases.runs_here(name, lambda: check_against(
        lambda *t: F.conv3d(*t, backend=name, **kwargs), lambda *t: F.conv3d(*t, backend="numpy", **kwargs),
        arrays, what=f"{name} conv3d {xs} {ws} {kwargs}") or True)
    if ran is None:
        pytest.skip(f"{name} does not run this case")


TRANSPOSED_DEPTH_PATHS = [  # conv_transpose3d: (x shape, weight shape, keyword arguments)
    ((1, 2, 2, 3, 3), (2, 3, 1, 1, 1), dict(output_padding=(0, 1, 0), dilation=(1, 2, 1))),  # rows no output
    ((1, 2, 3, 2, 4), (2, 2, 1, 1, 3), dict(stride=(2, 1, 1), output_padding=(1, 0, 0))),     # ... depths too
    ((1, 4, 3, 4, 4), (4, 2, 2, 2, 2), dict(stride=2)),                 # disjoint depth windows: written once
    ((1, 2, 3, 3, 3), (2, 2, 2, 1, 1), dict(stride=(3, 1, 1), output_padding=(2, 0, 0))),  # ... with gaps
]


@pytest.mark.parametrize("name", cases.cpu_plans())
@pytest.mark.parametrize("xs, ws, kwargs", TRANSPOSED_DEPTH_PATHS)
def test_transposed_depth_paths_match_reference(name, xs, ws, kwargs):
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(xs).astype(np.float32), rng.standard_normal(ws).astype(np.float32)]
    ran = cases.runs_here(name, lambda: check_against(
        lambda *t: F.conv_transpose3d(*t, backend=name, **kwargs),
        lambda *t: F.conv_transpose3d(*t, backend="numpy", **kwargs), arrays,
        what=f"{name} conv_transpose3d {xs} {ws} {kwargs}") or True)
    if ran is None:
        pytest.skip(f"{name} does not run this case")


@pytest.mark.parametrize("name", ["numba", "cython"])
def test_max_pool3d_nan_and_minus_inf_windows(name):
    x = np.full((1, 2, 4, 3, 3), -np.inf)
    x[0, 0, 1, 1, 1], x[0, 0, 3, 0, 0] = np.nan, 5.0  # a NaN wins its window; all -inf points inside
    x[0, 1, 2] = 1.0                                   # ties across depth: the first slice wins
    for kwargs in (dict(kernel_size=2, stride=1), dict(kernel_size=(3, 2, 2), stride=(2, 1, 1), padding=1)):
        y, idx = F.max_pool3d(x, return_indices=True, backend=name, **kwargs)
        y_ref, idx_ref = F.max_pool3d(x, return_indices=True, backend="numpy", **kwargs)
        np.testing.assert_array_equal(y.numpy(), y_ref.numpy())
        np.testing.assert_array_equal(idx.numpy(), idx_ref.numpy())


def test_plans_say_how_they_run_volumes():
    spec = shapes.conv_spec((2, 8, 6, 10, 10), (16, 8, 3, 3, 3), None, 1, 1, dims=3)
    made = plan.plan("conv2d", spec, np.float32, backend="cython")
    assert made.backend == "depth" and made.algorithm.startswith("cython")
    assert "3 depth taps folded into the channels (12 samples of 24 channels)" in made.reason
    assert depth.inner_spec(spec).x_shape == (12, 24, 10, 10)
    assert plan.plan("conv2d", spec, np.float32, backend="numpy").backend == "numpy"  # runs depth itself
    pointwise = shapes.conv_spec((2, 8, 6, 10, 10), (16, 8, 1, 1, 1), None, dims=3)
    assert "stacked planes (60 rows)" in plan.plan("conv2d", pointwise, np.float32).reason
    pool = shapes.pool_spec((2, 8, 6, 10, 10), 2, dims=3)
    assert "48 depth slices" in plan.plan("max_pool2d", pool, np.float64, backend="cython").reason
    if "numba" in fc.available_backends():  # max pooling of volumes in one pass
        assert plan.plan("max_pool2d", pool, np.float64).name == "numba"
    text = str(fc.explain(F.conv3d, np.zeros((2, 8, 6, 10, 10), np.float32), np.zeros((16, 8, 3, 3, 3), np.float32),
                          padding=1))
    assert "2x8x6x10x10 -> 2x16x6x10x10" in text and "depth taps" in text


def test_depth_taps():
    spec = shapes.conv_spec((1, 1, 5, 1, 1), (1, 1, 3, 1, 1), None, stride=2, padding=(3, 0, 0), dims=3)
    # outputs 0..3 read depths oz*2 - 3 + k: tap 0 reads -3, -1, 1, 3; tap 2 reads -1, 1, 3, 5
    assert depth.taps(spec) == ((0, 2, 4, 1), (1, 1, 4, 0), (2, 1, 3, 1))


# ------------------------------------------------------------------ the other ops against PyTorch
@needs_torch
@settings(max_examples=15, **SETTINGS)
@given(shape=st.tuples(*[st.integers(1, 6)] * 3), out=st.tuples(*[st.integers(1, 6)] * 3), seed=SEEDS,
       dtype=st.sampled_from(cases.DTYPES))
def test_adaptive_avg_pool3d(shape, out, seed, dtype):
    x = np.random.default_rng(seed).standard_normal((2, 3) + shape).astype(dtype)
    check_against(lambda t: F.adaptive_avg_pool3d(t, out), lambda t: _torch_F().adaptive_avg_pool3d(t, out), [x],
                  run_oracle=run_torch, what=f"{shape} -> {out}")


@needs_torch
@settings(max_examples=25, **SETTINGS)
@given(shape=st.tuples(*[st.integers(1, 5)] * 3), seed=SEEDS, mode=st.sampled_from(["nearest", "trilinear"]),
       align=st.booleans(), by_size=st.booleans(), data=st.data())
def test_interpolate_volumes(shape, seed, mode, align, by_size, data):
    x = np.random.default_rng(seed).standard_normal((2, 2) + shape)
    if by_size:
        kwargs = dict(size=data.draw(st.tuples(*[st.integers(1, 8)] * 3)))
    else:
        kwargs = dict(scale_factor=data.draw(st.tuples(*[st.sampled_from([0.5, 1.0, 1.5, 2.0, 2.5])] * 3)))
        assume(all(int(s * f) >= 1 for s, f in zip(shape, kwargs["scale_factor"])))
    if mode == "trilinear":
        kwargs["align_corners"] = align
    check_against(lambda t: F.interpolate(t, mode=mode, **kwargs),
                  lambda t: _torch_F().interpolate(t, mode=mode, **kwargs), [x], run_oracle=run_torch,
                  what=f"{shape} {mode} {kwargs}")


@needs_torch
@pytest.mark.parametrize("backend", ["numpy", "auto"])
@pytest.mark.parametrize("size, kernel, stride, padding, output_size", [
    ((8, 6, 4), 2, None, 0, None), ((7, 6, 5), 3, 2, 1, (7, 6, 5)),
    ((7, 6, 5), (2, 3, 2), (2, 2, 1), (1, 1, 0), (2, 2, 7, 6, 5))])
def test_max_unpool3d(backend, size, kernel, stride, padding, output_size):
    x = np.random.default_rng(0).permutation(4 * np.prod(size)).reshape((2, 2) + size).astype(np.float64)
    y, idx = F.max_pool3d(x, kernel, stride, padding, return_indices=True)
    check_against(lambda t: F.max_unpool3d(t, idx, kernel, stride, padding, output_size, backend=backend),
                  lambda t: _torch_F().max_unpool3d(t, torch.from_numpy(idx.numpy()), kernel, stride, padding,
                                                   output_size), [y.numpy()], run_oracle=run_torch,
                  what=f"unpool {kernel} {stride} {padding} {output_size}")


@needs_torch
@pytest.mark.parametrize("p", [2, 1.5])
def test_lp_pool3d(p):
    x = np.abs(np.random.default_rng(0).standard_normal((2, 2, 5, 4, 5))) + 0.1
    check_against(lambda t: F.lp_pool3d(t, p, (2, 3, 2), (1, 2, 2), ceil_mode=True),
                  lambda t: _torch_F().lp_pool3d(t, p, (2, 3, 2), (1, 2, 2), ceil_mode=True), [x],
                  run_oracle=run_torch, what=f"lp_pool3d p={p}")


# ------------------------------------------------------------------------------------ layers
@needs_torch
def test_layers_match_torch():
    fc.manual_seed(0)
    tnn = torch.nn
    pairs = [
        (fc.nn.Conv3d(4, 6, (2, 3, 3), stride=(1, 2, 1), padding=(1, 0, 1), dilation=(2, 1, 1), groups=2),
         tnn.Conv3d(4, 6, (2, 3, 3), stride=(1, 2, 1), padding=(1, 0, 1), dilation=(2, 1, 1), groups=2)),
        (fc.nn.Conv3d(4, 3, 3, padding="same", bias=False), tnn.Conv3d(4, 3, 3, padding="same", bias=False)),
        (fc.nn.ConvTranspose3d(4, 2, 3, stride=2, padding=1, output_padding=1),
         tnn.ConvTranspose3d(4, 2, 3, stride=2, padding=1, output_padding=1)),
        (fc.nn.MaxPool3d(3, 2, 1, ceil_mode=True), tnn.MaxPool3d(3, 2, 1, ceil_mode=True)),
        (fc.nn.AvgPool3d((2, 3, 3), (1, 2, 2), 1, count_include_pad=False),
         tnn.AvgPool3d((2, 3, 3), (1, 2, 2), 1, count_include_pad=False)),
        (fc.nn.AdaptiveAvgPool3d((2, 3, 1)), tnn.AdaptiveAvgPool3d((2, 3, 1))),
        (fc.nn.Upsample(scale_factor=2), tnn.Upsample(scale_factor=2)),
        (fc.nn.Upsample(size=(3, 7, 4), mode="trilinear", align_corners=True),
         tnn.Upsample(size=(3, 7, 4), mode="trilinear", align_corners=True)),
    ]
    x = np.random.default_rng(1).standard_normal((2, 4, 5, 6, 5)).astype(np.float32)
    for ours, theirs in pairs:
        theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
        params = list(ours.parameters())
        check_against(lambda t, *p: ours(t), lambda t, *p: theirs(t), [x], run_oracle=run_torch, what=repr(ours))
        assert [tuple(p.shape) for p in params] == [tuple(p.shape) for p in theirs.parameters()]
    # 2-D input through Upsample, as PyTorch's takes either
    x2 = x[:, :, 0]
    check_against(lambda t: fc.nn.Upsample(size=(4, 9), mode="bilinear")(t),
                  lambda t: tnn.Upsample(size=(4, 9), mode="bilinear")(t), [x2], run_oracle=run_torch, what="2-D")


# ------------------------------------------------------------------------------------- bad input
BAD = [
    (lambda: F.conv3d(np.zeros((1, 2, 4, 4)), np.zeros((3, 2, 1, 1, 1))), ValueError, r"input must be 5-D \(N, C, D, H, W\)"),
    (lambda: F.conv3d(np.zeros((1, 2, 4, 4, 4)), np.zeros((3, 2, 1, 1))), ValueError, r"weight must be 5-D"),
    (lambda: F.conv3d(np.zeros((1, 2, 4, 4, 4)), np.zeros((3, 2, 1, 1, 1)), stride=(1, 2)), TypeError,
     r"stride must be an int or a tuple of 3 ints"),
    (lambda: F.conv3d(np.zeros((1, 2, 4, 4, 4)), np.zeros((3, 2, 5, 1, 1))), ValueError,
     r"kernel size 5 .* along spatial dim 0"),
    (lambda: F.conv3d(np.zeros((1, 2, 4, 4, 4)), np.zeros((3, 2, 1, 1, 1)), padding="same", stride=2),
     ValueError, r"padding='same' needs stride 1"),
    (lambda: F.conv3d(np.zeros((1, 4, 4, 4, 4)), np.zeros((3, 2, 1, 1, 1)), groups=2), ValueError,
     r"divisible by groups"),
    (lambda: F.conv_transpose3d(np.zeros((1, 2, 4, 4)), np.zeros((2, 3, 1, 1, 1))), ValueError,
     r"input must be 5-D"),
    (lambda: F.conv_transpose3d(np.zeros((1, 2, 4, 4, 4)), np.zeros((2, 3, 2, 2, 2)), stride=2,
                                output_padding=(0, 2, 0)), ValueError, r"output_padding must be smaller"),
    (lambda: F.max_pool3d(np.zeros((1, 2, 4, 4)), 2), ValueError, r"input must be 5-D"),
    (lambda: F.max_pool3d(np.zeros((1, 2, 4, 4, 4)), (2, 2)), TypeError, r"kernel_size must be an int or a tuple of 3"),
    (lambda: F.avg_pool3d(np.zeros((1, 2, 4, 4, 4)), 2, padding=2), ValueError, r"padding must be at most half"),
    (lambda: F.max_pool3d(np.zeros((1, 2, 1, 4, 4)), 2), ValueError, r"larger than the padded input .* dim 0"),
    (lambda: F.max_unpool3d(np.zeros((1, 2, 2, 2, 2)), np.full((1, 2, 2, 2, 2), 64), 2), ValueError,
     r"indices must lie in \[0, 64\)"),
    (lambda: F.adaptive_avg_pool3d(np.zeros((1, 2, 4, 4)), 2), ValueError, r"input must be 5-D"),
    (lambda: F.interpolate(np.zeros((1, 2, 4, 4, 4)), scale_factor=2, mode="bilinear"), ValueError,
     r"mode must be one of 'nearest', 'trilinear'"),
    (lambda: F.interpolate(np.zeros((1, 2, 1, 2, 4, 4)), scale_factor=2), ValueError, r"or 5-D \(N, C, D, H, W\)"),
    (lambda: fc.nn.Conv3d(2, 3, (3, 3)), TypeError, r"kernel_size must be an int or a tuple of 3 ints"),
    (lambda: fc.nn.Upsample(scale_factor=2, mode="cubic"), ValueError, r"mode must be one of"),
    (lambda: fc.nn.Upsample(), ValueError, r"exactly one of size and scale_factor"),
]


@pytest.mark.parametrize("call, error, match", BAD)
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_one_backward_lays_out_each_array_once():
    """Inside ``depth.one_backward`` an array's fold is made once per spec (the gradients of one layer
    share it) unless another fold has overwritten the workspace since; outside, every call makes its own."""
    from fastconv.backends import depth
    spec = shapes.conv_spec((1, 2, 6, 5, 5), (3, 2, 3, 3, 3), None, padding=1, dims=3)
    smaller = shapes.conv_spec((1, 2, 6, 5, 5), (3, 2, 2, 3, 3), None, stride=(2, 1, 1), padding=1, dims=3)
    x = np.random.default_rng(0).standard_normal(spec.x_shape)
    want, want_smaller = depth._folded(x, spec).copy(), depth._folded(x, smaller).copy()
    with depth.one_backward():
        first = depth._once(depth._folded, x, spec)
        assert depth._once(depth._folded, x, spec) is first
        np.testing.assert_array_equal(depth._once(depth._folded, x, smaller), want_smaller)  # same workspace
        np.testing.assert_array_equal(depth._once(depth._folded, x, spec), want)  # made again
        np.testing.assert_array_equal(depth._once(depth._folded, -x, spec), -want)
    x += 1
    expected = depth._folded(x, spec).copy()
    np.testing.assert_array_equal(depth._once(depth._folded, x, spec), expected)
