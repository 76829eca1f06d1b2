"""``summary(model, input_shape)``: what each layer of a model does to an input of that shape.

One row per op the model runs (traced, see :mod:`fastconv.trace`), named after the layer that ran it:
output shape, parameters (each counted once, where first used), multiply-adds for this input (batch
included), the receptive field and jump of its output along each spatial axis (input pixels one output
unit sees, and input pixels between neighbouring output units: ``fastconv.shapes.receptive_field`` of
the convolutions and pools on the path from the input), and the backend the automatic choice would run.
Printed as a table and returned as data (:class:`Summary`).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np

from . import shapes
from .backends import plan
from .nn.module import Parameter
from .trace import trace

__all__ = ["summary", "Summary", "Row"]

# ops that keep positions where they are (receptive field and jump pass through)
_POINTWISE = {"relu", "tanh", "sigmoid", "exp", "log", "abs", "dropout", "softmax", "log_softmax", "astype",
              "__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__",
              "__rtruediv__", "__neg__", "__pow__"}
# the kernel each op's forward pass runs, for the backend column
_KERNELS = {"conv1d": "conv2d", "conv2d": "conv2d", "conv_transpose1d": "conv2d_grad_input",
            "conv_transpose2d": "conv2d_grad_input", "max_pool1d": "max_pool2d", "max_pool2d": "max_pool2d",
            "avg_pool1d": "avg_pool2d", "avg_pool2d": "avg_pool2d", "lp_pool1d": "avg_pool2d",
            "lp_pool2d": "avg_pool2d", "conv3d": "conv2d", "conv_transpose3d": "conv2d_grad_input",
            "max_pool3d": "max_pool2d", "avg_pool3d": "avg_pool2d", "lp_pool3d": "avg_pool2d",
            "conv1d_local": "tiled_conv2d", "conv2d_local": "tiled_conv2d", "conv1d_tiled": "tiled_conv2d",
            "conv2d_tiled": "tiled_conv2d"}


@dataclass
class Row:
    name: str            # the layer's dotted name and type, or the op for ops outside layers
    op: str
    output_shape: tuple
    params: int
    macs: int
    receptive_field: tuple | None  # per spatial axis; None once positions are mixed (flatten, resize)
    jump: tuple | None
    backend: str | None
    windows: tuple | None = None   # per spatial axis, the (kernel, stride, dilation, padding before) path


@dataclass
class Summary:
    model: str
    input_shape: tuple
    rows: list = field(default_factory=list)
    total_params: int = 0
    trainable_params: int = 0
    total_macs: int = 0

    def table(self):
        head = ("layer", "output shape", "params", "mult-adds", "field", "jump", "backend")
        body = [(r.name, _shape(r.output_shape), f"{r.params:,}" if r.params else "-",
                 f"{r.macs:,}" if r.macs else "-", _axes(r.receptive_field), _axes(r.jump), r.backend or "-")
                for r in self.rows]
        widths = [max(len(row[i]) for row in [head] + body) for i in range(len(head))]
        left = (True, True, False, False, False, False, True)

        def line(cells):
            return "  ".join(c.ljust(w) if lf else c.rjust(w) for c, w, lf in zip(cells, widths, left)).rstrip()
        rule = "-" * len(line(head))
        lines = [f"{self.model}, input {_shape(self.input_shape)}", rule, line(head), rule]
        lines += [line(cells) for cells in body]
        lines += [rule, f"parameters: {self.total_params:,} ({self.trainable_params:,} trainable)",
                  f"multiply-adds: {self.total_macs:,} ({self.total_macs / 1e6:.2f} M)", rule]
        return "\n".join(lines)

    __str__ = table


def _shape(shape):
    return "(" + ", ".join(str(s) for s in shape) + ")"


def _axes(values):
    return "x".join(str(v) for v in values) if values else "-"


def summary(model, input_shape, dtype=np.float32, file=sys.stdout):
    """Print the table of ``model`` on an input of ``input_shape`` to ``file`` (``None``: print nothing)
    and return it as a :class:`Summary`. The model runs once, in eval mode (its mode is restored)."""
    if not isinstance(input_shape, (tuple, list)) or not all(isinstance(s, (int, np.integer)) and s > 0
                                                             for s in input_shape):
        raise ValueError(f"input_shape must be a tuple of positive ints, got {input_shape!r}")
    x = np.random.default_rng(0).standard_normal(tuple(input_shape)).astype(dtype)
    graph = trace(model, x)
    paths = {id(graph.input): ()}  # id(Tensor) -> the (kernel, stride, dilation) layers on its path
    counted, rows = set(), []
    for node in graph.nodes:
        params = 0
        for t in node.tensors():
            if isinstance(t, Parameter) and id(t) not in counted:
                counted.add(id(t))
                params += t.size
        path = _path(node, paths)
        for t in node.outputs:
            paths[id(t)] = path
        field_jump = None if path is None else [_field(axis) for axis in path]
        name = f"{node.module} ({type(node.layer).__name__})" if node.module else node.op.strip("_")
        rows.append(Row(name, node.op, node.output.shape, params, _macs(node),
                        None if field_jump is None else tuple(f for f, _ in field_jump),
                        None if field_jump is None else tuple(j for _, j in field_jump),
                        _plan_name(node), path))
    params = list(model.parameters())
    return _show(Summary(type(model).__name__, tuple(input_shape), rows, sum(p.size for p in params),
                         sum(p.size for p in params if p.requires_grad), sum(r.macs for r in rows)), file)


def _show(result, file):
    if file is not None:
        print(result.table(), file=file)
    return result


def _spec(node):
    """The ConvSpec or PoolSpec of a convolution or pooling node (None for other ops)."""
    a = node.args
    x = a.get("input")
    if node.op in ("conv1d", "conv2d", "conv3d"):
        b = a["bias"]
        return shapes.conv_spec(x.shape, a["weight"].shape, None if b is None else b.shape, a["stride"],
                                a["padding"], a["dilation"], a["groups"], x.ndim - 2)
    if node.op.startswith("conv_transpose"):
        b = a["bias"]
        return shapes.conv_transpose_spec(x.shape, a["weight"].shape, None if b is None else b.shape, a["stride"],
                                          a["padding"], a["output_padding"], a["groups"], a["dilation"],
                                          x.ndim - 2)
    if node.op.endswith(("_local", "_tiled")):
        b = a["bias"]
        return shapes.tiled_spec(x.shape, a["weight"].shape, None if b is None else b.shape, a["stride"],
                                 a["padding"], a["dilation"], a["groups"], x.ndim - 2, a.get("tiles"),
                                 node.op.endswith("_local"))
    if node.op in _KERNELS:
        return shapes.pool_spec(x.shape, a["kernel_size"], a["stride"], a.get("padding", 0), a.get("dilation", 1),
                                a["ceil_mode"], a.get("count_include_pad", True), x.ndim - 2)
    return None


def _path(node, paths):
    """The windows (kernel, stride, dilation, padding before) from the input to this node's output, per axis;
    ``()`` before the first window; None where the op mixes positions (flatten, linear) or is not a
    window (transposed convolution, resampling, unpooling)."""
    inputs = [paths[id(t)] for t in node.tensors() if id(t) in paths]
    if not inputs or any(p is None for p in inputs):
        return None
    if node.op in _POINTWISE:  # the wider branch
        return max(inputs, key=lambda p: [_field(axis)[0] for axis in p])
    if node.op in ("reshape", "view", "flatten"):
        return () if inputs == [()] else None
    spec = _spec(node)
    if spec is None or node.op.startswith("conv_transpose"):
        return None
    before = (spec.depth_padding[0], spec.padding[0], spec.padding[2])  # padding: (top, bottom, left, right)
    layers = zip(_spatial((spec.kd, spec.kh, spec.kw), spec.dims),
                 _spatial((spec.depth_stride,) + spec.stride, spec.dims),
                 _spatial((spec.depth_dilation,) + spec.dilation, spec.dims), _spatial(before, spec.dims))
    return tuple(axis + (layer,) for axis, layer in zip(inputs[0] or ((),) * spec.dims, layers))


def _field(windows):
    return shapes.receptive_field([w[:3] for w in windows])  # (kernel, stride, dilation) of each window


def _spatial(pair, dims):
    return tuple(pair[-dims:])


def _macs(node):
    """Multiply-adds of the node's forward pass for this input (convolutions, linear layers, matmul)."""
    if node.op.startswith("conv"):
        return _spec(node).flops // 2
    if node.op == "linear":
        w = node.args["weight"]
        return node.output.size // w.shape[0] * w.size
    if node.op == "__matmul__":
        return node.output.size * node.args["self"].shape[-1]
    return 0


def _plan_name(node):
    """The plan of this node's forward kernel (``backend:algorithm``, see ``fc.explain`` for every
    pass and the reasons; None for ops without a kernel)."""
    kernel = _KERNELS.get(node.op)
    if kernel is None:
        return None
    x = node.args["input"]
    return plan.plan(kernel, _spec(node), x.dtype, x.device, node.args.get("backend", "auto")).name
