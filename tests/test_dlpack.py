"""DLPack exchange without copies (NumPy, PyTorch, JAX where installed) and ``Tensor.grad`` as a Tensor."""
import numpy as np
import pytest

import fastconv as fc
import fastconv.functional as F

try:
    import torch
except ImportError:
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch not installed")


def test_numpy_reads_a_tensor_without_copy():
    t = fc.tensor(np.arange(6, dtype=np.float32).reshape(2, 3))
    a = np.from_dlpack(t)
    assert np.shares_memory(a, t.data) and a.shape == (2, 3) and a.dtype == np.float32
    assert t.__dlpack_device__() == (1, 0)  # kDLCPU


def test_from_dlpack_numpy_shares_memory():
    a = np.random.default_rng(0).standard_normal((2, 1, 6, 6)).astype(np.float32)
    t = fc.from_dlpack(a)
    assert isinstance(t, fc.Tensor) and np.shares_memory(t.data, a)
    a[0, 0, 0, 0] = 42.0
    assert t.numpy()[0, 0, 0, 0] == 42.0


@needs_torch
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_with_torch_without_copy(dtype):
    src = torch.arange(24, dtype=torch.from_numpy(np.zeros(0, dtype)).dtype).reshape(2, 3, 4)
    t = fc.from_dlpack(src)
    assert t.shape == (2, 3, 4) and t.dtype == dtype
    src[0, 0, 0] = -7.0  # torch writes, fastconv sees
    assert t.numpy()[0, 0, 0] == -7.0
    back = torch.from_dlpack(t)
    t.data[1, 2, 3] = 99.0  # fastconv writes, torch sees
    assert back[1, 2, 3].item() == 99.0
    assert back.data_ptr() == src.data_ptr()


@needs_torch
def test_tensor_from_torch_runs_ops_and_matches_torch():
    rng = np.random.default_rng(1)
    x, w = torch.from_numpy(rng.standard_normal((2, 3, 8, 8))), torch.from_numpy(rng.standard_normal((4, 3, 3, 3)))
    y = F.conv2d(fc.from_dlpack(x), fc.from_dlpack(w), padding=1)
    np.testing.assert_allclose(y.numpy(), torch.nn.functional.conv2d(x, w, padding=1).numpy(), rtol=1e-10)


@needs_torch
def test_gradient_is_a_tensor_that_torch_can_read():
    x = fc.tensor(np.linspace(-1, 1, 5), requires_grad=True)
    (x * x).sum().backward()
    assert isinstance(x.grad, fc.Tensor) and not x.grad.requires_grad
    np.testing.assert_array_equal(torch.from_dlpack(x.grad).numpy(), 2 * x.numpy())


def test_jax_round_trip():
    jnp = pytest.importorskip("jax.numpy")
    src = jnp.arange(6.0, dtype=jnp.float32).reshape(2, 3)
    t = fc.from_dlpack(src)
    np.testing.assert_array_equal(t.numpy(), np.asarray(src))
    np.testing.assert_array_equal(np.asarray(jnp.from_dlpack(t)), t.numpy())


def test_grad_accumulates_as_tensor_and_accepts_arrays():
    x = fc.tensor(np.ones(3), requires_grad=True)
    (x * 2).sum().backward()
    (x * 3).sum().backward()
    assert isinstance(x.grad, fc.Tensor)
    np.testing.assert_array_equal(x.grad, [5.0, 5.0, 5.0])
    x.grad = np.zeros(3)  # arrays are wrapped
    assert isinstance(x.grad, fc.Tensor) and x.grad.numpy().sum() == 0
    with pytest.raises(ValueError, match="grad must have the tensor's shape"):
        x.grad = np.zeros(4)


def test_from_dlpack_rejects_non_arrays():
    with pytest.raises(TypeError, match="from_dlpack needs an object with __dlpack__"):
        fc.from_dlpack([1.0, 2.0])
