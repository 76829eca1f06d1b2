"""What is specific to the Numba backend: each conv algorithm forced on shapes where it would not be chosen
(with and without merged samples), workspace reuse across shapes, NaN propagation and max-pool ties.
The backend-vs-reference sweep over random cases lives in test_backends.py."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastconv import shapes
from fastconv.backends import model
from fastconv.backends import numba_cpu as nb
from fastconv.backends import reference as ref

import cases
from helpers import assert_close


def _conv_spec(case):
    dims = case["dims"]
    x_shape = (case["n"], case["c_in"]) + case["size"]
    w_shape = (case["c_out"], case["c_in"] // case["groups"]) + case["kernel"]
    spec = shapes.conv_spec(x_shape, w_shape, None, case["stride"], case["padding"], case["dilation"],
                            case["groups"], dims)
    return spec


def _conv_arrays(spec, dtype, rng):
    x = rng.standard_normal(spec.x_shape).astype(dtype)
    w = rng.standard_normal(spec.w_shape).astype(dtype)
    b = rng.standard_normal(spec.c_out).astype(dtype)
    gy = rng.standard_normal(spec.y_shape).astype(dtype)
    return x, w, b, gy


def _check_conv(spec, dtype, algorithm, seed=0):
    """Forward (with bias), input gradient and weight gradient against the reference."""
    x, w, b, gy = _conv_arrays(spec, dtype, np.random.default_rng(seed))
    assert_close(nb.conv2d(x, w, b, spec, algorithm=algorithm), ref.conv2d(x, w, b, spec), dtype,
                 f"{algorithm} forward")
    assert_close(nb.conv2d_grad_input(gy, w, spec, algorithm=algorithm),
                 ref.conv2d_grad_input(gy, w, spec), dtype, f"{algorithm} grad input")
    assert_close(nb.conv2d_grad_weight(gy, x, spec, algorithm=algorithm),
                 ref.conv2d_grad_weight(gy, x, spec), dtype, f"{algorithm} grad weight")


@pytest.fixture(params=["one sample per GEMM", "merged samples", "bands of rows"])
def chunking(request, monkeypatch):
    """Force GEMM blocks of one whole sample, of every sample side by side, or of 1-2 output rows."""
    merge, size = {"one sample per GEMM": (0, 1 << 40), "merged samples": (1 << 40, 1 << 40),
                   "bands of rows": (1 << 40, 200)}[request.param]
    monkeypatch.setattr(nb, "MERGE_BYTES", merge)
    monkeypatch.setattr(nb, "POINTWISE_MERGE_BELOW", 1 << 30)
    monkeypatch.setattr(nb, "MAX_COLUMN_BYTES", size)
    return request.param


@pytest.mark.parametrize("algorithm", nb.ALGORITHMS)
@settings(max_examples=25, deadline=None)
@given(case=st.one_of(cases.conv_cases(2), cases.conv_cases(1)), seed=st.integers(0, 2**16))
def test_forced_algorithm_matches_reference(algorithm, case, seed):
    """Random small cases (where the automatic choice is mostly "direct"), each algorithm forced."""
    _check_conv(_conv_spec(case), case["dtype"], algorithm, seed)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=st.one_of(cases.conv_cases(2), cases.conv_cases(1)), seed=st.integers(0, 2**16))
def test_gemm_blocks_on_random_cases(chunking, case, seed):
    """GEMM over one sample at a time or over bands of rows (merged is the default on these sizes)."""
    _check_conv(_conv_spec(case), case["dtype"], "gemm", seed)


@pytest.mark.parametrize("algorithm", nb.ALGORITHMS)
@settings(max_examples=15, deadline=None)
@given(case=st.one_of(cases.conv_transpose_cases(2), cases.conv_transpose_cases(1)), seed=st.integers(0, 2**16))
def test_forced_algorithm_transposed_geometry(algorithm, case, seed):
    """The convolutions behind transposed ones: input rows no window reaches (output_padding)."""
    dims = case["dims"]
    spec = shapes.conv_transpose_spec((case["n"], case["c_in"]) + case["size"],
                                      (case["c_in"], case["c_out"] // case["groups"]) + case["kernel"], None,
                                      case["stride"], case["padding"], case["output_padding"], case["groups"],
                                      case["dilation"], dims)
    _check_conv(spec, case["dtype"], algorithm, seed)


@pytest.mark.parametrize("algorithm", nb.ALGORITHMS)
def test_tap_that_reaches_no_output_inside(algorithm):
    """Wide padding and dilation: a tap's first output inside the input lies past the last output (its
    range must be clamped, or im2col's zero fill runs past the row)."""
    spec = shapes.conv_spec((2, 1, 2, 3), (4, 1, 1, 3), padding=(0, 2), dilation=(1, 3))
    _check_conv(spec, np.float32, algorithm)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_chunking(chunking, dtype):
    """Columns of one sample per GEMM and of several samples side by side, with groups and padding."""
    spec = shapes.conv_spec((3, 4, 7, 6), (6, 2, 3, 2), None, stride=(2, 1), padding=(1, 2), groups=2)
    _check_conv(spec, dtype, "gemm")


@pytest.mark.parametrize("limit", [1, 8000, 1 << 40])
def test_per_task_sample_counts(monkeypatch, limit):
    """Bands of one row, a few samples per task (a short last task with zero-filled columns), or as many
    as balance the threads."""
    monkeypatch.setattr(nb, "TASK_BYTES", limit)
    monkeypatch.setattr(nb, "TASK_MERGE_BYTES", limit)
    spec = shapes.conv_spec((5, 4, 6, 7), (6, 2, 3, 2), None, stride=(1, 2), padding=(2, 1), groups=2)
    _check_conv(spec, np.float32, "per_task")
    _check_conv(spec, np.float64, "per_task")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pointwise_gemm(chunking, dtype):
    """1x1 stride-1 unpadded convolution: the input is its own columns (no im2col, no col2im)."""
    assert shapes.is_pointwise(shapes.conv_spec((3, 6, 5, 4), (4, 3, 1, 1), groups=2))
    _check_conv(shapes.conv_spec((3, 6, 5, 4), (4, 3, 1, 1), groups=2), dtype, "gemm")
    _check_conv(shapes.conv_spec((3, 6, 5, 4), (6, 6, 1, 1), stride=2), dtype, "gemm")  # not pointwise


def test_automatic_choice():
    """Depthwise and other thin groups go to direct loops; batches with a sample for every thread to
    one parallel region of per-task GEMMs (big GEMMs only where BLAS can be held to one thread); a
    single big sample to BLAS's own threads."""
    depthwise = shapes.conv_spec((8, 128, 56, 56), (128, 1, 3, 3), padding=1, groups=128)
    thin = shapes.conv_spec((2, 8, 9, 9), (4, 4, 3, 3), groups=2)
    small = [shapes.conv_spec((64, 1, 32, 32), (6, 1, 5, 5)), shapes.conv_spec((64, 6, 14, 14), (16, 6, 5, 5)),
             shapes.conv_spec((100, 15, 19), (15, 15, 3), stride=2, dims=1)]
    big = [shapes.conv_spec((8, 64, 56, 56), (64, 64, 3, 3), padding=1),
           shapes.conv_spec((16, 256, 28, 28), (128, 256, 1, 1))]
    def algorithm(spec):
        return model.numba_algorithm("conv2d", spec, np.float32)[0]
    assert [algorithm(s) for s in (depthwise, thin)] == ["direct"] * 2
    assert [algorithm(s) for s in small] == ["per_task"] * 3
    expected = "per_task" if nb.holds_blas() else "gemm"
    assert [algorithm(s) for s in big] == [expected] * 2
    assert algorithm(shapes.conv_spec((1, 64, 56, 56), (64, 64, 3, 3), padding=1)) == "gemm"


@pytest.mark.parametrize("mode", ["bands of rows", "BLAS not controllable"])
def test_per_task_bands(monkeypatch, mode):
    """Tasks that walk a sample in bands of rows (the last one overhanging the output), also when BLAS
    cannot be held to one thread (then bands keep each GEMM under its threading threshold)."""
    if mode == "bands of rows":
        monkeypatch.setattr(nb, "TASK_BYTES", 2000)
    else:
        monkeypatch.setattr(nb, "_blas_threads", [None])
        monkeypatch.setattr(nb, "BLAS_ONE_THREAD", 700)
    spec = shapes.conv_spec((3, 4, 11, 7), (6, 2, 3, 2), None, stride=(1, 2), padding=(2, 1), groups=2)
    assert nb._task_shape(spec, 4)[1] < spec.oh and spec.oh % nb._task_shape(spec, 4)[1]
    _check_conv(spec, np.float32, "per_task")
    _check_conv(spec, np.float64, "per_task")


def test_per_task_restores_blas_threads():
    control = nb._blas_control()
    if control is None:
        pytest.skip("SciPy's BLAS is not OpenBLAS here")
    before = control[0]()
    _check_conv(shapes.conv_spec((4, 3, 6, 6), (4, 3, 3, 3), padding=1), np.float32, "per_task")
    assert control[0]() == before


def test_blocks_cover_every_output_once(monkeypatch):
    spec = shapes.conv_spec((5, 3, 9, 7), (4, 3, 3, 3), padding=1)
    for merge, size in [(0, 1 << 40), (1 << 40, 1 << 40), (2000, 1 << 40), (1 << 40, 300), (1 << 40, 1)]:
        monkeypatch.setattr(nb, "MERGE_BYTES", merge)
        monkeypatch.setattr(nb, "MAX_COLUMN_BYTES", size)
        seen = np.zeros((spec.n, spec.oh), int)
        for n0, count, oy0, rows in nb._blocks(spec, 4):
            assert count == 1 or rows == spec.oh
            seen[n0:n0 + count, oy0:oy0 + rows] += 1
        assert (seen == 1).all(), (merge, size)


def test_workspaces_do_not_leak_between_shapes():
    """A smaller call after a bigger one (same buffers, stale data beyond the view) and the bigger one
    again; results never alias a workspace."""
    big = shapes.conv_spec((2, 5, 9, 9), (4, 5, 3, 3), padding=1)
    small = shapes.conv_spec((1, 3, 4, 5), (2, 3, 2, 2), stride=2, padding=1)
    rng = np.random.default_rng(1)
    first = _conv_arrays(big, np.float32, rng)
    y_first = nb.conv2d(first[0], first[1], None, big, algorithm="gemm")
    kept = y_first.copy()
    for spec in (small, big, small):
        _check_conv(spec, np.float32, "gemm", seed=3)
    assert np.array_equal(y_first, kept)
    nb.clear_workspaces()
    _check_conv(small, np.float32, "gemm", seed=4)


def test_workspace_views():
    a = nb.workspace("test", (2, 3), np.float64)
    b = nb.workspace("test", (1, 2), np.float64)
    assert a.shape == (2, 3) and b.shape == (1, 2) and np.shares_memory(a, b)
    assert not np.shares_memory(nb.workspace("test", (100,), np.float64), a)  # grown: a new buffer


@pytest.mark.parametrize("algorithm", nb.ALGORITHMS)
def test_conv_propagates_nan_and_inf(algorithm):
    """fastmath flags reorder sums but keep NaN and inf: the non-finite outputs are the reference's.
    (Unpadded: direct loops skip padding, so a NaN gradient meets no padded zero there, unlike im2col.)"""
    spec = shapes.conv_spec((2, 3, 7, 6), (4, 3, 3, 3), stride=(2, 1))
    x, w, b, gy = _conv_arrays(spec, np.float32, np.random.default_rng(2))
    x[0, 1, 2, 3] = np.nan
    x[1, 0, 5, 5] = np.inf
    gy[1, 2, 0, 0] = np.nan
    for got, want in [(nb.conv2d(x, w, b, spec, algorithm=algorithm), ref.conv2d(x, w, b, spec)),
                      (nb.conv2d_grad_input(gy, w, spec, algorithm=algorithm), ref.conv2d_grad_input(gy, w, spec)),
                      (nb.conv2d_grad_weight(gy, x, spec, algorithm=algorithm),
                       ref.conv2d_grad_weight(gy, x, spec))]:
        assert np.array_equal(np.isnan(got), np.isnan(want))
        assert np.array_equal(np.isposinf(got), np.isposinf(want))
        finite = np.isfinite(want)
        assert np.allclose(got[finite], want[finite], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_pool_ties_and_nan_match_reference_indices(dtype):
    """Few distinct values (many ties: the first maximum wins) and NaNs (the first NaN wins)."""
    rng = np.random.default_rng(5)
    x = rng.integers(0, 3, (2, 3, 9, 8)).astype(dtype)
    x[0, 0, 1, 1] = x[0, 0, 2, 2] = x[1, 2, 4, 5] = np.nan
    for args in [dict(kernel_size=3, stride=1, padding=1), dict(kernel_size=(2, 3), stride=2, dilation=2),
                 dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)]:
        spec = shapes.pool_spec(x.shape, **args)
        y, idx = nb.max_pool2d(x, spec)
        y_ref, idx_ref = ref.max_pool2d(x, spec)
        assert idx.dtype == np.int64
        assert np.array_equal(idx, idx_ref), args
        assert np.array_equal(y, y_ref, equal_nan=True), args
        gy = rng.standard_normal(y.shape).astype(dtype)
        assert_close(nb.max_pool2d_grad(gy, idx, spec), ref.max_pool2d_grad(gy, idx_ref, spec), dtype, "grad")


def test_max_pool_all_minus_inf_window_points_inside():
    """A window of -inf only: the index is its first pixel inside the input (PyTorch's choice)."""
    x = np.full((1, 1, 4, 4), -np.inf, np.float32)
    spec = shapes.pool_spec(x.shape, kernel_size=3, stride=2, padding=1)
    y, idx = nb.max_pool2d(x, spec)
    assert np.all(np.isneginf(y))
    assert idx.tolist() == [[[[0, 1], [4, 5]]]]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_unpool_round_trip(dtype):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 3, 6, 6)).astype(dtype)
    spec = shapes.pool_spec(x.shape, kernel_size=2)
    y, idx = nb.max_pool2d(x, spec)
    up = nb.max_unpool2d(y, idx, (6, 6))
    assert np.array_equal(up, ref.max_unpool2d(y, idx, (6, 6)))
    g = rng.standard_normal(up.shape).astype(dtype)
    assert np.array_equal(nb.max_unpool2d_grad(g, idx), ref.max_unpool2d_grad(g, idx))


@pytest.mark.parametrize("algorithm", nb.ALGORITHMS)
def test_one_by_one_kernel_with_unread_input_pixels(algorithm):
    """A transposed convolution's output padding: 1x1, stride 1, unpadded, yet the input has pixels no
    output reads, so it is not its own column matrix."""
    spec = shapes.conv_transpose_spec((1, 1, 1), (1, 1, 1), None, output_padding=1, dilation=2, dims=1)
    assert (spec.w, spec.ow) == (2, 1) and not shapes.is_pointwise(spec)
    _check_conv(spec, np.float64, algorithm)
