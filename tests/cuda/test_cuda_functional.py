"""The public ops on GPU tensors against the same ops on the CPU: forward values and every input gradient,
float32 and float64; moving tensors between devices; device errors."""
import numpy as np
import pytest

import fastconv as fc
import fastconv.functional as F

from cuda_helpers import CUDA_TESTS, DTYPES, assert_close, host

pytestmark = CUDA_TESTS


def _run(fn, arrays, device, seed=0):
    """``fn(*tensors)`` on ``device``, then backward with a fixed random gradient: (output, grads)."""
    ts = [fc.tensor(a.copy(), requires_grad=a.dtype.kind == "f", device=device) for a in arrays]
    y = fn(*ts)
    assert y.device == device
    g = np.random.default_rng(seed).standard_normal(y.shape).astype(y.dtype)
    y.backward(g)
    return y, [t.grad for t in ts if t.requires_grad]


def check_op(fn, *arrays):
    """Same output (value, dtype, shape) and gradients on the GPU as on the CPU."""
    y_cpu, g_cpu = _run(fn, arrays, "cpu")
    y_gpu, g_gpu = _run(fn, arrays, "cuda")
    dtype = y_cpu.dtype
    assert_close(y_gpu, y_cpu, dtype, "forward")
    for i, (a, b) in enumerate(zip(g_gpu, g_cpu)):
        assert a.device == "cuda"
        assert_close(a, b, dtype, f"gradient {i}")


def _rand(*shape, dtype=np.float32, seed=0):
    return np.random.default_rng(seed + sum(shape)).standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_convolutions(dtype):
    x, w, b = _rand(2, 4, 5, 6, dtype=dtype), _rand(6, 2, 3, 3, dtype=dtype), _rand(6, dtype=dtype)
    check_op(lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1, groups=2), x, w, b)
    x1, w1 = _rand(2, 3, 9, dtype=dtype), _rand(2, 3, 4, dtype=dtype)
    check_op(lambda x, w: F.conv1d(x, w, padding="same", dilation=2), x1, w1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_transposed_convolutions(dtype):
    x, w, b = _rand(1, 4, 3, 4, dtype=dtype), _rand(4, 3, 3, 2, dtype=dtype), _rand(3, dtype=dtype)
    check_op(lambda x, w, b: F.conv_transpose2d(x, w, b, stride=2, padding=1, output_padding=1), x, w, b)
    x1, w1 = _rand(2, 2, 5, dtype=dtype), _rand(2, 1, 3, dtype=dtype)
    check_op(lambda x, w: F.conv_transpose1d(x, w, stride=3, groups=2, dilation=2), x1, w1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_pooling(dtype):
    x = _rand(2, 2, 5, 7, dtype=dtype)
    check_op(lambda x: F.max_pool2d(x, 3, 2, padding=1, ceil_mode=True), x)
    check_op(lambda x: F.avg_pool2d(x, (2, 3), 2, padding=1, ceil_mode=True, count_include_pad=False), x)
    check_op(lambda x: F.lp_pool2d(x, 2, 2), np.abs(x) + 0.5)
    check_op(lambda x: F.max_pool1d(x, 3, 2, dilation=2), _rand(2, 2, 9, dtype=dtype))


def test_max_pool_indices_and_unpool():
    x = _rand(1, 2, 6, 4)
    y_cpu, i_cpu = F.max_pool2d(fc.tensor(x), 2, return_indices=True)
    y_gpu, i_gpu = F.max_pool2d(fc.tensor(x, device="cuda"), 2, return_indices=True)
    assert_close(i_gpu, i_cpu)
    assert i_gpu.device == "cuda" and i_gpu.dtype == np.int64
    check_op(lambda y: F.max_unpool2d(y, i_cpu if y.device == "cpu" else i_gpu, 2), y_cpu.numpy())


def test_resampling_runs_through_matmul():
    x = _rand(2, 3, 5, 4)
    check_op(lambda x: F.adaptive_avg_pool2d(x, (2, 3)), x)
    check_op(lambda x: F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False), x)
    check_op(lambda x: F.interpolate(x, size=3, mode="linear", align_corners=True), _rand(2, 2, 5))


@pytest.mark.parametrize("dtype", DTYPES)
def test_losses_and_glue(dtype):
    x, w, b = _rand(5, 7, dtype=dtype), _rand(4, 7, dtype=dtype), _rand(4, dtype=dtype)
    labels = np.array([0, 3, 1, 1, 2])
    check_op(lambda x, w, b: F.cross_entropy(F.linear(x, w, b), fc.tensor(labels, device=x.device)), x, w, b)
    check_op(lambda x: F.nll_loss(F.log_softmax(x, 1), fc.tensor(labels, device=x.device), "sum"), x[:, :4])
    check_op(lambda x: F.nll_loss(F.softmax(x, 0), fc.tensor(labels[:4], device=x.device), "none"), x[:4])
    check_op(lambda x, t: F.mse_loss(x, t), x, _rand(5, 7, dtype=dtype, seed=1))
    check_op(lambda x: (F.relu(x) + F.tanh(x) * F.sigmoid(x) - abs(x) ** 1.5 / 3.0).sum(axis=1), x)
    check_op(lambda x: (x.exp() + (x * x + 1.0).log()).mean(axis=0, keepdims=True), x)
    check_op(lambda x: (x.T @ x).reshape(-1)[3:20] * 2, x)
    check_op(lambda x: x[np.array([4, 0, 4])].transpose(1, 0) - 1, x)
    check_op(lambda x: F.flatten(x.reshape(5, 7, 1) / (x.reshape(5, 7, 1) ** 2 + 1)), x)


def test_tensor_moves_between_devices():
    a = _rand(2, 3)
    t = fc.tensor(a, requires_grad=True)
    g = t.to("cuda")
    assert g.device == "cuda" and g.requires_grad and g.is_leaf and g.shape == (2, 3) and g.dtype == np.float32
    assert g.to("cuda") is g and g.cuda() is g
    back = g.to("cpu")
    assert back.device == "cpu" and isinstance(back.data, np.ndarray)
    assert_close(back.numpy(), a)
    assert_close(fc.tensor(a, device="cuda:0").cpu().numpy(), a)
    assert "device='cuda'" in repr(g)
    assert fc.tensor(g.data, device="cuda").device == "cuda" and fc.tensor(g.data).device == "cpu"
    assert fc.tensor(3.5, device="cuda").shape == ()
    assert fc.tensor([1, 2], device="cuda").dtype == np.int64


def test_device_mistakes_are_clear_errors():
    x, w = fc.tensor(_rand(1, 1, 4, 4), device="cuda"), fc.tensor(_rand(1, 1, 3, 3))
    with pytest.raises(ValueError, match="weight is on cpu"):
        F.conv2d(x, w)
    with pytest.raises(ValueError, match="GPU"):
        F.conv2d(x, w.to("cuda"), backend="numpy")
    with pytest.raises(ValueError, match="needs tensors on the GPU"):
        F.conv2d(w, w, backend="cuda")
    with pytest.raises(TypeError, match="CPU"):
        x + np.ones((1, 1, 4, 4), np.float32)


def test_module_to_cuda_and_back():
    conv = fc.nn.Conv2d(2, 3, 3, padding=1)
    x = _rand(1, 2, 4, 4)
    expected = conv(fc.tensor(x)).numpy()
    conv.to("cuda")
    assert all(p.device == "cuda" for p in conv.parameters())
    assert_close(conv(fc.tensor(x, device="cuda")), expected)
    state = conv.state_dict()
    conv.load_state_dict(state)
    assert_close(host(conv.weight), state["weight"])
    conv.to("cpu")
    assert_close(conv(fc.tensor(x)), expected)
