"""The Cython im2col/col2im kernels against the NumPy reference's, over random convolution geometries.

``im2col(x, cols, sh, sw, pt, pl, dh, dw)`` fills a preallocated ``cols (N, C, kh, kw, oh, ow)``;
``col2im(cols, x, ...)`` adds the columns into a zeroed ``x``. The geometry (kernel, output size) comes from
the shapes of ``cols``; bottom/right padding is implied by ``oh``/``ow``.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastconv import shapes
from fastconv.backends import reference

import cases
from helpers import assert_close, unavailable

try:
    from fastconv._cy import _im2col as cy
except ImportError as err:
    unavailable("cython", f"Cython extension not built: {err}")

SETTINGS = dict(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _spec(case):
    x_shape = (case["n"], case["c_in"]) + case["size"]
    w_shape = (case["c_out"], case["c_in"] // case["groups"]) + case["kernel"]
    return shapes.conv_spec(x_shape, w_shape, None, case["stride"], case["padding"], case["dilation"],
                            case["groups"], case["dims"])


def _geometry(spec):
    (sh, sw), (dh, dw) = spec.stride, spec.dilation
    return sh, sw, spec.padding[0], spec.padding[2], dh, dw


def _cols_shape(spec):
    return (spec.n, spec.c_in, spec.kh, spec.kw, spec.oh, spec.ow)


@settings(**SETTINGS)
@given(case=cases.conv_cases(2) | cases.conv_cases(1), seed=st.integers(0, 2**32 - 1))
def test_im2col_matches_reference(case, seed):
    spec = _spec(case)
    x = np.random.default_rng(seed).standard_normal(spec.x_shape).astype(case["dtype"])
    cols = np.full(_cols_shape(spec), np.nan, dtype=x.dtype)  # every entry must be written, zeros included
    cy.im2col(x, cols, *_geometry(spec))
    np.testing.assert_array_equal(cols, reference.im2col(x, spec), err_msg=f"{case}")


@settings(**SETTINGS)
@given(case=cases.conv_cases(2) | cases.conv_cases(1), seed=st.integers(0, 2**32 - 1))
def test_col2im_matches_reference(case, seed):
    spec = _spec(case)
    cols = np.random.default_rng(seed).standard_normal(_cols_shape(spec)).astype(case["dtype"])
    x = np.zeros(spec.x_shape, dtype=cols.dtype)
    cy.col2im(cols, x, *_geometry(spec))
    assert_close(x, reference.col2im(cols, spec), cols.dtype, f"col2im {case}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_col2im_is_the_adjoint_of_im2col(dtype):
    """<im2col(x), c> == <x, col2im(c)> on a geometry with stride, dilation and padding."""
    spec = shapes.conv_spec((2, 3, 9, 8), (4, 3, 3, 2), None, (2, 3), (1, 2), (2, 1))
    rng = np.random.default_rng(0)
    x, c = rng.standard_normal(spec.x_shape).astype(dtype), rng.standard_normal(_cols_shape(spec)).astype(dtype)
    cols, back = np.empty(_cols_shape(spec), dtype), np.zeros(spec.x_shape, dtype)
    cy.im2col(x, cols, *_geometry(spec))
    cy.col2im(c, back, *_geometry(spec))
    lhs, rhs = np.vdot(cols.astype(np.float64), c), np.vdot(x.astype(np.float64), back)
    assert abs(lhs - rhs) <= 1e-4 * np.sum(np.abs(cols) * np.abs(c))


def test_col2im_accumulates_into_x():
    """col2im adds to what ``x`` holds (the caller zeroes it): running it twice doubles the result."""
    spec = shapes.conv_spec((1, 2, 6, 6), (1, 2, 3, 3), None, 1, 1, 1)
    cols = np.random.default_rng(1).standard_normal(_cols_shape(spec))
    x = np.zeros(spec.x_shape)
    cy.col2im(cols, x, *_geometry(spec))
    once = x.copy()
    cy.col2im(cols, x, *_geometry(spec))
    np.testing.assert_allclose(x, 2 * once, rtol=1e-14)


def test_empty_batch():
    spec = shapes.conv_spec((0, 2, 5, 5), (1, 2, 3, 3), None, 1, 0, 1)
    cols = np.empty(_cols_shape(spec))
    cy.im2col(np.zeros(spec.x_shape), cols, *_geometry(spec))
    cy.col2im(cols, np.zeros(spec.x_shape), *_geometry(spec))


def test_rejects_mixed_dtypes_and_non_contiguous_arrays():
    spec = shapes.conv_spec((1, 2, 5, 5), (1, 2, 3, 3), None, 1, 0, 1)
    x = np.zeros(spec.x_shape, np.float32)
    with pytest.raises((TypeError, ValueError)):
        cy.im2col(x, np.empty(_cols_shape(spec), np.float64), *_geometry(spec))
    with pytest.raises((TypeError, ValueError)):
        cy.im2col(np.zeros((1, 2, 5, 10), np.float32)[..., ::2], np.empty(_cols_shape(spec), np.float32),
                  *_geometry(spec))
