"""ONNX export (run in onnxruntime, checked by onnx.checker) and import (of PyTorch's exports and our own)."""
import warnings

import numpy as np
import pytest

import fastconv as fc
import fastconv.functional as F
from fastconv import models, nn
from fastconv.tensor import Tensor

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
fo = pytest.importorskip("fastconv.onnx")

from onnx_models import EveryLayer1d, EveryLayer2d, EveryLayer3d  # noqa: E402
from torch_models import TorchEveryLayer1d, TorchEveryLayer2d, TorchLeNet5, torch  # noqa: E402

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch not installed")


def _input(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _run_onnx(proto, x):
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def _assert_close(actual, expected, what):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = max(1.0, float(np.abs(expected).max()))
    err = float(np.abs(actual - expected).max())
    assert err <= 1e-5 * scale, f"{what}: max error {err:.3g}"


MODELS = {
    "lenet5": (lambda: models.LeNet5("modern"), (3, 1, 32, 32)),
    "lenet5-classic": (lambda: models.LeNet5("classic"), (2, 1, 32, 32)),
    "mnist1d-paper": (lambda: models.MNIST1DConvNet("paper"), (4, 40)),
    "mnist1d-book": (lambda: models.MNIST1DConvNet("book"), (4, 40)),
    "mnist1d-wide": (models.MNIST1DWideNet, (2, 1, 40)),
    "every-layer-2d": (EveryLayer2d, (2, 2, 12, 12)),
    "every-layer-1d": (EveryLayer1d, (3, 40)),
    "every-layer-3d": (EveryLayer3d, (2, 2, 6, 8, 8)),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_export_runs_in_onnxruntime_like_fastconv(name, tmp_path):
    make, shape = MODELS[name]
    fc.manual_seed(0)
    model = make()
    x = _input(shape)
    path = tmp_path / f"{name}.onnx"
    proto = fo.export(model, x, path)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    assert proto.opset_import[0].version == fo.OPSET
    assert model.training, "export restores the model's mode"
    _assert_close(_run_onnx(proto, x), model.eval()(x).numpy(), name)

    loaded = fo.load(path)  # and back into fastconv: same values, same parameter names
    assert [n for n, _ in loaded.named_parameters()] == [n for n, _ in model.named_parameters()]
    _assert_close(loaded(x).numpy(), model(x).numpy(), f"{name} round trip")


POOLS = [  # (op, kwargs) on inputs whose sizes the strides do not divide
    ("max_pool2d", dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    ("max_pool2d", dict(kernel_size=(2, 3), stride=(3, 2), dilation=(2, 1), ceil_mode=True)),
    ("max_pool1d", dict(kernel_size=4, stride=3, padding=2, ceil_mode=True)),
    ("avg_pool2d", dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=True)),
    ("avg_pool2d", dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)),
    ("avg_pool1d", dict(kernel_size=3, stride=2, padding=1, ceil_mode=False, count_include_pad=False)),
    ("lp_pool2d", dict(norm_type=2, kernel_size=3, stride=2, ceil_mode=True)),
    ("lp_pool1d", dict(norm_type=1, kernel_size=2, ceil_mode=False)),
    ("max_pool2d", dict(kernel_size=3, stride=2, padding=(1, 0))),       # padding differing per axis
    ("avg_pool2d", dict(kernel_size=(3, 2), stride=1, padding=(0, 1), count_include_pad=False)),
    ("max_pool3d", dict(kernel_size=(2, 3, 2), stride=(1, 2, 2), padding=(1, 1, 0), ceil_mode=True)),
    ("avg_pool3d", dict(kernel_size=2, stride=2, padding=(1, 0, 1), count_include_pad=False)),
    ("lp_pool3d", dict(norm_type=2, kernel_size=2, stride=(1, 2, 2))),
]
RESIZES = [
    dict(scale_factor=2, mode="nearest"), dict(scale_factor=1.5, mode="nearest"),
    dict(scale_factor=0.6, mode="nearest"), dict(size=(7, 10), mode="nearest"),
    dict(scale_factor=2, mode="bilinear"), dict(scale_factor=(1.7, 0.5), mode="bilinear"),
    dict(size=(4, 13), mode="bilinear", align_corners=True), dict(size=(3, 3), mode="bilinear"),
]


class _Fn(nn.Module):
    """One functional op (looked up by name at call time, as layers do) with fixed arguments."""

    def __init__(self, op, **kwargs):
        self.op, self.kwargs = op, kwargs

    def forward(self, x):
        return getattr(F, self.op)(x, **self.kwargs)


@pytest.mark.parametrize("op, kwargs", POOLS, ids=[f"{op}-{i}" for i, (op, _) in enumerate(POOLS)])
def test_pooling_edge_cases_match_onnxruntime(op, kwargs):
    dims = int(op[-2])
    x = np.abs(_input((2, 3, 5, 9, 11)[:2] + (5, 9, 11)[3 - dims:]))  # L_p pooling: ONNX's |x|**p, x >= 0
    model = _Fn(op, **kwargs)
    _assert_close(_run_onnx(fo.export(model, x), x), model(x).numpy(), f"{op} {kwargs}")


@pytest.mark.parametrize("kwargs", RESIZES, ids=[str(i) for i in range(len(RESIZES))])
def test_interpolation_matches_onnxruntime(kwargs):
    x = _input((1, 2, 5, 7))
    model = _Fn("interpolate", **kwargs)
    _assert_close(_run_onnx(fo.export(model, x), x), model(x).numpy(), f"interpolate {kwargs}")
    x1 = _input((1, 2, 7))
    kwargs1 = {k: (v[-1] if isinstance(v, tuple) else v) for k, v in kwargs.items()}
    kwargs1["mode"] = kwargs["mode"].replace("bilinear", "linear")
    model = _Fn("interpolate", **kwargs1)
    _assert_close(_run_onnx(fo.export(model, x1), x1), model(x1).numpy(), f"interpolate 1-D {kwargs1}")


def _torch_export(model, x, path, opset):
    with warnings.catch_warnings():  # the TorchScript exporter works offline (the dynamo one needs onnxscript)
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.from_numpy(x),), str(path), dynamo=False, opset_version=opset)


@needs_torch
@pytest.mark.parametrize("opset", [13, 17])
@pytest.mark.parametrize("make, shape", [(TorchLeNet5, (3, 1, 32, 32)), (TorchEveryLayer2d, (2, 2, 12, 12)),
                                         (TorchEveryLayer1d, (3, 1, 40))], ids=["lenet5", "every-2d", "every-1d"])
def test_load_pytorch_exports(make, shape, opset, tmp_path):
    torch.manual_seed(0)
    theirs = make()
    x = _input(shape)
    _torch_export(theirs, x, tmp_path / "m.onnx", opset)
    ours = fo.load(tmp_path / "m.onnx")
    _assert_close(ours(x).numpy(), theirs(torch.from_numpy(x)).detach().numpy(), f"{make.__name__} opset {opset}")


@needs_torch
def test_imported_lenet5_has_pytorch_names_and_trains(tmp_path):
    torch.manual_seed(0)
    theirs = TorchLeNet5()
    x = _input((4, 1, 32, 32))
    _torch_export(theirs, x, tmp_path / "lenet.onnx", 17)
    ours = fo.load(tmp_path / "lenet.onnx")
    assert list(ours.state_dict()) == list(theirs.state_dict())
    models.LeNet5().load_state_dict(ours.state_dict())  # the same keys as fastconv's own LeNet-5
    loss = F.cross_entropy(ours(x), np.arange(4))
    loss.backward()
    assert all(p.grad is not None and np.isfinite(p.grad.numpy()).all() for p in ours.parameters())


def test_unsupported_import_names_the_op(tmp_path):
    helper = onnx.helper
    graph = helper.make_graph(
        [helper.make_node("Relu", ["input"], ["a"]), helper.make_node("Einsum", ["a"], ["output"], equation="i->i")],
        "g", [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT, [3])])
    onnx.save(helper.make_model(graph), str(tmp_path / "bad.onnx"))
    with pytest.raises(NotImplementedError, match="op 'Einsum'"):
        fo.load(tmp_path / "bad.onnx")


def test_export_errors_name_the_op_and_leave_fastconv_as_it_was():
    class Indexing(nn.Module):
        def __init__(self):
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x)[:, :2]

    before = (F.conv2d, Tensor.__add__, nn.Module.__call__)
    with pytest.raises(NotImplementedError, match="runs '__getitem__'"):
        fo.export(Indexing(), np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="training mode"):
        fo.export(_Fn("dropout", p=0.5, training=True), np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="integer norm_type"):
        fo.export(_Fn("lp_pool1d", norm_type=1.5, kernel_size=2), np.ones((1, 1, 4), np.float32))
    with pytest.raises(TypeError, match="fastconv.nn.Module"):
        fo.export(lambda x: x, np.zeros(3, np.float32))
    assert (F.conv2d, Tensor.__add__, nn.Module.__call__) == before


def test_missing_onnx_says_what_to_install(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r"pip install 'fastconv\[onnx\]'"):
        fo.export(models.LeNet5(), np.zeros((1, 1, 32, 32), np.float32))
