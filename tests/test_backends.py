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
from helpers import check_against

PLANS = [name for name in cases.cpu_plans() if name != "numpy"]


def _cases(plan):
    if plan == "fft:overlap":  # blocks of long 1-D signals: 1-D convolutions only
        return st.one_of(cases.conv_cases(1), cases.conv_transpose_cases(1))
    return st.one_of(cases.all_cases(2), cases.all_cases(1))


@pytest.mark.parametrize("plan", PLANS)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.filter_too_much])
@given(data=st.data(), seed=st.integers(0, 2**16))
def test_plan_matches_reference(plan, data, seed):
    case = data.draw(_cases(plan))
    if plan == "cython:blocked":
        case["dtype"] = np.float32  # float32-only kernel
    arrays = cases.make_args(case, np.random.default_rng(seed))
    ran = cases.runs_here(plan, lambda: check_against(
        lambda *t: cases.call(F, case, t, backend=plan), lambda *t: cases.call(F, case, t, backend="numpy"),
        arrays, what=f"{plan} {case['op']}") or True)
    assume(ran is not None)


@pytest.mark.parametrize("plan", PLANS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_plan_empty_batch(plan, dtype):
    x, w = np.zeros((0, 4, 6, 6), dtype), np.ones((2, 4, 3, 3), dtype)
    y = cases.runs_here(plan, lambda: F.conv2d(x, w, backend=plan))
    if y is None:
        pytest.skip(f"{plan} does not run this case")
    assert y.shape == (0, 2, 4, 4)
