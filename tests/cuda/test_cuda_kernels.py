"""Every kernel of the CUDA backend against the NumPy reference, on tiny shapes chosen to hit the edge
cases: strides that do not divide the size, dilation, groups, asymmetric ('same') padding, 1-D ops,
both convolution kernels (direct and implicit GEMM), split-K weight gradients, NaN and -inf in max pooling,
ceil_mode and count_include_pad in average pooling, empty batches."""
import numpy as np
import pytest

from fastconv import shapes
from fastconv.backends import reference as ref
from fastconv.gpu import launch
from fastconv.gpu import conv as kc
from fastconv.gpu import pool as kp
from fastconv.gpu import xp as ca

from cuda_helpers import CUDA_TESTS, DTYPES, assert_close

pytestmark = CUDA_TESTS + [pytest.mark.usefixtures("poisoned_outputs")]

# (x shape, w shape, stride, padding, dilation, groups)
CONVS = {
    "plain": ((2, 3, 5, 6), (4, 3, 3, 3), 1, 1, 1, 1),
    "stride_not_dividing": ((1, 2, 7, 6), (3, 2, 3, 2), (2, 3), (1, 0), 1, 1),
    "dilated_grouped": ((2, 4, 6, 7), (6, 2, 2, 3), 1, (2, 1), (2, 2), 2),
    "same_even_kernel": ((1, 2, 5, 5), (3, 2, 2, 4), 1, "same", (1, 2), 1),
    "depthwise_1x1": ((1, 3, 4, 3), (3, 1, 1, 1), 2, 0, 1, 3),
}


def _conv(name, dtype, rng, bias=True):
    xs, ws, stride, padding, dilation, groups = CONVS[name]
    x, w = rng.standard_normal(xs).astype(dtype), rng.standard_normal(ws).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(dtype) if bias else None
    spec = shapes.conv_spec(xs, ws, None if b is None else b.shape, stride, padding, dilation, groups)
    return x, w, b, spec


def _dev(a):
    return None if a is None else ca.asarray(a)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(CONVS))
def test_conv2d_forward_both_kernels(name, dtype):
    rng = np.random.default_rng(1)
    x, w, b, spec = _conv(name, dtype, rng, bias=name != "plain")
    expected = ref.conv2d(x, w, b, spec)
    for kernel in (kc.conv2d_direct, kc.conv2d_gemm):
        y = kernel(_dev(x), _dev(w), _dev(b), spec)
        assert isinstance(y, ca.CudaArray)
        assert_close(y, expected, dtype, f"{kernel.__name__} {name}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(CONVS))
def test_conv2d_gradients(name, dtype):
    rng = np.random.default_rng(2)
    x, w, _, spec = _conv(name, dtype, rng)
    gy = rng.standard_normal(spec.y_shape).astype(dtype)
    assert_close(kc.conv2d_grad_input(_dev(gy), _dev(w), spec), ref.conv2d_grad_input(gy, w, spec), dtype,
                 f"grad_input {name}")
    assert_close(kc.conv2d_grad_weight(_dev(gy), _dev(x), spec), ref.conv2d_grad_weight(gy, x, spec), dtype,
                 f"grad_weight {name}")


def test_grad_weight_split_k_covers_every_pixel():
    """Enough output pixels that the reduction is split over several blocks (atomic partial sums)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 1, 6, 6))
    w = rng.standard_normal((2, 1, 2, 2))
    spec = shapes.conv_spec(x.shape, w.shape, None, 1, 0, 1, 1)
    splits, chunk = kc._splits(spec, launch.config())
    assert splits > 1 and splits * chunk >= spec.n * spec.oh * spec.ow
    gy = rng.standard_normal(spec.y_shape)
    assert_close(kc.conv2d_grad_weight(_dev(gy), _dev(x), spec), ref.conv2d_grad_weight(gy, x, spec))


def test_conv1d_as_unit_height():
    rng = np.random.default_rng(4)
    x, w = rng.standard_normal((2, 2, 1, 9)), rng.standard_normal((3, 2, 1, 3))
    spec = shapes.conv_spec((2, 2, 9), (3, 2, 3), None, 2, 1, 2, 1, dims=1)
    assert_close(kc.conv2d(_dev(x), _dev(w), None, spec), ref.conv2d(x, w, None, spec))
    gy = rng.standard_normal(spec.y_shape)
    assert_close(kc.conv2d_grad_input(_dev(gy), _dev(w), spec), ref.conv2d_grad_input(gy, w, spec))


def test_dispatch_picks_direct_for_few_channels_and_gemm_for_many():
    few = shapes.conv_spec((8, 1, 28, 28), (6, 1, 5, 5))
    many = shapes.conv_spec((8, 64, 56, 56), (64, 64, 3, 3), padding=1)
    assert kc.use_direct(few) and not kc.use_direct(many)


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_batch(dtype):
    x, w = np.zeros((0, 2, 5, 5), dtype), np.ones((3, 2, 3, 3), dtype)
    spec = shapes.conv_spec(x.shape, w.shape)
    assert kc.conv2d(_dev(x), _dev(w), None, spec).shape == (0, 3, 3, 3)
    gy = np.zeros(spec.y_shape, dtype)
    assert_close(kc.conv2d_grad_weight(_dev(gy), _dev(x), spec), np.zeros(w.shape, dtype))
    assert kc.conv2d_grad_input(_dev(gy), _dev(w), spec).shape == x.shape


# ---------------------------------------------------------------------------- pooling
# (x shape, kernel, stride, padding, dilation, ceil_mode)
POOLS = {
    "overlapping_ceil": ((2, 2, 7, 6), 3, 2, 1, 1, True),
    "dilated": ((1, 3, 7, 7), (2, 3), (1, 2), (1, 0), (2, 1), False),
    "ceil_overhang": ((1, 2, 5, 6), 2, 2, 0, 1, True),
    "one_d": ((2, 2, 1, 9), (1, 3), (1, 2), (0, 1), 1, True),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(POOLS))
def test_max_pool_and_grad(name, dtype):
    xs, k, s, p, d, ceil = POOLS[name]
    rng = np.random.default_rng(5)
    x = rng.standard_normal(xs).astype(dtype)
    x.flat[::7] = x.flat[3]  # ties: the first maximum wins
    spec = shapes.pool_spec(xs, k, s, p, d, ceil)
    y, idx = kp.max_pool2d(_dev(x), spec)
    y_ref, idx_ref = ref.max_pool2d(x, spec)
    assert_close(y, y_ref, dtype, f"max_pool {name}")
    assert_close(idx, idx_ref, dtype, f"max_pool indices {name}")
    gy = rng.standard_normal(spec.y_shape).astype(dtype)
    assert_close(kp.max_pool2d_grad(_dev(gy), idx, spec), ref.max_pool2d_grad(gy, idx_ref, spec), dtype,
                 f"max_pool grad {name}")


def test_max_pool_nan_and_inf():
    x = np.array([[[[1.0, np.nan, 3.0, -np.inf],
                    [np.nan, 0.0, -np.inf, -np.inf],
                    [2.0, 5.0, 4.0, 4.0]]]], np.float32)
    spec = shapes.pool_spec(x.shape, 2, 1, 0, 1, False)
    y, idx = kp.max_pool2d(_dev(x), spec)
    y_ref, idx_ref = ref.max_pool2d(x, spec)
    assert_close(y, y_ref)
    assert_close(idx, idx_ref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("name", ["overlapping_ceil", "ceil_overhang", "one_d"])
def test_avg_pool_and_grad(name, count_include_pad, dtype):
    xs, k, s, p, _, ceil = POOLS[name]
    rng = np.random.default_rng(6)
    x = rng.standard_normal(xs).astype(dtype)
    spec = shapes.pool_spec(xs, k, s, p, 1, ceil, count_include_pad)
    assert_close(kp.avg_pool2d(_dev(x), spec), ref.avg_pool2d(x, spec), dtype, f"avg_pool {name}")
    gy = rng.standard_normal(spec.y_shape).astype(dtype)
    assert_close(kp.avg_pool2d_grad(_dev(gy), spec), ref.avg_pool2d_grad(gy, spec), dtype, f"avg grad {name}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_unpool_and_grad(dtype):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 2, 6, 5)).astype(dtype)
    spec = shapes.pool_spec(x.shape, 2, 2, 0, 1, False)
    y, idx = ref.max_pool2d(x, spec)
    out = kp.max_unpool2d(_dev(y), _dev(idx), (6, 5))
    assert_close(out, ref.max_unpool2d(y, idx, (6, 5)), dtype, "max_unpool")
    g = rng.standard_normal((2, 2, 6, 5)).astype(dtype)
    assert_close(kp.max_unpool2d_grad(_dev(g), _dev(idx)), ref.max_unpool2d_grad(g, idx), dtype, "unpool grad")


@pytest.fixture
def gpu_launch_config(monkeypatch):
    """The launch shapes a real GPU uses (64x64 GEMM tiles of 16x16 threads, ...) instead of the
    simulator's small ones (kernels are built per launch configuration)."""
    monkeypatch.setattr(launch, "SIMULATOR", launch.GPU)


def test_gpu_launch_configuration(gpu_launch_config):
    """The same kernels with the GPU's tile sizes: partial tiles on every edge, split-K, multi-tile matmul."""
    rng = np.random.default_rng(8)
    x, w = rng.standard_normal((1, 3, 9, 17)).astype(np.float32), rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    spec = shapes.conv_spec(x.shape, w.shape, b.shape, (2, 1), 1, (1, 2), 1)
    expected = ref.conv2d(x, w, b, spec)
    assert_close(kc.conv2d_direct(_dev(x), _dev(w), _dev(b), spec), expected, np.float32, "direct")
    assert_close(kc.conv2d_gemm(_dev(x), _dev(w), _dev(b), spec), expected, np.float32, "gemm")
    gy = rng.standard_normal(spec.y_shape).astype(np.float32)
    assert_close(kc.conv2d_grad_weight(_dev(gy), _dev(x), spec), ref.conv2d_grad_weight(gy, x, spec), np.float32)
    a, m = rng.standard_normal((70, 20)), rng.standard_normal((20, 66))
    assert_close(ca.matmul(_dev(m).T, _dev(a).T), m.T @ a.T)
