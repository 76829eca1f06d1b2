"""The Winograd backend against the float64 reference, within the error bound its module states.

Every case runs the forward pass (with bias), the input gradient and the weight gradient of a stride-1
3x3 convolution with both tile sizes and checks both bounds of ``winograd``'s docstring: the largest
error relative to ``max|a| * max|b| * reduction``, and the norm-wise relative error. A NumPy model of
the algorithm shows that the bounds catch a wrong transform.
"""
import importlib.util
import os
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastconv as fc
import fastconv.functional as F
from fastconv import shapes
from fastconv.backends import registry
from fastconv.backends import reference as ref

try:
    wg = registry.load("winograd")
except Exception as err:  # extension not built here
    pytest.skip(f"winograd backend unavailable: {err}", allow_module_level=True)


def _spec(n, c_in, size, c_out, padding=1, dilation=1, groups=1):
    h, w = (size, size) if isinstance(size, int) else size
    return shapes.conv_spec((n, c_in, h, w), (c_out, c_in // groups, 3, 3), (c_out,), 1, padding, dilation,
                            groups)


def _errors(result, expected, a, b, reduction):
    """(largest error / (max|a| max|b| reduction), norm-wise relative error). The norm-wise error is
    relative to the output's norm or, where the sums cancel (a single output near zero, say), to the norm
    that sums of ``reduction`` such products typically have, whichever is larger."""
    diff = result.astype(np.float64) - expected
    scale = float(np.abs(a).max() * np.abs(b).max()) * reduction
    worst = float(np.abs(diff).max()) / scale if scale else float(np.abs(diff).max())
    rms = lambda v: float(np.sqrt(np.mean(np.square(v, dtype=np.float64))))  # noqa: E731
    typical = rms(a) * rms(b) * np.sqrt(reduction * expected.size)
    norm = max(float(np.linalg.norm(expected)), typical)
    return worst, float(np.linalg.norm(diff)) / norm if norm else float(np.linalg.norm(diff))


def _within_bounds(errors, tile, what):
    worst, norm = errors
    assert worst <= wg.ERROR_BOUND, f"{what}: max error {worst:.2e} of the scale > {wg.ERROR_BOUND:.0e}"
    assert norm <= wg.NORM_BOUND[tile], f"{what}: norm-wise error {norm:.2e} > {wg.NORM_BOUND[tile]:.0e}"


def _arrays(spec, seed, uniform=False):
    rng = np.random.default_rng(seed)
    draw = (lambda s: rng.uniform(0, 1, s)) if uniform else rng.standard_normal
    return [draw(s).astype(np.float32) for s in (spec.x_shape, spec.w_shape, (spec.c_out,), spec.y_shape)]


def _check(spec, tile, seed=0, uniform=False):
    """All three kernels of ``spec`` with ``tile`` against the float64 reference, within the bounds."""
    x, w, b, gy = _arrays(spec, seed, uniform)
    x64, w64, b64, gy64 = (a.astype(np.float64) for a in (x, w, b, gy))
    cin, cout = spec.c_in // spec.groups, spec.c_out // spec.groups
    what = f"tile {tile} {spec}"
    y = wg.conv2d(x, w, b, spec, tile=tile)
    assert y.shape == spec.y_shape and y.dtype == np.float32
    bias = b64.reshape(-1, 1, 1)  # the bound is on the convolution; the bias is added exactly
    _within_bounds(_errors(y - bias, ref.conv2d(x64, w64, b64, spec) - bias, x, w, cin * 9), tile,
                   what + " forward")
    gx = wg.conv2d_grad_input(gy, w, spec, tile=tile)
    assert gx.shape == spec.x_shape
    _within_bounds(_errors(gx, ref.conv2d_grad_input(gy64, w64, spec), gy, w, cout * 9), tile,
                   what + " grad input")
    gw = wg.conv2d_grad_weight(gy, x, spec, tile=tile)
    assert gw.shape == spec.w_shape
    _within_bounds(_errors(gw, ref.conv2d_grad_weight(gy64, x64, spec), gy, x, spec.n * spec.oh * spec.ow),
                   tile, what + " grad weight")


TILES = pytest.mark.parametrize("tile", wg.TILES)


# ------------------------------------------------------------------------ geometry grid
@TILES
@pytest.mark.parametrize("size", [1, 2, 3, 5, 6, 7, 9, 13, (4, 11), (10, 3)])
def test_map_sizes_across_tile_edges(size, tile):
    """Maps of 1 and 2 pixels, sizes that are and are not multiples of the tile, rectangles."""
    _check(_spec(2, 3, size, 5), tile)


@TILES
@pytest.mark.parametrize("padding", [0, 1, 2, (0, 2), (2, 1), 3, (4, 0)])
def test_padding(padding, tile):
    """Padding 3 and 4 exceed the kernel's reach: the input gradient's adjoint convolution crops."""
    _check(_spec(1, 4, 8, 6, padding=padding), tile)


@TILES
@pytest.mark.parametrize("dilation, padding", [(2, 2), (3, 3), (2, 0), (3, 1), ((1, 2), (1, 2)), ((3, 2), 0)])
def test_dilation_through_sub_grids(dilation, padding, tile):
    """Each of the d x d sub-grids is a dense convolution, whatever the padding and the map's parity."""
    _check(_spec(2, 3, (13, 11), 4, padding=padding, dilation=dilation), tile)


@TILES
@pytest.mark.parametrize("c_in, c_out, groups", [(1, 1, 1), (17, 33, 1), (6, 4, 2), (9, 12, 3), (8, 8, 8),
                                                 (5, 10, 5)])
def test_channels_and_groups(c_in, c_out, groups, tile):
    """Channel counts not a multiple of the vector, grouped and depthwise convolutions."""
    _check(_spec(1, c_in, 7, c_out, groups=groups), tile)


@TILES
def test_layer_sized(tile):
    """More output channels than one task's block, more input channels than one weight-gradient task's,
    several vectors of tiles per row."""
    _check(_spec(2, 70, (20, 40), 45), tile)


def _small_chunks(monkeypatch, private):
    """Chunks of a few rows of tiles, shared by the threads or each run by one (``private``), output
    channels in blocks of 5, products of few tiles, every layer on all threads."""
    for name, value in (("CHUNK_BYTES", 16 * 1024), ("CHUNK_TILES", 16), ("PRIVATE_CHUNK_BYTES", 16 * 1024),
                        ("PRIVATE_WEIGHT_BYTES", 1 << 20 if private else 0), ("FORWARD_CHANNELS", 5),
                        ("PRODUCT_BYTES", 4096), ("FLOPS_PER_THREAD", 1)):
        monkeypatch.setattr(wg, name, value)
    wg._plan.cache_clear()


@pytest.fixture
def plans():
    yield
    wg._plan.cache_clear()


@TILES
@pytest.mark.parametrize("private", [False, True])
@pytest.mark.parametrize("groups", [1, 3])
def test_chunks_blocks_and_splits(tile, private, groups, monkeypatch, plans):
    """Tiles in several chunks (the weight gradient adds them up), shared by the threads or each run by
    one (a group of a chunk at a time); output channels in several blocks, tiles of a chunk split over
    tasks."""
    _small_chunks(monkeypatch, private)
    spec = _spec(3, 6 * groups, (17, 23), 11 * groups, dilation=2, padding=2, groups=groups)
    for weight_grad in (False, True):
        _, chunks, _, runs_private = wg._plan(wg._geo(spec), tile, weight_grad)
        assert runs_private == private and len(chunks) >= 4
    _check(spec, tile)


@TILES
@pytest.mark.parametrize("width", [1, 3, 4, 5, 7, 8, 13, 16, 17, 30])
@pytest.mark.parametrize("dilation", [1, 2, 3, 5])
def test_narrow_rows(width, dilation, tile, monkeypatch, plans):
    """Rows of at most half a vector of tiles are staged and written back straight (AVX-512) or several
    at a time (groups of at most 4 vectors of tiles), wider rows one by one: rows of 1 to 30 tiles in
    every sub-grid of a dilation, many samples (groups cut by their cap and by chunk ends; with 30, small
    chunks and tasks that split rows), sub-grids read and written with a column stride of 1, 2, 3 or 5
    floats."""
    if width == 30:
        _small_chunks(monkeypatch, private=False)
    cols = width * tile * dilation - dilation + 1  # ``width`` tiles per row of each sub-grid
    spec = _spec(5, 3, (2 * tile * dilation + 1, cols), 4, padding=dilation, dilation=dilation)
    _check(spec, tile)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 3), groups=st.sampled_from([1, 1, 2]), c_in=st.integers(1, 6),
       c_out=st.integers(1, 6), h=st.integers(1, 12), w=st.integers(1, 12), padding=st.integers(0, 2),
       dilation=st.integers(1, 3), tile=st.sampled_from(wg.TILES), uniform=st.booleans(),
       seed=st.integers(0, 2**16))
def test_random_cases(n, groups, c_in, c_out, h, w, padding, dilation, tile, uniform, seed):
    reach = 2 * dilation + 1 - 2 * padding
    spec = _spec(n, groups * c_in, (max(h, reach), max(w, reach)), groups * c_out, padding, dilation, groups)
    _check(spec, tile, seed, uniform)


def _bench_shapes():
    """The benchmarks' shape table."""
    from fastconv.bench import common
    return common.SHAPES


@TILES
@pytest.mark.parametrize("name", ["vgg_3x3", "dilated", "tiny_3x3"])
def test_benchmark_shapes_within_bound(name, tile):
    """The stride-1 3x3 shapes of the benchmark table (one sample), normal and uniform data."""
    shape = _bench_shapes()[name]
    spec = shapes.conv_spec((1,) + shape.x[1:], shape.w, None, **shape.kwargs)
    _check(spec, tile)
    _check(spec, tile, seed=1, uniform=True)


# ----------------------------------------------------------------- the bound can fail
_MATRICES = {  # (B^T, G, A^T) of F(m x m, 3 x 3), as in winograd.h
    4: (np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
                  [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]),
        np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
                  [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]),
        np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]])),
    2: (np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]),
        np.array([[1, 0, 0], [1 / 2, 1 / 2, 1 / 2], [1 / 2, -1 / 2, 1 / 2], [0, 0, 1]]),
        np.array([[1, 1, 1, 0], [0, 1, -1, -1]])),
}


def _model(x, w, tile, bt, g, at):
    """F(tile x tile, 3 x 3) in float32 NumPy on a valid (unpadded) convolution whose output is a whole
    number of tiles: transforms, per-coordinate products summed over channels, inverse transform."""
    bt, g, at = (np.asarray(a, np.float32) for a in (bt, g, at))
    n, _, h, _ = x.shape
    tiles = (h - 2) // tile
    rows = np.arange(tiles)[:, None] * tile + np.arange(tile + 2)  # (tiles, alpha) patch rows
    d = x[:, :, rows[:, :, None, None], rows[None, None, :, :]]   # (n, c, ty, i, tx, j)
    v = np.einsum("ai,ncyixj,bj->ncyxab", bt, d, bt)
    u = np.einsum("ai,kcij,bj->kcab", g, w, g)
    m = np.einsum("ncyxab,kcab->nkyxab", v, u)
    y = np.einsum("pa,nkyxab,qb->nkypxq", at, m, at)
    return y.reshape(n, w.shape[0], tiles * tile, tiles * tile)


@TILES
def test_model_of_the_algorithm_matches_the_kernels(tile):
    """The NumPy model with the header's matrices agrees with the compiled kernels (so the next test
    perturbs the algorithm that runs)."""
    spec = _spec(1, 5, 2 + 3 * tile, 4, padding=0)
    x, w, _, _ = _arrays(spec, 3)
    y = wg.conv2d(x, w, None, spec, tile=tile)
    np.testing.assert_allclose(_model(x, w, tile, *_MATRICES[tile]), y, rtol=0, atol=2e-5 * np.abs(y).max())


@TILES
@pytest.mark.parametrize("which, entry, factor", [(1, (1, 1), 1 + 1e-2), (0, (3, 1), 1 + 1e-3),
                                                  (2, (1, 1), -1)])
def test_bound_fails_for_a_wrong_transform(tile, which, entry, factor):
    """A transform matrix with one entry off by 1%, 0.1% or of the wrong sign breaks the bounds that
    the right matrices meet."""
    spec = _spec(2, 8, 2 + 4 * tile, 6, padding=0)
    x, w, _, _ = _arrays(spec, 4)
    expected = ref.conv2d(x.astype(np.float64), w.astype(np.float64), None, spec)
    matrices = [np.array(a, np.float64) for a in _MATRICES[tile]]
    right = _errors(_model(x, w, tile, *matrices), expected, x, w, 8 * 9)
    _within_bounds(right, tile, "right transform")
    matrices[which][entry] *= factor
    with pytest.raises(AssertionError, match="error"):
        _within_bounds(_errors(_model(x, w, tile, *matrices), expected, x, w, 8 * 9), tile, "wrong transform")


# ------------------------------------------------------------------ backend behaviour
def test_supports_stride_one_3x3_float32_only():
    spec = _spec(1, 2, 6, 3)
    assert all(wg.supports(op, spec, np.float32) for op in wg.OPS)
    assert not wg.supports("conv2d", spec, np.float64)
    assert not wg.supports("max_pool2d", spec, np.float32)
    assert not wg.supports("conv2d", shapes.conv_spec((1, 2, 6, 6), (3, 2, 3, 3), None, 2, 1), np.float32)
    assert not wg.supports("conv2d", shapes.conv_spec((1, 2, 6, 6), (3, 2, 5, 5), None, 1, 2), np.float32)
    assert not wg.supports("conv2d", shapes.conv_spec((1, 2, 6), (3, 2, 3), None, 1, 1, dims=1), np.float32)
    assert wg.supports("conv2d", _spec(1, 4, 9, 4, padding=3, dilation=3, groups=2), np.float32)


def test_tile_is_checked_and_defaults_by_map_size():
    spec = _spec(1, 2, 6, 3)
    with pytest.raises(ValueError, match="tile"):
        wg.conv2d(*_arrays(spec, 0)[:3], spec, tile=3)
    assert wg.default_tile(_spec(1, 2, 56, 3)) == 4
    assert wg.default_tile(_spec(1, 2, 3, 3)) == 2  # one 4x4 tile would fill a sixteenth of a vector


@TILES
def test_tile_count_is_the_tiles_the_kernels_run(tile):
    spec = _spec(3, 2, (13, 11), 4, padding=(1, 2), dilation=(2, 3))
    rows = wg._plan(wg._geo(spec), tile)[0]
    assert wg.tile_count(spec, tile) == rows[:, 13].sum() == rows[-1, 14] + rows[-1, 13]


@pytest.mark.parametrize("dtype, stride, kernel", [(np.float64, 1, 3), (np.float32, 2, 3),
                                                   (np.float32, 1, 5)])
def test_unsupported_convolutions_are_a_clear_error(dtype, stride, kernel):
    """backend="winograd" on what it does not run (float64, strided, other kernels) says so."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 9, 9)).astype(dtype)
    w = rng.standard_normal((4, 3, kernel, kernel)).astype(dtype)
    with pytest.raises(ValueError, match="'winograd' cannot run conv2d on this input"):
        F.conv2d(x, w, stride=stride, padding=1, backend="winograd")


def test_the_planner_weighs_winograd():
    """Auto runs Winograd on wide stride-1 3x3 float32 layers (dilated ones as wide where the build
    stages their sub-grids fast, wider ones beyond), not on narrow ones, never in exact mode."""
    from fastconv import shapes
    from fastconv.backends import plan
    wide = shapes.conv_spec((2, 64, 16, 16), (64, 64, 3, 3), padding=1)
    narrow = shapes.conv_spec((2, 16, 16, 16), (16, 16, 3, 3), padding=1)
    dilated = {d: shapes.conv_spec((2, 32, 32, 32), (32, 32, 3, 3), padding=d, dilation=d) for d in (2, 3)}
    plan.reset()
    try:
        assert plan.plan("conv2d", wide, np.float32).backend == "winograd"
        assert plan.plan("conv2d", wide, np.float64).backend != "winograd"
        assert plan.plan("conv2d", narrow, np.float32).backend != "winograd"
        chosen = plan.plan("conv2d", dilated[2], np.float32).backend
        assert (chosen == "winograd") == (wg.dense_dilation() == 2)
        assert plan.plan("conv2d", dilated[3], np.float32).backend != "winograd"
        wide_dilated = shapes.conv_spec((2, 48, 32, 32), (48, 48, 3, 3), padding=3, dilation=3)
        assert plan.plan("conv2d", wide_dilated, np.float32).backend == "winograd"
        fc.set_exact(True)
        assert plan.plan("conv2d", wide, np.float32).backend != "winograd"
    finally:
        fc.set_exact(False)
        plan.reset()


def test_autograd_through_the_backend():
    """conv2d(..., backend="winograd") in a graph: output and gradients of input, weight and bias."""
    rng = np.random.default_rng(1)
    arrays = [rng.standard_normal(s).astype(np.float32) for s in ((2, 5, 10, 9), (7, 5, 3, 3), (7,))]
    results = []
    for backend in ("winograd", "numpy"):
        dtype = np.float64 if backend == "numpy" else np.float32
        ts = [fc.tensor(a.astype(dtype), requires_grad=True) for a in arrays]
        y = F.conv2d(*ts, padding="same", backend=backend)
        y.backward(np.cos(np.arange(y.size)).reshape(y.shape).astype(y.dtype))
        results.append([y.numpy()] + [t.grad for t in ts])
    for got, want in zip(*results):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("private", [False, True])
def test_same_result_on_any_thread_count(private, monkeypatch, plans):
    """Every output and gradient is summed in an order fixed by the shape alone: thread counts change
    nothing, whether the threads share chunks or run their own (one thread too), and nothing depends on
    what the scratch held before (NaN here)."""
    _small_chunks(monkeypatch, private)
    scratch = wg.workspace

    def poisoned(name, shape, dtype):
        out = scratch(name, shape, dtype)
        out[...] = np.nan
        return out
    monkeypatch.setattr(wg, "workspace", poisoned)
    for spec in (_spec(3, 20, (19, 18), 30), _spec(2, 12, (19, 18), 18, groups=3)):
        _same_on_any_thread_count(spec, private)


def _same_on_any_thread_count(spec, private):
    for weight_grad in (False, True):
        assert wg._plan(wg._geo(spec), wg.default_tile(spec), weight_grad)[3] == private
    x, w, b, gy = _arrays(spec, 5)
    threads = fc.get_num_threads()
    runs = []
    try:
        for n in (1, 2, 3):
            fc.set_num_threads(n)
            runs.append([wg.conv2d(x, w, b, spec), wg.conv2d_grad_input(gy, w, spec),
                         wg.conv2d_grad_weight(gy, x, spec)])
    finally:
        fc.set_num_threads(threads)
    for run in runs[1:]:
        for got, first in zip(run, runs[0]):
            np.testing.assert_array_equal(got, first)


def test_empty_batch():
    spec = _spec(0, 3, 6, 4)
    x, w, b, gy = _arrays(spec, 0)
    assert wg.conv2d(x, w, b, spec).shape == spec.y_shape
    assert wg.conv2d_grad_input(gy, w, spec).shape == spec.x_shape
    np.testing.assert_array_equal(wg.conv2d_grad_weight(gy, x, spec), np.zeros(spec.w_shape, np.float32))


# ------------------------------------------------------------------------ benchmarks
BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")


def _bench_suites():
    """bench/benchmarks/bench_winograd.py (the asv suites), imported as asv does."""
    if BENCH not in sys.path:
        sys.path.insert(0, BENCH)
    return importlib.import_module("benchmarks.bench_winograd")


def test_asv_suites_run_each_tile_and_kernel():
    suites = _bench_suites()
    assert set(suites.SHAPES) >= {"vgg_3x3", "c256_28_b1", "c256_28_b8", "c512_14_b1", "c512_14_b8"}
    spec = suites.shape("tiny_dilated").spec()
    expected = {"conv2d": spec.y_shape, "conv2d_grad_input": spec.x_shape, "conv2d_grad_weight": spec.w_shape}
    for tile in suites.TILES:
        for kernel, shape in expected.items():
            assert suites.warm_kernel(tile, kernel, "tiny_dilated")().shape == shape


def test_bench_script_runs_on_tiny_shapes(capsys):
    pytest.importorskip("torch")
    spec = importlib.util.spec_from_file_location("_bench_winograd", os.path.join(BENCH, "winograd.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    before = fc.get_num_threads()
    try:
        times = script.main(["--tiny", "--shapes", "tiny_3x3", "--threads", "1"])
    finally:
        script.common.set_threads(before)
    out = capsys.readouterr().out
    assert "GEMM (same run)" in out and "WARNING" not in out
    assert {("autograd", "winograd", "fwd+bwd"), ("kernel", "winograd4", "conv2d_grad_weight")} <= set(
        times["tiny_3x3"])
