"""Marks and comparison helpers shared by the CUDA tests."""
import numpy as np
import pytest

import fastconv

# Every simulator test module: ``pytestmark = CUDA_TESTS``.
CUDA_TESTS = [pytest.mark.cudasim,
              pytest.mark.skipif(not fastconv.cuda.is_available(),
                                 reason="no CUDA GPU (run with NUMBA_ENABLE_CUDASIM=1 for the simulator)")]
DTYPES = [np.float32, np.float64]


def rtol(dtype):
    return 2e-5 if np.dtype(dtype) == np.float32 else 1e-10


def host(a):
    """NumPy values of a CudaArray, Tensor or array."""
    if hasattr(a, "numpy"):
        return a.numpy()
    return a.copy_to_host() if hasattr(a, "copy_to_host") else np.asarray(a)


def assert_close(actual, expected, dtype=None, what="value"):
    """Relative to the scale of ``expected``, as tests/helpers.py; dtypes and shapes must match too."""
    actual, expected = host(actual), np.asarray(host(expected))
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    if expected.dtype.kind not in "fc":
        np.testing.assert_array_equal(actual, expected, err_msg=what)
        return
    finite = np.isfinite(expected)
    assert np.array_equal(actual[~finite], expected[~finite], equal_nan=True), f"{what}: NaN/inf differ"
    scale = max(1.0, float(np.max(np.abs(expected[finite])))) if finite.any() else 1.0
    err = float(np.max(np.abs(actual[finite] - expected[finite]))) if finite.any() else 0.0
    tol = rtol(dtype or expected.dtype) * scale
    assert err <= tol, f"{what}: max error {err:.3g} > {tol:.3g}"
