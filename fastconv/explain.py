"""``fc.explain``: which kernel runs every pass of an op or a model, and why (``fastconv plan`` prints it).

    fc.explain(F.conv2d, x, w, padding=1)           # one op: its forward kernel and the gradients it needs
    fc.explain(models.LeNet5(), (128, 1, 32, 32))   # a model on a batch, as a training step runs it
    fc.explain(model, x_shape, measure=True)        # and the time of each kernel, measured here

The op or model runs once on random inputs while the planner records the plans it hands out (see
``backends.plan.recording``): the rows are exactly what a training step would run. Each row names the
layer, the pass, the plan (``backend:algorithm``), the model's time on one core where it has one, the
measured time
with ``measure=True``, and the reason (the forced name, the rule of ``backends.model``, or the
measurement of ``fc.autotune``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .backends import plan, tune
from .tensor import tensor

#: What each kernel computes, per op (a transposed convolution runs a convolution's kernels turned).
PASSES = {
    "conv2d": "forward", "conv2d_grad_input": "grad input", "conv2d_grad_weight": "grad weight",
    "max_pool2d": "forward", "max_pool2d_grad": "grad input", "avg_pool2d": "forward",
    "avg_pool2d_grad": "grad input", "max_unpool2d": "forward", "max_unpool2d_grad": "grad input",
    "tiled_conv2d": "forward", "tiled_conv2d_grad_input": "grad input", "tiled_conv2d_grad_weight": "grad weight",
}
TRANSPOSED = {"conv2d_grad_input": "forward", "conv2d": "grad input", "conv2d_grad_weight": "grad weight"}


@dataclass
class Explanation:
    """The plan of every pass, as ``rows`` (dicts) and as a table (``str``)."""
    rows: list

    def __str__(self):
        header = ("layer", "pass", "shape", "plan", "model ms (1 core)", "measured ms", "reason")
        lines = [header] + [(r["layer"], r["pass"], r["shape"], r["plan"], _ms(r["model_ms"]),
                             _ms(r["measured_ms"]), r["reason"]) for r in self.rows]
        widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
        return "\n".join("  ".join(f"{c:<{w}}" for c, w in zip(line, widths)) + "  " + line[-1]
                         for line in lines)

    def __repr__(self):
        return str(self)


def _ms(value):
    return "-" if value is None else f"{value:.3g}"


def explain(target, *args, measure=False, **kwargs):
    """The plans of every kernel ``target`` runs: an op of ``fastconv.functional`` called with ``args``
    and ``kwargs`` (float arrays become tensors that require grad, so their gradients are planned too),
    or a module called on an input (an array, or a shape filled with random numbers). ``measure``: time
    each kernel on this machine (fresh random inputs, best of a few calls)."""
    return Explanation([row for layer in record(target, *args, **kwargs) for row in _rows(layer, measure)])


def record(target, *args, **kwargs):
    """The layers (``plan.Layer``: the plans of each op's kernels) that ``target`` plans when it runs
    once on ``args``: an op with its arguments, or a module with one input (an array or a shape)."""
    from .nn import Module
    if isinstance(target, Module):
        if len(args) != 1:
            raise TypeError("explain(model, input) takes one input: an array or a shape tuple")
        x = args[0]
        if isinstance(x, (tuple, list)):
            x = np.random.default_rng(0).standard_normal(tuple(x)).astype(np.float32)
        with plan.recording() as layers:
            target(tensor(x))
    elif callable(target):
        inputs = [tensor(a, requires_grad=True) if isinstance(a, np.ndarray) and a.dtype.kind == "f" else a
                  for a in args]
        with plan.recording() as layers:
            target(*inputs, **kwargs)
    else:
        raise TypeError(f"target must be an op (a callable) or an nn.Module, got {type(target).__name__}")
    return layers


def _rows(layer, measure):
    transposed = layer.label.startswith("conv_transpose")
    passes = TRANSPOSED if transposed else PASSES
    rows = []
    for op, p in layer.plans.items():
        measured = None
        if measure and layer.spec is not None:
            rng = np.random.default_rng(0)
            measured = 1e3 * tune.time_kernel(p, op, layer.spec, layer.dtype, rng)
        rows.append({"layer": layer.label, "pass": passes[op], "kernel": op, "shape": _shape(layer.spec, transposed),
                     "plan": p.name, "model_ms": None if p.seconds is None else 1e3 * p.seconds,
                     "measured_ms": measured, "reason": p.reason})
    return rows


def _shape(spec, transposed=False):
    """``N x C x H x W -> N x C' x H' x W'``: a layer's input and output as the user sees them (a
    transposed convolution's spec is that of the convolution it is the adjoint of: turned)."""
    if spec is None:
        return "-"
    x, y = spec.user_shape(spec.x_shape), spec.user_shape(spec.y_shape)
    if transposed:
        x, y = y, x
    return f"{'x'.join(map(str, x))} -> {'x'.join(map(str, y))}"


__all__ = ["explain", "Explanation"]
