"""Reference models: LeNet-5 for MNIST, convolutional nets for MNIST-1D; ``create(name)`` by name."""
from .lenet import LeNet5
from .mnist1d import MNIST1DConvNet, MNIST1DWideNet

MODELS = {
    "lenet5": lambda **kw: LeNet5("modern", **kw),
    "lenet5-classic": lambda **kw: LeNet5("classic", **kw),
    "paper": lambda **kw: MNIST1DConvNet("paper", **kw),
    "book": lambda **kw: MNIST1DConvNet("book", **kw),
    "wide": lambda **kw: MNIST1DWideNet(**kw),
}

#: The shape of one input sample of each model.
SAMPLE_SHAPES = {"lenet5": (1, 32, 32), "lenet5-classic": (1, 32, 32), "paper": (1, 40), "book": (1, 40),
                 "wide": (1, 40)}


def create(name, **kwargs):
    """A model by its short name: one of ``MODELS`` (``lenet5``, ``lenet5-classic``, ``paper``, ``book``,
    ``wide``)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(MODELS)}")
    return MODELS[name](**kwargs)


__all__ = ["LeNet5", "MNIST1DConvNet", "MNIST1DWideNet", "create", "MODELS", "SAMPLE_SHAPES"]
