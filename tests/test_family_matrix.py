"""``fc.conv_matrix``: the matrix of a convolution (and of tiled and locally-connected layers) against the ops
themselves: ``M @ x`` is the forward pass, ``M.T @ y`` the input gradient and the transposed convolution;
the docstring's examples; its structure (one entry per tap inside the input, sorted columns); matrices
too big to build; bad input."""
import doctest

import numpy as np
import pytest
import scipy.sparse
from hypothesis import given, settings
from hypothesis import strategies as st

import fastconv as fc
import fastconv.functional as F
import fastconv.matrix

import cases
from test_family_tiled import tiled_cases


def test_docstring_examples():
    result = doctest.testmod(fastconv.matrix, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 5 and result.failed == 0


def _one_sample(case, rng):
    case = dict(case, n=1, bias=None)
    return case, [a.astype(np.float64) for a in cases.make_args(dict(case, bias=False), rng)]


def _product_matches_op(op, case, x, w, **extra):
    """``M @ x`` is the op's output and ``M.T @ g`` the gradient it sends to ``x`` for output gradient g."""
    kwargs = dict(stride=case["stride"], padding=case["padding"], dilation=case["dilation"], groups=case["groups"])
    m = fc.conv_matrix(w, x.shape[1:], **kwargs)
    xt = fc.tensor(x, requires_grad=True)
    y = op(xt, w, **kwargs, **extra)
    g = np.random.default_rng(1).standard_normal(y.shape)
    y.backward(g)
    np.testing.assert_allclose(m @ x.ravel(), y.numpy().ravel(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(m.T @ g.ravel(), xt.grad.numpy().ravel(), rtol=1e-10, atol=1e-10)
    return m


@settings(max_examples=30, deadline=None)
@given(case=st.one_of(cases.conv_cases(2), cases.conv_cases(1)), seed=st.integers(0, 2**16))
def test_convolution_matrix(case, seed):
    case, (x, w) = _one_sample(case, np.random.default_rng(seed))
    _product_matches_op(F.conv2d if case["dims"] == 2 else F.conv1d, case, x, w)


@settings(max_examples=30, deadline=None)
@given(case=st.one_of(tiled_cases(2), tiled_cases(1)), seed=st.integers(0, 2**16))
def test_tiled_and_local_matrices(case, seed):
    case, (x, w) = _one_sample(case, np.random.default_rng(seed))
    w = np.random.default_rng(seed).standard_normal(case["tiles"] + w.shape)
    _product_matches_op(getattr(F, case["op"]), case, x, w)


@pytest.mark.parametrize("stride, padding, size", [(1, 0, (6, 7)), (2, 1, (8, 7)), (3, 2, (9, 11))])
def test_transpose_is_the_transposed_convolution(stride, padding, size):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 2))
    m = fc.conv_matrix(w, (3,) + size, stride=stride, padding=padding)
    out = tuple((s + 2 * padding - k) // stride + 1 for s, k in zip(size, (3, 2)))
    output_padding = tuple(s - ((o - 1) * stride - 2 * padding + k) for s, o, k in zip(size, out, (3, 2)))
    y = rng.standard_normal((1, 4) + out)
    expected = F.conv_transpose2d(y, w, stride=stride, padding=padding, output_padding=output_padding)
    np.testing.assert_allclose(m.T @ y.ravel(), expected.numpy().ravel(), rtol=1e-12, atol=1e-12)


def test_one_entry_per_tap_inside_the_input_columns_sorted():
    w = np.arange(1, 1 + 6 * 2 * 3 * 3, dtype=np.float32).reshape(6, 2, 3, 3)  # no zero weights
    m = fc.conv_matrix(w, (4, 5, 6), stride=(2, 1), padding=(2, 1), dilation=(1, 2), groups=2)
    dense = scipy.sparse.csr_array(m.toarray())
    assert m.dtype == np.float32 and m.nnz == dense.nnz
    np.testing.assert_array_equal(m.indptr, dense.indptr)
    np.testing.assert_array_equal(m.indices, dense.indices)


def test_weight_sharing_patterns():
    """A convolution has one value per tap, a tiled layer one per tap and tile, a local one per tap and
    output position: the distinct values of the matrix count the weights."""
    rng = np.random.default_rng(5)
    conv, tiled, local = (rng.standard_normal(s) for s in ((1, 1, 3), (2, 1, 1, 3), (6, 1, 1, 3)))
    counts = [len(np.unique(fc.conv_matrix(w, (1, 8)).data)) for w in (conv, tiled, local)]
    assert counts == [3, 6, 18]


def test_too_big_says_how_big_before_building(monkeypatch):
    with pytest.raises(ValueError, match=r"input_shape \(64, 256, 256\) gives a 4194304 x 4194304 matrix "
                                         r"with 2403352576 nonzeros \(2.89e\+10 bytes, 26.9 GiB\), more than max_bytes"):
        fc.conv_matrix(np.ones((64, 64, 3, 3), np.float32), (64, 256, 256), padding=1, max_bytes=2**34)
    monkeypatch.setattr(fc.shapes, "memory_limit", lambda: 2 ** 20)  # the default: the machine's memory rule
    with pytest.raises(ValueError, match=r"more than this machine's memory \(1.05e\+06 bytes\)"):
        fc.conv_matrix(np.ones((8, 8, 3, 3), np.float32), (8, 32, 32), padding=1)
    assert fc.conv_matrix(np.ones((2, 2, 3, 3), np.float32), (2, 16, 16), padding=1).nnz == 2 * 2 * 46 * 46


@pytest.mark.parametrize("call_, error, message", [
    (lambda: fc.conv_matrix(np.ones((2, 1, 3)), (1, 2, 7)), ValueError, r"weight must be 4-D .* or 6-D"),
    (lambda: fc.conv_matrix(np.ones((2, 1, 3)), (1,)), ValueError, r"input_shape must be \(C_in, H, W\)"),
    (lambda: fc.conv_matrix(np.ones((2, 1, 3)), 7), TypeError, r"input_shape must be a tuple"),
    (lambda: fc.conv_matrix(np.ones((2, 1, 3), np.int64), (1, 7)), TypeError, "weight must be float32 or float64"),
    (lambda: fc.conv_matrix(np.ones((2, 2, 3)), (1, 7)), ValueError, "weight.shape"),
    (lambda: fc.conv_matrix(np.ones((3, 2, 1, 3)), (1, 7)), ValueError, r"tiles \(3,\) .* must divide the output size \(5,\)"),
])
def test_bad_input(call_, error, message):
    with pytest.raises(error, match=message):
        call_()
