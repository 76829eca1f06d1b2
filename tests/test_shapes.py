"""Output-size formulas against the shapes PyTorch computes, and receptive fields of known stacks."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastconv as fc
import fastconv.functional as F
from fastconv import shapes
from fastconv.shapes import conv_output_size, conv_transpose_output_size, pool_output_size, receptive_field

try:
    import torch
    import torch.nn.functional as TF
except ImportError:  # the oracle is optional: only the tests comparing with it skip
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch (the oracle) is not installed")

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")  # torch's own note
SETTINGS = dict(max_examples=200, deadline=None)
LENGTH, KERNEL, STRIDE, DILATION = st.integers(1, 30), st.integers(1, 7), st.integers(1, 5), st.integers(1, 4)


def _torch_length(fn):
    """The length PyTorch gives, or None where it rejects the arguments (output would be empty)."""
    try:
        return fn().shape[-1]
    except RuntimeError:
        return None


@needs_torch
@settings(**SETTINGS)
@given(length=LENGTH, k=KERNEL, s=STRIDE, p=st.integers(0, 4), d=DILATION)
def test_conv_output_size(length, k, s, p, d):
    expected = _torch_length(lambda: TF.conv1d(torch.zeros(1, 1, length), torch.zeros(1, 1, k), None, s, p, d))
    got = conv_output_size(length, k, s, p, d)
    if expected is None:
        assert got < 1
    else:
        assert got == expected
        assert conv_output_size(length, k, s, (p, p), d) == expected


@needs_torch
@settings(**SETTINGS)
@given(length=LENGTH, k=KERNEL, s=STRIDE, d=DILATION, data=st.data())
def test_conv_transpose_output_size(length, k, s, d, data):
    p = data.draw(st.integers(0, d * (k - 1)))
    op = data.draw(st.integers(0, max(s, d) - 1))
    expected = _torch_length(lambda: TF.conv_transpose1d(torch.zeros(1, 1, length), torch.zeros(1, 1, k), None, s, p,
                                                         op, 1, d))
    got = conv_transpose_output_size(length, k, s, p, op, d)
    if expected is None:
        assert got < 1
    else:
        assert got == expected


@needs_torch
@settings(**SETTINGS)
@given(length=LENGTH, k=KERNEL, s=STRIDE, d=DILATION, ceil=st.booleans(), data=st.data())
def test_pool_output_size(length, k, s, d, ceil, data):
    p = data.draw(st.integers(0, k // 2))
    expected = _torch_length(lambda: TF.max_pool1d(torch.zeros(1, 1, length), k, s, p, d, ceil_mode=ceil))
    got = pool_output_size(length, k, s, p, d, ceil)
    if expected is None:
        assert got < 1
    else:
        assert got == expected
        if d == 1:  # avg pooling has no dilation but the same rule
            assert TF.avg_pool1d(torch.zeros(1, 1, length), k, s, p, ceil_mode=ceil).shape[-1] == got


@needs_torch
@settings(max_examples=100, deadline=None)
@given(h=LENGTH, w=LENGTH, k=st.tuples(KERNEL, KERNEL), s=st.tuples(STRIDE, STRIDE), d=st.tuples(DILATION, DILATION),
       data=st.data())
def test_conv_spec_shapes_match_torch(h, w, k, s, d, data):
    """The spec's output shape is PyTorch's; where PyTorch rejects the input, the spec raises ValueError."""
    p = (data.draw(st.integers(0, 3)), data.draw(st.integers(0, 3)))
    x, wt = torch.zeros(1, 2, h, w), torch.zeros(3, 2, *k)
    try:
        expected = tuple(TF.conv2d(x, wt, None, s, p, d).shape)
    except RuntimeError:
        with pytest.raises(ValueError, match="kernel size"):
            shapes.conv_spec(x.shape, wt.shape, None, s, p, d)
        return
    spec = shapes.conv_spec(x.shape, wt.shape, None, s, p, d)
    assert spec.y_shape == expected
    assert spec.padding == (p[0], p[0], p[1], p[1])


@needs_torch
@pytest.mark.parametrize("k, d", [(3, 1), (4, 1), (2, 3), (4, 2), (5, 2)])
def test_same_padding_matches_torch(k, d):
    """'same' pads total d*(k-1), the extra pixel of an odd total at the end, as PyTorch does."""
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((1, 1, 9)), rng.standard_normal((1, 1, k))
    spec = shapes.conv_spec(x.shape, w.shape, None, 1, "same", d, 1, dims=1)
    assert spec.ow == 9
    left, right = spec.padding[2:]
    assert left + right == d * (k - 1) and right - left in (0, 1)
    ours = TF.conv1d(torch.from_numpy(np.pad(x, ((0, 0), (0, 0), (left, right)))), torch.from_numpy(w), dilation=d)
    np.testing.assert_allclose(ours.numpy(), TF.conv1d(torch.from_numpy(x), torch.from_numpy(w), padding="same",
                                                       dilation=d).numpy(), rtol=1e-12)


def test_pool_spec_default_stride_is_kernel():
    spec = shapes.pool_spec((1, 1, 9, 8), (3, 2))
    assert spec.stride == (3, 2) and (spec.oh, spec.ow) == (3, 4)


# ------------------------------------------------------------------------------ receptive field
@pytest.mark.parametrize("layers, expected", [
    ([], (1, 1)),
    ([(3, 1)], (3, 1)),
    ([(3, 1), (3, 1)], (5, 1)),                      # two 3x3 convolutions see 5x5
    ([(3, 1)] * 3, (7, 1)),                          # three see 7x7 (VGG's argument)
    ([(2, 2), (2, 2), (2, 2)], (8, 8)),              # non-overlapping pooling tiles the input
    ([(3, 1, 2), (3, 1, 4)], (13, 1)),               # dilated stack: 1 + 2*2 + 2*4
    ([(5, 1), (2, 2), (5, 1), (2, 2)], (16, 4)),     # LeNet-5 up to S4
    ([(5, 1), (2, 2), (5, 1), (2, 2), (5, 1)], (32, 4)),  # LeNet-5's C5 sees the whole 32x32 input
    ([(7, 2), (3, 2)], (11, 4)),                     # ResNet stem: 7x7/2 conv, 3x3/2 max pool
])
def test_receptive_field(layers, expected):
    assert receptive_field(layers) == expected


def _support(layers, position, length=64):
    """Input positions that output ``position`` of a 1-D conv stack depends on (nonzero gradient)."""
    x = fc.tensor(np.ones((1, 1, length)), requires_grad=True)
    y = x
    for k, s, d in layers:
        y = F.conv1d(y, np.ones((1, 1, k)), stride=s, dilation=d, backend="numpy")
    g = np.zeros(y.shape)
    g[0, 0, position] = 1.0
    y.backward(g)
    return np.flatnonzero(x.grad[0, 0])


@pytest.mark.parametrize("layers", [[(3, 2, 1), (3, 1, 2), (2, 2, 1)], [(5, 1, 1), (2, 2, 1), (5, 1, 1), (2, 2, 1)]])
def test_receptive_field_is_the_support_of_an_impulse_response(layers):
    """The field is the span of inputs one output depends on; the jump is how far the span moves between
    neighbouring outputs."""
    field, jump = receptive_field(layers)
    first, second = _support(layers, 1), _support(layers, 2)
    assert first[-1] - first[0] + 1 == field
    assert second[0] - first[0] == jump


# ------------------------------------------------------------------------------- one geometry
def test_every_spec_has_the_one_geometry_the_compiled_kernels_read():
    conv = shapes.conv_spec((2, 4, 9, 8), (6, 2, 3, 3), padding=(1, 2), stride=(2, 1), dilation=(1, 2), groups=2)
    pool = shapes.pool_spec((2, 3, 9, 8), (3, 2), stride=(2, 1), padding=1, dilation=(2, 1), ceil_mode=True)
    for spec, c_out, groups in ((conv, 6, 2), (pool, 3, 3)):
        geo = dict(zip(shapes.GEOMETRY, spec.geometry()))
        assert (geo["n"], geo["h"], geo["w"], geo["kh"], geo["kw"], geo["oh"], geo["ow"]) == \
            (spec.n, spec.h, spec.w, spec.kh, spec.kw, spec.oh, spec.ow)
        assert (geo["c_out"], geo["groups"]) == (c_out, groups)
        assert (geo["sh"], geo["sw"], geo["dh"], geo["dw"]) == spec.stride + spec.dilation
        assert (geo["pt"], geo["pl"]) == (spec.padding[0], spec.padding[2])
        assert spec.window == spec.geometry()[9:15]
    assert pool.padding == (1, 1, 1, 1)  # (top, bottom, left, right) as in a ConvSpec


def test_the_cython_geometry_struct_holds_the_same_fields_in_order():
    try:
        from fastconv._cy import _pool
    except ImportError:
        pytest.skip("Cython extension not built")
    spec = shapes.conv_spec((2, 4, 9, 8), (6, 2, 3, 3), padding=(1, 2), stride=(2, 1), dilation=(1, 2), groups=2)
    struct = _pool.geometry(spec.geometry())
    assert list(struct)[:len(shapes.GEOMETRY)] == list(shapes.GEOMETRY)
    assert tuple(struct.values())[:len(shapes.GEOMETRY)] == spec.geometry()


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("ceil_mode", [True, False])
def test_average_pool_divisors_count_the_window_as_pytorch_does(count_include_pad, ceil_mode):
    """Each divisor is the number of cells of its window inside the input (plus the padding when it counts,
    never the ceil_mode overhang past the padding): counted here cell by cell."""
    spec = shapes.pool_spec((1, 1, 7, 6), 3, stride=2, padding=1, ceil_mode=ceil_mode,
                            count_include_pad=count_include_pad)
    want = np.zeros((spec.oh, spec.ow))
    for oy in range(spec.oh):
        for ox in range(spec.ow):
            for i in range(3):
                for j in range(3):
                    r, c = oy * 2 - 1 + i, ox * 2 - 1 + j
                    inside = 0 <= r < 7 and 0 <= c < 6
                    in_padding = -1 <= r < 8 and -1 <= c < 7
                    want[oy, ox] += inside or (count_include_pad and in_padding)
    np.testing.assert_array_equal(spec.divisors(), want)
    assert spec.divisors(np.float32).dtype == np.float32


def test_conv_spec_cache_keeps_validation():
    """Plain arguments are answered from a cache; a bool that hashes like the cached int is still
    refused, NumPy integers and lists still validated and converted, and the memory rule still applies."""
    x, w = (2, 4, 9, 9), (6, 2, 3, 3)
    spec = shapes.conv_spec(x, w, None, 1, 1, 1, 2)
    assert shapes.conv_spec(x, w, None, 1, 1, 1, 2) is spec  # cached
    assert shapes.conv_spec(x, w, None, np.int64(1), [1, 1], (1, 1), np.int32(2)) == spec
    with pytest.raises(TypeError, match="stride"):
        shapes.conv_spec(x, w, None, True, 1, 1, 2)
    with pytest.raises(TypeError, match="padding"):
        shapes.conv_spec(x, w, None, 1, (True, 1), 1, 2)
    with pytest.raises(ValueError, match="groups"):
        shapes.conv_spec(x, w, None, 1, 1, 1, 3)
    with pytest.raises(TypeError, match="input shape"):  # not taken apart on the way to the cache
        shapes.conv_spec(5, w)


def test_conv_spec_cache_follows_the_memory_rule(monkeypatch):
    x, w = (64, 64, 64, 64), (64, 64, 3, 3)
    shapes.conv_spec(x, w, padding=1)
    monkeypatch.setattr(shapes, "memory_limit", lambda: 2 ** 20)
    with pytest.raises(ValueError, match="memory"):
        shapes.conv_spec(x, w, padding=1)


def test_pool_spec_cache_keeps_validation():
    x = (2, 3, 8, 8)
    spec = shapes.pool_spec(x, 2)
    assert shapes.pool_spec(x, 2) is spec
    assert shapes.pool_spec(x, np.int64(2), [2, 2]) == spec
    with pytest.raises(TypeError, match="kernel_size"):
        shapes.pool_spec(x, True)
    assert shapes.pool_spec(x, 3, ceil_mode=1) == shapes.pool_spec(x, 3, ceil_mode=True)
    with pytest.raises(TypeError, match="ceil_mode"):
        shapes.pool_spec(x, 2, ceil_mode=2)
