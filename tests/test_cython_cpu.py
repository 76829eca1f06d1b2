"""What only the Cython backend has: each convolution algorithm forced onto shapes where the automatic
choice would take the other, the workspace cache, NaN propagation, pooling ties, unpooling, threads.

The random cases of test_backends.py go through the automatic choice; here the kernels are called
directly with ``algorithm=`` and compared with the NumPy reference kernels on the same spec.
"""
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastconv as fc
from fastconv import shapes
import fastconv.functional as F
from fastconv.backends import model, plan
from fastconv.backends import reference as ref

import cases
from helpers import assert_close, backend_or_skip

cy = backend_or_skip("cython")  # extension not built here: a skip, or a failure where CI requires it

OTHER = {"direct": "gemm", "gemm": "direct"}


def _spec(case):
    if case["op"].startswith("conv_transpose"):
        x = (case["n"], case["c_in"]) + case["size"]
        w = (case["c_in"], case["c_out"] // case["groups"]) + case["kernel"]
        spec = shapes.conv_transpose_spec(x, w, None, case["stride"], case["padding"],
                                          case["output_padding"], case["groups"], case["dilation"],
                                          case["dims"])
    else:
        x = (case["n"], case["c_in"]) + case["size"]
        w = (case["c_out"], case["c_in"] // case["groups"]) + case["kernel"]
        spec = shapes.conv_spec(x, w, None, case["stride"], case["padding"], case["dilation"],
                                case["groups"], case["dims"])
    return spec


def _check_conv(spec, dtype, algorithm, seed=0, bias=True):
    """conv2d and both gradients of the backend, forced to ``algorithm``, against the reference (kernels
    the algorithm does not support are refused by the planner, checked too)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(spec.x_shape).astype(dtype)
    w = rng.standard_normal(spec.w_shape).astype(dtype)
    b = rng.standard_normal(spec.c_out).astype(dtype) if bias else None
    gy = rng.standard_normal(spec.y_shape).astype(dtype)
    what = f"{algorithm} {spec}"
    for op, args, want in [("conv2d", (x, w, b), ref.conv2d(x, w, b, spec)),
                           ("conv2d_grad_input", (gy, w), ref.conv2d_grad_input(gy, w, spec)),
                           ("conv2d_grad_weight", (gy, x), ref.conv2d_grad_weight(gy, x, spec))]:
        if not cy.supports(op, spec, dtype, algorithm):
            with pytest.raises(ValueError, match="cannot run"):
                plan.plan(op, spec, dtype, backend=f"cython:{algorithm}")
            continue
        assert_close(getattr(cy, op)(*args, spec, algorithm=algorithm), want, dtype, f"{what} {op}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kw", [dict(padding=1), dict(padding=(2, 0), dilation=(1, 2)), dict(groups=6)])
def test_direct_weight_gradient_of_3x3_kernels_in_one_pass(dtype, kw):
    """The direct weight gradient of 3x3 stride-1 kernels sums the nine taps in one pass over each padded
    plane (``blk_dot9``): padding, dilation, groups, planes whose length is no multiple of a vector."""
    spec = shapes.conv_spec((3, 6, 11, 23), (12, 6 // kw.get("groups", 1), 3, 3), None, **kw)
    rng = np.random.default_rng(7)
    x, gy = rng.standard_normal(spec.x_shape).astype(dtype), rng.standard_normal(spec.y_shape).astype(dtype)
    assert_close(cy.conv2d_grad_weight(gy, x, spec, algorithm="direct"),
                 ref.conv2d_grad_weight(gy.astype(np.float64), x.astype(np.float64), spec), dtype,
                 f"direct grad weight {spec}")


@pytest.mark.parametrize("algorithm", ["direct", "gemm", "blocked"])
@settings(max_examples=40, deadline=None)
@given(case=st.one_of(cases.conv_cases(2), cases.conv_cases(1), cases.conv_transpose_cases(2),
                      cases.conv_transpose_cases(1)), seed=st.integers(0, 2**16))
def test_forced_algorithm_matches_reference(algorithm, case, seed):
    _check_conv(_spec(case), case["dtype"], algorithm, seed, case["bias"])


# (x shape, w shape, conv_spec arguments): the automatic choice of each is the other algorithm's
AUTO_GEMM = [
    ((2, 16, 9, 9), (16, 16, 3, 3), dict(padding=1)),
    ((2, 12, 7, 10), (8, 3, 2, 3), dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=4)),
    ((3, 8, 6, 6), (4, 8, 1, 1), {}),                      # 1x1 stride 1: plain GEMM on the input planes
    ((2, 8, 6, 6), (6, 4, 1, 1), dict(groups=2)),          # grouped 1x1
    ((2, 6, 7, 7), (4, 6, 1, 1), dict(stride=2)),           # 1x1 but strided: unfolded
    ((1, 6, 5, 5), (5, 6, 1, 1), dict(padding=1)),          # 1x1 but padded
    ((4, 5, 1, 30), (7, 5, 1, 4), dict(stride=(1, 3))),     # 1-D
]
AUTO_DIRECT = [
    ((2, 6, 9, 8), (6, 1, 3, 3), dict(padding=1, groups=6)),              # depthwise
    ((2, 4, 11, 11), (8, 1, 3, 3), dict(stride=2, padding=1, groups=4)),  # channel multiplier 2, strided
    ((1, 4, 8, 9), (4, 2, 3, 2), dict(dilation=(2, 3), padding=(2, 1), groups=2)),
    ((3, 3, 1, 25), (3, 1, 1, 5), dict(padding=(0, 2), groups=3)),          # depthwise 1-D
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", AUTO_GEMM + AUTO_DIRECT)
def test_each_algorithm_on_shapes_the_other_would_get(shape, dtype):
    x_shape, w_shape, kw = shape
    spec = shapes.conv_spec(x_shape, w_shape, None, **kw)
    auto = model.cython_algorithm("conv2d", spec, np.float64)[0]
    assert auto == ("gemm" if shape in AUTO_GEMM else "direct")
    _check_conv(spec, dtype, OTHER[auto])
    _check_conv(spec, dtype, auto)


@pytest.mark.parametrize("tile", ["two rows", "partial rows", "two samples", "two signals",
                                  "across samples", "fewer tiles than threads"])
def test_gemm_tiles_and_thread_plans(monkeypatch, tile):
    """Tiles of whole rows, tiles that start and end inside rows, tiles of several small samples or
    straddling samples, and one tile for many threads (then the BLAS threads)."""
    spec = shapes.conv_spec((2, 6, 13, 11), (6, 3, 3, 2), None, stride=(2, 1), padding=1, groups=2)
    per_output = 4 * (3 * 3 * 2 + 3)  # bytes of columns and outputs per output
    monkeypatch.setattr(cy, "_MIN_TILE", 1)
    if tile == "two rows":
        monkeypatch.setattr(cy, "_TILE_BYTES", per_output * (2 * spec.ow + 3))
        assert cy._gemm_plan(spec, 4)[0] == 2 * spec.ow
    elif tile == "partial rows":
        monkeypatch.setattr(cy, "_TILE_BYTES", per_output * 7)
        assert cy._gemm_plan(spec, 4)[0] == 7
    elif tile in ("two samples", "two signals"):  # tiny planes: a few whole samples per product
        shape = (5, 4, 3, 4) if tile == "two samples" else (5, 4, 1, 9)
        spec = shapes.conv_spec(shape, (6, 2, 1, 2), None, padding=(0, 1), stride=(1, 2), groups=2)
        monkeypatch.setattr(cy, "_MIN_TILE", 64)
        monkeypatch.setattr(cy, "_SMALL_GEMM", 3 * 4 * (2 * spec.oh * spec.ow + 1))
        assert cy._gemm_plan(spec, 4)[0] == 2 * spec.oh * spec.ow
    elif tile == "across samples":
        spec = shapes.conv_spec((5, 4, 3, 3), (4, 4, 3, 3), None, padding=1)
        monkeypatch.setattr(cy, "_MIN_TILE", 10)
        monkeypatch.setattr(cy, "num_threads", lambda: 3)
        assert cy._gemm_plan(spec, 4)[:2] == (15, 3)
        assert cy._gemm_plan(spec, 4, whole_samples=True)[:2] == (9, 3)
    else:
        spec = shapes.conv_spec((1, 4, 5, 5), (4, 4, 3, 3), None, padding=1)
        monkeypatch.setattr(cy, "_MIN_TILE", 64)
        monkeypatch.setattr(cy, "num_threads", lambda: 4)
        assert cy._gemm_plan(spec, 4)[1:] == (1, 4)
    for dtype in (np.float32, np.float64):
        _check_conv(spec, dtype, "gemm")


def test_where_blocked_runs():
    """The measured rules of ``model.cython_algorithm`` (float32; float64 never runs blocked)."""
    spec = lambda x, w, **kw: shapes.conv_spec(x, w, None, **kw)  # noqa: E731
    c1, c3, c5 = spec((64, 1, 32, 32), (6, 1, 5, 5)), spec((64, 6, 14, 14), (16, 6, 5, 5)), \
        spec((64, 16, 5, 5), (120, 16, 5, 5))
    vgg = spec((8, 16, 30, 30), (16, 16, 3, 3), padding=1)
    strided = spec((8, 16, 30, 30), (16, 16, 3, 3), stride=2)
    small = spec((256, 16, 6, 6), (16, 16, 3, 3))  # 4x4 outputs
    depthwise, pointwise = spec((1, 8, 9, 9), (8, 1, 3, 3), groups=8), spec((8, 32, 30, 30), (16, 32, 1, 1))
    one_channel = spec((100, 1, 1, 40), (25, 1, 1, 5), stride=2, padding=(0, 1))  # MNIST-1D's first layer
    tiny = spec((2, 16, 9, 9), (16, 16, 3, 3))  # under 2 MFLOP: blocked too

    def algorithms(op, *specs):
        return [model.cython_algorithm(op, s, np.float32)[0] for s in specs]
    assert algorithms("conv2d", c1, c3, c5, vgg, strided, small, pointwise, depthwise, one_channel, tiny) == \
        ["blocked", "blocked", "gemm", "blocked", "blocked", "blocked", "blocked", "direct", "gemm", "blocked"]
    assert algorithms("conv2d_grad_input", c3, c5, vgg, strided, small, pointwise, depthwise) == \
        ["blocked", "gemm", "blocked", "gemm", "blocked", "blocked", "direct"]  # C3: pixel tiles
    assert algorithms("conv2d_grad_weight", c3, c5, vgg, strided, small, pointwise) == \
        ["blocked", "gemm", "blocked", "blocked", "blocked", "blocked"]
    assert [model.cython_algorithm("conv2d", s, np.float64)[0] for s in (c3, vgg, pointwise)] == ["gemm"] * 3


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=st.one_of(cases.conv_cases(2), cases.conv_cases(1)), seed=st.integers(0, 2**16),
       band_bytes=st.sampled_from([1, 600, 1 << 18]), more_threads=st.sampled_from([0, 6]))
def test_blocked_forward_in_bands(monkeypatch, case, seed, band_bytes, more_threads):
    """The register-blocked float32 forward against the reference, with tasks of one row, of a few
    rows (the last band shorter) and of whole samples (more threads: bands cut smaller)."""
    threads = cy._omp.max_threads() + more_threads  # never fewer than OpenMP runs: each needs scratch
    monkeypatch.setattr(cy, "_BAND_BYTES", band_bytes)
    monkeypatch.setattr(cy, "num_threads", lambda: threads)
    monkeypatch.setattr(cy, "BLOCKED_PARALLEL_FLOPS", 0)  # small passes too on every thread
    spec = _spec(case)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(spec.x_shape).astype(np.float32)
    w = rng.standard_normal(spec.w_shape).astype(np.float32)
    b = rng.standard_normal(spec.c_out).astype(np.float32) if case["bias"] else None
    want = ref.conv2d(x.astype(np.float64), w.astype(np.float64), None if b is None else b.astype(np.float64),
                      spec)
    assert_close(cy.conv2d(x, w, b, spec, algorithm="blocked"), want, np.float32, f"blocked {spec}")


def _grad_input_case(spec, seed):
    """``(gy, w, want)``: float32 operands of ``spec``'s input gradient and the float64 reference's."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(spec.w_shape).astype(np.float32)
    gy = rng.standard_normal(spec.y_shape).astype(np.float32)
    return gy, w, ref.conv2d_grad_input(gy.astype(np.float64), w.astype(np.float64), spec)


@settings(max_examples=80, deadline=None)
@given(case=st.one_of(cases.conv_cases(2, stride=(2, 2)), cases.conv_cases(2), cases.conv_cases(1, stride=(3,)),
                      cases.conv_transpose_cases(2, stride=(2, 3))), seed=st.integers(0, 2**16))
def test_blocked_strided_input_gradient_by_input_phases(case, seed):
    """A strided input gradient as one stride-1 pass per input phase (``shapes.input_phases``): the taps
    that reach each phase, phases no tap reaches zero; where a phase's first pixel is reached from the
    second output row on (padding as wide as the kernel) the blocked kernel does not run it."""
    spec = _spec(case)
    if spec.stride == (1, 1):
        return
    if shapes.input_phases(spec) is None:
        assert not cy.supports("conv2d_grad_input", spec, np.float32, "blocked")
        return
    gy, w, want = _grad_input_case(spec, seed)
    assert_close(cy.conv2d_grad_input(gy, w, spec, algorithm="blocked"), want, np.float32,
                 f"blocked strided grad input {spec}")


@pytest.mark.parametrize("c_in", [3, 20])  # pixel tiles (few channels per phase); channel tiles, a part block
@pytest.mark.parametrize("x_shape, kernel, stride, padding", [
    ((2, 45, 37), (3, 3), (2, 2), 1),   # phases 23 and 22 (then 19 and 18) wide: tiles of two halves
    ((2, 20, 50), (5, 4), (3, 3), 1),   # every third pixel: one float at a time
    ((1, 9, 40), (3, 3), (1, 2), 0),    # one axis strided
])
def test_blocked_input_phases_written_in_place(c_in, x_shape, kernel, stride, padding):
    """Each input phase's pass writes its pixels straight into the input gradient, ``stride`` floats
    apart: rows wider than one vector's pixels, strides of 2 and 3, pixel and channel tiles."""
    n, h, w_ = x_shape
    spec = shapes.conv_spec((n, c_in, h, w_), (17, c_in) + kernel, None, stride, padding, 1, 1, 2)
    assert all(p.spec is None or p.spec.y_shape[2:] == (p.rows, p.cols) for p in shapes.input_phases(spec))
    gy, w, want = _grad_input_case(spec, 3)
    assert_close(cy.conv2d_grad_input(gy, w, spec, algorithm="blocked"), want, np.float32,
                 f"blocked strided grad input {spec}")


@settings(max_examples=60, deadline=None)
@given(case=st.one_of(cases.conv_cases(2), cases.conv_cases(1), cases.conv_transpose_cases(2),
                      cases.conv_transpose_cases(1)), seed=st.integers(0, 2**16))
def test_blocked_input_gradient_through_the_adjoint(case, seed):
    """A stride-1 input gradient as the forward pass of the adjoint convolution (flipped kernels,
    channels swapped, padding = reach - padding), transposed convolutions' output padding included;
    where no adjoint exists (strided, padded past the kernel's reach) the spec says so."""
    spec = _spec(case)
    adjoint = shapes.adjoint_spec(spec)
    if adjoint is None:
        pt, pb, pl, pr = spec.padding
        reach = (spec.dilation[0] * (spec.kh - 1), spec.dilation[1] * (spec.kw - 1))
        assert spec.stride != (1, 1) or max(pt, pb) > reach[0] or max(pl, pr) > reach[1]
        return
    gy, w, want = _grad_input_case(spec, seed)
    assert_close(ref.conv2d(gy, shapes.adjoint_weight(w, spec), None, adjoint), want, np.float32,
                 f"adjoint {spec}")
    assert_close(cy.conv2d_grad_input(gy, w, spec, algorithm="blocked"), want, np.float32,
                 f"blocked grad input {spec}")


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("c_in, c_out, groups", [(5, 32, 1), (7, 40, 1), (4, 96, 2), (2, 64, 1)])
def test_blocked_weight_gradient_two_vector_tiles(stride, c_in, c_out, groups):
    """3-tap kernel rows with 32 or more output channels per group run tiles of two vectors of channels
    (a part block past a multiple of 32, kernel rows not a multiple of the tile's 3, odd widths)."""
    spec = shapes.conv_spec((3, c_in, 13, 29), (c_out, c_in // groups, 3, 3), None, stride, 1, 1, groups, 2)
    rng = np.random.default_rng(c_in + stride)
    x = rng.standard_normal(spec.x_shape).astype(np.float32)
    gy = rng.standard_normal(spec.y_shape).astype(np.float32)
    want = ref.conv2d_grad_weight(gy.astype(np.float64), x.astype(np.float64), spec)
    assert_close(cy.conv2d_grad_weight(gy, x, spec, algorithm="blocked"), want, np.float32,
                 f"blocked grad weight {spec}")


@settings(max_examples=60, deadline=None)
@given(case=st.one_of(cases.conv_cases(2), cases.conv_cases(1), cases.conv_transpose_cases(2)),
       seed=st.integers(0, 2**16), c_out_per_group=st.sampled_from([None, 9, 17, 33]))
def test_blocked_weight_gradient(case, seed, c_out_per_group):
    """The weight gradient through the turned micro-kernel (tiles of kernel taps by output channels,
    reduced over output pixels), also with one and two vectors' worth of output channels per group."""
    if c_out_per_group is not None and not case["op"].startswith("conv_transpose"):
        case = dict(case, c_out=case["groups"] * c_out_per_group)
    spec = _spec(case)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(spec.x_shape).astype(np.float32)
    gy = rng.standard_normal(spec.y_shape).astype(np.float32)
    want = ref.conv2d_grad_weight(gy.astype(np.float64), x.astype(np.float64), spec)
    assert_close(cy.conv2d_grad_weight(gy, x, spec, algorithm="blocked"), want, np.float32,
                 f"blocked grad weight {spec}")


@pytest.mark.parametrize("shape", [
    ((2, 32, 40, 40), (48, 32, 3, 3), dict(padding=1)),                      # several channel blocks
    ((3, 16, 33, 47), (24, 16, 3, 3), dict(padding=2, dilation=2)),          # odd sizes, dilated
    ((2, 24, 29, 31), (40, 12, 5, 3), dict(padding=(2, 1), groups=2)),      # grouped, non-square
    ((4, 64, 14, 14), (64, 64, 1, 1), {}),                                  # pointwise
])
def test_blocked_on_layer_sized_shapes(shape):
    """All three blocked kernels on shapes the size of real layers (many bands, tiles and blocks)."""
    spec = shapes.conv_spec(shape[0], shape[1], None, **shape[2])
    rng = np.random.default_rng(7)
    x, w = rng.standard_normal(spec.x_shape, np.float32), rng.standard_normal(spec.w_shape, np.float32)
    gy = rng.standard_normal(spec.y_shape, np.float32)
    x64, w64, gy64 = x.astype(np.float64), w.astype(np.float64), gy.astype(np.float64)
    assert_close(cy.conv2d(x, w, None, spec, algorithm="blocked"), ref.conv2d(x64, w64, None, spec),
                 np.float32, "forward")
    assert_close(cy.conv2d_grad_input(gy, w, spec, algorithm="blocked"),
                 ref.conv2d_grad_input(gy64, w64, spec), np.float32, "grad input")
    assert_close(cy.conv2d_grad_weight(gy, x, spec, algorithm="blocked"),
                 ref.conv2d_grad_weight(gy64, x64, spec), np.float32, "grad weight")


@pytest.mark.parametrize("c_out", [1, 7, 8, 9, 16, 17, 32, 33, 40])
@pytest.mark.parametrize("ow", [1, 5, 6, 7, 13, 14, 15, 29, 57])
def test_blocked_tile_and_block_edges(c_out, ow):
    """Output widths around the register tile (6 or 14 pixels) and channel counts around the blocks of
    one and two vectors (8 and 16, or 16 and 32 channels)."""
    spec = shapes.conv_spec((2, 3, 5, ow + 2), (c_out, 3, 3, 3), None, padding=(1, 0))
    rng = np.random.default_rng(ow * 100 + c_out)
    x, w = rng.standard_normal(spec.x_shape, np.float32), rng.standard_normal(spec.w_shape, np.float32)
    b = rng.standard_normal(c_out, np.float32)
    assert_close(cy.conv2d(x, w, b, spec, algorithm="blocked"), ref.conv2d(x, w, b, spec), np.float32,
                 f"blocked {spec}")


def test_unknown_algorithm_is_rejected():
    x, w = np.zeros((1, 1, 4, 4), np.float32), np.zeros((1, 1, 3, 3), np.float32)
    with pytest.raises(ValueError, match="no algorithm 'nonesuch'.*direct, gemm, blocked"):
        F.conv2d(x, w, backend="cython:nonesuch")


def test_workspace_is_reused_across_shapes():
    cy.clear_workspaces()
    big = shapes.conv_spec((2, 8, 12, 12), (8, 8, 3, 3), None, padding=1)
    small = shapes.conv_spec((1, 8, 5, 7), (4, 8, 3, 3), None)
    _check_conv(big, np.float32, "gemm")
    first = cy.workspace("cols", (1, 1), np.float32)
    _check_conv(small, np.float32, "gemm")        # smaller: the same buffer serves
    _check_conv(big, np.float32, "gemm")
    assert np.shares_memory(first, cy.workspace("cols", (1, 1), np.float32))
    _check_conv(small, np.float64, "gemm")        # another dtype has its own buffer
    assert not np.shares_memory(first, cy.workspace("cols", (1, 1), np.float64))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_pool_ties_and_nan_match_the_reference(dtype):
    """The first maximum in row-major window order wins; a NaN beats every number."""
    spec = shapes.pool_spec((2, 3, 7, 8), 3, stride=2, padding=1, dilation=(1, 2), ceil_mode=True)
    x = np.random.default_rng(2).integers(0, 3, spec.x_shape).astype(dtype)  # many ties
    x[0, 0, 2, 3] = np.nan
    x[1, 2, 4, 5] = np.nan
    y, idx = cy.max_pool2d(x, spec)
    y_ref, idx_ref = ref.max_pool2d(x, spec)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(idx, idx_ref)
    assert idx.dtype == np.int64


def test_max_pool_of_minus_infinity_points_inside_the_input():
    """A window of -inf only: the index of its first input pixel, as PyTorch (never a padding cell)."""
    torch = pytest.importorskip("torch")
    x = np.full((1, 2, 5, 6), -np.inf)
    spec = shapes.pool_spec(x.shape, 3, stride=2, padding=1, dilation=(1, 2), ceil_mode=True)
    y, idx = cy.max_pool2d(x, spec)
    _, idx_torch = torch.nn.functional.max_pool2d(torch.from_numpy(x), 3, 2, 1, (1, 2), ceil_mode=True,
                                                  return_indices=True)
    np.testing.assert_array_equal(idx, idx_torch.numpy())
    assert np.all(y == -np.inf)


@pytest.mark.parametrize("index_dtype", [np.int64, np.int32])
def test_max_unpool_and_its_gradient_match_the_reference(index_dtype):
    spec = shapes.pool_spec((2, 3, 9, 8), 2, stride=2, padding=1)
    rng = np.random.default_rng(3)
    _, idx = ref.max_pool2d(rng.standard_normal(spec.x_shape), spec)
    x = rng.standard_normal(spec.y_shape).astype(np.float32)
    out_hw = (spec.h, spec.w)
    idx = idx.astype(index_dtype)
    np.testing.assert_array_equal(cy.max_unpool2d(x, idx, out_hw), ref.max_unpool2d(x, idx, out_hw))
    gy = rng.standard_normal(x.shape[:2] + out_hw).astype(np.float32)
    np.testing.assert_array_equal(cy.max_unpool2d_grad(gy, idx), ref.max_unpool2d_grad(gy, idx))


def test_set_num_threads_reaches_the_kernels():
    from fastconv._cy import _omp
    spec = shapes.conv_spec((4, 6, 10, 10), (8, 6, 3, 3), None, padding=1)
    before = _omp.max_threads()
    try:
        fc.set_num_threads(1)
        assert cy.num_threads() == 1
        one = cy.conv2d(np.ones(spec.x_shape), np.ones(spec.w_shape), None, spec, algorithm="gemm")
        fc.set_num_threads(3)
        assert cy.num_threads() == 3
        three = cy.conv2d(np.ones(spec.x_shape), np.ones(spec.w_shape), None, spec, algorithm="gemm")
    finally:
        fc.set_num_threads(before)
    np.testing.assert_array_equal(one, three)


def test_omp_num_threads_is_respected(tmp_path):
    code = "from fastconv.backends import cython_cpu as c; print(c.num_threads())"
    env = dict(os.environ, OMP_NUM_THREADS="3")
    # run outside the repo root, whose uncompiled package would shadow a non-editable install
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         cwd=tmp_path)
    assert out.stdout.strip() == "3"


def test_missing_extension_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(cy, "_IMPORT_ERROR", ImportError("No module named 'fastconv._cy._conv'"))
    with pytest.raises(ImportError, match="not built.*pip install"):
        cy.check_available()


# ------------------------------------------------------------------- packed weights of the blocked kernel
def _check_blocked(w, x, spec, what):
    """Forward pass and input gradient of the blocked kernel on ``w`` as it is now, against the reference."""
    w64, gy = w.astype(np.float64), np.random.default_rng(6).standard_normal(spec.y_shape)
    assert_close(cy.conv2d(x, w, None, spec, algorithm="blocked"), ref.conv2d(x.astype(np.float64), w64, None, spec),
                 np.float32, what)
    assert_close(cy.conv2d_grad_input(gy.astype(np.float32), w, spec, algorithm="blocked"),
                 ref.conv2d_grad_input(gy, w64, spec), np.float32, what + " grad input")


@pytest.mark.parametrize("change", ["optimizer step", "load_state_dict", "user write", "same address"])
def test_packed_weights_follow_in_place_changes(change):
    """The packed copy is reused while the weights hold the same values and rewritten as soon as an
    optimizer step, ``load_state_dict`` or a write into the array changes them in place."""
    from fastconv import nn, optim
    cy.packed_weights.clear()
    conv = nn.Conv2d(8, 20, 3, padding=1)
    x = np.random.default_rng(5).standard_normal((2, 8, 9, 11)).astype(np.float32)
    spec = shapes.conv_spec(x.shape, conv.weight.shape, None, padding=1)
    w = conv.weight.data  # the array the layer passes to the kernels
    _check_blocked(w, x, spec, "first call")
    written = cy.packed_weights.blocks_written
    _check_blocked(w, x, spec, "same weights")
    assert cy.packed_weights.blocks_written == written  # nothing repacked
    if change == "optimizer step":
        conv.weight.grad = np.ones_like(w)
        optim.SGD([conv.weight], lr=0.5).step()
    elif change == "load_state_dict":
        conv.load_state_dict({k: np.full_like(v, 0.25) for k, v in conv.state_dict().items()})
    elif change == "user write":
        w[19, 7, 2, 2] += 1.0  # one weight of the last (partly filled) block
    else:  # another array object over the same memory (what a freed and reallocated one looks like)
        w = np.frombuffer(w.data, np.float32).reshape(w.shape)
        w[...] = np.random.default_rng(9).standard_normal(w.shape)
        assert w.ctypes.data == conv.weight.data.ctypes.data and w is not conv.weight.data
    _check_blocked(w, x, spec, f"after {change}")
    assert cy.packed_weights.blocks_written > written
    if change == "user write":  # only the forward and adjoint blocks holding the changed weight
        assert cy.packed_weights.blocks_written - written == 2


def test_packed_weights_are_bounded(monkeypatch):
    """Least recently used packings go once their bytes pass the bound; results stay right."""
    monkeypatch.setattr(cy, "PACKED_WEIGHTS_BYTES", 1)
    cy.packed_weights.clear()
    spec = shapes.conv_spec((1, 8, 6, 6), (16, 8, 3, 3), None, padding=1)
    rng = np.random.default_rng(3)
    x = rng.standard_normal(spec.x_shape).astype(np.float32)
    ws = [rng.standard_normal(spec.w_shape).astype(np.float32) for _ in range(3)]
    for w in ws + ws:
        assert_close(cy.conv2d(x, w, None, spec, algorithm="blocked"), ref.conv2d(x, w, None, spec),
                     np.float32, "bounded cache")
        assert len(cy.packed_weights.entries) == 1


@pytest.mark.parametrize("shape", [
    ((2, 5, 30, 31), (18, 5, 5, 5), dict(padding=2)),                        # 5x5 rows
    ((2, 3, 41, 45), (17, 3, 7, 7), dict(stride=2, padding=3)),               # 7x7 stride 2: flat taps
    ((1, 3, 47, 51), (20, 3, 11, 11), dict(stride=4, padding=2)),             # 11x11 stride 4: flat taps
    ((2, 24, 15, 17), (33, 24, 1, 1), dict(stride=2)),                        # 1x1 stride 2
    ((2, 9, 19, 23), (16, 9, 3, 3), dict(stride=2, padding=1)),               # 3x3 stride 2 rows
    ((2, 9, 19, 23), (16, 9, 3, 3), dict(padding=2, dilation=2)),             # 3x3 dilation 2 rows
    ((2, 6, 14, 16), (12, 6, 3, 3), dict(stride=3, padding=1)),               # any other stride
    ((2, 6, 14, 16), (12, 6, 3, 4), dict(dilation=(1, 3), padding=(1, 4))),   # any other row
])
@pytest.mark.parametrize("threads", [1, 3])
def test_blocked_tile_shapes(shape, threads, monkeypatch):
    """Every specialised row shape of the tile (and the general one), forward and both gradients, on
    one thread and split for more threads than OpenMP runs (more bands, chunks and runs of samples)."""
    monkeypatch.setattr(cy, "num_threads", lambda: max(threads, cy._omp.max_threads()))
    monkeypatch.setattr(cy, "BLOCKED_PARALLEL_FLOPS", 0)  # small passes too on every thread
    spec = shapes.conv_spec(shape[0], shape[1], None, **shape[2])
    _check_conv(spec, np.float32, "blocked", seed=threads)


@pytest.mark.parametrize("n, threads", [(1, 1), (1, 4), (5, 2), (7, 16)])
def test_blocked_weight_gradient_runs_of_samples(n, threads, monkeypatch):
    """The weight gradient summed straight into the result (one run of samples) or over several runs
    (few channel blocks, many threads), batch 1 included."""
    monkeypatch.setattr(cy, "num_threads", lambda: max(threads, cy._omp.max_threads()))
    monkeypatch.setattr(cy, "BLOCKED_PARALLEL_FLOPS", 0)  # small passes too on every thread
    spec = shapes.conv_spec((n, 6, 12, 10), (40, 6, 3, 3), None, padding=1)
    geo, runs, chunk = cy._grad_weight_plan(spec, cy.num_threads())
    assert 1 <= runs <= n
    rng = np.random.default_rng(n)
    x, gy = rng.standard_normal(spec.x_shape, np.float32), rng.standard_normal(spec.y_shape, np.float32)
    assert_close(cy.conv2d_grad_weight(gy, x, spec, algorithm="blocked"),
                 ref.conv2d_grad_weight(gy.astype(np.float64), x.astype(np.float64), spec), np.float32,
                 f"runs {runs} chunk {chunk}")


@pytest.mark.parametrize("x_shape, w_shape, kw", [
    ((53, 7, 19), (25, 7, 3), dict(stride=2, padding=1)),    # 1-D, padded: 10 pixels a sample, 25 at once
    ((41, 4, 23), (20, 4, 5), dict(stride=1, padding=0)),    # 1-D, read in place: 19 pixels, 13 at once
    ((9, 3, 9, 7), (17, 3, 3, 3), dict(padding=1)),          # 63 pixels a sample, 4 at once
])
def test_blocked_weight_gradient_reduces_over_several_samples(x_shape, w_shape, kw, monkeypatch):
    """Layers with few output pixels per sample reduce over several samples per tile (their padded copies
    side by side, the last group shorter), in one run of samples or several."""
    spec = shapes.conv_spec(x_shape, w_shape, None, dims=len(x_shape) - 2, **kw)
    group = cy._blocked.grad_weight_scratch(spec.geometry())[1] // (spec.oh * spec.ow *
                                                                    cy._blocked.block_width(spec.geometry(), False))
    assert 1 < group < spec.n and spec.n % group
    rng = np.random.default_rng(spec.n)
    x, gy = rng.standard_normal(spec.x_shape, np.float32), rng.standard_normal(spec.y_shape, np.float32)
    want = ref.conv2d_grad_weight(gy.astype(np.float64), x.astype(np.float64), spec)
    for threads in (1, 8):  # one run of samples; runs that start inside a group
        monkeypatch.setattr(cy, "num_threads", lambda: max(threads, cy._omp.max_threads()))
        monkeypatch.setattr(cy, "BLOCKED_PARALLEL_FLOPS", 0)
        cy._grad_weight_plan.cache_clear()
        assert_close(cy.conv2d_grad_weight(gy, x, spec, algorithm="blocked"), want, np.float32,
                     f"{spec} threads {threads}")
    cy._grad_weight_plan.cache_clear()


@pytest.mark.parametrize("plan", [(1, 1), (2, 1), (3, 2), (100, 100)])
def test_blocked_forward_task_plans(plan):
    """Forward tasks of any (rows, chunk of channel blocks), the last band and chunk shorter."""
    rows, chunk = plan
    spec = shapes.conv_spec((2, 5, 7, 19), (50, 5, 3, 3), None, padding=1)
    geo = spec.geometry()
    rng = np.random.default_rng(rows)
    x, w = rng.standard_normal(spec.x_shape, np.float32), rng.standard_normal(spec.w_shape, np.float32)
    packed = np.empty(cy._blocked.packed_size(geo), np.float32)
    assert cy._blocked.pack_weights(w, packed, geo) == 4  # blocks of 16 channels
    rows = min(rows, spec.oh)
    threads = cy._omp.max_threads()
    scratch = np.empty((threads, max(1, cy._blocked.scratch_size(geo, rows))), np.float32)
    y = np.full(spec.y_shape, np.nan, np.float32)
    assert cy._blocked.conv2d(x, None, packed, False, False, None, y, scratch, geo, rows, chunk, threads) == 0
    assert_close(y, ref.conv2d(x, w, None, spec), np.float32, f"rows {rows} chunk {chunk}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_window_over_the_whole_input_is_one_product(dtype):
    """The GEMM path's shortcut for a convolution whose one window is its input (LeNet-5's C5): every
    pass equals the reference; with padding, groups or a smaller kernel the shortcut must not apply."""
    cython_cpu = backend_or_skip("cython")
    rng = np.random.default_rng(0)
    cases = [((6, 4, 5, 5), (7, 4, 5, 5), {}), ((3, 2, 4, 6), (5, 2, 4, 6), {"stride": 2}),
             ((3, 4, 5, 5), (6, 2, 5, 5), {"groups": 2}), ((3, 2, 3, 3), (4, 2, 3, 3), {"padding": 1}),
             ((3, 2, 5, 5), (4, 2, 3, 3), {})]
    for x_shape, w_shape, kw in cases:
        spec = shapes.conv_spec(x_shape, w_shape, (w_shape[0],), **kw)
        assert cython_cpu._whole_input(spec) == ((not kw or kw == {"stride": 2}) and w_shape[2:] == x_shape[2:])
        x, w, b = (rng.standard_normal(s).astype(dtype) for s in (x_shape, w_shape, (w_shape[0],)))
        gy = rng.standard_normal(spec.y_shape).astype(dtype)
        tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(cython_cpu.conv2d(x, w, b, spec, "gemm"), ref.conv2d(x, w, b, spec), **tol)
        np.testing.assert_allclose(cython_cpu.conv2d_grad_input(gy, w, spec, "gemm"),
                                   ref.conv2d_grad_input(gy, w, spec), **tol)
        np.testing.assert_allclose(cython_cpu.conv2d_grad_weight(gy, x, spec, "gemm"),
                                   ref.conv2d_grad_weight(gy, x, spec), **tol)


@pytest.mark.parametrize("x_shape, w_shape, kw", [
    ((2, 24, 5, 29), (32, 24, 1, 1), {}),                       # pointwise: two vectors of channels
    ((3, 8, 7, 13), (40, 8, 1, 1), {"stride": 2}),              # a part-filled second vector
    ((2, 3, 30, 31), (48, 3, 11, 11), {"stride": 4, "padding": 2}),  # AlexNet-like: a flat table of taps
    ((2, 4, 17, 25), (64, 4, 5, 5), {"stride": 2, "padding": 1}),
    ((1, 64, 6, 6), (96, 32, 1, 1), {"groups": 2}),
])
def test_the_wide_tile(x_shape, w_shape, kw):
    """The blocked kernel's 12-pixel by 2-vector tile (forward passes whose taps share no pixels, 32 or
    more output channels per group), its input gradient through the adjoint where there is one."""
    spec = shapes.conv_spec(x_shape, w_shape, (w_shape[0],), **kw)
    rng = np.random.default_rng(1)
    x, w, b = (rng.standard_normal(s).astype(np.float32) for s in (x_shape, w_shape, (w_shape[0],)))
    gy = rng.standard_normal(spec.y_shape).astype(np.float32)
    as64 = lambda a: a.astype(np.float64)  # noqa: E731
    assert_close(cy.conv2d(x, w, b, spec, algorithm="blocked"), ref.conv2d(as64(x), as64(w), as64(b), spec),
                 np.float32, f"wide tile {spec}")
    if cy.supports("conv2d_grad_input", spec, np.float32, "blocked"):
        assert_close(cy.conv2d_grad_input(gy, w, spec, algorithm="blocked"),
                     ref.conv2d_grad_input(as64(gy), as64(w), spec), np.float32, f"wide tile's adjoint {spec}")


@pytest.mark.parametrize("x_shape, w_shape, kw", [
    ((3, 12, 32, 32), (20, 12, 2, 2), {"stride": 2}),           # 4 KB planes: bands copied
    ((2, 9, 16, 64), (16, 9, 3, 3), {"stride": 3}),             # a window per stride, rows past the last one
    ((2, 24, 32, 32), (16, 12, 2, 2), {"stride": (2, 3), "groups": 2}),
    ((2, 6, 32, 32), (8, 6, 2, 2), {"stride": 2}),              # too few rows per window to copy
    ((2, 12, 30, 30), (8, 12, 2, 2), {"stride": 2}),            # planes of no multiple of 4 KB
])
def test_blocked_forward_on_planes_of_4_kb(x_shape, w_shape, kw):
    """Unpadded windows with no input row shared by two output rows read a copy of their band where the
    planes are a multiple of 4 KB (``aliased`` in ``_blocked.pyx``), in place elsewhere: same results."""
    spec = shapes.conv_spec(x_shape, w_shape, (w_shape[0],), **kw)
    rng = np.random.default_rng(2)
    x, w, b = (rng.standard_normal(s).astype(np.float32) for s in (x_shape, w_shape, (w_shape[0],)))
    as64 = lambda a: a.astype(np.float64)  # noqa: E731
    assert_close(cy.conv2d(x, w, b, spec, algorithm="blocked"), ref.conv2d(as64(x), as64(w), as64(b), spec),
                 np.float32, f"blocked {spec}")
