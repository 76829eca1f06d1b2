"""Separable kernels: ``F.separable_conv2d`` against PyTorch's conv2d of the kernel the factors make (forward
and the gradients of the input, both factors and the bias), on every CPU plan; finite differences;
``fc.separate`` (exact rank-1 and low-rank kernels, the error it reports, the SVD's optimum); the public
op and the planner's rank-1 path running the same passes; bad input."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastconv as fc
import fastconv.functional as F
from fastconv.backends import plan, separable

import cases
from helpers import check_against, run_torch, torch
from test_gradcheck import gradcheck

PLANS = ["numpy", "auto"]  # the passes are conv2d kernels: tests/test_backends.py checks every plan of those


@st.composite
def separable_cases(draw):
    case = draw(cases.conv_cases(2, max_size=6))
    return dict(case, rank=draw(st.integers(1, 2)))


def make_args(case, rng):
    x, w, *b = cases.make_args(case, rng)
    lead = (case["rank"],) + w.shape[:2]
    rows = rng.standard_normal(lead + (w.shape[3],)).astype(w.dtype)
    cols = rng.standard_normal(lead + (w.shape[2],)).astype(w.dtype)
    return [x, rows, cols] + b


def _kwargs(case):
    return dict(stride=case["stride"], padding=case["padding"], dilation=case["dilation"], groups=case["groups"])


@pytest.mark.skipif(torch is None, reason="PyTorch not installed")
@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("backend", PLANS)
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=separable_cases(), seed=st.integers(0, 2**16))
def test_matches_torch_conv2d_of_the_outer_products(backend, case, seed):
    def oracle(x, rows, cols, *b):
        w = torch.einsum("roci,rocj->ocij", cols, rows)
        return torch.nn.functional.conv2d(x, w, b[0] if b else None, **_kwargs(case))
    check_against(lambda x, r, c, *b: F.separable_conv2d(x, r, c, b[0] if b else None, **_kwargs(case),
                                                         backend=backend),
                  oracle, make_args(case, np.random.default_rng(seed)), run_oracle=run_torch,
                  what=f"separable_conv2d {backend}")


def test_gradients_match_finite_differences():
    rng = np.random.default_rng(0)
    x, rows, cols, b = (rng.standard_normal(s) for s in ((2, 4, 6, 7), (2, 4, 2, 3), (2, 4, 2, 2), (4,)))
    gradcheck(lambda *t: F.separable_conv2d(*t, stride=(1, 2), padding=1, dilation=(2, 1), groups=2),
              [x, rows, cols, b], "separable_conv2d")


def test_the_public_op_runs_the_planners_passes(monkeypatch):
    """A rank-1 weight given to conv2d (the planner's separable path) and its factors given to
    separable_conv2d run the same function, with the same result."""
    calls = []
    original = separable.conv2d
    monkeypatch.setattr(separable, "conv2d", lambda *a: calls.append(a[-2]) or original(*a))
    rng = np.random.default_rng(1)
    x, u, v = rng.standard_normal((2, 2, 12, 12)), rng.standard_normal((3, 2, 5)), rng.standard_normal((3, 2, 5))
    w = np.einsum("oci,ocj->ocij", u, v)
    assert plan.plan("conv2d", fc.shapes.conv_spec(x.shape, w.shape, padding=2), np.float64).backend == "separable"
    planned = F.conv2d(x, w, padding=2).numpy()
    public = F.separable_conv2d(x, v, u, padding=2).numpy()
    assert len(calls) == 2 and calls[0] == calls[1]
    np.testing.assert_allclose(public, planned, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------- separate
def test_separate_finds_rank_one_kernels_exactly():
    rng = np.random.default_rng(2)
    u, v = rng.standard_normal((4, 3, 5)), rng.standard_normal((4, 3, 7))
    w = np.einsum("oci,ocj->ocij", u, v)
    s = fc.separate(w)
    assert s.rank == 1 and s.error < 1e-14
    assert s.row_kernels.shape == (1, 4, 3, 7) and s.col_kernels.shape == (1, 4, 3, 5)
    np.testing.assert_allclose(s.weight(), w, rtol=1e-12, atol=1e-12)
    s32 = fc.separate(w.astype(np.float32))
    assert s32.rank == 1 and s32.row_kernels.dtype == np.float32 and s32.error < 1e-6


def test_separate_low_rank_and_its_error():
    """The fewest products within ``tol``; the error of rank r is the SVD's tail (Eckart-Young), so no
    rank-r factorisation is closer."""
    rng = np.random.default_rng(3)
    w = np.einsum("roi,roj->oij", rng.standard_normal((2, 3, 5)), rng.standard_normal((2, 3, 5)))
    assert fc.separate(w).rank == 2
    noisy = w + 1e-3 * rng.standard_normal(w.shape)
    assert fc.separate(noisy).rank == 5 and fc.separate(noisy, tol=1e-2).rank == 2
    one = fc.separate(noisy, rank=1)
    sv = np.linalg.svd(noisy, compute_uv=False)
    expected = np.max(np.sqrt((sv[:, 1:] ** 2).sum(axis=1) / (sv ** 2).sum(axis=1)))
    assert one.rank == 1 and one.error == pytest.approx(expected, rel=1e-9)
    actual = np.linalg.norm(one.weight() - noisy, axis=(1, 2)) / np.linalg.norm(noisy, axis=(1, 2))
    assert actual.max() == pytest.approx(one.error, rel=1e-9)
    np.testing.assert_allclose(one.singular_values, sv, rtol=1e-12)


def test_separated_kernels_run_as_passes():
    rng = np.random.default_rng(4)
    x, w = rng.standard_normal((1, 2, 10, 9)), rng.standard_normal((3, 2, 3, 3))
    s = fc.separate(w)  # a random 3x3 kernel needs all 3 products
    assert s.rank == 3
    np.testing.assert_allclose(F.separable_conv2d(x, s.row_kernels, s.col_kernels, padding="same").numpy(),
                               F.conv2d(x, w, padding="same").numpy(), rtol=1e-10, atol=1e-10)


def test_separate_a_single_kernel():
    box = np.ones((3, 4), np.float32) / 12
    s = fc.separate(box)
    assert s.rank == 1 and s.row_kernels.shape == (1, 4) and s.col_kernels.shape == (1, 3)
    np.testing.assert_allclose(s.weight(), box, rtol=1e-6)


# ------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("call_, error, message", [
    (lambda: F.separable_conv2d(np.ones((1, 2, 5, 5)), np.ones((3, 2, 3)), np.ones((3, 1, 3))), ValueError,
     "row_kernels and col_kernels must agree"),
    (lambda: F.separable_conv2d(np.ones((1, 2, 5, 5)), np.ones((3, 3)), np.ones((3, 3))), ValueError,
     r"row_kernels must be 3-D \(C_out, C_in/groups, K\) or 4-D"),
    (lambda: F.separable_conv2d(np.ones((1, 2, 5, 5)), np.ones((3, 1, 3)), np.ones((3, 1, 3))), ValueError,
     r"row_kernels.shape\[-2\] \* groups must equal the input channels"),
    (lambda: F.separable_conv2d(np.ones((1, 2, 5, 5)), np.ones((3, 2, 3)), np.ones((3, 2, 3), np.float32)),
     TypeError, "col_kernels has dtype float32"),
    (lambda: fc.separate(np.ones((3, 3)), rank=4), ValueError, r"rank must be an int from 1 to min\(KH, KW\) = 3"),
    (lambda: fc.separate(np.ones(3)), ValueError, r"weight must be a kernel \(KH, KW\)"),
    (lambda: fc.separate(np.ones((3, 3), np.int32)), TypeError, "weight must be float32 or float64"),
    (lambda: fc.separate(np.ones((3, 3)), tol=-1), ValueError, "tol must be a non-negative number"),
])
def test_bad_input(call_, error, message):
    with pytest.raises(error, match=message):
        call_()
