"""Reference models: sizes, parameter counts, and forward/backward against equivalent PyTorch models."""
import numpy as np
import pytest

import fastconv as fc
import fastconv.functional as F
from fastconv import models
from helpers import torch

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch (the oracle) is not installed")


@pytest.mark.parametrize("name,shape,count", [("lenet5", (3, 1, 32, 32), 61706),
                                              ("lenet5-classic", (3, 1, 32, 32), 61706),
                                              ("paper", (3, 40), 5210), ("book", (3, 1, 40), 2050),
                                              ("wide", (3, 40), 88010)])
def test_output_shape_and_parameter_count(name, shape, count):
    model = models.create(name)
    assert model.num_parameters() == count
    assert model(np.zeros(shape, np.float32)).shape == (3, 10)


def test_mnist1d_layer_sizes():
    paper = models.MNIST1DConvNet("paper")
    assert [tuple(m.weight.shape) for m in paper.features if hasattr(m, "weight")] == \
        [(25, 1, 5), (25, 25, 3), (25, 25, 3)]
    assert paper.classifier.weight.shape == (10, 125)
    assert models.MNIST1DConvNet("book").classifier.weight.shape == (10, 60)


def test_bad_names_and_inputs():
    with pytest.raises(ValueError, match="unknown model"):
        models.create("resnet50")
    with pytest.raises(ValueError, match="variant"):
        models.LeNet5("new")
    with pytest.raises(ValueError, match="variant"):
        models.MNIST1DConvNet("tiny")
    with pytest.raises(ValueError, match="32, 32"):
        models.LeNet5()(np.zeros((1, 1, 28, 28), np.float32))


def _torch_lenet(variant):
    nn = torch.nn
    act = nn.ReLU if variant == "modern" else nn.Tanh
    pool = nn.MaxPool2d if variant == "modern" else nn.AvgPool2d
    model = nn.Module()
    model.features = nn.Sequential(nn.Conv2d(1, 6, 5), act(), pool(2), nn.Conv2d(6, 16, 5), act(), pool(2),
                                   nn.Conv2d(16, 120, 5), act(), nn.Flatten())
    model.classifier = nn.Sequential(nn.Linear(120, 84), act(), nn.Linear(84, 10))
    model.forward = lambda x: model.classifier(model.features(x))
    return model


class _TorchPaperNet(torch.nn.Module if torch else object):
    """The MNIST-1D paper's ConvBase, as published (github.com/greydanus/mnist1d), renamed to our keys."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.features = nn.Sequential(nn.Conv1d(1, 25, 5, stride=2, padding=1), nn.ReLU(),
                                      nn.Conv1d(25, 25, 3, stride=2, padding=1), nn.ReLU(),
                                      nn.Conv1d(25, 25, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten())
        self.classifier = nn.Linear(125, 10)

    def forward(self, x):
        return self.classifier(self.features(x.view(-1, 1, x.shape[-1])))


def _torch_wide():
    nn = torch.nn
    model = nn.Module()
    model.features = nn.Sequential(nn.Conv1d(1, 64, 5, padding=2), nn.ReLU(), nn.Conv1d(64, 64, 3, padding=1),
                                   nn.ReLU(), nn.MaxPool1d(2), nn.Conv1d(64, 128, 3, padding=1), nn.ReLU(),
                                   nn.Conv1d(128, 128, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool1d(1),
                                   nn.Flatten())
    model.classifier = nn.Linear(128, 10)
    model.forward = lambda x: model.classifier(model.features(x.view(-1, 1, x.shape[-1])))
    return model


@needs_torch
@pytest.mark.parametrize("make,ref,shape", [(lambda: models.LeNet5("modern"), lambda: _torch_lenet("modern"),
                                             (4, 1, 32, 32)),
                                            (lambda: models.LeNet5("classic"), lambda: _torch_lenet("classic"),
                                             (4, 1, 32, 32)),
                                            (lambda: models.MNIST1DConvNet("paper"), _TorchPaperNet, (6, 40)),
                                            (models.MNIST1DWideNet, _torch_wide, (5, 40))],
                         ids=["lenet5-modern", "lenet5-classic", "mnist1d-paper", "mnist1d-wide"])
def test_matches_torch(make, ref, shape):
    fc.manual_seed(0)
    model, theirs = make(), ref()
    state = model.state_dict()
    assert list(state) == list(theirs.state_dict())
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    y = rng.integers(0, 10, shape[0])
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    ref_loss = torch.nn.functional.cross_entropy(theirs.forward(torch.from_numpy(x)), torch.from_numpy(y))
    ref_loss.backward()
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-5)
    grads = dict(theirs.named_parameters())
    for name, p in model.named_parameters():
        g_ref = grads[name].grad.numpy()
        assert np.abs(p.grad - g_ref).max() <= 2e-5 * max(1e-3, float(np.abs(g_ref).max())), name
