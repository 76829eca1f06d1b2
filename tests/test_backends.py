"""Every CPU backend and algorithm against the NumPy reference, over the same random cases as the reference
against PyTorch: forward and every gradient, float32 and float64, 1-D and 2-D. Each is forced the way a
user forces one (``backend="cython:blocked"``); cases a plan cannot run (a float32-only kernel given
float64, pooling under the FFT) are skipped, the planner saying so."""
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import fastconv.functional as F

import cases

PLANS = [name for name in cases.cpu_plans() if name != "numpy"]


@pytest.mark.parametrize("plan", PLANS)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.filter_too_much])
@given(data=st.data(), seed=st.integers(0, 2**16))
def test_plan_matches_reference(plan, data, seed):
    case = data.draw(cases.for_plan(plan, st.one_of(cases.all_cases(2), cases.all_cases(1))))
    assume(cases.matches_reference(plan, case, seed) is not None)


@pytest.mark.parametrize("plan", PLANS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_plan_empty_batch(plan, dtype):
    x, w = np.zeros((0, 4, 6, 6), dtype), np.ones((2, 4, 3, 3), dtype)
    y = cases.runs_here(plan, lambda: F.conv2d(x, w, backend=plan))
    if y is None:
        pytest.skip(f"{plan} does not run this case")
    assert y.shape == (0, 2, 4, 4)
