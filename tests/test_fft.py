"""The FFT backend's own paths (blocked long signals, untransformed rows, spectrum cache, float32 accuracy
on big kernels) and the separable (rank-1) passes, against the NumPy reference."""
import functools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastconv.functional as F
from fastconv import shapes
from fastconv.backends import fft, model, reference, separable

from helpers import assert_close, check_against

#: Pass kernels for the separable tests: ``(op, spec) -> kernel`` on one backend.
RUNNERS = {"numpy": lambda op, spec: getattr(reference, op),
           "fft": lambda op, spec: functools.partial(getattr(fft, op), algorithm="whole")}


def _arrays(spec, dtype, rng, bias=True):
    arrays = [rng.standard_normal(spec.x_shape), rng.standard_normal(spec.w_shape)]
    if bias:
        arrays.append(rng.standard_normal(spec.c_out))
    return [a.astype(dtype) for a in arrays]


def _kernels(spec, x, w, gy, module, **kw):
    if module is fft:
        kw = {"algorithm": "whole", **kw}
    return (module.conv2d(x, w, None, spec, **kw), module.conv2d_grad_input(gy, w, spec, **kw),
            module.conv2d_grad_weight(gy, x, spec, **kw))


# ------------------------------------------------------------------------------ long 1-D signals
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_long_signal_takes_blocked_path_and_matches_reference(dtype):
    x_shape, w_shape = (2, 4, 3000), (6, 2, 9)
    spec = shapes.conv_spec(x_shape, w_shape, None, stride=2, padding=5, dilation=3, groups=2, dims=1)
    assert fft.long_signal(spec)
    arrays = [a.reshape(s) for a, s in zip(_arrays(spec, dtype, np.random.default_rng(0)),
                                            (x_shape, w_shape, (6,)))]
    kw = dict(stride=2, padding=5, dilation=3, groups=2)
    check_against(lambda *t: F.conv1d(*t, backend="fft", **kw), lambda *t: F.conv1d(*t, backend="numpy", **kw),
                  arrays, what="blocked conv1d")


@pytest.mark.parametrize("block", [13, 14, 20, 64])
@pytest.mark.parametrize("stride,padding,dilation", [(1, 0, 1), (3, 4, 2), (2, 7, 1)])
def test_blocked_kernels_with_any_block_length(block, stride, padding, dilation):
    """Forced blocks as short as the kernel (one output each) up to several times longer, with a length
    the blocks do not divide: overlap-save and overlap-add must add up to the single-grid result."""
    spec = shapes.conv_spec((2, 3, 157), (4, 3, 7), None, stride, padding, dilation, dims=1)
    if block < spec.dilation[1] * (spec.kw - 1) + 1:
        with pytest.raises(ValueError, match="block"):
            fft._block_plan(spec, block)
        return
    rng = np.random.default_rng(block)
    x, w = _arrays(spec, np.float64, rng, bias=False)
    gy = rng.standard_normal(spec.y_shape)
    got = (fft._overlap_conv2d(x, w, spec, block), fft._overlap_grad_input(gy, w, spec, block),
           fft._overlap_grad_weight(gy, x, spec, block))
    for a, e, name in zip(got, _kernels(spec, x, w, gy, reference), ("forward", "grad input", "grad weight")):
        assert_close(a, e, np.float64, f"blocked {name}, block {block}")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(extent=st.integers(129, 599), ratio=st.floats(8.05, 30.0), stride=st.integers(1, 3),
       padding=st.integers(0, 40), seed=st.integers(0, 2**16))
def test_overlap_save_over_extents_and_lengths(extent, ratio, stride, padding, seed):
    """Long signals against the reference for kernel extents over 128 (most are not 5-smooth, so one
    block is itself longer than eight extents: a block must never be cut again)."""
    dilation = 1 + extent % 3
    taps = (extent - 1) // dilation + 1
    length = max(int(ratio * extent), 1100)
    spec = shapes.conv_spec((1, 2, length), (2, 2, taps), None, stride, padding, dilation, dims=1)
    assert fft.long_signal(spec)
    rng = np.random.default_rng(seed)
    x, w = _arrays(spec, np.float64, rng, bias=False)
    gy = rng.standard_normal(spec.y_shape)
    got = _kernels(spec, x, w, gy, fft, algorithm="overlap")
    for a, e, name in zip(got, _kernels(spec, x, w, gy, reference), ("forward", "grad input", "grad weight")):
        assert_close(a, e, np.float64, f"overlap {name}")


@pytest.mark.parametrize("x_shape,w_shape,dilation", [((4, 8, 20000), (8, 8, 131), 1),
                                                      ((8, 16, 8000), (16, 16, 64), 3)])
def test_long_signals_with_big_kernels_run_by_default(x_shape, w_shape, dilation):
    """The default backend on long signals with kernels whose block length is not 5-smooth."""
    rng = np.random.default_rng(0)
    x, w = (rng.standard_normal(s).astype(np.float32) for s in (x_shape, w_shape))
    want = F.conv1d(x[:1], w, dilation=dilation, backend="numpy").numpy()
    assert_close(F.conv1d(x, w, dilation=dilation).numpy()[:1], want, np.float32, "auto conv1d")


def test_short_signals_do_not_block():
    assert not fft.long_signal(shapes.conv_spec((1, 1, 1000), (1, 1, 9), dims=1))     # under 1024 samples
    assert not fft.long_signal(shapes.conv_spec((1, 1, 2000), (1, 1, 300), dims=1))   # under 8 kernels
    assert not fft.long_signal(shapes.conv_spec((1, 1, 40, 2000), (1, 1, 3, 9)))      # 2-D


# ------------------------------------------------------------------- rows kept untransformed
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_row_kernel_on_an_image(dtype):
    """A 1 x k kernel leaves the rows untransformed (independent rows, summed for the weight gradient)."""
    spec = shapes.conv_spec((2, 3, 5, 20), (4, 3, 1, 6), None, stride=(1, 2), padding=(0, 3))
    rows, _ = fft._geometry(spec)
    assert not rows.transformed
    x, w = _arrays(spec, dtype, np.random.default_rng(1), bias=False)
    gy = np.random.default_rng(2).standard_normal(spec.y_shape).astype(dtype)
    for a, e in zip(_kernels(spec, x, w, gy, fft), _kernels(spec, x, w, gy, reference)):
        assert_close(a, e, dtype, "1 x k kernel")


@pytest.mark.parametrize("output_padding", [(1, 0), (0, 1), (1, 1)])
def test_one_tap_transposed_convolution_with_output_padding(output_padding):
    """Output padding adds input rows no output reads: such a 1-tap axis must still be transformed."""
    spec = shapes.conv_transpose_spec((2, 3, 3, 4), (3, 2, 1, 1), None, stride=1,
                                      output_padding=output_padding, dilation=2)
    assert spec.h == spec.oh + output_padding[0]
    x, w = _arrays(spec, np.float64, np.random.default_rng(3), bias=False)
    gy = np.random.default_rng(4).standard_normal(spec.y_shape)
    for a, e in zip(_kernels(spec, x, w, gy, fft), _kernels(spec, x, w, gy, reference)):
        assert_close(a, e, np.float64, f"output padding {output_padding}")


# ----------------------------------------------------------------------- kernel spectrum by DFT
@pytest.mark.parametrize("taps_per_log2", [0, 100], ids=["fft", "dft"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", [((2, 4, 13, 17), (6, 2, 3, 5), 1, 2, (2, 3), 2),
                                  ((1, 3, 9, 30), (2, 3, 1, 4), (1, 3), (0, 2), 2, 1),
                                  ((2, 2, 1, 40), (3, 2, 1, 6), 1, (0, 5), 1, 1)])
def test_kernel_spectrum_by_dft_or_fft(monkeypatch, taps_per_log2, dtype, case):
    """Both ways to the weight's spectrum (DFT matrices over the taps, FFT of the dilated kernel) agree
    with the reference, with dilation, strides, groups and untransformed rows."""
    monkeypatch.setattr(fft, "DFT_TAPS_PER_LOG2", taps_per_log2)
    fft.clear_cache()
    x_shape, w_shape, stride, padding, dilation, groups = case
    spec = shapes.conv_spec(x_shape, w_shape, None, stride, padding, dilation, groups)
    assert fft._by_dft(*fft._geometry(spec)) == (taps_per_log2 > 0)
    rng = np.random.default_rng(7)
    x, w = _arrays(spec, dtype, rng, bias=False)
    gy = rng.standard_normal(spec.y_shape).astype(dtype)
    for a, e in zip(_kernels(spec, x, w, gy, fft), _kernels(spec, x, w, gy, reference)):
        assert a.dtype == dtype
        assert_close(a, e, dtype, "kernel spectrum")


# ------------------------------------------------------------------------------ spectrum cache
def test_spectrum_cache_follows_content_not_identity():
    """A weight updated in place must not reuse the spectrum of its old values."""
    spec = shapes.conv_spec((2, 3, 20, 20), (4, 3, 5, 5), None, padding=2)
    x, w = _arrays(spec, np.float64, np.random.default_rng(3), bias=False)
    first = fft.conv2d(x, w, None, spec, "whole")
    assert_close(fft.conv2d(x, w, None, spec, "whole"), first, np.float64, "cached spectra")
    w *= -0.5  # in place: same object, same address
    x[0, 0, 0, 0] += 1.0
    assert_close(fft.conv2d(x, w, None, spec, "whole"), reference.conv2d(x, w, None, spec), np.float64, "after update")


def test_spectrum_cache_can_be_disabled():
    spec = shapes.conv_spec((1, 2, 12, 12), (2, 2, 3, 3))
    x, w = _arrays(spec, np.float64, np.random.default_rng(4), bias=False)
    try:
        fft.set_cache_bytes(0)
        assert_close(fft.conv2d(x, w, None, spec, "whole"), reference.conv2d(x, w, None, spec), np.float64, "no cache")
        assert not fft._cache._entries
    finally:
        fft.set_cache_bytes(fft.CACHE_BYTES)
    with pytest.raises(ValueError, match="n must be"):
        fft.set_cache_bytes(-1)


# ------------------------------------------------------------------------------ float32 accuracy
def _relative_errors(spec, rng):
    """Max error of the float32 FFT kernels relative to the float64 reference's largest magnitude."""
    x, w = _arrays(spec, np.float64, rng, bias=False)
    gy = rng.standard_normal(spec.y_shape)
    x32, w32, gy32 = (a.astype(np.float32) for a in (x, w, gy))
    errors = []
    for a, e in zip(_kernels(spec, x32, w32, gy32, fft), _kernels(spec, x, w, gy, reference)):
        errors.append(float(np.abs(a - e).max() / max(1.0, np.abs(e).max())))
    return errors


def test_float32_accuracy_on_a_large_kernel():
    """float32 FFT error grows with the grid and the sum length; a 21x21 kernel over 6 channels on a
    60x60 grid stays well inside the shared float32 tolerance (2e-5 relative to the output's scale)."""
    spec = shapes.conv_spec((1, 6, 40, 40), (3, 6, 21, 21), None, padding=10)
    errors = _relative_errors(spec, np.random.default_rng(5))
    assert max(errors) < 2e-5, errors


# ------------------------------------------------------------------------------ separable passes
SEPARABLE_SPECS = [  # (x, w, stride, padding, dilation, groups)
    ((2, 3, 11, 13), (4, 3, 5, 3), 1, 2, 1, 1),
    ((1, 4, 16, 12), (6, 2, 3, 4), (2, 3), (1, 2), (2, 1), 2),
    ((2, 3, 9, 9), (3, 1, 4, 4), 2, 0, 1, 3),
    ((1, 1, 20, 20), (1, 1, 7, 7), 1, 3, 1, 1),
]


def _rank1_weight(shape, rng, dtype):
    u = rng.standard_normal(shape[:3])
    v = rng.standard_normal(shape[:2] + shape[3:])
    return (u[..., :, None] * v[..., None, :]).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_factors_find_rank1_kernels_only(dtype):
    rng = np.random.default_rng(6)
    w = _rank1_weight((4, 3, 5, 7), rng, dtype)
    u, v = separable.factors(w)
    assert u.dtype == v.dtype == dtype
    assert_close(u[..., :, None] * v[..., None, :], w, dtype, "factors")
    w[0, 0, 1:, 1:] = 0.0  # top-left 2x2 minor is no longer 0
    assert separable.factors(w) is None
    w2 = _rank1_weight((4, 3, 5, 7), rng, dtype)
    w2[3, 2] += 1e-3 * rng.standard_normal((5, 7))  # one slice of rank 2, the first one still rank 1
    assert separable.factors(w2) is None
    assert separable.factors(np.zeros((2, 2, 3, 3), dtype)) is not None  # rank 0 counts
    assert separable.factors(rng.standard_normal((2, 2, 1, 5)).astype(dtype)) is None  # already 1-D


@pytest.mark.parametrize("runner", sorted(RUNNERS))
@pytest.mark.parametrize("case", range(len(SEPARABLE_SPECS)))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_separable_passes_match_full_kernel(runner, case, dtype):
    x_shape, w_shape, stride, padding, dilation, groups = SEPARABLE_SPECS[case]
    spec = shapes.conv_spec(x_shape, w_shape, (w_shape[0],), stride, padding, dilation, groups)
    rng = np.random.default_rng(case)
    w = _rank1_weight(w_shape, rng, dtype)
    x, b, gy = (rng.standard_normal(s).astype(dtype) for s in (x_shape, w_shape[:1], spec.y_shape))
    u, v = separable.factors(w)
    passes = RUNNERS[runner]
    assert_close(separable.conv2d(x, u, v, b, spec, passes), reference.conv2d(x, w, b, spec), dtype, "passes")
    assert_close(separable.conv2d_grad_input(gy, u, v, spec, passes), reference.conv2d_grad_input(gy, w, spec),
                 dtype, "adjoint passes")
    # the kernels the planner uses: rank-1 weights as passes, full-rank ones through the fallback
    forward = separable.kernel("conv2d", reference.conv2d, passes)
    backward = separable.kernel("conv2d_grad_input", reference.conv2d_grad_input, passes)
    assert_close(forward(x, w, b, spec), reference.conv2d(x, w, b, spec), dtype, "kernel rank 1")
    full = rng.standard_normal(w_shape).astype(dtype)
    assert_close(backward(gy, full, spec), reference.conv2d_grad_input(gy, full, spec), dtype,
                 "kernel full rank")


def test_separable_worthwhile_counts_taps():
    assert model.separable_worthwhile("conv2d", shapes.conv_spec((1, 1, 64, 64), (1, 1, 7, 7), None, padding=3))
    assert not model.separable_worthwhile("conv2d", shapes.conv_spec((1, 1, 64, 64), (1, 1, 1, 7)))


# ------------------------------------------------------------------------------ the error bound
def _norms(a):
    """``||a[i, j]||_2`` over the spatial axes, ``(N, C)``."""
    return np.sqrt((a.astype(np.float64) ** 2).sum(axis=(2, 3)))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), outlier=st.booleans(), dtype=st.sampled_from([np.float32, np.float64]))
def test_error_within_the_documented_bound(seed, outlier, dtype):
    """|error| <= eps * log2(L) * sum_c ||x[n, c]|| ||w[o, c]|| for each output channel (the module
    docstring), the input gradient and the weight gradient likewise, one huge input value included."""
    rng = np.random.default_rng(seed)
    c, o, size, k = rng.integers(1, 5), rng.integers(1, 4), rng.integers(16, 60), rng.integers(5, 16)
    x, w = rng.standard_normal((2, c, size, size)), rng.standard_normal((o, c, k, k))
    if outlier:
        x[0, 0, size // 2, size // 3] = 1e30
    spec = shapes.conv_spec(x.shape, w.shape, None, padding=k // 2)
    gy = rng.standard_normal(spec.y_shape)
    rows, cols = fft._geometry(spec)
    scale = np.finfo(dtype).eps * np.log2(rows.fft * cols.fft)
    got = _kernels(spec, x.astype(dtype), w.astype(dtype), gy.astype(dtype), fft)
    want = _kernels(spec, x, w, gy, reference)
    bounds = (scale * _norms(x) @ _norms(w).T,                    # (N, C_out)
              scale * _norms(gy) @ _norms(w),                     # (N, C_in)
              scale * _norms(gy).T @ _norms(x))                   # (C_out, C_in)
    for a, e, bound, name in zip(got, want, bounds, ("forward", "grad input", "grad weight")):
        err = np.abs(a.astype(np.float64) - e).max(axis=(2, 3))
        assert np.all(err <= bound), f"{name}: error {err.max():.3g} over the bound {bound.min():.3g}"
