"""NaN and inf give the reference's outputs whatever the plan: every CPU algorithm, every convolution
kernel, a non-finite value in each operand (next to padding too, where the reference multiplies inf by a
padded zero).

Through the planner every algorithm must match the reference; a kernel on its own must match for every
operand its backend does not list in ``NONFINITE_CHECKS`` (those the planner checks), unless the
planner checks the kernel's result instead."""
import dataclasses

import numpy as np
import pytest

import fastconv.functional as F
from fastconv import shapes
from fastconv.backends import plan, reference, registry

SPECS = {  # name: (x shape, w shape, conv arguments)
    "padded strided grouped": ((2, 4, 7, 6), (6, 2, 3, 3), dict(stride=(2, 1), padding=1, groups=2)),
    "dilated": ((1, 3, 9, 9), (4, 3, 3, 3), dict(padding=2, dilation=2)),
    "big kernel": ((1, 2, 16, 16), (2, 2, 5, 5), dict(padding=2)),
    "long signal": ((1, 2, 1, 1500), (2, 2, 1, 9), dict(padding=(0, 4))),
    "windows wholly in the padding": ((1, 2, 3, 4), (3, 2, 2, 2), dict(padding=2)),
    "3x3 same": ((2, 3, 9, 7), (4, 3, 3, 3), dict(padding=1)),
    "3x3 valid, tiles past the edge": ((1, 2, 11, 10), (3, 2, 3, 3), {}),
}
#: Where the non-finite value goes: an operand and an index (corner: its window reads padding).
PLACES = [("x", (0, 1, 0, 0)), ("x", (0, 0, 3, 4)), ("w", (1, 0, 0, 0)), ("w", (0, 1, 1, 2)),
          ("gy", (0, 1, 0, 0)), ("gy", (0, 0, 2, 3))]
VALUES = [np.nan, np.inf, -np.inf]


def _algorithms():
    names = []
    for backend in ("numba", "cython", "fft", "winograd"):
        if registry.usable(backend) is not None:
            names += [f"{backend}:{a}" for a in registry.load(backend).ALGORITHMS]
    return names


def _arrays(spec, dtype, place, value):
    rng = np.random.default_rng(0)
    arrays = {"x": rng.standard_normal(spec.x_shape), "w": rng.standard_normal(spec.w_shape),
              "gy": rng.standard_normal(spec.y_shape)}
    name, index = place
    arrays[name][tuple(i % s for i, s in zip(index, arrays[name].shape))] = value
    return {k: a.astype(dtype) for k, a in arrays.items()}


def _same_pattern(got, want, what):
    for test in (np.isnan, np.isposinf, np.isneginf):
        assert np.array_equal(test(got), test(want)), f"{what}: {test.__name__} differs"
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-3, atol=1e-3, err_msg=what)


def _kernel_args(op, a, spec):
    return {"conv2d": (a["x"], a["w"], None, spec), "conv2d_grad_input": (a["gy"], a["w"], spec),
            "conv2d_grad_weight": (a["gy"], a["x"], spec)}[op]


def _cases():
    for name in _algorithms():
        for spec_name, (x, w, kw) in SPECS.items():
            yield name, spec_name


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # inf - inf and friends, on purpose
@pytest.mark.parametrize("name,spec_name", list(_cases()))
def test_nonfinite_outputs_are_the_references(name, spec_name):
    x_shape, w_shape, kw = SPECS[spec_name]
    spec = shapes.conv_spec(x_shape, w_shape, None, **kw)
    backend, algorithm = registry.parse(name)
    for dtype in (np.float32, np.float64):
        for op in registry.CONV_OPS:
            if not registry.supports(backend, op, spec, dtype, algorithm):
                continue
            planned = plan.plan(op, spec, dtype, backend=name)
            for place in PLACES:
                if place[0] not in {"conv2d": "xw", "conv2d_grad_input": ("gy", "w"),
                                    "conv2d_grad_weight": ("gy", "x")}[op]:
                    continue
                for value in VALUES:
                    a = _arrays(spec, dtype, place, value)
                    args = _kernel_args(op, a, spec)
                    want = getattr(reference, op)(*args)
                    what = f"{name} {op} {np.dtype(dtype).name} {value} in {place}"
                    _same_pattern(planned(*args), want, what)
                    position = registry.OPERANDS[op].index(place[0])
                    checks = registry.nonfinite_checks(backend, op, algorithm, spec)
                    if position not in checks and not {registry.RESULT, registry.CHECKED} & set(checks):
                        _same_pattern(registry.kernel(backend, op, algorithm)(*args), want, what + " (kernel)")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_auto_on_a_big_kernel_keeps_nan_local():
    """The case users meet: auto plans the FFT for a big kernel; one NaN must not reach far outputs."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 2, 64, 64)).astype(np.float32)
    w = rng.standard_normal((2, 2, 15, 15)).astype(np.float32)
    x[0, 0, 5, 5] = np.nan
    y = F.conv2d(x, w, padding=7).numpy()
    want = F.conv2d(x, w, padding=7, backend="numpy").numpy()
    assert np.isnan(y).sum() == np.isnan(want).sum() == 2 * 13 * 13
    _same_pattern(y, want, "auto big kernel")


def test_finite_inputs_run_the_planned_kernel():
    spec = shapes.conv_spec((1, 2, 16, 16), (2, 2, 15, 15), None, padding=7)
    p = plan.plan("conv2d", spec, np.float32, backend="fft")
    assert p.guard is not None

    def fail(*args):
        raise AssertionError("the reference ran on finite input")
    p = dataclasses.replace(p, guard=fail)
    x, w = np.ones(spec.x_shape, np.float32), np.ones(spec.w_shape, np.float32)
    np.testing.assert_allclose(p(x, w, None, spec), reference.conv2d(x, w, None, spec), rtol=1e-4)
    x[0, 0, 0, 0] = np.inf
    with pytest.raises(AssertionError, match="reference ran"):
        p(x, w, None, spec)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_a_kernel_that_checks_itself_raises_once_and_runs_again():
    """Winograd checks its outputs as it writes them: non-finite ones raise ``NonFinite`` (the plan runs
    the reference), and the next call, on finite operands, runs the kernel again."""
    if registry.usable("winograd") is None:
        pytest.skip("the Winograd kernels are not built here")
    spec = shapes.conv_spec((2, 3, 12, 11), (4, 3, 3, 3), None, padding=1)
    kernel = registry.kernel("winograd", "conv2d", "f4")
    rng = np.random.default_rng(0)
    x = rng.standard_normal(spec.x_shape).astype(np.float32)
    w = rng.standard_normal(spec.w_shape).astype(np.float32)
    bad = x.copy()
    bad[1, 2, 11, 10] = np.inf
    with pytest.raises(registry.NonFinite):
        kernel(bad, w, None, spec)
    p = plan.plan("conv2d", spec, np.float32, backend="winograd:f4")
    assert p.checked == (registry.CHECKED,)
    _same_pattern(p(bad, w, None, spec), reference.conv2d(bad, w, None, spec), "planned")

    def fail(*args):
        raise AssertionError("the reference ran on finite input")
    np.testing.assert_allclose(dataclasses.replace(p, guard=fail)(x, w, None, spec),
                               reference.conv2d(x, w, None, spec), rtol=1e-3, atol=1e-4)


def test_the_result_check_is_used_only_where_every_window_reads_input():
    """A weight gradient's result shows its operands' NaN and inf unless a window lies wholly in the
    padding: there the gradient at that output meets only padded zeros, so the operands are checked."""
    inside = shapes.conv_spec((1, 2, 8, 8), (3, 2, 3, 3), None, padding=1)
    outside = shapes.conv_spec((1, 2, 3, 4), (3, 2, 2, 2), None, padding=2)
    dilated = shapes.conv_spec((1, 1, 2, 2), (1, 1, 2, 2), None, padding=3, dilation=5)
    assert inside.windows_read_input and not outside.windows_read_input and not dilated.windows_read_input
    assert registry.nonfinite_checks("cython", "conv2d_grad_weight", "direct", inside) == (registry.RESULT,)
    assert registry.nonfinite_checks("cython", "conv2d_grad_weight", "direct", outside) == (0, 1)
    # Winograd's forward pass checks its result itself, else the operands it lists (not the bias)
    assert registry.nonfinite_checks("winograd", "conv2d", "f4", inside) == (registry.CHECKED,)
    assert registry.nonfinite_checks("winograd", "conv2d", "f4", outside) == (0, 1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_finite_check_finds_every_nan_and_inf(dtype):
    """The guard's check, compiled or not, on arrays long enough to be split among threads and short ones,
    with the extreme finite values (largest, subnormal, negative zero) that must pass."""
    rng = np.random.default_rng(3)
    info = np.finfo(dtype)
    for size in (1, 7, 1000, 200_003):
        a = rng.standard_normal(size).astype(dtype)
        a[rng.integers(size, size=3)] = [info.max, -info.tiny / 2, -0.0]
        assert plan._finite([a, a.reshape(1, -1)[:, ::2]])
        for value in VALUES:
            b = a.copy()
            b[rng.integers(size)] = value
            assert not plan._finite([b]) and not plan._finite([a, b[::-1]]), (size, value)
    assert plan._finite([np.zeros((0, 3), dtype)])
