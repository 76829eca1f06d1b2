"""Weight initialisation, drawn from fastconv's seeded generator (``fc.manual_seed`` covers it).

The layers use PyTorch's default: ``kaiming_uniform_(w, a=sqrt(5))``, i.e. ``U(-1/sqrt(fan_in),
1/sqrt(fan_in))`` for the weight, and the same bound for the bias. Each function fills a Parameter in
place (on the CPU, where layers are built) and returns it.
"""
import math

import numpy as np

from ..random import generator


def fan_in_and_fan_out(shape):
    """PyTorch's fans of a weight shape: ``(shape[1], shape[0])`` times the kernel's size."""
    if len(shape) < 2:
        raise ValueError(f"fans need a weight of at least 2 dims, got shape {tuple(shape)}")
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def calculate_gain(nonlinearity, param=None):
    """Gain of PyTorch's recommended scale for ``nonlinearity`` ("linear", "relu", "tanh", "leaky_relu")."""
    if nonlinearity in ("linear", "conv1d", "conv2d", "sigmoid"):
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else param
        return math.sqrt(2.0 / (1 + slope ** 2))
    raise ValueError(f"unsupported nonlinearity {nonlinearity!r}")


def _fill(param, values):
    param.data[...] = values.astype(param.dtype)
    return param


def uniform_(param, low=0.0, high=1.0):
    return _fill(param, generator().uniform(low, high, param.shape))


def normal_(param, mean=0.0, std=1.0):
    return _fill(param, generator().normal(mean, std, param.shape))


def zeros_(param):
    param.data[...] = 0
    return param


def constant_(param, value):
    param.data[...] = value
    return param


def kaiming_uniform_(param, a=0.0, nonlinearity="leaky_relu"):
    """``U(-b, b)`` with ``b = gain * sqrt(3 / fan_in)`` (He et al.)."""
    fan_in, _ = fan_in_and_fan_out(param.shape)
    bound = calculate_gain(nonlinearity, a) * math.sqrt(3.0 / fan_in)
    return uniform_(param, -bound, bound)


def kaiming_normal_(param, a=0.0, nonlinearity="leaky_relu"):
    fan_in, _ = fan_in_and_fan_out(param.shape)
    return normal_(param, 0.0, calculate_gain(nonlinearity, a) / math.sqrt(fan_in))


def xavier_uniform_(param, gain=1.0):
    fan_in, fan_out = fan_in_and_fan_out(param.shape)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform_(param, -bound, bound)


def default_init_(weight, bias, fan_in=None):
    """PyTorch's default for Linear and convolutions: weight by ``kaiming_uniform_(a=sqrt(5))``,
    bias ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``."""
    kaiming_uniform_(weight, a=math.sqrt(5))
    if bias is not None:
        fan_in = fan_in_and_fan_out(weight.shape)[0] if fan_in is None else fan_in
        bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        uniform_(bias, -bound, bound)
