"""One helper that checks any op's forward and gradients against another implementation; skipping
where a backend is unavailable."""
import os

import numpy as np
import pytest

import fastconv as fc

try:
    import torch
except ImportError:  # the PyTorch oracle is optional; tests that need it skip
    torch = None


def rtol(dtype):
    return 2e-5 if np.dtype(dtype) == np.float32 else 1e-10


def assert_close(actual, expected, dtype, what):
    """Relative to the scale of ``expected`` (sums of many products lose absolute precision)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = max(1.0, float(np.max(np.abs(expected))) if expected.size else 1.0)
    err = float(np.max(np.abs(actual - expected))) if expected.size else 0.0
    assert err <= rtol(dtype) * scale, f"{what}: max error {err:.3g} > {rtol(dtype):.0e} * {scale:.3g}"


def run_fastconv(fn, arrays, grad_seed=0):
    """Forward and every input gradient of ``fn(*tensors)`` for a random output gradient."""
    ts = [fc.tensor(a, requires_grad=True) for a in arrays]
    y = fn(*ts)
    g = np.random.default_rng(grad_seed).standard_normal(y.shape).astype(y.dtype)
    y.backward(g)
    return y.numpy(), [t.grad for t in ts]


def run_torch(fn, arrays, grad_seed=0):
    ts = [torch.tensor(a, requires_grad=True) for a in arrays]
    y = fn(*ts)
    g = np.random.default_rng(grad_seed).standard_normal(tuple(y.shape)).astype(arrays[0].dtype)
    y.backward(torch.from_numpy(g))
    return y.detach().numpy(), [t.grad.numpy() for t in ts]


def check_against(fn, oracle, arrays, run_oracle=run_fastconv, what="op"):
    """``fn`` (fastconv) and ``oracle`` agree on the output and on every gradient."""
    y, grads = run_fastconv(fn, arrays)
    y_ref, grads_ref = run_oracle(oracle, arrays)
    dtype = arrays[0].dtype
    assert_close(y, y_ref, dtype, f"{what} forward")
    for i, (g, g_ref) in enumerate(zip(grads, grads_ref)):
        assert_close(g, g_ref, dtype, f"{what} grad of argument {i}")


REQUIRED_BACKENDS = [name for name in os.environ.get("FASTCONV_REQUIRE_BACKENDS", "").split(",") if name]


def backend_or_skip(name):
    """The module of backend ``name``; where it cannot run here, skip, or fail where the build must have
    produced it (``FASTCONV_REQUIRE_BACKENDS=numba,cython``, as CI sets it)."""
    from fastconv.backends import registry
    try:
        return registry.load(name)
    except Exception as err:  # not built or not installed here
        unavailable(name, f"backend {name} unavailable: {err}")


def unavailable(name, reason):
    """Skip for ``reason`` (at module level too), or fail if backend ``name`` is required."""
    if name in REQUIRED_BACKENDS:
        pytest.fail(f"{reason}, but FASTCONV_REQUIRE_BACKENDS={','.join(REQUIRED_BACKENDS)} requires it",
                    pytrace=False)
    pytest.skip(reason, allow_module_level=True)
