"""The autograd core: gradient accumulation, graph recording and freeing, no_grad, dtypes, deep graphs."""
import sys

import numpy as np
import pytest

import fastconv as fc
import fastconv.functional as F
from fastconv import Tensor


def leaf(values, dtype=np.float64):
    return fc.tensor(np.asarray(values, dtype=dtype), requires_grad=True)


# ------------------------------------------------------------------------------ accumulation
def test_node_used_twice_gets_both_contributions():
    x = leaf([1.0, -2.0, 3.0])
    (x * x + x).sum().backward()  # d/dx (x^2 + x) = 2x + 1
    np.testing.assert_array_equal(x.grad, 2 * x.numpy() + 1)


def test_intermediate_used_twice_gets_both_contributions():
    x = leaf([0.5, 2.0])
    h = x * 3.0
    y = h * h + h.exp()  # diamond: both branches reach x through h
    y.sum().backward()
    np.testing.assert_allclose(x.grad, 18 * x.numpy() + 3 * np.exp(3 * x.numpy()), rtol=1e-14)


def test_reused_conv_weight_accumulates():
    """A weight shared by two convolutions gets the sum of both gradients."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 2, 6, 6))
    w = leaf(rng.standard_normal((2, 2, 3, 3)))
    F.conv2d(F.conv2d(x, w, padding=1), w).sum().backward()
    shared = w.grad.numpy().copy()
    w1, w2 = leaf(w.numpy()), leaf(w.numpy())
    F.conv2d(F.conv2d(x, w1, padding=1), w2).sum().backward()
    np.testing.assert_allclose(shared, w1.grad + w2.grad, rtol=1e-12)


def test_leaf_grad_accumulates_across_backward_calls():
    x = leaf([1.0, 2.0])
    (x * 3.0).sum().backward()
    (x * x).sum().backward()
    np.testing.assert_array_equal(x.grad, 3.0 + 2 * x.numpy())


def test_fancy_index_repeated_accumulates():
    x = leaf([1.0, 2.0, 3.0])
    x[np.array([0, 0, 2])].sum().backward()
    np.testing.assert_array_equal(x.grad, [2.0, 0.0, 1.0])


# ------------------------------------------------------------------------------ backward rules
def test_backward_on_non_scalar_needs_grad():
    x = leaf([1.0, 2.0])
    y = x * 2.0
    with pytest.raises(ValueError, match="grad must be given"):
        y.backward()
    y.backward(np.array([1.0, 10.0]))
    np.testing.assert_array_equal(x.grad, [2.0, 20.0])


def test_backward_grad_shape_and_dtype():
    x = leaf([1.0, 2.0], np.float32)
    with pytest.raises(ValueError, match="grad must have the output's shape"):
        (x * 2.0).backward(np.ones(3))
    y = x * 2.0
    y.backward(fc.tensor(np.ones(2)))  # a float64 Tensor gradient is cast to the output's dtype
    assert x.grad.dtype == np.float32


def test_backward_without_graph_raises():
    with pytest.raises(RuntimeError, match="does not require grad"):
        fc.tensor([1.0]).sum().backward()


def test_scalar_backward_default_grad_is_one():
    x = leaf(3.0)
    assert x.shape == ()
    (x * x).backward()
    assert x.grad.item() == 6.0


def test_only_leaves_keep_grad_and_parents_without_grad_get_none():
    x, c = leaf([1.0, 2.0]), fc.tensor([5.0, 7.0])
    h = x * c
    h.sum().backward()
    np.testing.assert_array_equal(x.grad, [5.0, 7.0])
    assert h.grad is None and c.grad is None and not c.requires_grad


def test_graph_is_freed_after_backward():
    x = leaf([1.0, 2.0])
    h1 = x * 2.0
    h2 = h1.tanh()
    y = (h2 + h1).sum()
    assert h1._parents and h2._parents and y._parents
    y.backward()
    for node in (h1, h2, y):
        assert node._parents == () and not node.is_leaf  # closures gone: they held the saved arrays
    assert x.grad is not None


# ----------------------------------------------------------------------------------- no_grad
def test_no_grad_records_nothing():
    x = leaf([1.0, 2.0])
    assert fc.is_grad_enabled()
    with fc.no_grad():
        assert not fc.is_grad_enabled()
        y = (x * 2.0).sum()
        z = F.conv1d(x.reshape(1, 1, 2), leaf([[[1.0]]]))
    assert fc.is_grad_enabled()
    for t in (y, z):
        assert not t.requires_grad and t._parents == () and t._backward is None
    with pytest.raises(RuntimeError):
        y.backward()


def test_no_grad_nests_and_restores_after_an_exception():
    with fc.no_grad():
        with fc.no_grad():
            pass
        assert not fc.is_grad_enabled()
    assert fc.is_grad_enabled()
    with pytest.raises(ZeroDivisionError):
        with fc.no_grad():
            1 / 0
    assert fc.is_grad_enabled()


# -------------------------------------------------------------------------------- conversion
def test_detach():
    x = leaf([1.0, 2.0])
    d = x.detach()
    assert not d.requires_grad and d.is_leaf
    assert np.shares_memory(d.numpy(), x.numpy())
    y = (d * x).sum()
    y.backward()
    np.testing.assert_array_equal(x.grad, d.numpy())  # no contribution through the detached copy
    assert d.grad is None


def test_numpy_and_item():
    a = np.arange(6.0).reshape(2, 3)
    t = fc.tensor(a)
    assert isinstance(t.numpy(), np.ndarray)
    np.testing.assert_array_equal(t.numpy(), a)
    s = t.sum()
    assert isinstance(s.item(), float) and s.item() == 15.0
    assert fc.tensor([3]).item() == 3 and isinstance(fc.tensor([3]).item(), int)
    with pytest.raises(ValueError):
        t.item()


def _reduce_to(g, shape):
    """Sum a broadcast gradient back to ``shape``: leading axes, then stretched unit axes."""
    while g.ndim > len(shape):
        g = g.sum(axis=0)
    for axis, size in enumerate(shape):
        if size == 1:
            g = g.sum(axis=axis, keepdims=True)
    return g


@pytest.mark.parametrize("a_shape, b_shape", [((3, 1), (4,)), ((2, 3, 4), (1, 4)), ((), (2, 2)), ((5, 1, 2), (3, 1))])
def test_broadcasting_gradients(a_shape, b_shape):
    rng = np.random.default_rng(0)
    a, b = leaf(rng.standard_normal(a_shape)), leaf(rng.standard_normal(b_shape))
    out = a * b + a - b
    g = rng.standard_normal(out.shape)
    out.backward(g)
    assert a.grad.shape == a_shape and b.grad.shape == b_shape
    np.testing.assert_allclose(a.grad, _reduce_to(g * (b.numpy() + 1), a_shape), rtol=1e-12)
    np.testing.assert_allclose(b.grad, _reduce_to(g * (a.numpy() - 1), b_shape), rtol=1e-12)


# ----------------------------------------------------------------------------------- dtypes
def test_tensor_dtype_rules():
    assert fc.tensor(np.zeros(3, np.float64)).dtype == np.float64
    assert fc.tensor(np.zeros(3, np.float32)).dtype == np.float32
    assert fc.tensor([1.0, 2.0]).dtype == np.float32
    assert fc.tensor(1.5).dtype == np.float32 and fc.tensor(1.5).shape == ()
    assert fc.tensor([1, 2]).dtype.kind == "i"
    assert fc.tensor(np.arange(3, dtype=np.int32)).dtype == np.int32
    assert fc.tensor(np.arange(3, dtype=np.uint8)).dtype == np.uint8
    assert fc.tensor([1, 2], dtype=np.float64).dtype == np.float64
    assert fc.tensor(fc.tensor(np.zeros(2))).dtype == np.float64
    with pytest.raises(TypeError, match="float"):
        fc.tensor([1, 2], requires_grad=True)
    with pytest.raises(TypeError, match="float"):
        fc.tensor(np.arange(3), requires_grad=True)


def test_tensor_makes_a_contiguous_array():
    a = np.arange(12.0).reshape(3, 4).T
    t = fc.tensor(a)
    assert t.numpy().flags.c_contiguous and t.shape == (4, 3)
    np.testing.assert_array_equal(t.numpy(), a)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_arithmetic_keeps_the_dtype(dtype):
    x = leaf([1.0, 2.0], dtype)
    outs = [x + 1, 2 - x, x * 0.5, x / 3, 1.0 / x, x ** 2, x ** 0.5, -x, x.exp(), x.log(), x.tanh(), x.sigmoid(),
            x.relu(), abs(x), x.sum(), x.mean(), x.reshape(1, 2) @ fc.tensor(np.ones((2, 2), dtype)),
            x * np.float64(2.0)]
    for i, out in enumerate(outs):
        assert out.dtype == dtype, f"output {i}: {out.dtype}"
    sum(o.sum() for o in outs).backward()
    assert x.grad.dtype == dtype


def test_astype_gradient():
    x = leaf([1.0, 2.0], np.float32)
    y = x.double() * 2.0
    assert y.dtype == np.float64
    y.sum().backward()
    assert x.grad.dtype == np.float32
    np.testing.assert_array_equal(x.grad, [2.0, 2.0])


# ----------------------------------------------------------------------------------- deep graphs
def test_deep_chain_does_not_hit_the_recursion_limit():
    depth = 5000
    assert depth > sys.getrecursionlimit()
    x = leaf([1.0])
    y = x
    for _ in range(depth):
        y = y * 1.0001 + 0.0
    y.sum().backward()
    np.testing.assert_allclose(x.grad, [1.0001 ** depth], rtol=1e-10)


def test_wide_fan_in():
    x = leaf([2.0])
    total = x * 0.0
    for i in range(300):
        total = total + x * float(i)
    total.sum().backward()
    assert x.grad.numpy()[0] == sum(range(300))


def test_tensor_api_basics():
    t = fc.tensor(np.zeros((2, 3, 4), np.float32))
    assert isinstance(t, Tensor) and t.ndim == 3 and t.size == 24 and len(t) == 2 and t.device == "cpu"
    assert t.T.shape == (4, 3, 2) and t.transpose(1, 0, 2).shape == (3, 2, 4) and t.flatten().shape == (2, 12)
    assert t.reshape(6, 4).shape == (6, 4) and t.view((24,)).shape == (24,)
    assert "requires_grad=True" in repr(leaf([1.0]))


def test_array_on_the_left_defers_to_the_tensor():
    """ndarray <op> Tensor runs the Tensor's reflected operator: the result is a Tensor with a graph."""
    a = np.array([1.0, 2.0, 4.0])
    x = leaf([2.0, -1.0, 0.5])
    outs = [a + x, a - x, a * x, a / x, np.float64(3.0) - x]
    for out in outs:
        assert isinstance(out, Tensor) and out.requires_grad
    sum(o.sum() for o in outs).backward()
    np.testing.assert_allclose(x.grad, 1 - 1 + a - a / x.numpy() ** 2 - 1, rtol=1e-14)


def test_second_backward_through_a_freed_graph_raises():
    x = fc.tensor(np.arange(3.0), requires_grad=True)
    y = (x * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="second time"):
        y.backward()


def test_tensor_copies_its_data_like_torch_tensor():
    a = np.ones(3)
    t = fc.tensor(a, requires_grad=True)
    t.data -= 1.0  # an optimizer's in-place step
    assert np.all(a == 1.0)
