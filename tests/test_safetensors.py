"""safetensors files: Module.save / load_state_dict round trips, interchange with PyTorch, bad files."""
import numpy as np
import pytest

import fastconv as fc
from fastconv import models, nn
from fastconv.safetensors import load_file, save_file

from torch_models import TorchLeNet5, torch

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch not installed")


def _lenet_input(n=3):
    return np.random.default_rng(0).standard_normal((n, 1, 32, 32)).astype(np.float32)


def test_file_round_trip_keeps_names_dtypes_shapes_and_metadata(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"a.weight": rng.standard_normal((3, 2, 5)).astype(np.float32), "b": rng.standard_normal(4),
              "idx": np.arange(6, dtype=np.int64).reshape(2, 3), "empty": np.zeros((0, 3), np.float32),
              "flag": np.array([True, False])}
    save_file(arrays, tmp_path / "x.safetensors", {"note": "hi"})
    back, meta = load_file(tmp_path / "x.safetensors", with_metadata=True)
    assert list(back) == list(arrays) and meta == {"note": "hi"}
    for name, value in arrays.items():
        assert back[name].dtype == value.dtype and back[name].shape == value.shape, name
        np.testing.assert_array_equal(back[name], value)
    with open(tmp_path / "x.safetensors", "rb") as f:
        size = int.from_bytes(f.read(8), "little")
    assert size % 8 == 0  # header padded to 8 bytes, as the reference writer does


def test_module_save_and_load_restore_the_outputs(tmp_path):
    fc.manual_seed(0)
    model = models.LeNet5()
    model.save(tmp_path / "lenet.safetensors")
    fc.manual_seed(1)
    other = models.LeNet5()
    x = _lenet_input()
    assert not np.allclose(other(x).numpy(), model(x).numpy())
    assert other.load_state_dict(str(tmp_path / "lenet.safetensors")) == ([], [])
    np.testing.assert_array_equal(other(x).numpy(), model(x).numpy())


@needs_torch
def test_pytorch_lenet5_loads_into_fastconv_and_back(tmp_path):
    st_torch = pytest.importorskip("safetensors.torch")
    torch.manual_seed(0)
    theirs = TorchLeNet5().eval()
    st_torch.save_file(theirs.state_dict(), str(tmp_path / "torch.safetensors"))
    ours = models.LeNet5()
    ours.load_state_dict(tmp_path / "torch.safetensors")
    x = _lenet_input()
    expected = theirs(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(ours(x).numpy(), expected, rtol=1e-5, atol=1e-6)

    ours.save(tmp_path / "ours.safetensors")  # and back, into a fresh PyTorch model
    again = TorchLeNet5().eval()
    again.load_state_dict(st_torch.load_file(str(tmp_path / "ours.safetensors")))
    np.testing.assert_array_equal(again(torch.from_numpy(x)).detach().numpy(), expected)


def test_files_written_here_match_the_reference_reader(tmp_path):
    st_numpy = pytest.importorskip("safetensors.numpy")
    arrays = {"w": np.arange(12, dtype=np.float64).reshape(3, 4), "i": np.arange(3, dtype=np.int32)}
    save_file(arrays, tmp_path / "a.safetensors")
    back = st_numpy.load_file(str(tmp_path / "a.safetensors"))
    for name in arrays:
        np.testing.assert_array_equal(back[name], arrays[name])
    st_numpy.save_file(arrays, str(tmp_path / "b.safetensors"))
    for name, value in load_file(tmp_path / "b.safetensors").items():
        np.testing.assert_array_equal(value, arrays[name])


@needs_torch
def test_bfloat16_is_read_as_float32(tmp_path):
    st_torch = pytest.importorskip("safetensors.torch")
    values = torch.tensor([1.0, -2.5, 3.140625], dtype=torch.bfloat16)
    st_torch.save_file({"v": values}, str(tmp_path / "bf16.safetensors"))
    back = load_file(tmp_path / "bf16.safetensors")["v"]
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, values.float().numpy())


def test_mismatched_keys_and_shapes_name_the_key(tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Linear(4, 3))
    state = model.state_dict()
    save_file({**state, "2.extra": np.zeros(1, np.float32)}, tmp_path / "extra.safetensors")
    with pytest.raises(KeyError, match=r"unexpected keys \['2.extra'\]"):
        model.load_state_dict(tmp_path / "extra.safetensors")
    assert model.load_state_dict(tmp_path / "extra.safetensors", strict=False) == ([], ["2.extra"])
    save_file({**state, "0.weight": np.zeros((2, 1, 5, 5), np.float32)}, tmp_path / "shape.safetensors")
    with pytest.raises(ValueError, match=r"0.weight: expected \(2, 1, 3, 3\), got \(2, 1, 5, 5\)"):
        model.load_state_dict(tmp_path / "shape.safetensors")
    del state["2.bias"]
    save_file(state, tmp_path / "missing.safetensors")
    with pytest.raises(KeyError, match=r"missing keys \['2.bias'\]"):
        model.load_state_dict(tmp_path / "missing.safetensors")


def test_malformed_files_and_arrays_are_rejected(tmp_path):
    (tmp_path / "short").write_bytes(b"abc")
    with pytest.raises(ValueError, match="not a safetensors file"):
        load_file(tmp_path / "short")
    (tmp_path / "huge").write_bytes((1 << 40).to_bytes(8, "little") + b"{}")
    with pytest.raises(ValueError, match="header length"):
        load_file(tmp_path / "huge")
    with pytest.raises(TypeError, match="cannot store dtype"):
        save_file({"s": np.array(["a"])}, tmp_path / "s.safetensors")
