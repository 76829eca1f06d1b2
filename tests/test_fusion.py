"""Fused ops on the CPU compute exactly what the unfused ops compute: a convolution or linear layer with
``activation=``, pooling with ``activation=``, cross-entropy (log-softmax + NLL), and ``nn.Sequential``
running an activation inside its neighbouring layer. Values and gradients are compared bit for bit (the
same NumPy operations in the same order); the fused GPU kernels are checked against these in tests/cuda."""
import numpy as np
import pytest

import fastconv as fc
import fastconv.functional as F
from fastconv import fusion, nn

from test_gradcheck import gradcheck

ACTS = ["relu", "tanh", "sigmoid"]
PLAIN = {"relu": F.relu, "tanh": F.tanh, "sigmoid": F.sigmoid}


def _run(fn, arrays):
    ts = [fc.tensor(a, requires_grad=a.dtype.kind == "f") for a in arrays]
    y = fn(*ts)
    y.backward(np.random.default_rng(1).standard_normal(y.shape).astype(y.dtype))
    return [y.numpy()] + [t.grad for t in ts if t.requires_grad]


def assert_same(fused, plain, arrays):
    for i, (a, b) in enumerate(zip(_run(fused, arrays), _run(plain, arrays))):
        np.testing.assert_array_equal(a, b, err_msg=f"output {i}")


def _rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("act", ACTS)
def test_convolution_with_activation_is_the_convolution_then_the_activation(act):
    x, w, b = _rand(2, 3, 7, 6), _rand(4, 3, 3, 3, seed=1), _rand(4, seed=2)
    assert_same(lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1, activation=act),
                lambda x, w, b: PLAIN[act](F.conv2d(x, w, b, stride=2, padding=1)), [x, w, b])
    x1, w1 = _rand(2, 2, 9), _rand(4, 1, 3, seed=3)
    assert_same(lambda x, w: F.conv1d(x, w, groups=2, activation=act),
                lambda x, w: PLAIN[act](F.conv1d(x, w, groups=2)), [x1, w1])


@pytest.mark.parametrize("act", ACTS)
def test_linear_with_activation_is_the_linear_layer_then_the_activation(act):
    x, w, b = _rand(2, 3, 5), _rand(4, 5, seed=1), _rand(4, seed=2)
    assert_same(lambda x, w, b: F.linear(x, w, b, activation=act),
                lambda x, w, b: PLAIN[act](F.linear(x, w, b)), [x, w, b])
    assert_same(lambda x, w: F.linear(x, w, activation=act), lambda x, w: PLAIN[act](F.linear(x, w)), [x, w])


@pytest.mark.parametrize("act", ACTS)
def test_pooling_with_activation_is_the_activation_then_the_pooling(act):
    x = _rand(2, 2, 7, 6)
    assert_same(lambda x: F.max_pool2d(x, 3, 2, padding=1, ceil_mode=True, activation=act),
                lambda x: F.max_pool2d(PLAIN[act](x), 3, 2, padding=1, ceil_mode=True), [x])
    assert_same(lambda x: F.avg_pool1d(x.reshape(2, 2, 42), 4, 3, activation=act),
                lambda x: F.avg_pool1d(PLAIN[act](x.reshape(2, 2, 42)), 4, 3), [x])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_is_nll_of_log_softmax(reduction):
    x, labels = _rand(5, 7), np.array([0, 6, 3, 3, 1])
    assert_same(lambda x, t: F.cross_entropy(x, t, reduction),
                lambda x, t: F.nll_loss(F.log_softmax(x, 1), t, reduction), [x, labels])


@pytest.mark.parametrize("backend", ["auto", "numpy", "cython", "numba"])
@pytest.mark.parametrize("window", [(2, 2, 0), (3, 1, 1), (3, 2, 0)])
def test_relu_after_max_pooling_is_relu_before_it(backend, window):
    """A max pool given a ReLU runs it on its output: the same values and gradients as the ReLU first,
    where windows hold ties, only negatives, zeros of both signs, NaN and overlap; with return_indices
    the ReLU runs first (indices of all-negative windows would differ)."""
    k, s, p = window
    x = np.round(_rand(2, 3, 9, 8) * 2) / 2  # many ties
    x[0, 0, :4, :4] = -np.abs(x[0, 0, :4, :4]) - 1
    x[0, 1, 2, 2], x[1, 0, 3, 3], x[1, 1, 0, 0] = np.nan, -0.0, 0.0
    kw = dict(kernel_size=k, stride=s, padding=p, backend=backend)
    assert_same(lambda x: F.max_pool2d(x, activation="relu", **kw), lambda x: F.max_pool2d(F.relu(x), **kw), [x])
    _, fused = F.max_pool2d(fc.tensor(x), activation="relu", return_indices=True, **kw)
    _, plain = F.max_pool2d(F.relu(fc.tensor(x)), return_indices=True, **kw)
    np.testing.assert_array_equal(fused.numpy(), plain.numpy())


def test_fused_layers_have_exact_gradients():
    rng = np.random.default_rng(4)
    x, w, b = rng.standard_normal((1, 2, 5, 4)), rng.standard_normal((3, 2, 2, 2)), rng.standard_normal(3)
    gradcheck(lambda x, w, b: F.conv2d(x, w, b, padding=1, activation="tanh"), [x, w, b], "conv2d + tanh")
    gradcheck(lambda x, w, b: F.linear(x, w, b, activation="sigmoid"), [x[0, 0], w.reshape(3, 8)[:, :4], b],
              "linear + sigmoid")
    gradcheck(lambda x: F.avg_pool2d(x, 2, 1, activation="tanh"), [x], "tanh + avg_pool2d")


def test_sequential_runs_activations_inside_their_neighbours():
    fc.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # the max pool takes the ReLU
                          nn.Tanh(), nn.AvgPool2d(2),                                   # the pool takes the Tanh
                          nn.Flatten(), nn.Linear(6, 5), nn.Sigmoid(), nn.Linear(5, 2), nn.ReLU())
    calls = []
    for module in model:  # record how Sequential calls each module
        module.forward = (lambda m: lambda *a, **k: calls.append((type(m).__name__, k.get("activation")))
                          or type(m).forward(m, *a, **k))(module)
    x = _rand(2, 1, 8, 6)
    fused = _run(lambda x: model(x), [x])
    assert calls == [("Conv2d", None), ("MaxPool2d", "relu"), ("AvgPool2d", "tanh"), ("Flatten", None),
                     ("Linear", "sigmoid"), ("Linear", "relu")]
    plain = _run(lambda x: _one_by_one(model, x), [x])
    for i, (a, b) in enumerate(zip(fused, plain)):
        np.testing.assert_array_equal(a, b, err_msg=f"output {i}")


def _one_by_one(model, x):
    for module in model:
        x = type(module).forward(module, x)
    return x


@pytest.mark.parametrize("call", [
    lambda x: F.conv2d(x, np.ones((1, 1, 1, 1), np.float32), activation="gelu"),
    lambda x: F.linear(x.reshape(4, 4), np.ones((2, 4), np.float32), activation=1),
    lambda x: F.max_pool2d(x, 2, activation="Relu"),
])
def test_unknown_activation_is_a_clear_error(call):
    with pytest.raises(ValueError, match="activation must be None or one of"):
        call(fc.tensor(_rand(1, 1, 4, 4)))


def test_fused_activations_export_to_onnx_as_their_own_nodes():
    onnx = pytest.importorskip("onnxruntime")
    fo = pytest.importorskip("fastconv.onnx")

    class Fused(nn.Module):
        def __init__(self):
            self.conv, self.fc = nn.Conv2d(1, 2, 3), nn.Linear(8, 3)

        def forward(self, x):
            y = F.max_pool2d(self.conv(x, activation="tanh"), 2, activation="relu")
            return F.linear(y.flatten(), self.fc.weight, self.fc.bias, activation="sigmoid")
    fc.manual_seed(0)
    model, x = Fused(), _rand(2, 1, 6, 6)
    proto = fo.export(model, x)
    assert [n.op_type for n in proto.graph.node][:4] == ["Conv", "Tanh", "Relu", "MaxPool"]
    session = onnx.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"input": x})[0], model(x).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("way", ["pairwise", "einsum", "compiled", "not built"])
@pytest.mark.parametrize("shape", [(3, 5, 7, 9), (1, 4, 3, 6, 5), (0, 3, 4, 4), (2, 3, 1, 1), (300, 7, 33, 17)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bias_grad_is_the_sum_over_all_but_the_channels(monkeypatch, way, shape, dtype):
    """Every way (NumPy's sums for small gradients, ``einsum`` from ``EINSUM_BIAS_GRAD_FROM`` elements,
    the compiled sums from ``COMPILED_BIAS_GRAD_FROM``, NumPy's where they are not built) against an exact
    sum, with an empty batch and a single sample among the shapes."""
    if way == "compiled":
        pytest.importorskip("fastconv._cy._reduce")
    if way == "not built":
        monkeypatch.setattr(fusion, "_channel_sums", lambda: lambda g: None)
    big = 1 << 60
    monkeypatch.setattr(fusion, "COMPILED_BIAS_GRAD_FROM", 1 if way in ("compiled", "not built") else big)
    monkeypatch.setattr(fusion, "EINSUM_BIAS_GRAD_FROM", 1 if way == "einsum" else big)
    g = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    want = g.astype(np.float64).sum(axis=(0,) + tuple(range(2, g.ndim)))
    got = fusion.bias_grad(np, g)
    assert got.shape == (shape[1],) and got.dtype == dtype
    np.testing.assert_allclose(got, want, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-4)


@pytest.mark.parametrize("shape", [(8, 5, 40, 41), (3, 2), (2, 7, 1), (1, 300, 17, 3, 2)])
def test_channel_sums_do_not_depend_on_the_threads(shape):
    """The compiled sums: float64 inside (within a few float32 roundings of the exact sum), the same bits
    on one thread and on two, and None for what they do not take (another dtype, a strided view)."""
    reduce = pytest.importorskip("fastconv._cy._reduce")
    g = np.random.default_rng(1).standard_normal(shape).astype(np.float32) + 0.5
    want = g.astype(np.float64).sum(axis=(0,) + tuple(range(2, g.ndim)))
    before = fc.get_num_threads()
    try:
        fc.set_num_threads(1)
        one = reduce.channel_sums(g)
        fc.set_num_threads(2)
        two = reduce.channel_sums(g)
    finally:
        fc.set_num_threads(before)
    np.testing.assert_allclose(one, want, rtol=1e-6)
    np.testing.assert_array_equal(one, two)
    assert reduce.channel_sums(g.astype(np.float16)) is None
    assert reduce.channel_sums(g[:, ::2]) is None
