"""Kernel launches per training step, counted without running the kernels (``fastconv.cuda.profile(
count_only=True)``, a GPU's launch shapes): small nets are bound by launches on a GPU, so a LeNet-5 Adam
step (batch 128) must take at most 25 and an MNIST-1D paper-net step (batch 100) at most 20 - one launch
per layer forward, two backward, one for the loss each way and one for the optimizer."""
import os
import sys

import numpy as np
import pytest

import fastconv as fc
import fastconv.functional as F
from fastconv import models, optim

from cuda_helpers import CUDA_TESTS

pytestmark = CUDA_TESTS

STEPS = {  # model: (input shape, most launches per step)
    "lenet5": ((128, 1, 32, 32), 25),
    "paper": ((100, 40), 20),
}


@pytest.mark.parametrize("name", sorted(STEPS))
def test_training_step_launches(name):
    shape, most = STEPS[name]
    fc.manual_seed(0)
    model = models.create(name).to("cuda")
    opt = optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    x = fc.tensor(rng.standard_normal(shape).astype(np.float32), device="cuda")
    y = fc.tensor(rng.integers(0, 10, shape[0]), device="cuda")

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with fc.cuda.profile(count_only=True):
        step()  # the first step also makes the optimizer's state
    with fc.cuda.profile(count_only=True) as prof:
        step()
    assert len(prof) <= most, prof.table()
    counts = prof.counts()
    assert counts["optimizer"] == 1 and counts["loss"] == 2, counts
    assert not {"elementwise", "reduction", "gather"} & set(counts), prof.table()  # all fused away


def test_gpu_check_reports_launches_per_step():
    """bench/gpu_check.py's launch table (counted here; timed where there is a GPU)."""
    import fastconv.cuda
    if not fastconv.cuda.is_simulator():
        pytest.skip("times steps on a real GPU: run bench/gpu_check.py")
    bench = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "bench")
    sys.path.insert(0, bench)
    try:
        import gpu_check
        rows = gpu_check.training_launches(["mnist1d"], True, False, 1, 0.0)
    finally:
        sys.path.remove(bench)
    table = gpu_check.launches_markdown({"fastconv launch()": 1.0}, rows, "simulator")
    (row,) = rows
    assert row["launches"] == sum(row["categories"].values()) <= STEPS["paper"][1]
    assert "- fastconv launch(): 1.0 us" in table and f"| mnist1d | 100 | {row['launches']} | gemm " in table
