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
