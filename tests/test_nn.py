"""Modules: traversal, state, initialisation, modes, and a small CNN checked against PyTorch."""
import math

import numpy as np
import pytest

import fastconv as fc
import fastconv.functional as F
from fastconv import nn, optim
from helpers import torch

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch (the oracle) is not installed")


class Net2d(nn.Module):
    """Every 2-D layer type once: conv, transposed conv, both poolings, adaptive pooling, linear."""

    def __init__(self, mod=nn):
        self.features = mod.Sequential(
            mod.Conv2d(2, 6, 3, padding=1), mod.ReLU(), mod.MaxPool2d(2),
            mod.Conv2d(6, 8, 3, stride=2, padding=1, groups=2), mod.Tanh(),
            mod.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1), mod.ReLU(),
            mod.AvgPool2d(2), mod.AdaptiveAvgPool2d(2), mod.Flatten())
        self.head = mod.Linear(16, 5)

    def forward(self, x):
        return self.head(self.features(x))


class Net1d(nn.Module):
    def __init__(self, mod=nn):
        self.body = mod.Sequential(mod.Conv1d(1, 5, 5, stride=2, padding=1), mod.ReLU(),
                                   mod.MaxPool1d(3, stride=1), mod.Conv1d(5, 6, 3, dilation=2), mod.Tanh(),
                                   mod.AvgPool1d(2), mod.AdaptiveAvgPool1d(3), mod.Flatten(), mod.Linear(18, 4))

    def forward(self, x):
        return self.body(x)


def _torch_copy(model, torch_model):
    """Copy our parameters into an equivalent torch model (the names must match one to one)."""
    ours = model.state_dict()
    theirs = torch_model.state_dict()
    assert list(ours) == list(theirs)
    torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in ours.items()})


def _torch_net(cls):
    class TorchNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            holder = cls(torch.nn)  # the same constructor, with torch's layers
            for name, child in vars(holder).items():
                if isinstance(child, torch.nn.Module):
                    self.add_module(name, child)
            self._holder = holder

        def forward(self, x):
            return type(self._holder).forward(self, x)
    return TorchNet()


@needs_torch
@pytest.mark.parametrize("cls,shape", [(Net2d, (6, 2, 12, 12)), (Net1d, (7, 1, 40))])
def test_loss_and_every_gradient_match_torch(cls, shape):
    fc.manual_seed(0)
    model = cls()
    ref = _torch_net(cls)
    _torch_copy(model, ref)
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(np.float32)
    classes = model(x).shape[1]
    y = rng.integers(0, classes, shape[0])
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    ref_loss = torch.nn.functional.cross_entropy(ref(torch.from_numpy(x)), torch.from_numpy(y))
    ref_loss.backward()
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-5)
    grads = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        g, g_ref = p.grad, grads[name].grad.numpy()
        scale = max(1e-3, float(np.abs(g_ref).max()))
        assert np.abs(g - g_ref).max() <= 2e-5 * scale, name


@needs_torch
@pytest.mark.parametrize("name,kwargs", [("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)),
                                         ("Adam", dict(lr=3e-3)), ("AdamW", dict(lr=3e-3, weight_decay=0.05))])
def test_training_steps_match_torch(name, kwargs):
    fc.manual_seed(3)
    model, ref = Net1d(), _torch_net(Net1d)
    _torch_copy(model, ref)
    opt, ref_opt = getattr(optim, name)(model.parameters(), **kwargs), \
        getattr(torch.optim, name)(ref.parameters(), **kwargs)
    rng = np.random.default_rng(4)
    for _ in range(4):
        x = rng.standard_normal((8, 1, 40)).astype(np.float32)
        y = rng.integers(0, 4, 8)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        ref_opt.zero_grad()
        torch.nn.functional.cross_entropy(ref(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        ref_opt.step()
    theirs = ref.state_dict()
    for key, value in model.state_dict().items():
        np.testing.assert_allclose(value, theirs[key].numpy(), rtol=1e-4, atol=1e-5, err_msg=key)


def test_parameters_in_assignment_order_and_shared_once():
    model = Net2d()
    names = [n for n, _ in model.named_parameters()]
    assert names == ["features.0.weight", "features.0.bias", "features.3.weight", "features.3.bias",
                     "features.5.weight", "features.5.bias", "head.weight", "head.bias"]
    shared = nn.Linear(3, 3)
    twice = nn.Sequential(shared, nn.ReLU(), shared)
    assert len(list(twice.parameters())) == 2
    assert model.num_parameters() == sum(p.size for p in model.parameters())


@pytest.mark.parametrize("layer,fan_in", [(lambda: nn.Conv2d(3, 8, (3, 5)), 45),
                                          (lambda: nn.Conv1d(4, 6, 3, groups=2), 6),
                                          (lambda: nn.ConvTranspose2d(4, 6, 3, groups=2), 27),
                                          (lambda: nn.Linear(200, 30), 200)])
def test_default_init_is_uniform_within_one_over_sqrt_fan_in(layer, fan_in):
    fc.manual_seed(0)
    m = layer()
    bound = 1 / math.sqrt(fan_in)
    for p in (m.weight, m.bias):
        values = p.numpy()
        assert values.dtype == np.float32
        assert np.abs(values).max() <= bound
    w = m.weight.numpy()
    assert np.abs(w).max() > 0.8 * bound and abs(w.mean()) < 0.2 * bound


def test_manual_seed_makes_initialisation_reproducible():
    fc.manual_seed(5)
    a = Net2d().state_dict()
    fc.manual_seed(5)
    b = Net2d().state_dict()
    fc.manual_seed(6)
    c = Net2d().state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["head.weight"], c["head.weight"])


def test_state_dict_round_trip_and_checks():
    source, target = Net1d(), Net1d()
    params = list(target.parameters())
    state = source.state_dict()
    target.load_state_dict(state)
    assert all(np.array_equal(target.state_dict()[k], v) for k, v in state.items())
    assert list(target.parameters())[0] is params[0]  # loaded in place
    state["body.0.weight"][...] = 7  # the state dict is a copy
    assert not np.any(source.body[0].weight.numpy() == 7)
    bad = dict(state, **{"body.8.weight": np.zeros((4, 17), np.float32)})
    with pytest.raises(ValueError, match=r"body\.8\.weight"):
        target.load_state_dict(bad)
    with pytest.raises(KeyError, match="missing"):
        target.load_state_dict({k: v for k, v in state.items() if k != "body.0.bias"})
    with pytest.raises(KeyError, match="unexpected"):
        target.load_state_dict(dict(state, extra=np.zeros(1)))
    missing, _ = target.load_state_dict({"body.0.bias": np.zeros(5)}, strict=False)
    assert "body.0.weight" in missing and np.all(target.body[0].bias.numpy() == 0)


def test_train_eval_switch_dropout():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
    x = np.ones((64, 4), np.float32)
    assert model.train() is model and all(m.training for m in model.modules())
    assert np.any(model(x).numpy() == 0)
    model.eval()
    assert not any(m.training for m in model.modules())
    assert np.array_equal(model(x).numpy(), model(x).numpy())


def test_zero_grad_and_to_cpu_keep_identity():
    model = Net1d()
    F.cross_entropy(model(np.ones((2, 1, 40), np.float32)), np.array([0, 1])).backward()
    assert all(p.grad is not None for p in model.parameters())
    params = list(model.parameters())
    assert model.to("cpu") is model and list(model.parameters()) == params
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.skipif(fc.cuda.is_available(), reason="checks the error raised without a GPU")
def test_to_cuda_without_gpu_is_a_clear_error():
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        Net1d().to("cuda")


def test_set_backend_reaches_every_kernel_layer():
    model = Net2d().set_backend("numpy")
    assert {m.backend for m in model.modules() if "backend" in vars(m)} == {"numpy"}
    assert model(np.ones((1, 2, 12, 12), np.float32)).shape == (1, 5)


def test_sequential_containers():
    seq = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    assert len(seq) == 3 and isinstance(seq[1], nn.ReLU) and len(seq[1:]) == 2
    assert "Linear(in_features=2" in repr(seq)
    blocks = nn.ModuleList([nn.Linear(2, 2) for _ in range(3)])
    holder = nn.Sequential(blocks)
    assert len(blocks) == 3 and len(list(holder.parameters())) == 6
    with pytest.raises(TypeError, match="Modules"):
        nn.Sequential(nn.ReLU(), lambda x: x)


@pytest.mark.parametrize("make,err,match", [
    (lambda: nn.Conv2d(3, 8, 3, groups=2), ValueError, "divisible by groups"),
    (lambda: nn.Conv2d(0, 8, 3), ValueError, "in_channels"),
    (lambda: nn.Conv1d(1, 2, (3, 3)), TypeError, "kernel_size"),
    (lambda: nn.Linear(0, 3), ValueError, "in_features"),
    (lambda: nn.Conv2d(1, 2, 3, dtype=np.int32), TypeError, "dtype"),
    (lambda: nn.Dropout(1.5), ValueError, "p"),
    (lambda: nn.Parameter(np.arange(3)), TypeError, "floats"),
])
def test_bad_layer_arguments(make, err, match):
    with pytest.raises(err, match=match):
        make()


def test_float64_layers():
    model = nn.Sequential(nn.Conv1d(1, 2, 3, dtype=np.float64), nn.Flatten(), nn.Linear(76, 2, dtype=np.float64))
    out = model(np.ones((3, 1, 40)))
    assert out.dtype == np.float64
