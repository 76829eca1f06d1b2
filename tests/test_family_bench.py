"""Smoke tests of the convolution family's benchmarks: the layer table, the runners (fastconv and both
PyTorch workarounds compute the same layer), bench/family.py on tiny settings, and the asv suite's wiring.
They check that the tools run and report what they measured, never how fast anything is."""
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO, "bench")
sys.path.insert(0, BENCH)

from benchmarks import family  # noqa: E402


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("_bench_family_script", os.path.join(BENCH, "family.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_layer_table_matches_the_specs():
    from fastconv import shapes
    for layer in family.LAYERS.values():
        spec = shapes.tiled_spec(layer.x, layer.w_shape, layer.b_shape, padding=layer.padding,
                                 local=layer.tiles is None)
        assert spec.y_shape[2:] == layer.out and layer.flops(True) == 3 * layer.flops(False) == 3 * spec.flops
    assert family.LAYERS["face_3x3_local"].w_shape == (62, 62, 32, 16, 3, 3)
    assert set(family.TINY) | set(family.REAL) == set(family.LAYERS)


@pytest.mark.parametrize("name", family.TINY)
def test_runners_compute_the_same_layer(name):
    pytest.importorskip("torch")
    layer = family.LAYERS[name]
    outputs = [family.runner(impl, layer, False)() for impl in family.IMPLS]
    for out in outputs[1:]:
        np.testing.assert_allclose(out.numpy(), outputs[0].numpy(), rtol=1e-5, atol=1e-5)
    for impl in family.IMPLS:  # forward + backward runs again and again (gradients reset each call)
        run = family.runner(impl, layer, True)
        run()
        run()
    with pytest.raises(ValueError, match="impl must be one of"):
        family.torch_workaround("torch_conv", layer, None, None, None)


def test_script_prints_ratios_ranges_and_the_machine(script, tmp_path, capsys):
    pytest.importorskip("torch")
    path = tmp_path / "family.json"
    rows = script.main(["--tiny", "--json", str(path)])
    out = capsys.readouterr().out
    assert "GFLOP/s (numpy" in out and "tiny_local" in out and "tiny_tiled" in out and "conv_matrix" in out
    assert {(r["impl"], r["mode"]) for r in rows} == {(i, m) for i in family.IMPLS for m in ("fwd", "fwd+bwd")}
    assert all(r["ratio"] > 0 for r in rows if r["impl"] == "fastconv")
    assert path.exists()
    with pytest.raises(SystemExit):
        script.main(["--layers", "no_such_layer"])


def test_script_measures_peak_memory_in_process(script, capsys):
    script._measure_peak("fastconv", "tiny_local", 1)
    assert float(capsys.readouterr().out.split()[-1]) >= 0


def test_asv_suite_is_wired_and_imports_without_starting_thread_pools():
    code = ("import numba.np.ufunc.parallel as p\n"
            "from benchmarks import bench_family as b\n"
            "suites = [getattr(b, n) for n in dir(b) if n[0].isupper() and hasattr(getattr(b, n), 'params')]\n"
            "assert all(len(s.params) == len(s.param_names) for s in suites)\n"
            "print(p._is_initialized, b.FamilyForward.params[1], b.ConvMatrix.params[0], len(suites))")
    env = dict(os.environ, FASTCONV_BENCH_SMOKE="1")
    out = subprocess.run([sys.executable, "-c", code], cwd=BENCH, capture_output=True, text=True, check=True,
                         env=env)
    assert out.stdout.strip() == "False ['tiny_local', 'tiny_tiled'] [(2, 8)] 4"


def test_asv_suites_run():
    pytest.importorskip("torch")
    from benchmarks import bench_family
    suite = bench_family.FamilyForwardBackward()
    for impl in family.IMPLS:
        suite.setup(impl, "tiny_tiled")
        suite.time_forward_backward(impl, "tiny_tiled")
    matrix = bench_family.ConvMatrix()
    matrix.setup((2, 8))
    assert matrix.track_nonzeros_per_second((2, 8)) > 0
