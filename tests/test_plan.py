"""The planner: the model's picks and their reasons, forcing a backend or an algorithm, plans cached and
made per layer, rank-1 weights, exact mode, and measured choices (autotune) with their disk cache."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fastconv as fc
import fastconv.functional as F
from fastconv import shapes
from fastconv.backends import model, plan, registry, tune

from helpers import backend_or_skip, check_against

BIGKERNEL = shapes.conv_spec((4, 8, 128, 128), (8, 8, 15, 15), (8,), padding=7)
LENET = [shapes.conv_spec((64, 1, 32, 32), (6, 1, 5, 5), (6,)),
         shapes.conv_spec((64, 6, 14, 14), (16, 6, 5, 5), (16,))]
CONV_OPS = registry.CONV_OPS


@pytest.fixture(autouse=True)
def fresh_planner(monkeypatch, tmp_path):
    """Every test starts from no plans, the model, exact mode off and a private autotune folder."""
    monkeypatch.setenv("FASTCONV_CACHE_DIR", str(tmp_path / "cache"))
    fc.autotune(False)
    plan.reset()
    yield
    fc.autotune(False)
    fc.set_exact(False)
    fc.set_backend("auto")
    plan.reset()


def _need(*names):
    for name in names:
        backend_or_skip(name)


# ------------------------------------------------------------------------------------ the model
@pytest.mark.parametrize("op", CONV_OPS)
def test_auto_picks_fft_for_big_kernels_and_says_why(op):
    p = plan.plan(op, BIGKERNEL, np.float32)
    assert p.name == "fft:whole"
    assert p.reason.startswith("model: fft") and p.seconds > 0


@pytest.mark.parametrize("op", CONV_OPS)
@pytest.mark.parametrize("spec", LENET, ids=["c1", "c3"])
def test_auto_picks_a_direct_backend_for_lenet(op, spec):
    p = plan.plan(op, spec, np.float32)
    p = p.fallback or p  # LeNet's 5x5 kernels are checked for rank 1 first
    choice = model.choose(op, spec, np.float32, [b for b in plan.AUTO if registry.runs(b, op)])
    assert p.backend in ("cython", "numba", "numpy")
    assert (p.backend, p.algorithm, p.reason) == (choice.backend, choice.algorithm, choice.reason)


def test_long_signals_plan_the_overlap_algorithm():
    spec = shapes.conv_spec((4, 8, 20000), (8, 8, 131), dims=1)
    assert plan.plan("conv2d", spec, np.float32).name == "fft:overlap"


def test_small_kernels_never_go_to_fft_even_on_huge_images():
    spec = shapes.conv_spec((1, 1, 2048, 2048), (1, 1, 3, 3), None, padding=1)
    assert plan.plan("conv2d", spec, np.float32).backend != "fft"


def test_plans_are_made_once_per_spec():
    first = plan.plan("conv2d", BIGKERNEL, np.float32)
    assert plan.plan("conv2d", BIGKERNEL, np.float32) is first
    assert plan.plan("conv2d", BIGKERNEL, np.float64) is not first


def test_wide_float64_gemms_prefer_numba_and_lenet_layers_cython():
    _need("numba", "cython")
    resnet = shapes.conv_spec((8, 128, 28, 28), (256, 128, 3, 3), padding=1, stride=2)
    pointwise = shapes.conv_spec((16, 256, 28, 28), (128, 256, 1, 1))
    lenet = shapes.conv_spec((64, 6, 14, 14), (16, 6, 5, 5))
    assert plan.plan("conv2d", resnet, np.float64).backend == "numba"
    assert plan.plan("conv2d", pointwise, np.float64).backend == "numba"
    assert plan.plan("conv2d", lenet, np.float64).backend == "cython"
    # float32 passes run Cython's register-blocked kernel, wide or not, strided or not (the strided input
    # gradient one input phase at a time)
    for op in CONV_OPS:
        assert plan.plan(op, resnet, np.float32).name == "cython:blocked"
        assert plan.plan(op, pointwise, np.float32).name == "cython:blocked"


def test_disjoint_windows_run_their_input_gradient_per_task():
    _need("numba", "cython")
    patchify = shapes.conv_spec((16, 64, 64, 64), (64, 64, 2, 2), stride=2)
    assert plan.plan("conv2d_grad_input", patchify, np.float32).name == "numba:per_task"
    one_sample = shapes.conv_spec((1, 64, 64, 64), (64, 64, 2, 2), stride=2)  # Numba would not run per task
    overlapping = shapes.conv_spec((16, 64, 64, 64), (64, 64, 3, 3), stride=2)
    small = shapes.conv_spec((64, 16, 14, 14), (32, 16, 3, 3), stride=2, padding=1)  # 7 MFLOP per phase
    assert plan.plan("conv2d_grad_input", one_sample, np.float32).backend == "cython"
    assert plan.plan("conv2d_grad_input", overlapping, np.float32).name == "cython:blocked"  # by phases
    assert plan.plan("conv2d_grad_input", small, np.float32).name == "cython:gemm"


def test_max_pooling_runs_on_cython_window_by_window_or_tap_by_tap():
    """Cython's max pool reduces small output planes window by window and large ones tap by tap (see
    ``_pool.pyx``); both agree with the reference, indices of ties included, and so does the gradient."""
    _need("cython")
    rng = np.random.default_rng(0)
    for x_shape in [(128, 6, 28, 28), (2, 64, 56, 56), (1, 2, 100, 100)]:  # 196, 784, 2500 outputs per plane
        spec = shapes.pool_spec(x_shape, 2)
        assert plan.plan("max_pool2d", spec, np.float32).backend == "cython"
        assert plan.plan("max_pool2d_grad", spec, np.float32).backend == "cython"
        x = np.round(rng.standard_normal(x_shape) * 2).astype(np.float32)  # many ties
        xt = fc.tensor(x, requires_grad=True)
        y, idx = F.max_pool2d(xt, 2, return_indices=True)
        y.sum().backward()
        ref_y, ref_idx = F.max_pool2d(x, 2, return_indices=True, backend="numpy")
        np.testing.assert_array_equal(y.numpy(), ref_y.numpy())
        np.testing.assert_array_equal(idx.numpy(), ref_idx.numpy())
        ones = np.zeros((x_shape[0] * x_shape[1], x[0, 0].size), np.float32)  # 1 at each window's argmax
        np.put_along_axis(ones, idx.numpy().reshape(len(ones), -1), 1, axis=1)
        np.testing.assert_array_equal(xt.grad.numpy().reshape(ones.shape), ones)


def test_thin_layers_run_the_direct_loops():
    _need("cython")
    thin = shapes.conv_spec((64, 4, 28, 28), (2, 4, 3, 3), padding=1)      # 8 channel pairs, 3x3
    taps3 = shapes.conv_spec((100, 1, 40), (15, 1, 3), stride=2, dims=1)    # 15 pairs, but 3 taps
    assert plan.plan("conv2d", thin, np.float64).name == "cython:direct"
    assert plan.plan("conv2d", thin, np.float32).name == "cython:blocked"  # its tile of pixel vectors
    assert plan.plan("conv2d_grad_weight", thin, np.float64).name == "cython:direct"
    assert plan.plan("conv2d_grad_input", thin, np.float64).name == "cython:gemm"
    assert plan.plan("conv2d", taps3, np.float64).name == "cython:gemm"


def test_unavailable_backends_fall_back(monkeypatch):
    monkeypatch.setitem(model.PREFERENCE, "max_pool2d", ("no_such_backend", "numpy"))
    spec = shapes.pool_spec((1, 1, 4, 4), 2)
    assert plan.plan("max_pool2d", spec, np.float32).backend == "numpy"
    assert plan.plan("max_unpool2d", None, np.float32) is not None  # unpooling has no spec


def test_a_layer_plans_all_its_kernels_together():
    x = fc.tensor(np.ones((2, 3, 8, 8), np.float32), requires_grad=True)
    w = fc.tensor(np.ones((4, 3, 3, 3), np.float32), requires_grad=True)
    with plan.recording() as layers:
        F.conv2d(x, w, padding=1)
        F.conv2d(x.detach(), w, padding=1)  # no input gradient needed: not planned
        F.max_pool2d(x, 2)
        with fc.no_grad():
            F.conv_transpose2d(x, w.detach().reshape(3, 4, 3, 3))
    assert [layer.label for layer in layers] == ["conv2d", "conv2d", "max_pool2d", "conv_transpose2d"]
    assert list(layers[0].plans) == list(CONV_OPS)
    assert list(layers[1].plans) == ["conv2d", "conv2d_grad_weight"]
    assert list(layers[2].plans) == ["max_pool2d", "max_pool2d_grad"]
    assert list(layers[3].plans) == ["conv2d_grad_input"]


# ------------------------------------------------------------------------------------ forcing
def test_forcing_an_algorithm_is_public_and_runs_it(monkeypatch):
    _need("cython")
    calls = []
    cy = registry.load("cython")
    original = cy.conv2d

    def spy(*args, algorithm):
        calls.append(algorithm)
        return original(*args, algorithm=algorithm)
    monkeypatch.setattr(cy, "conv2d", spy)
    x, w = np.ones((2, 16, 9, 9), np.float32), np.ones((16, 16, 3, 3), np.float32)
    for algorithm in cy.ALGORITHMS:
        plan.reset()
        F.conv2d(x, w, padding=1, backend=f"cython:{algorithm}")
    assert calls == list(cy.ALGORITHMS)
    p = plan.plan("conv2d", shapes.conv_spec(x.shape, w.shape, padding=1), np.float32, backend="cython:gemm")
    assert p.reason == "forced backend='cython:gemm'"


def test_a_forced_backend_without_the_op_is_an_error():
    with pytest.raises(ValueError, match="backend 'fft' has no max_pool2d kernel"):
        F.max_pool2d(np.ones((1, 1, 4, 4)), 2, backend="fft")


def test_a_forced_algorithm_that_cannot_run_the_input_is_an_error():
    _need("cython")
    x, w = np.ones((1, 4, 8, 8)), np.ones((4, 4, 3, 3))  # float64: the blocked kernel is float32 only
    with pytest.raises(ValueError, match="'cython:blocked' cannot run conv2d on this input"):
        F.conv2d(x, w, backend="cython:blocked")
    with pytest.raises(ValueError, match="no algorithm 'fast'"):
        F.conv2d(x, w, backend="numba:fast")
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        F.conv2d(x, w, backend="turbo")


def test_set_backend_takes_an_algorithm_too():
    _need("numba")
    fc.set_backend("numba:direct")
    spec = shapes.conv_spec((2, 8, 6, 6), (8, 8, 3, 3))
    assert plan.plan("conv2d", spec, np.float32).name == "numba:direct"
    fc.set_backend("auto")
    assert plan.plan("conv2d", spec, np.float32).reason.startswith(("cython", "numba", "numpy"))


# ---------------------------------------------------------------------------------- rank-1 weights
def test_rank1_kernels_run_as_passes_under_auto(monkeypatch):
    rng = np.random.default_rng(0)
    u, v = rng.standard_normal((2, 1, 7)), rng.standard_normal((2, 1, 7))
    w = (u[..., :, None] * v[..., None, :])
    x, b = rng.standard_normal((1, 1, 24, 24)), rng.standard_normal(2)
    spec = shapes.conv_spec(x.shape, w.shape, b.shape, padding=3)
    p = plan.plan("conv2d", spec, np.float64)
    assert p.backend == "separable" and p.fallback is not None and "two 1-D passes" in p.reason
    from fastconv.backends import separable
    passes = []
    original = separable.conv2d
    monkeypatch.setattr(separable, "conv2d", lambda *a: passes.append(1) or original(*a))
    check_against(lambda *t: F.conv2d(*t, padding=3), lambda *t: F.conv2d(*t, padding=3, backend="numpy"),
                  [x, w, b], what="auto rank-1")
    assert passes  # the rank-1 weight ran as passes
    w2 = rng.standard_normal(w.shape)  # full rank: the fallback runs
    check_against(lambda *t: F.conv2d(*t, padding=3), lambda *t: F.conv2d(*t, padding=3, backend="numpy"),
                  [x, w2, b], what="auto full rank")


def test_auto_results_match_reference_for_bigkernel_shapes():
    rng = np.random.default_rng(1)
    arrays = [rng.standard_normal(s).astype(np.float32) for s in ((2, 8, 64, 64), (8, 8, 15, 15), (8,))]
    spec = shapes.conv_spec((2, 8, 64, 64), (8, 8, 15, 15), (8,), padding=7)
    assert plan.plan("conv2d", spec, np.float32).backend == "fft"
    check_against(lambda *t: F.conv2d(*t, padding=7), lambda *t: F.conv2d(*t, padding=7, backend="numpy"),
                  arrays, what="auto bigkernel")


def test_exact_mode_leaves_the_fft_out():
    fc.set_exact(True)
    assert fc.get_exact()
    assert plan.plan("conv2d", BIGKERNEL, np.float32).backend != "fft"
    fc.set_exact(False)
    assert plan.plan("conv2d", BIGKERNEL, np.float32).backend == "fft"


# ------------------------------------------------------------------------------------- autotune
def _tune_case():
    rng = np.random.default_rng(2)
    return [rng.standard_normal(s) for s in ((2, 3, 12, 12), (4, 3, 5, 5), (4,))]


def _entries(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)["entries"]


def _names():
    return {f"{b}:{a}" if a else b for b in plan.AUTO if registry.usable(b)
            for op in CONV_OPS for a in registry.algorithms(b, op)}


def test_autotune_times_once_writes_the_cache_and_keeps_results(monkeypatch, tmp_path):
    fc.autotune(True)
    arrays = _tune_case()
    check_against(lambda *t: F.conv2d(*t, padding=2), lambda *t: F.conv2d(*t, padding=2, backend="numpy"),
                  arrays, what="autotuned conv2d")
    path = tmp_path / "cache" / "autotune.json"
    assert tune.cache_path() == str(path)
    entries = _entries(path)
    spec = shapes.conv_spec(arrays[0].shape, arrays[1].shape, (4,), padding=2)
    threads = fc.get_num_threads()
    for op in CONV_OPS:
        key = tune.key(op, spec, np.float64, threads)
        assert entries[key] in _names()
        assert "float64" in key and fc.__version__ in key
        p = plan.plan(op, spec, np.float64)
        p = p.fallback or p  # 5x5 kernels are checked for rank 1 first
        assert p.name == entries[key] and p.reason.startswith("measured now")
    assert not [f for f in os.listdir(path.parent) if f != "autotune.json"]  # no temp files left

    plan.reset()  # what a new process sees: only the file

    def no_timing(*args):
        raise AssertionError("timed again despite the cache file")
    monkeypatch.setattr(tune, "measure", no_timing)
    check_against(lambda *t: F.conv2d(*t, padding=2), lambda *t: F.conv2d(*t, padding=2, backend="numpy"),
                  arrays, what="conv2d from the cache file")
    assert plan.plan("conv2d", spec, np.float64).fallback.reason.startswith("measured earlier")


def test_measurements_time_fresh_inputs_back_to_back(monkeypatch):
    """Each call gets new arrays (kernels that cache by content, FFT spectra, cannot win by it), made before
    its block: the timed calls follow each other with nothing in between."""
    seen, made = [], []
    spec = shapes.conv_spec((1, 2, 8, 8), (2, 2, 3, 3))
    real = tune.example_args
    monkeypatch.setattr(tune, "example_args", lambda *a: made.append(len(seen)) or real(*a))
    monkeypatch.setattr(tune, "MAX_CALLS", 5)
    tune.time_kernel(lambda x, w, b, s: seen.append(x.copy()), "conv2d", spec, np.float32,
                     np.random.default_rng(0), repeat=3)
    assert len(seen) == 2 + 3 * (1 + 5)  # compile, size the block; per block: a wake-up call, 5 timed
    assert all(not np.array_equal(a, b) for i, a in enumerate(seen) for b in seen[i + 1:])
    for block in range(3):  # the block's inputs and its wake-up call's are made before any of its calls
        first = 2 + block * 6
        assert made.count(first) == 6


def test_autotune_cache_is_read_back_by_a_new_process(tmp_path):
    fc.autotune(True)
    arrays = _tune_case()
    F.conv2d(*arrays, padding=2)
    spec = shapes.conv_spec(arrays[0].shape, arrays[1].shape, (4,), padding=2)
    winner = _entries(tmp_path / "cache" / "autotune.json")[tune.key("conv2d", spec, np.float64,
                                                                     fc.get_num_threads())]
    script = ("import numpy as np, fastconv as fc\n"
              "from fastconv import shapes\nfrom fastconv.backends import plan\n"
              f"fc.set_num_threads({fc.get_num_threads()}); fc.autotune(True)\n"
              "spec = shapes.conv_spec((2, 3, 12, 12), (4, 3, 5, 5), (4,), padding=2)\n"
              "p = plan.plan('conv2d', spec, np.float64).fallback\n"
              "print(p.name, '|', p.reason)\n")
    env = dict(os.environ, FASTCONV_CACHE_DIR=str(tmp_path / "cache"))
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True,
                         cwd=tmp_path)  # not the repo root, whose uncompiled package would shadow the install
    assert out.stdout.strip() == f"{winner} | measured earlier on this machine (autotune cache)"


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
        assert tune._read(str(path)) == {}


def test_cache_location_defaults_to_home(monkeypatch, tmp_path):
    monkeypatch.delenv("FASTCONV_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert tune.cache_path() == os.path.join(str(tmp_path), ".cache", "fastconv", "autotune.json")


def test_unwritable_cache_folder_warns_and_keeps_working(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("FASTCONV_CACHE_DIR", str(blocker / "sub"))  # a folder under a file: cannot exist
    fc.autotune(True)
    with pytest.warns(RuntimeWarning, match="cannot write"):
        F.conv2d(*_tune_case(), padding=2)


# ---------------------------------------------------------------------------------- calibration
def test_batches_of_one_shape_class_share_a_measurement():
    spec = shapes.conv_spec((96, 3, 12, 12), (4, 3, 3, 3))
    threads = fc.get_num_threads()
    assert tune.shape_class(spec).n == 128
    assert tune.key("conv2d", spec, np.float32, threads) == \
        tune.key("conv2d", shapes.conv_spec((128, 3, 12, 12), (4, 3, 3, 3)), np.float32, threads)
    assert tune.key("conv2d", spec, np.float32, threads) != \
        tune.key("conv2d", shapes.conv_spec((129, 3, 12, 12), (4, 3, 3, 3)), np.float32, threads)


@pytest.mark.filterwarnings("ignore:fastconv autotune. the machine is busy")
def test_calibration_stores_what_later_plans_use(tmp_path):
    """``fastconv tune``'s measurements are used without autotune, by this process and by the next."""
    from fastconv import models
    from fastconv.calibrate import calibrate, table
    rows = calibrate(models.create("paper"), (4, 1, 40))
    assert [r["pass"] for r in rows] == ["forward", "grad weight"] + ["forward", "grad input", "grad weight"] * 2
    assert all(r["winner_ms"] <= r["model_ms"] or np.isnan(r["model_ms"]) for r in rows)
    assert "measured fastest" in table(rows).splitlines()[0]
    assert not tune.enabled()
    spec = shapes.conv_spec((4, 25, 19), (25, 25, 3), padding=1, stride=2, dims=1)
    for r, op in zip(rows[2:5], CONV_OPS):
        p = plan.plan(op, spec, np.float32)
        assert (p.fallback or p).name == r["winner"] and "measured earlier" in (p.fallback or p).reason
    script = ("import numpy as np\nimport fastconv as fc\nfrom fastconv import shapes\n"
              f"from fastconv.backends import plan\nfc.set_num_threads({fc.get_num_threads()})\n"
              "spec = shapes.conv_spec((3, 25, 19), (25, 25, 3), padding=1, stride=2, dims=1)\n"
              "p = plan.plan('conv2d', spec, np.float32)\nprint((p.fallback or p).name, '|', p.reason)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         cwd=tmp_path, env=dict(os.environ))  # batch 3: the same class as 4
    assert out.stdout.strip() == f"{rows[2]['winner']} | measured earlier on this machine (autotune cache)"


def test_cli_tune(tmp_path):
    out = subprocess.run([sys.executable, "-m", "fastconv.cli", "tune", "paper", "--batch", "2"],
                         capture_output=True, text=True, cwd=tmp_path,
                         env=dict(os.environ, FASTCONV_CACHE_DIR=str(tmp_path / "cache")))
    assert out.returncode == 0, out.stderr
    assert "8 passes measured" in out.stdout and os.path.exists(tmp_path / "cache" / "autotune.json")
