"""A tiny training run on the GPU follows the same path as on the CPU: conv + relu -> max-pool -> linear ->
cross-entropy -> backward -> optimizer step, twice, with SGD (momentum, weight decay), Adam and AdamW; and
the classic variant conv + tanh -> average pool -> linear + sigmoid -> linear. On the GPU the activations
run inside their layers' kernels and the optimizer updates every parameter in one launch."""
import numpy as np
import pytest

import fastconv as fc
from fastconv import nn, optim

from cuda_helpers import CUDA_TESTS, DTYPES, assert_close, host

pytestmark = CUDA_TESTS


MODELS = {
    "modern": lambda: nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                    nn.Flatten(), nn.Linear(3 * 3 * 3, 4)),
    "classic": lambda: nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.Tanh(), nn.AvgPool2d(2),
                                     nn.Flatten(), nn.Linear(3 * 3 * 3, 5), nn.Sigmoid(), nn.Linear(5, 4)),
}


def _model(dtype, variant):
    fc.manual_seed(0)
    model = MODELS[variant]()
    for p in model.parameters():
        p.data = p.data.astype(dtype)
    return model


def _train(device, dtype, make_opt, variant="modern", steps=2):
    model = _model(dtype, variant).to(device)
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
    "adamw": lambda params: optim.AdamW(params, lr=1e-2, weight_decay=1e-1),
}


@pytest.mark.parametrize("opt, variant, dtype", [("sgd", "modern", np.float32), ("sgd", "modern", np.float64),
                                                 ("adam", "modern", np.float32), ("adam", "modern", np.float64),
                                                 ("adamw", "classic", np.float32), ("sgd", "classic", np.float64)])
def test_training_steps_match_cpu(opt, variant, dtype):
    loss_cpu, params_cpu = _train("cpu", dtype, OPTIMIZERS[opt], variant)
    loss_gpu, params_gpu = _train("cuda", dtype, OPTIMIZERS[opt], variant)
    np.testing.assert_allclose(loss_gpu, loss_cpu, rtol=1e-4 if dtype == np.float32 else 1e-10)
    for (name, gpu), (_, cpu) in zip(params_gpu, params_cpu):
        assert_close(gpu, cpu, dtype, f"{opt} {name}")
    untrained = _train("cpu", dtype, OPTIMIZERS[opt], variant, 0)[1]
    assert all(np.any(p != q) for (_, p), (_, q) in zip(params_cpu, untrained))
