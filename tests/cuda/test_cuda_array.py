"""CudaArray and the ``array_module("cuda")`` namespace against NumPy: operators with broadcasting, scalars
and NumPy's dtype promotion, ``out=``, reductions, matmul (2-D, batched, broadcast, transposed views),
views, indexing, gather/scatter, conversions, and the errors that refuse silent host transfers."""
import numpy as np
import pytest

from fastconv.gpu import xp
from fastconv.device import array_module, device_of, to_device

from cuda_helpers import CUDA_TESTS, DTYPES, assert_close

pytestmark = CUDA_TESTS


def _pair(shape, dtype=np.float32, seed=0, positive=False):
    a = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    a = np.abs(a) + 0.1 if positive else a
    return a, xp.asarray(a)


def test_namespace_and_device():
    a, d = _pair((2, 3))
    assert array_module("cuda") is xp
    assert device_of(d) == "cuda" and device_of(a) == "cpu"
    assert (d.shape, d.dtype, d.ndim, d.size, d.strides) == (a.shape, a.dtype, a.ndim, a.size, a.strides)
    assert d.flags.c_contiguous and not d.T.flags.c_contiguous and d.T.flags.f_contiguous
    assert_close(to_device(d, "cpu"), a)
    assert to_device(d, "cuda") is d


@pytest.mark.parametrize("dtype", DTYPES)
def test_binary_operators_broadcast_and_promote(dtype):
    a, da = _pair((2, 3, 4), dtype, 1)
    b, db = _pair((3, 1), dtype, 2, positive=True)
    c, dc = _pair((4,), np.float64, 3)
    cases = [(da + db, a + b), (da - db, a - b), (da * db, a * b), (da / db, a / b), (db ** 2, b ** 2),
             (da.T * dc[:, None, None], a.T * c[:, None, None]), (da + dc, a + c), (2.0 - da, 2.0 - a), (1 / (1 + xp.exp(-da)), 1 / (1 + np.exp(-a))),
             (db ** -1, b ** -1), (-da, -a), (da * np.float64(0.5), a * np.float64(0.5)), (abs(da), abs(a))]
    for i, (got, want) in enumerate(cases):
        assert_close(got, want, dtype, f"case {i}")


def test_comparisons_where_and_integer_ops():
    a, da = _pair((3, 4), np.float32, 4)
    assert_close(da > 0, a > 0)
    assert_close(da <= 0.5, a <= 0.5)
    assert_close(xp.where(da > 0, da, 0).astype(np.float32), np.where(a > 0, a, 0).astype(np.float32))
    assert_close(xp.where(da > 0, 1.0, 0.0), np.where(a > 0, 1.0, 0.0))
    i = np.arange(6).reshape(2, 3)
    di = xp.asarray(i)
    assert_close(di * 2, i * 2)
    assert_close(di / 2, i / 2)
    assert_close(di * 0.5, i * 0.5)
    assert_close((da > 0).astype(np.float64), (a > 0).astype(np.float64))
    assert_close(~(da > 0), ~(a > 0))


@pytest.mark.parametrize("dtype", DTYPES)
def test_unary_functions(dtype):
    a, da = _pair((2, 5), dtype, 5)
    p, dp = _pair((2, 5), dtype, 6, positive=True)
    a[0, 0] = 0.0
    da = xp.asarray(a)
    for name in ("exp", "tanh", "abs", "sign", "negative", "square"):
        assert_close(getattr(xp, name)(da), getattr(np, name)(a), dtype, name)
    for name in ("log", "sqrt"):
        assert_close(getattr(xp, name)(dp), getattr(np, name)(p), dtype, name)
    special = np.array([0.0, -1.0, np.nan, 1000.0], dtype)
    with np.errstate(all="ignore"):
        assert_close(xp.log(xp.asarray(special)), np.log(special))
        assert_close(xp.sqrt(xp.asarray(special)), np.sqrt(special))
        assert_close(xp.exp(xp.asarray(special)), np.exp(special))
    assert_close(xp.sign(xp.asarray(special)), np.sign(special))
    assert_close(xp.maximum(da, 0.1), np.maximum(a, 0.1), dtype)
    assert_close(xp.maximum(xp.asarray(special), 0), np.maximum(special, 0))


def test_ufuncs_with_out_alias_and_in_place():
    a, da = _pair((3, 4), np.float32, 7)
    b, db = _pair((4,), np.float32, 8)
    out = xp.empty_like(da)
    assert xp.multiply(da, 2.0, out=out) is out
    assert_close(out, a * 2)
    xp.add(out, db, out=out)  # out aliases an input
    assert_close(out, a * 2 + b)
    xp.sqrt(xp.abs(out), out=out)
    assert_close(out, np.sqrt(np.abs(a * 2 + b)))
    view = da[:, 1:3]  # in place through a strided view
    view += 1.0
    a[:, 1:3] += 1.0
    assert_close(da, a)
    da -= db
    da *= 2
    da /= 4
    assert_close(da, (a - b) * 2 / 4)
    dst = xp.zeros((2, 3, 4), np.float32)
    xp.copyto(dst, db)
    assert_close(dst, np.broadcast_to(b, (2, 3, 4)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_reductions(dtype):
    a, da = _pair((2, 3, 5), dtype, 9)
    for axis in (None, 0, 1, -1, (0, 2), (1, 2)):
        for keepdims in (False, True):
            assert_close(xp.sum(da, axis=axis, keepdims=keepdims), np.sum(a, axis=axis, keepdims=keepdims),
                         dtype, f"sum {axis} {keepdims}")
            assert_close(xp.max(da, axis=axis, keepdims=keepdims), np.max(a, axis=axis, keepdims=keepdims),
                         dtype, f"max {axis} {keepdims}")
    assert_close(xp.sum(da.transpose(2, 0, 1), axis=(0, 2)), a.transpose(2, 0, 1).sum(axis=(0, 2)), dtype)
    assert_close(da.mean(axis=1), a.mean(axis=1), dtype)
    assert_close(xp.sum(da > 0), np.sum(a > 0))
    nan = a.copy()
    nan[1, 2, 3] = np.nan
    assert_close(xp.max(xp.asarray(nan), axis=2), np.max(nan, axis=2))
    assert float(xp.sum(da)) == pytest.approx(float(a.sum()), rel=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul(dtype):
    a, da = _pair((5, 7), dtype, 10)
    b, db = _pair((7, 3), dtype, 11)
    c, dc = _pair((2, 3, 4, 5), dtype, 12)
    w, dw = _pair((6, 5), dtype, 13)
    m, dm = _pair((3, 4), dtype, 14)
    cases = [(xp.matmul(da, db), a @ b), (da @ db, a @ b), (xp.matmul(db.T, da.T), b.T @ a.T),
             (xp.matmul(dc, dw.T), c @ w.T), (xp.matmul(dm, dc), m @ c),
             (xp.matmul(xp.swapaxes(dc, -1, -2), dc), np.swapaxes(c, -1, -2) @ c),
             (xp.matmul(dc[:, :1], xp.asarray(np.ones((3, 5, 2), dtype))), c[:, :1] @ np.ones((3, 5, 2), dtype)),
             (xp.matmul(da, db[:, 0]), a @ b[:, 0]), (xp.matmul(db[:, 0], da.T), b[:, 0] @ a.T)]
    for i, (got, want) in enumerate(cases):
        assert_close(got, want, dtype, f"matmul case {i}")
    with pytest.raises(ValueError, match="core dimension"):
        xp.matmul(da, da)


def test_views_reshape_and_copies():
    a, da = _pair((2, 3, 4), np.float32, 15)
    assert_close(da.T, a.T)
    assert_close(da.transpose(1, 0, 2).reshape(3, -1), a.transpose(1, 0, 2).reshape(3, -1))
    assert_close(xp.swapaxes(da, 0, 2), np.swapaxes(a, 0, 2))
    assert_close(xp.broadcast_to(da[:, :1], (2, 3, 4)).astype(np.float32), np.broadcast_to(a[:, :1], (2, 3, 4)))
    assert_close(da[1, ::2, None, -1], a[1, ::2, None, -1])
    assert_close(da[..., 1:3], a[..., 1:3])
    assert_close(da.astype(np.float64), a.astype(np.float64))
    c = da.copy()
    c[...] = 0
    assert_close(da, a)  # the copy owns its memory
    assert da.reshape(6, 4)._buf is da._buf  # contiguous reshapes are views
    with pytest.raises(ValueError):
        da.reshape(5, -1)
    with pytest.raises(IndexError):
        da[2]


def test_indexing_gather_scatter():
    a, da = _pair((4, 3), np.float32, 16)
    rows = np.array([2, 0, 2])
    assert_close(da[rows], a[rows])
    assert_close(da[xp.asarray(rows)], a[rows])
    acc, acc_ref = xp.zeros((4, 3), np.float32), np.zeros((4, 3), np.float32)
    g, dg = _pair((3, 3), np.float32, 17)
    xp.add_at(acc, rows, dg)  # repeated rows add up
    np.add.at(acc_ref, rows, g)
    assert_close(acc, acc_ref)
    xp.add_at(acc, (slice(1, 3), 0), 1.0)
    np.add.at(acc_ref, (slice(1, 3), 0), 1.0)
    assert_close(acc, acc_ref)
    idx = np.array([[1], [0], [2], [1]])
    assert_close(xp.take_along_axis(da, xp.asarray(idx), axis=1), np.take_along_axis(a, idx, axis=1))
    full, full_ref = xp.zeros((4, 3), np.float32), np.zeros((4, 3), np.float32)
    xp.put_along_axis(full, xp.asarray(idx), xp.asarray(np.ones((4, 1), np.float32)), axis=1)
    np.put_along_axis(full_ref, idx, 1.0, axis=1)
    assert_close(full, full_ref)
    da[1] = 7.0
    da[:, 2] = xp.asarray(np.arange(4, dtype=np.float32))
    da[rows[:1]] = 3.0
    a[1], a[:, 2], a[rows[:1]] = 7.0, np.arange(4), 3.0
    assert_close(da, a)


def test_creation_and_host_transfers():
    assert_close(xp.zeros((2, 3), np.float32), np.zeros((2, 3), np.float32))
    assert_close(xp.ones(4), np.ones(4))
    assert_close(xp.full((2, 2), 3, np.int64), np.full((2, 2), 3, np.int64))
    assert_close(xp.zeros_like(xp.ones((2,), np.float32)), np.zeros(2, np.float32))
    z = xp.asarray(np.float64(2.5))
    assert z.shape == () and z.item() == 2.5 and float(z * 2) == 5.0
    d = xp.empty((3, 2), np.float32)
    d.copy_to_device(np.arange(6, dtype=np.float32).reshape(3, 2))
    assert_close(d, np.arange(6, dtype=np.float32).reshape(3, 2))
    assert xp.asarray(np.zeros((0, 3))).copy_to_host().shape == (0, 3)
    assert (xp.zeros((0, 3)) + 1).shape == (0, 3)
    assert xp.asarray(d) is d and xp.asarray(d, np.float64).dtype == np.float64


def test_host_operands_and_implicit_copies_are_refused():
    d = xp.ones((2, 2), np.float32)
    with pytest.raises(TypeError, match="CPU"):
        d + np.ones((2, 2), np.float32)
    with pytest.raises(TypeError, match="copy_to_host"):
        np.asarray(d)
    with pytest.raises(TypeError, match="float32 and float64"):
        xp.matmul(xp.ones((2, 2), np.int64), xp.ones((2, 2), np.int64))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # inf - inf in simulated (NumPy scalar) arithmetic
@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_log_softmax_and_grad(dtype):
    a, da = _pair((3, 4, 5), dtype, 18)
    a[0, 1, 2] = np.nan
    a[2, 0, :] = -np.inf
    a[1, 2, 3] = np.inf
    da = xp.asarray(a)
    g, dg = _pair((3, 4, 5), dtype, 19)
    for axis in (-1, 1, 0):
        with np.errstate(all="ignore"):
            shifted = a - np.max(a, axis=axis, keepdims=True)
            out = shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))
            grad = g - np.exp(out) * np.sum(g, axis=axis, keepdims=True)
        got = xp.log_softmax(da, axis)
        assert_close(got, out, dtype, f"log_softmax axis {axis}")
        assert_close(xp.log_softmax_grad(dg, got, axis), grad, dtype, f"log_softmax grad axis {axis}")
    assert_close(xp.log_softmax(da.transpose(2, 0, 1), 0), xp.log_softmax(da, -1).transpose(2, 0, 1), dtype)


def test_blocks_return_to_the_pool_when_no_view_remains():
    import gc
    from fastconv.gpu import alloc
    alloc.empty_cache()
    a = xp.ones((3, 4), np.float32)
    view = a[1:].T
    where = (a._owner.slab, a._owner.offset)
    del a
    gc.collect()
    assert alloc.cached_blocks() == 0  # the view still uses the block
    del view
    gc.collect()
    assert alloc.cached_blocks() == 1
    b = xp.zeros(5, np.float64)  # same rounded size: the block is reused, cleared by the fill
    assert (b._owner.slab, b._owner.offset) == where
    assert_close(b, np.zeros(5))
    alloc.empty_cache()
    assert alloc.cached_blocks() == 0