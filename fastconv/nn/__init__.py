"""Layers and modules in the style of ``torch.nn``: ``Module``, ``Parameter``, convolutions, pooling,
``Linear``, activations, containers and losses. ``fastconv.nn.functional`` is ``fastconv.functional``."""
from .. import functional
from . import init
from .layers import (AdaptiveAvgPool1d, AdaptiveAvgPool2d, AdaptiveAvgPool3d, AvgPool1d, AvgPool2d, AvgPool3d,
                     Conv1d, Conv2d, Conv3d, ConvTranspose1d, ConvTranspose2d, ConvTranspose3d, CrossEntropyLoss,
                     Dropout, Flatten, Identity, Linear, LocallyConnected1d, LocallyConnected2d, MaxPool1d, MaxPool2d,
                     MaxPool3d, ModuleList, MSELoss, ReLU, Sequential, Sigmoid, Tanh, TiledConv1d, TiledConv2d,
                     Upsample)
from .module import Module, Parameter

__all__ = ["Module", "Parameter", "init", "functional", "Conv1d", "Conv2d", "ConvTranspose1d",
           "ConvTranspose2d", "Linear", "MaxPool1d", "MaxPool2d", "AvgPool1d", "AvgPool2d",
           "AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "ReLU", "Tanh", "Sigmoid", "Flatten", "Dropout",
           "Identity", "Sequential", "ModuleList", "CrossEntropyLoss", "MSELoss", "Conv3d", "ConvTranspose3d",
           "MaxPool3d", "AvgPool3d", "AdaptiveAvgPool3d", "Upsample", "LocallyConnected1d", "LocallyConnected2d",
           "TiledConv1d", "TiledConv2d"]
