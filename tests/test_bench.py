"""Smoke tests of the benchmark tooling (fastconv.bench and bench/): the shape table, the runners, the timing
and summary helpers, ``fastconv bench`` and ``fastconv compare`` on tiny settings, and the asv suites' wiring. They check that
the tools run and report what they measured, never how fast anything is."""
import importlib
import json
import math
import os
import sys

import numpy as np
import pytest

from fastconv.bench import common

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO, "bench")
sys.path.insert(0, BENCH)  # the asv suites (bench/benchmarks)

from helpers import unavailable  # noqa: E402


@pytest.fixture(scope="module")
def compare():
    return importlib.import_module("fastconv.bench.compare")


@pytest.fixture(scope="module")
def compare_training():
    return importlib.import_module("fastconv.bench.compare_training")


# ------------------------------------------------------------------------------ shape table
def test_shape_table_is_valid_and_matches_the_spec():
    from fastconv import shapes
    tables = common.CONV2D + common.CONV1D + common.POOL + common.TINY + common.BATCH1 + common.VOLUMES
    assert len(common.SHAPES) == len(tables + common.TINY_VOLUMES)  # unique
    for shape in common.SHAPES.values():
        if shape.kind == "conv":
            spec = shape.spec()
            # a transposed convolution's spec is the convolution it is the adjoint of: its output is the input
            assert (spec.c_out if shape.transposed else spec.c_in) == shape.x[1]
            assert shape.flops(True) == 3 * shape.flops(False) > 0
        else:
            shapes.pool_spec(shape.x, shape.kernel, shape.stride, dims=shape.dims)
    vgg, resnet = common.SHAPES["vgg_3x3"], common.SHAPES["resnet_s2"]
    assert vgg.spec().y_shape == (8, 64, 56, 56) and resnet.spec().y_shape == (8, 256, 14, 14)
    assert common.SHAPES["depthwise"].spec().groups == 128
    assert common.SHAPES["alexnet_c1"].spec().y_shape == (8, 64, 55, 55)
    assert common.SHAPES["grouped_3x3"].spec().groups == 4 and common.SHAPES["c512_14"].spec().c_in == 512
    assert common.SHAPES["odd"].spec().y_shape == (5, 53, 45, 31)
    assert common.SHAPES["mnist1d_c1"].spec().y_shape == (100, 15, 1, 19)  # feeds mnist1d_c2's 19
    assert set(common.LARGE) <= set(common.SHAPES)


@pytest.mark.parametrize("name", ["tiny_3x3", "tiny_s2_dil", "tiny_1d", "tiny_maxpool", "tiny_avgpool"])
def test_fastconv_runner_matches_torch(name):
    pytest.importorskip("torch")
    shape = common.SHAPES[name]
    ours, theirs = common.runner("numpy", shape, False)(), common.runner("torch", shape, False)()
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-5)
    # forward + backward runs repeatedly without accumulating gradients (grads are reset each call)
    fn = common.runner("numpy", shape, True)
    fn()
    fn()


# ----------------------------------------------------------------------------- helpers
def test_time_blocks_rotates_settles_and_counts(compare):
    order = []
    calls = {name: (lambda name=name: order.append(name)) for name in "abc"}
    samples = compare.time_blocks(calls, repeat=3, min_time=0.0)
    assert {k: len(v) for k, v in samples.items()} == {"a": 3, "b": 3, "c": 3}
    timed = order[3:]  # the first three calls calibrate
    assert timed == list("abc") + list("bca") + list("cab")
    assert all(s >= 0 for v in samples.values() for s in v)
    order.clear()
    compare.time_blocks(calls, repeat=2, min_time=0.0, settle=0.002)  # untimed calls open every block
    timed = order[3:]
    blocks = [k for i, k in enumerate(timed) if i == 0 or timed[i - 1] != k]
    assert blocks == list("abcbca") and len(timed) > 2 * 3 * 2


def test_summary_geometric_means(compare):
    rows = [{"shape": s, "kind": "conv", "dims": 2, "impl": "auto", "mode": m, "ratio": r}
            for s, m, r in [("a", "fwd", 2.0), ("b", "fwd", 0.5), ("a", "fwd+bwd", 4.0), ("b", "fwd+bwd", 1.0)]]
    rows.append({"shape": "p", "kind": "pool", "dims": 2, "impl": "auto", "mode": "fwd", "ratio": 3.0})
    rows.append({"shape": "a", "kind": "conv", "dims": 2, "impl": "numba", "mode": "fwd", "error": "x"})
    s = compare.summarize(rows)
    assert math.isclose(s["auto"]["conv2d fwd"], 1.0) and math.isclose(s["auto"]["conv2d fwd+bwd"], 2.0)
    assert s["auto"]["min conv2d"] == {"ratio": 0.5, "shape": "b", "mode": "fwd"}
    assert math.isclose(s["auto"]["pool fwd"], 3.0) and s["auto"]["conv1d fwd"] is None
    assert s["numba"]["conv2d fwd n"] == 0


# ----------------------------------------------------------------------------- compare.py
def test_compare_tiny_prints_the_table(compare, tmp_path, capsys):
    pytest.importorskip("torch")
    out = tmp_path / "r.json"
    assert compare.main(["--tiny", "--shapes", "tiny_3x3,tiny_1d,tiny_maxpool", "--backends", "auto,numpy",
                         "--repeat", "2", "--threads", "1", "--markdown", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "float32 GEMM in this run" in text and "malloc" in text and "Summary" in text
    assert common.cpu_name() in text and common.cpu_isa() in text
    assert "| tiny_3x3 | auto |" in text  # the Markdown table
    result = json.loads(out.read_text())
    assert result["info"]["threads"] == 1
    rows = {(r["shape"], r["impl"], r["mode"]): r for r in result["rows"]}
    assert len(rows) == 3 * 3 * 2  # shapes x (torch, auto, numpy) x (fwd, fwd+bwd)
    for (shape, impl, mode), r in rows.items():
        assert "error" not in r and r["ms"] > 0 and len(r["samples_ms"]) == 2
        assert r["mismatch"] is None
        assert (r["ratio"] is None) == (impl == "torch")
    assert rows[("tiny_3x3", "auto", "fwd")]["pct_gemm"] is not None  # GEMM-bound shape
    assert rows[("tiny_1d", "auto", "fwd")]["pct_gemm"] is None
    assert result["summary"]["numpy"]["conv2d fwd"] > 0


def test_compare_volumes_tiny(compare, capsys):
    pytest.importorskip("torch")
    result = compare.compare(compare.parse_args(["--volumes", "--tiny", "--backends", "auto", "--repeat", "1",
                                                 "--threads", "1"])[0])
    assert {r["shape"] for r in result["rows"]} == {s.name for s in common.TINY_VOLUMES}
    assert all("error" not in r and r["mismatch"] is None for r in result["rows"])
    assert result["summary"]["auto"]["volumes fwd n"] == 3 and result["summary"]["auto"]["pool fwd n"] == 0
    assert "volumes fwd" in capsys.readouterr().out


def test_compare_flags_wrong_results_and_failing_backends(compare, monkeypatch, capsys):
    pytest.importorskip("torch")
    real = common.runner

    def broken(impl, shape, grad, **kw):
        if impl == "numpy" and not grad:
            fn = real(impl, shape, grad, **kw)
            return lambda: fn() * 2.0  # a wrong kernel
        if impl == "auto":
            def fail():
                raise NotImplementedError("no kernel for this geometry")
            return fail
        return real(impl, shape, grad, **kw)
    monkeypatch.setattr(common, "runner", broken)
    compare.main(["--tiny", "--shapes", "tiny_3x3", "--backends", "auto,numpy", "--repeat", "1"])
    text = capsys.readouterr().out
    assert "WARNING: numpy fwd output differs from torch" in text
    assert "auto fwd not run: NotImplementedError: no kernel for this geometry" in text


def test_compare_isolated_runs_each_library_in_its_own_process(compare, tmp_path, capsys):
    pytest.importorskip("torch")
    out = tmp_path / "r.json"
    assert compare.main(["--tiny", "--isolate", "--shapes", "tiny_3x3", "--backends", "numpy", "--repeat", "2",
                         "--threads", "1", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "each implementation in its own process" in text
    result = json.loads(out.read_text())
    assert result["info"]["isolate"] is True
    rows = {(r["impl"], r["mode"]): r for r in result["rows"]}
    assert set(rows) == {(i, m) for i in ("torch", "numpy") for m in ("fwd", "fwd+bwd")}
    for r in rows.values():
        assert "error" not in r and r["ms"] > 0 and len(r["samples_ms"]) == 2 and r["mismatch"] is None
    assert rows[("numpy", "fwd")]["ratio"] > 0


def test_compare_isolated_checks_outputs_across_processes(compare, tmp_path):
    """A wrong result computed in a worker process is caught against PyTorch's from another."""
    pytest.importorskip("torch")
    shape = common.SHAPES["tiny_3x3"]
    rows = [{"shape": shape.name, "kind": "conv", "dims": 2, "impl": i, "mode": "fwd", "ms": 1.0}
            for i in ("torch", "numpy")]
    out = common.runner("torch", shape, False)().numpy()
    wrong = compare.mismatches({"torch": out, "numpy": 2 * out})
    done = compare.finish_rows(shape, rows, 100.0, wrong)
    assert done[1]["mismatch"] > 0.1 and done[1]["ratio"] == 1.0 and done[0]["mismatch"] is None


def test_bench_tools_run_from_the_installed_package(tmp_path):
    """``fastconv bench`` and ``fastconv compare`` import their tools from the package, not from files of a
    checkout: they run from any folder."""
    import subprocess
    from fastconv import cli
    for command, (module, _) in cli.SCRIPTS.items():
        assert importlib.import_module(f"fastconv.bench.{module}").main
    out = subprocess.run([sys.executable, "-m", "fastconv.cli", "bench", "--list"], cwd=tmp_path,
                         capture_output=True, text=True, check=True)
    assert "vgg_3x3" in out.stdout and "alexnet_c1" in out.stdout
    out = subprocess.run([sys.executable, "-m", "fastconv.cli", "compare", "--help"], cwd=tmp_path,
                         capture_output=True, text=True, check=True)
    assert "--steps" in out.stdout


def test_compare_rejects_bad_arguments(compare):
    with pytest.raises(SystemExit):
        compare.main(["--shapes", "no_such_shape"])
    with pytest.raises(SystemExit):
        compare.main(["--tiny", "--backends", "no_such_backend"])
    for bad in (["--repeat", "0"], ["--threads", "0"], ["--min-time", "-1"], ["--settle", "-1"]):
        with pytest.raises(SystemExit):
            compare.main(["--tiny"] + bad)


# -------------------------------------------------------------------- compare_training.py
def test_torch_twin_has_the_same_weights_and_outputs():
    torch = pytest.importorskip("torch")
    import fastconv as fc
    models = pytest.importorskip("fastconv.models")
    for name, shape in (("lenet5", (2, 1, 32, 32)), ("paper", (3, 1, 40))):
        model = models.create(name, backend="numpy")  # the structure is under test, not the kernels
        twin = common.torch_twin(model)
        x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
        with torch.no_grad():
            expected = twin(torch.from_numpy(x)).numpy()
        with fc.no_grad():
            np.testing.assert_allclose(model(fc.tensor(x)).numpy(), expected, rtol=1e-4, atol=1e-5)


def test_idiomatic_torch_lenet5_is_the_same_function():
    """PyTorch's row trains LeNet-5 as PyTorch users write it: C5 as flatten + Linear(400, 120)."""
    torch = pytest.importorskip("torch")
    import fastconv as fc
    from fastconv import models
    model = models.create("lenet5", backend="numpy")
    idiomatic = common.torch_idiomatic(model)
    assert [type(m).__name__ for m in idiomatic.features][-3:] == ["Flatten", "Linear", "ReLU"]
    assert idiomatic.features[7].in_features == 400 and idiomatic.features[7].out_features == 120
    x = np.random.default_rng(1).standard_normal((2, 1, 32, 32), dtype=np.float32)
    with torch.no_grad():
        expected = idiomatic(torch.from_numpy(x)).numpy()
    with fc.no_grad():
        np.testing.assert_allclose(model(fc.tensor(x)).numpy(), expected, rtol=1e-4, atol=1e-5)
    assert type(common.torch_idiomatic(models.create("paper", backend="numpy")).features[0]).__name__ == "Conv1d"


@pytest.mark.usefixtures("mnist1d_package")
def test_compare_training_mnist1d(compare_training, tmp_path, capsys):
    """Each run in its own process (``--same-process`` runs the same ``train_run`` here)."""
    pytest.importorskip("torch")
    pytest.importorskip("fastconv.models")
    assert compare_training.main(["--tasks", "mnist1d", "--steps", "3", "--warmup", "1", "--threads", "1",
                                  "--runs", "fastconv cpu numpy,pytorch cpu", "--eval-limit", "100",
                                  "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "each in its own process" in text
    assert "| mnist1d | fastconv cpu numpy |" in text and "| mnist1d | pytorch cpu |" in text
    assert (tmp_path / "training.md").exists()
    rows = json.loads((tmp_path / "training.json").read_text())["rows"]
    ours, ref = rows  # without "fastconv cpu auto", the first fastconv run is the baseline
    assert ours["speedup"] == 1.0 and ref["speedup"] > 0 and ours["test_samples"] == 100
    # same weights, same batches: the two libraries follow the same trajectory
    assert math.isclose(ours["first_loss"], ref["first_loss"], rel_tol=1e-4)
    assert math.isclose(ours["final_loss"], ref["final_loss"], rel_tol=1e-2)


def test_compare_training_rejects_unknown_task(compare_training):
    with pytest.raises(SystemExit):
        compare_training.main(["--tasks", "cifar"])


# ------------------------------------------------------------------------------------ asv
def test_asv_config_and_suites_are_wired():
    asv_util = pytest.importorskip("asv.util")
    conf = asv_util.load_json(os.path.join(BENCH, "asv.conf.json"), js_comments=True)
    assert conf["repo"] == ".." and conf["benchmark_dir"] == "benchmarks"
    with open(os.path.join(REPO, ".gitignore")) as f:
        ignored = f.read()
    for key in ("results_dir", "html_dir"):
        assert f"bench/{conf[key]}/" in ignored
    from benchmarks import bench_conv, bench_gpu, bench_pool, bench_train
    suites = [getattr(m, n) for m in (bench_conv, bench_pool, bench_train, bench_gpu) for n in dir(m)
              if n[0].isupper() and isinstance(getattr(m, n), type) and not n.startswith("_")]
    suites = [s for s in suites if hasattr(s, "params")]
    import re
    assert all(re.search("Conv|Pool|Train", s.__name__) for s in suites)
    for suite in suites:
        assert len(suite.params) == len(suite.param_names)
        assert any(n.startswith(("time_", "peakmem_", "track_")) for n in dir(suite))


def test_asv_suite_runs_and_skips():
    pytest.importorskip("torch")
    from benchmarks import bench_conv, bench_gpu
    suite = bench_conv.Conv1dForwardBackward()
    suite.setup("auto", "mnist1d_c1")
    suite.time_forward_backward("auto", "mnist1d_c1")
    with pytest.raises(NotImplementedError):  # unknown or unusable backends are skipped, not failed
        common.skip_unless_runnable("no_such_backend")
    if "fft" in common.cpu_backends():
        with pytest.raises(NotImplementedError):  # a forced backend without pooling kernels is skipped
            common.skip_unless_runnable("fft", common.SHAPES["maxpool_lenet"])
    import fastconv
    if not fastconv.cuda.is_available() or fastconv.cuda.is_simulator():
        with pytest.raises(NotImplementedError):
            bench_gpu.GpuConv2dForward().setup("cuda", "lenet_c1")


@pytest.mark.parametrize("backend", ["cython", "numba"])
def test_algorithm_suite_times_what_the_backend_computes(backend):
    """Conv2dAlgorithms calls each kernel with the algorithm forced: the result is the reference's, and
    an algorithm the backend lacks is a skip."""
    if backend not in common.cpu_backends():
        unavailable(backend, f"{backend} backend unavailable")
    from benchmarks import bench_conv
    from fastconv.backends import reference, registry
    shape = common.SHAPES["tiny_s2_dil"]
    spec = shape.spec()
    x, w, _, gy = common.inputs(shape)
    x, w, gy = x.reshape(spec.x_shape), w.reshape(spec.w_shape), gy.reshape(spec.y_shape)
    want = {"conv2d": reference.conv2d(x, w, None, spec),
            "conv2d_grad_input": reference.conv2d_grad_input(gy, w, spec),
            "conv2d_grad_weight": reference.conv2d_grad_weight(gy, x, spec)}
    suite = bench_conv.Conv2dAlgorithms()
    for algorithm in bench_conv.Conv2dAlgorithms.params[1]:
        for kernel in common.CONV_KERNELS:
            try:
                suite.setup(backend, algorithm, kernel, shape.name)
            except NotImplementedError:
                assert not registry.supports(backend, kernel, spec, np.float32, algorithm)
                continue
            np.testing.assert_allclose(suite.run(), want[kernel], rtol=1e-4, atol=1e-4)


def test_blocked_gflops_suite_tracks_each_pass():
    if "cython" not in common.cpu_backends():
        unavailable("cython", "cython backend unavailable")
    from benchmarks import bench_conv
    suite = bench_conv.Conv2dBlockedGflops()
    assert {"b1_64x56", "b1_512x14", "c512_14"} <= set(suite.params[1])
    for kernel in common.CONV_KERNELS:
        suite.setup(kernel, "tiny_3x3")
        assert suite.track_gflops(kernel, "tiny_3x3") > 0


def test_asv_suites_import_without_starting_thread_pools():
    """asv's forkserver imports the suites once and forks per benchmark: an OpenMP pool started at import
    (Numba terminates processes forked from one) would fail every benchmark. Also: the smoke switch puts
    the tiny shapes in every grid."""
    import subprocess
    code = ("import numba.np.ufunc.parallel as p\n"
            "from benchmarks import bench_conv, bench_gpu, bench_pool, bench_train\n"
            "print(p._is_initialized, bench_conv.Conv2dForward.params[1], bench_pool.PoolForward.params[1])")
    env = dict(os.environ, FASTCONV_BENCH_SMOKE="1")
    out = subprocess.run([sys.executable, "-c", code], cwd=BENCH, capture_output=True, text=True, check=True,
                         env=env)
    assert out.stdout.strip() == "False ['tiny_3x3', 'tiny_s2_dil'] ['tiny_maxpool', 'tiny_avgpool']"


def test_set_threads_reaches_every_library():
    import fastconv
    before = fastconv.get_num_threads()
    try:
        done = common.set_threads(1)
        assert done["fastconv"] == 1
        assert done["blas"] in (1, None)  # None only where no OpenBLAS/MKL could be found
        if common.has_torch():
            assert done["torch"] == 1
    finally:
        common.set_threads(before)


def test_set_blas_threads_reaches_numpys_blas():
    from fastconv.runtime import set_blas_threads
    assert set_blas_threads(1) == 1  # None would mean no BLAS of this process could be told
    assert set_blas_threads(2) == 2
