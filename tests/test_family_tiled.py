"""Tiled and locally-connected convolution: the NumPy definition against PyTorch's workaround (unfold, then
each output position's kernel by indexing, then einsum), every CPU plan against the definition, the
identities that tie the family together (tiles (1, 1) is conv2d, tiles the output size is the
locally-connected layer), finite-difference gradients in float64, and bad input."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastconv as fc
import fastconv.functional as F
from fastconv import shapes
from fastconv.backends import tiled_numba

import cases
from helpers import check_against, run_torch, torch
from test_gradcheck import gradcheck

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PLANS = ["numba"]


def _divisors(size):
    return [d for d in range(1, size + 1) if size % d == 0]


@st.composite
def tiled_cases(draw, dims=2, kernel=None):
    """A convolution case of ``cases.conv_cases`` made tiled (tiles dividing the output) or local, with a
    bias per channel, per position or none."""
    case = draw(cases.conv_cases(dims, max_size=6, kernel=kernel))
    spec = shapes.conv_spec((case["n"], case["c_in"]) + case["size"],
                            (case["c_out"], case["c_in"] // case["groups"]) + case["kernel"], None,
                            case["stride"], case["padding"], case["dilation"], case["groups"], dims)
    out = (spec.oh, spec.ow)[2 - dims:]
    local = draw(st.booleans())
    tiles = out if local else tuple(draw(st.sampled_from(_divisors(o))) for o in out)
    bias = draw(st.sampled_from([None, "channel", "position"]))
    return dict(case, op=f"conv{dims}d_{'local' if local else 'tiled'}", tiles=tiles, out=out, bias=bias,
                padding4=spec.padding)


def make_args(case, rng):
    dt = case["dtype"]
    x = rng.standard_normal((case["n"], case["c_in"]) + case["size"]).astype(dt)
    w = rng.standard_normal(case["tiles"] + (case["c_out"], case["c_in"] // case["groups"]) + case["kernel"])
    arrays = [x, w.astype(dt)]
    if case["bias"] is not None:
        arrays.append(rng.standard_normal((case["c_out"],) + (case["out"] if case["bias"] == "position" else ()))
                      .astype(dt))
    return arrays


def call(case, arrays, **extra):
    x, w, *b = arrays
    extra = dict(extra, tiles=case["tiles"]) if case["op"].endswith("tiled") else extra
    return getattr(F, case["op"])(x, w, b[0] if b else None, stride=case["stride"], padding=case["padding"],
                                  dilation=case["dilation"], groups=case["groups"], **extra)


def torch_workaround(case):
    """What a PyTorch user writes: pad, unfold, pick each output position's kernel, einsum."""
    tf = torch.nn.functional
    dims, groups = case["dims"], case["groups"]

    def run(x, w, *b):
        pt, pb, pl, pr = case["padding4"]
        if dims == 1:
            x, w = x.unsqueeze(2), w.unsqueeze(0).unsqueeze(-2)
        kernel, stride, dilation = [(1,) * (2 - dims) + tuple(case[k]) for k in ("kernel", "stride", "dilation")]
        cols = tf.unfold(tf.pad(x, (pl, pr, pt, pb)), kernel, dilation=dilation, stride=stride)
        oh, ow = (1,) * (2 - dims) + case["out"]
        n, c_out = x.shape[0], w.shape[2]
        cols = cols.reshape(n, groups, -1, oh, ow)
        per_position = w[torch.arange(oh) % w.shape[0]][:, torch.arange(ow) % w.shape[1]]
        per_position = per_position.reshape(oh, ow, groups, c_out // groups, -1)
        y = torch.einsum("ngkyx,yxgok->ngoyx", cols, per_position).reshape(n, c_out, oh, ow)
        if b:
            y = y + (b[0].reshape(c_out, 1, 1) if b[0].ndim == 1 else b[0].reshape(c_out, oh, ow))
        return y.reshape((n, c_out) + case["out"])
    return run


# ------------------------------------------------------------------------------------ oracles
@pytest.mark.skipif(torch is None, reason="PyTorch not installed")
@SETTINGS
@given(case=st.one_of(tiled_cases(2), tiled_cases(1)), seed=st.integers(0, 2**16))
def test_definition_matches_torch_workaround(case, seed):
    check_against(lambda *t: call(case, t, backend="numpy"), torch_workaround(case),
                  make_args(case, np.random.default_rng(seed)), run_oracle=run_torch, what=case["op"])


@pytest.mark.parametrize("plan", PLANS)
@SETTINGS
@given(case=st.one_of(tiled_cases(2), tiled_cases(1)), seed=st.integers(0, 2**16))
def test_plan_matches_definition(plan, case, seed):
    check_against(lambda *t: call(case, t, backend=plan), lambda *t: call(case, t, backend="numpy"),
                  make_args(case, np.random.default_rng(seed)), what=f"{plan} {case['op']}")


@pytest.mark.parametrize("size", tiled_numba.CONSTANT_SIZES)
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), seed=st.integers(0, 2**16))
def test_kernels_compiled_for_one_size_match_definition(size, data, seed):
    """The kernels with the kernel size as a constant (strides, padding, dilation, groups, both dtypes)."""
    case = data.draw(tiled_cases(2, kernel=size))
    check_against(lambda *t: call(case, t, backend="numba"), lambda *t: call(case, t, backend="numpy"),
                  make_args(case, np.random.default_rng(seed)), what=f"{size} {case['op']}")


def test_blocks_smaller_than_a_row_match_definition(monkeypatch):
    """Blocks that split rows, samples and runs of positions (tiny ``TASK_BYTES``) change nothing."""
    rng = np.random.default_rng(3)
    x, w, b = rng.standard_normal((5, 4, 10, 13)), rng.standard_normal((2, 11, 6, 2, 3, 3)), rng.standard_normal(6)
    for task_bytes in (1, 200, 2000):
        monkeypatch.setattr(tiled_numba, "TASK_BYTES", task_bytes)
        check_against(lambda *t: F.conv2d_tiled(*t, padding=(1, 0), groups=2, backend="numba"),
                      lambda *t: F.conv2d_tiled(*t, padding=(1, 0), groups=2, backend="numpy"), [x, w, b],
                      what=f"TASK_BYTES={task_bytes}")


# --------------------------------------------------------------------------------- identities
@pytest.mark.parametrize("backend", ["numpy"] + PLANS)
def test_tiles_one_is_conv2d(backend):
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((2, 4, 9, 8)), rng.standard_normal((6, 2, 3, 2)), rng.standard_normal(6)
    check_against(lambda x, w, b: F.conv2d_tiled(x, w.reshape((1, 1) + w.shape), b, stride=(2, 1), padding=1,
                                                 dilation=(1, 2), groups=2, tiles=(1, 1), backend=backend),
                  lambda x, w, b: F.conv2d(x, w, b, stride=(2, 1), padding=1, dilation=(1, 2), groups=2),
                  [x, w, b], what="tiles (1, 1)")
    x1, w1 = rng.standard_normal((3, 2, 11)), rng.standard_normal((4, 2, 3))
    check_against(lambda x, w: F.conv1d_tiled(x, w.reshape((1,) + w.shape), padding="same", backend=backend),
                  lambda x, w: F.conv1d(x, w, padding="same"), [x1, w1], what="1-D tiles 1")


@pytest.mark.parametrize("backend", ["numpy"] + PLANS)
def test_tiles_of_the_output_size_is_the_locally_connected_layer(backend):
    rng = np.random.default_rng(1)
    x, w, b = rng.standard_normal((2, 3, 5, 4)), rng.standard_normal((3, 2, 4, 3, 3, 3)), rng.standard_normal((4, 3, 2))
    check_against(lambda *t: F.conv2d_tiled(*t, stride=2, padding=1, tiles=(3, 2), backend=backend),
                  lambda *t: F.conv2d_local(*t, stride=2, padding=1, backend="numpy"), [x, w, b], what="local")


def test_tiles_are_used_in_turn():
    """Output (oy, ox) is exactly the convolution with kernel (oy % th, ox % tw) at that position."""
    rng = np.random.default_rng(2)
    x, w = rng.standard_normal((1, 2, 8, 9)), rng.standard_normal((2, 3, 1, 2, 3, 3))
    y = F.conv2d_tiled(x, w, padding=1).numpy()
    for i in range(2):
        for j in range(3):
            full = F.conv2d(x, w[i, j], padding=1).numpy()
            np.testing.assert_allclose(y[..., i::2, j::3], full[..., i::2, j::3], rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------- gradients
def test_gradients_match_finite_differences():
    """The definition's gradients (every plan's are checked against them above)."""
    backend = "numpy"
    rng = np.random.default_rng(4)
    x, w, b = rng.standard_normal((2, 4, 5, 6)), rng.standard_normal((3, 2, 2, 2, 3, 2)), rng.standard_normal((2, 3, 2))
    gradcheck(lambda x, w, b: F.conv2d_local(x, w, b, stride=(2, 3), padding=(1, 0), dilation=(1, 2), groups=2,
                                             backend=backend), [x, w, b], "conv2d_local")
    x1, w1, b1 = rng.standard_normal((2, 2, 8)), rng.standard_normal((2, 3, 2, 3)), rng.standard_normal(3)
    gradcheck(lambda x, w, b: F.conv1d_tiled(x, w, b, padding="same", tiles=2, backend=backend), [x1, w1, b1],
              "conv1d_tiled")


@pytest.mark.parametrize("backend", ["numpy"] + PLANS)
def test_empty_batch(backend):
    x, w = np.zeros((0, 2, 5, 5), np.float32), np.ones((3, 3, 4, 2, 3, 3), np.float32)
    xt, wt = fc.tensor(x, requires_grad=True), fc.tensor(w, requires_grad=True)
    y = F.conv2d_local(xt, wt, backend=backend)
    assert y.shape == (0, 4, 3, 3)
    y.sum().backward()
    assert xt.grad.shape == x.shape and not wt.grad.numpy().any()


# ------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("call_, message", [
    (lambda: F.conv2d_local(np.ones((1, 2, 6, 6)), np.ones((3, 3, 4, 2, 3, 3))), r"weight.shape\[:2\] must be the output size \(4, 4\)"),
    (lambda: F.conv2d_tiled(np.ones((1, 2, 6, 6)), np.ones((3, 3, 4, 2, 3, 3))), r"tiles \(3, 3\) .* must divide the output size \(4, 4\)"),
    (lambda: F.conv2d_tiled(np.ones((1, 2, 6, 6)), np.ones((2, 2, 4, 2, 3, 3)), tiles=(1, 2)), r"tiles=\(1, 2\) must match"),
    (lambda: F.conv2d_tiled(np.ones((1, 2, 6, 6)), np.ones((4, 2, 3, 3))), r"weight must be 6-D \(TH, TW, C_out"),
    (lambda: F.conv1d_local(np.ones((1, 2, 6)), np.ones((4, 4, 3, 3))), r"weight.shape\[2\] \* groups must equal the input channels"),
    (lambda: F.conv2d_local(np.ones((1, 2, 6, 6)), np.ones((4, 4, 3, 2, 3, 3)), groups=2), r"weight.shape\[2\] \(out channels, 3\) must be divisible by groups"),
    (lambda: F.conv2d_local(np.ones((1, 2, 6, 6)), np.ones((4, 4, 4, 2, 3, 3)), np.ones((4, 4))), r"bias must have shape \(4,\) .* or \(4, 4, 4\)"),
    (lambda: F.conv2d_tiled(np.ones((1, 2, 6, 6)), np.ones((2, 2, 4, 2, 3, 3)), stride=0), "stride must be positive"),
    (lambda: F.conv2d_tiled(np.ones((1, 2, 6, 6)), np.ones((2, 2, 4, 2, 3, 3)), padding="full"), "padding must be"),
    (lambda: F.conv2d_local(np.ones((1, 2, 6, 6)), np.ones((4, 4, 4, 2, 3, 3), np.float32)), "weight has dtype float32"),
])
def test_bad_input_names_the_argument(call_, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call_()


# ---------------------------------------------------------------------------------------- layers
def test_layers_hold_the_documented_parameters():
    local = fc.nn.LocallyConnected2d(3, 8, 3, input_size=(10, 12), stride=2, padding=1)
    assert local.weight.shape == (5, 6, 8, 3, 3, 3) and local.bias.shape == (8, 5, 6)
    assert fc.nn.LocallyConnected2d(3, 8, 3, (10, 12), position_bias=False).bias.shape == (8,)
    assert fc.nn.LocallyConnected1d(2, 4, 3, 9, groups=2, bias=False).weight.shape == (7, 4, 1, 3)
    tiled = fc.nn.TiledConv2d(4, 6, (3, 1), tiles=(2, 3), padding="same", groups=2)
    assert tiled.weight.shape == (2, 3, 6, 2, 3, 1) and tiled.bias.shape == (6,)
    assert fc.nn.TiledConv1d(2, 4, 5, tiles=4).weight.shape == (4, 4, 2, 5)
    bound = 1 / np.sqrt(2 * 3)  # fan-in: input channels per group times kernel taps
    assert np.abs(tiled.weight.numpy()).max() <= bound and np.abs(tiled.bias.numpy()).max() <= bound
    assert "tiles=(2, 3)" in repr(tiled) and "output_size=(5, 6)" in repr(local)


def test_layers_run_their_ops_and_learn():
    """A locally-connected layer recovers a target made by another one; every parameter gets a gradient."""
    fc.manual_seed(0)
    teacher, student = (fc.nn.LocallyConnected2d(2, 3, 3, (6, 6), padding=1) for _ in range(2))
    x = np.random.default_rng(0).standard_normal((64, 2, 6, 6)).astype(np.float32)
    target = teacher(x).numpy()
    opt = fc.optim.SGD(student.parameters(), lr=4.0)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = F.mse_loss(student(x), target)
        loss.backward()
        opt.step()
        losses.append(float(loss.numpy()))
    assert losses[-1] < 0.05 * losses[0]
    tiled = fc.nn.TiledConv2d(2, 3, 3, tiles=(2, 2), padding=1)
    y = tiled(fc.tensor(x))
    assert y.shape == (64, 3, 6, 6)
    y.sum().backward()
    assert all(p.grad is not None for p in tiled.parameters())


@pytest.mark.parametrize("make, message", [
    (lambda: fc.nn.LocallyConnected2d(3, 8, 5, input_size=(4, 4)), "kernel size 5"),
    (lambda: fc.nn.LocallyConnected2d(3, 8, 3, input_size=(4, 0)), "input_size must be positive"),
    (lambda: fc.nn.TiledConv2d(3, 8, 3, tiles=0), "tiles must be positive"),
    (lambda: fc.nn.TiledConv2d(3, 8, 3, tiles=2, groups=2), "must be divisible by groups"),
])
def test_layer_bad_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_a_tiled_layer_rejects_inputs_its_tiles_do_not_divide():
    with pytest.raises(ValueError, match=r"tiles \(2, 2\) .* must divide the output size \(5, 5\)"):
        fc.nn.TiledConv2d(1, 1, 3, tiles=2)(np.ones((1, 1, 7, 7), np.float32))
