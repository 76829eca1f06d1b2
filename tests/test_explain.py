"""``fc.explain`` and ``fastconv plan``: every op and model says which kernel runs each pass, and why."""
import subprocess
import sys

import numpy as np
import pytest

import fastconv as fc
import fastconv.functional as F
from fastconv import models, shapes
from fastconv.backends import plan

RNG = np.random.default_rng(0)
X2, X1 = RNG.standard_normal((2, 4, 9, 9)).astype(np.float32), RNG.standard_normal((2, 4, 30)).astype(np.float32)
OPS = {  # label: (call, kernels planned with every input requiring grad)
    "conv2d": (lambda: fc.explain(F.conv2d, X2, np.ones((6, 4, 3, 3), np.float32), padding=1),
               ["conv2d", "conv2d_grad_input", "conv2d_grad_weight"]),
    "conv1d": (lambda: fc.explain(F.conv1d, X1, np.ones((6, 2, 3), np.float32), groups=2),
               ["conv2d", "conv2d_grad_input", "conv2d_grad_weight"]),
    "conv_transpose2d": (lambda: fc.explain(F.conv_transpose2d, X2, np.ones((4, 3, 3, 3), np.float32), stride=2),
                         ["conv2d_grad_input", "conv2d", "conv2d_grad_weight"]),
    "conv_transpose1d": (lambda: fc.explain(F.conv_transpose1d, X1, np.ones((4, 3, 5), np.float32)),
                         ["conv2d_grad_input", "conv2d", "conv2d_grad_weight"]),
    "max_pool2d": (lambda: fc.explain(F.max_pool2d, X2, 2), ["max_pool2d", "max_pool2d_grad"]),
    "avg_pool1d": (lambda: fc.explain(F.avg_pool1d, X1, 3), ["avg_pool2d", "avg_pool2d_grad"]),
    "lp_pool2d": (lambda: fc.explain(F.lp_pool2d, X2, 2, 3), ["avg_pool2d", "avg_pool2d_grad"]),
}


@pytest.mark.parametrize("label", sorted(OPS))
def test_every_op_explains_its_passes(label):
    call, kernels = OPS[label]
    rows = call().rows
    assert [r["kernel"] for r in rows] == kernels
    assert all(r["layer"] == label.replace("lp_pool", "avg_pool") for r in rows)
    for r in rows:
        assert r["plan"] and r["reason"] and r["measured_ms"] is None


def test_rows_are_the_plans_the_op_runs():
    rows = fc.explain(F.conv2d, X2, np.ones((6, 4, 3, 3), np.float32), padding=1).rows
    spec = shapes.conv_spec(X2.shape, (6, 4, 3, 3), padding=1)
    for r in rows:
        p = plan.plan(r["kernel"], spec, np.float32)
        assert (r["plan"], r["reason"]) == (p.name, p.reason)
    assert rows[0]["shape"] == "2x4x9x9 -> 2x6x9x9"


def test_transposed_shapes_read_as_the_user_sees_them():
    rows = fc.explain(F.conv_transpose2d, X2, np.ones((4, 3, 3, 3), np.float32), stride=2).rows
    assert rows[0]["shape"] == "2x4x9x9 -> 2x3x19x19" and rows[0]["pass"] == "forward"


def test_a_model_explains_a_training_step():
    """LeNet-5 on a batch: every conv and pool layer, the first layer without an input gradient."""
    explained = fc.explain(models.LeNet5(), (8, 1, 32, 32))
    layers = [(r["layer"], r["pass"]) for r in explained.rows]
    assert layers[:2] == [("conv2d", "forward"), ("conv2d", "grad weight")]
    assert sum(1 for name, _ in layers if name == "conv2d") == 2 + 3 + 3
    assert sum(1 for name, _ in layers if name == "max_pool2d") == 4
    table = str(explained)
    assert table.splitlines()[0].split()[:3] == ["layer", "pass", "shape"]
    assert len(table.splitlines()) == len(explained.rows) + 1


def test_measure_times_each_kernel():
    rows = fc.explain(F.conv2d, X2, np.ones((6, 4, 3, 3), np.float32), padding=1, measure=True).rows
    assert all(r["measured_ms"] > 0 for r in rows)


def test_forced_backends_show_in_the_reason():
    rows = fc.explain(F.conv2d, X2, np.ones((6, 4, 3, 3), np.float32), backend="numpy").rows
    assert all(r["plan"] == "numpy" and r["reason"].startswith("forced backend='numpy'") for r in rows)


def test_bad_targets_are_clear_errors():
    with pytest.raises(TypeError, match="op .* or an nn.Module"):
        fc.explain(42)
    with pytest.raises(TypeError, match="one input"):
        fc.explain(models.LeNet5())


def test_cli_plan(tmp_path):
    run = [sys.executable, "-m", "fastconv.cli"]
    out = subprocess.run(run + ["plan", "paper", "--batch", "4"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].startswith("layer") and out.stdout.count("conv1d") == 8
    out = subprocess.run(run + ["plan", "conv2d", "--input", "2,4,9,9", "--weight", "6,4,3,3", "--padding", "1",
                                "--backend", "numpy", "--measure"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("forced backend='numpy'") == 3
    out = subprocess.run(run + ["plan", "conv2d", "--input", "2,4,9,9"], capture_output=True, text=True,
                         cwd=tmp_path)
    assert out.returncode == 2 and "needs --input and --weight" in out.stderr
