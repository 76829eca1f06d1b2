"""The automatic backend choice: the cost model's picks, fallbacks, and autotune with its disk cache."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fastconv as fc
import fastconv.functional as F
from fastconv import shapes
from fastconv.backends import choose, dispatch, fft, separable

from helpers import backend_or_skip, check_against

BIGKERNEL = shapes.conv_spec((4, 8, 128, 128), (8, 8, 15, 15), (8,), padding=7)
LENET = [shapes.conv_spec((64, 1, 32, 32), (6, 1, 5, 5), (6,)),
         shapes.conv_spec((64, 6, 14, 14), (16, 6, 5, 5), (16,))]
CONV_OPS = ("conv2d", "conv2d_grad_input", "conv2d_grad_weight")


@pytest.fixture(autouse=True)
def fresh_choice(monkeypatch, tmp_path):
    """Every test starts from an empty decision cache, the model, and a private autotune folder."""
    monkeypatch.setenv("FASTCONV_CACHE_DIR", str(tmp_path / "cache"))
    choose.autotune(False)
    choose.reset()
    yield
    choose.autotune(False)
    choose.reset()


def _backing(module):
    """The backend module behind a choice (the separable front wraps a direct backend)."""
    return module.runner if isinstance(module, separable.Passes) else module


# ------------------------------------------------------------------------------------ the model
@pytest.mark.parametrize("op", CONV_OPS)
def test_auto_picks_fft_for_big_kernels(op):
    assert choose.best(op, BIGKERNEL, np.float32) is fft


@pytest.mark.parametrize("op", CONV_OPS)
@pytest.mark.parametrize("spec", LENET, ids=["c1", "c3"])
def test_auto_picks_a_direct_backend_for_lenet(op, spec):
    module = _backing(choose.best(op, spec, np.float32))
    assert module is not fft
    assert module is dispatch.load(choose.model_choice(op, spec, np.float32))


def test_small_kernels_never_go_to_fft_even_on_huge_images():
    spec = shapes.conv_spec((1, 1, 2048, 2048), (1, 1, 3, 3), None, padding=1)
    assert choose.model_choice("conv2d", spec) != "fft"


def test_decisions_are_cached_per_spec():
    first = choose.best("conv2d", BIGKERNEL, np.float32)
    assert choose._decisions[("conv2d", BIGKERNEL, np.float32)] is first
    assert choose.best("conv2d", BIGKERNEL, np.float32) is first


def test_unavailable_backends_fall_back(monkeypatch):
    monkeypatch.setitem(choose.PREFERENCE, "max_pool2d", ("no_such_backend", "numpy"))
    spec = shapes.pool_spec((1, 1, 4, 4), 2)
    assert choose.best("max_pool2d", spec, np.float32) is dispatch.load("numpy")
    assert choose._usable["no_such_backend"] is None
    assert choose.best("max_unpool2d", None) is not None  # unpooling has no spec


def test_rank1_kernels_run_as_passes_under_auto():
    rng = np.random.default_rng(0)
    u, v = rng.standard_normal((2, 1, 7)), rng.standard_normal((2, 1, 7))
    w = (u[..., :, None] * v[..., None, :])
    x, b = rng.standard_normal((1, 1, 24, 24)), rng.standard_normal(2)
    spec = shapes.conv_spec(x.shape, w.shape, b.shape, padding=3)
    assert isinstance(choose.best("conv2d", spec, np.float64), separable.Passes)
    check_against(lambda *t: F.conv2d(*t, padding=3), lambda *t: F.conv2d(*t, padding=3, backend="numpy"),
                  [x, w, b], what="auto rank-1")


def test_auto_results_match_reference_for_bigkernel_shapes():
    """Forward and gradients through auto (FFT here) on a smaller big-kernel case."""
    rng = np.random.default_rng(1)
    arrays = [rng.standard_normal(s).astype(np.float32) for s in ((2, 8, 64, 64), (8, 8, 15, 15), (8,))]
    assert choose.best("conv2d", shapes.conv_spec((2, 8, 64, 64), (8, 8, 15, 15), (8,), padding=7),
                       np.float32) is fft
    check_against(lambda *t: F.conv2d(*t, padding=7), lambda *t: F.conv2d(*t, padding=7, backend="numpy"),
                  arrays, what="auto bigkernel")


# ------------------------------------------------------------------------------------- autotune
def _tune_case():
    rng = np.random.default_rng(2)
    return [rng.standard_normal(s) for s in ((2, 3, 12, 12), (4, 3, 5, 5), (4,))]


def _entries(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)["entries"]


def test_autotune_times_once_writes_the_cache_and_keeps_results(monkeypatch, tmp_path):
    fc.autotune(True)
    arrays = _tune_case()
    check_against(lambda *t: F.conv2d(*t, padding=2), lambda *t: F.conv2d(*t, padding=2, backend="numpy"),
                  arrays, what="autotuned conv2d")
    path = tmp_path / "cache" / "autotune.json"
    assert choose.cache_path() == str(path)
    entries = _entries(path)
    spec = shapes.conv_spec(arrays[0].shape, arrays[1].shape, (4,), padding=2)
    for op in CONV_OPS:
        key = choose.tune_key(op, spec, np.float64)
        assert entries[key] in dispatch.MODULES
        assert "float64" in key and fc.__version__ in key
        assert choose.best(op, spec, np.float64) is dispatch.load(entries[key])  # no more timing
    assert not [f for f in os.listdir(path.parent) if f != "autotune.json"]  # no temp files left

    choose.reset()  # what a new process sees: only the file

    def no_timing(*args):
        raise AssertionError("timed again despite the cache file")
    monkeypatch.setattr(choose, "_race", no_timing)
    check_against(lambda *t: F.conv2d(*t, padding=2), lambda *t: F.conv2d(*t, padding=2, backend="numpy"),
                  arrays, what="conv2d from the cache file")


def test_autotune_cache_is_read_back_by_a_new_process(tmp_path):
    fc.autotune(True)
    arrays = _tune_case()
    F.conv2d(*arrays, padding=2)
    spec = shapes.conv_spec(arrays[0].shape, arrays[1].shape, (4,), padding=2)
    winner = _entries(tmp_path / "cache" / "autotune.json")[choose.tune_key("conv2d", spec, np.float64)]
    script = ("import numpy as np, fastconv as fc\n"
              "from fastconv import shapes\nfrom fastconv.backends import choose\n"
              "fc.autotune(True)\n"
              "spec = shapes.conv_spec((2, 3, 12, 12), (4, 3, 5, 5), (4,), padding=2)\n"
              "m = choose.best('conv2d', spec, np.float64)\n"
              "print(getattr(m, '__name__', type(m).__name__))\n")
    env = dict(os.environ, FASTCONV_CACHE_DIR=str(tmp_path / "cache"))
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True,
                         cwd=tmp_path)  # not the repo root, whose uncompiled package would shadow the install
    assert out.stdout.strip() == dispatch.MODULES[winner]


def test_corrupt_cache_file_is_ignored_with_a_warning(tmp_path):
    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / "autotune.json").write_text("{not json")
    fc.autotune(True)
    arrays = _tune_case()
    with pytest.warns(RuntimeWarning, match="ignoring the autotune cache"):
        y = F.conv2d(*arrays, padding=2)
    np.testing.assert_allclose(y.numpy(), F.conv2d(*arrays, padding=2, backend="numpy").numpy(), rtol=1e-10)
    assert _entries(folder / "autotune.json")  # rewritten whole


@pytest.mark.parametrize("content", ['{"entries": [1, 2]}', '[]', '{"entries": {"k": 3}}'])
def test_cache_files_of_the_wrong_shape_are_ignored(tmp_path, content):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.warns(RuntimeWarning):
        assert choose._read(str(path)) == {}


def test_cache_location_defaults_to_home(monkeypatch, tmp_path):
    monkeypatch.delenv("FASTCONV_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert choose.cache_path() == os.path.join(str(tmp_path), ".cache", "fastconv", "autotune.json")


def test_unwritable_cache_folder_warns_and_keeps_working(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("FASTCONV_CACHE_DIR", str(blocker / "sub"))  # a folder under a file: cannot exist
    fc.autotune(True)
    with pytest.warns(RuntimeWarning, match="cannot write"):
        F.conv2d(*_tune_case(), padding=2)


def test_wide_gemms_prefer_numba_and_lenet_layers_cython():
    backend_or_skip("numba"), backend_or_skip("cython")
    resnet = shapes.conv_spec((8, 128, 28, 28), (256, 128, 3, 3), padding=1, stride=2)
    pointwise = shapes.conv_spec((16, 256, 28, 28), (128, 256, 1, 1))
    lenet = shapes.conv_spec((64, 6, 14, 14), (16, 6, 5, 5))
    assert choose.model_choice("conv2d", resnet, np.float64) == "numba"
    assert choose.model_choice("conv2d_grad_weight", resnet, np.float32) == "numba"
    assert choose.model_choice("conv2d", pointwise, np.float64) == "numba"
    assert choose.model_choice("conv2d", lenet) == "cython"
    # float32 forward passes run Cython's register-blocked kernel, wide or not
    assert choose.model_choice("conv2d", resnet, np.float32) == "cython"
    assert choose.model_choice("conv2d", pointwise, np.float32) == "cython"
