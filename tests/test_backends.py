"""Every compiled backend against the NumPy reference, over the same random cases as the reference
against PyTorch: forward and every gradient, float32 and float64, 1-D and 2-D."""
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import fastconv.functional as F

import cases
from helpers import backend_or_skip, check_against

BACKENDS = ["numba", "cython", "fft"]
KERNELS = {  # the kernels a case exercises, forward and backward
    "conv": ("conv2d", "conv2d_grad_input", "conv2d_grad_weight"),
    "conv_transpose": ("conv2d", "conv2d_grad_input", "conv2d_grad_weight"),
    "max_pool": ("max_pool2d", "max_pool2d_grad"),
    "avg_pool": ("avg_pool2d", "avg_pool2d_grad"),
}


def _backend(name):
    return backend_or_skip(name)


def _family(op):
    return op[:-2].rstrip("12")


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=st.one_of(cases.all_cases(2), cases.all_cases(1)), seed=st.integers(0, 2**16))
def test_backend_matches_reference(backend, case, seed):
    module = _backend(backend)
    assume(all(hasattr(module, k) for k in KERNELS[_family(case["op"])]))
    arrays = cases.make_args(case, np.random.default_rng(seed))
    check_against(lambda *t: cases.call(F, case, t, backend=backend),
                  lambda *t: cases.call(F, case, t, backend="numpy"), arrays, what=f"{backend} {case['op']}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backend_empty_batch(backend, dtype):
    module = _backend(backend)
    if not hasattr(module, "conv2d"):
        pytest.skip("no conv2d")
    x, w = np.zeros((0, 4, 6, 6), dtype), np.ones((2, 4, 3, 3), dtype)
    assert F.conv2d(x, w, backend=backend).shape == (0, 2, 4, 4)
