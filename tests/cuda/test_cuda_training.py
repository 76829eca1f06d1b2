"""A tiny training run on the GPU follows the same path as on the CPU: conv -> relu -> max-pool -> linear ->
cross-entropy -> backward -> optimizer step, twice, with SGD (momentum, weight decay) and Adam."""
import numpy as np
import pytest

import fastconv as fc
from fastconv import nn, optim

from cuda_helpers import CUDA_TESTS, DTYPES, assert_close, host

pytestmark = CUDA_TESTS


def _model(dtype):
    fc.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(3 * 3 * 3, 4))
    for p in model.parameters():
        p.data = p.data.astype(dtype)
    return model


def _train(device, dtype, make_opt, steps=2):
    model = _model(dtype).to(device)
    opt = make_opt(model.parameters())
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(steps):
        x = fc.tensor(rng.standard_normal((2, 1, 6, 6)).astype(dtype), device=device)
        y = fc.tensor(rng.integers(0, 4, 2), device=device)
        loss = nn.CrossEntropyLoss()(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, [(name, host(p)) for name, p in model.named_parameters()]


OPTIMIZERS = {
    "sgd": lambda params: optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-2),
    "adam": lambda params: optim.Adam(params, lr=1e-2, weight_decay=1e-3),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
def test_training_steps_match_cpu(opt, dtype):
    loss_cpu, params_cpu = _train("cpu", dtype, OPTIMIZERS[opt])
    loss_gpu, params_gpu = _train("cuda", dtype, OPTIMIZERS[opt])
    np.testing.assert_allclose(loss_gpu, loss_cpu, rtol=1e-4 if dtype == np.float32 else 1e-10)
    for (name, gpu), (_, cpu) in zip(params_gpu, params_cpu):
        assert_close(gpu, cpu, dtype, f"{opt} {name}")
    assert any(np.any(p != q) for (_, p), (_, q) in zip(params_cpu, _train("cpu", dtype, OPTIMIZERS[opt], 0)[1]))
