"""ONNX in and out: ``export(model, example_input, path)`` and ``load(path) -> nn.Module``.

Export traces the model (:mod:`fastconv.trace`): it runs the model once on the example input, in eval
mode, and writes each op it ran as ONNX nodes (opset :data:`OPSET`), parameters as initializers under the
model's dotted names (PyTorch's). Tracing rather than walking the modules catches what a ``forward`` does
between layers (``F.interpolate``, ``x + y``, ``reshape``); as with ``torch.onnx.export``, the graph has
the example's shapes and the path its control flow took. Dropout is the identity in eval mode.

Import builds a :class:`GraphModule`: one fastconv layer per ONNX node (``Conv`` becomes ``nn.Conv2d`` with
the initializer's weights, ``Gemm`` an ``nn.Linear``, ...), run in the graph's order. Graphs from
``torch.onnx.export`` of nets made of the ops below load; any other op is a ``NotImplementedError`` that
names the first one found.

Needs the ``onnx`` package (``pip install 'fastconv[onnx]'``, which adds ``onnxruntime`` to run the files).
"""
from __future__ import annotations

import os

import numpy as np

from . import functional as F
from . import nn, shapes
from ._version import __version__
from .nn.module import Module
from .tensor import Tensor, no_grad
from .trace import as_array, is_constant, trace

__all__ = ["OPSET", "export", "load", "GraphModule", "EXPORTED_OPS", "IMPORTED_OPS"]

OPSET = 18


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ImportError("fastconv.onnx needs the onnx package: pip install 'fastconv[onnx]' "
                          "(onnx, and onnxruntime to run the exported files)") from None
    return onnx


# ================================================================================== export
class _Writer:
    """The ONNX graph being written: value names of Tensors, nodes, initializers."""

    def __init__(self, onnx, graph):
        self.onnx, self.helper = onnx, onnx.helper
        self.params = graph.params
        self.names, self.nodes, self.initializers, self.count = {}, [], [], 0

    def fresh(self, hint):
        self.count += 1
        return f"{hint}_{self.count}"

    def name(self, t):
        """The value name of Tensor ``t``; parameters and constants become initializers on first use."""
        known = self.names.get(id(t))
        if known is not None:
            return known[1]
        if not is_constant(t):
            raise ValueError(f"a {t.shape} tensor reaches the exported graph through an op that fastconv.onnx "
                             f"does not record (supported: {', '.join(sorted(EXPORTED_OPS))})")
        name = self.params.get(id(t)) or self.fresh("constant")
        self.initializers.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(t.numpy()), name))
        self.names[id(t)] = (t, name)
        return name

    def const(self, value, hint="constant"):
        name = self.fresh(hint)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def bind(self, t, name):
        self.names[id(t)] = (t, name)  # the Tensor is kept alive, so its id stays unique

    def add(self, op_type, inputs, outputs=None, **attrs):
        """Append a node; ``outputs`` default to one fresh name. Returns the output names."""
        outputs = outputs or [self.fresh(op_type.lower())]
        self.nodes.append(self.helper.make_node(op_type, list(inputs), list(outputs),
                                                **{k: v for k, v in attrs.items() if v is not None}))
        return outputs

    def value_info(self, name, t):
        return self.helper.make_tensor_value_info(name, self.helper.np_dtype_to_tensor_dtype(t.dtype), t.shape)


def _spatial(pairs, dims):
    """The last ``dims`` entries of a (height, width) pair: one for 1-D ops."""
    return [int(v) for v in pairs[-dims:]]


def _conv_attrs(spec, dims):
    top, bottom, left, right = spec.padding
    begins, ends = _spatial((top, left), dims), _spatial((bottom, right), dims)
    return dict(kernel_shape=_spatial((spec.kh, spec.kw), dims), strides=_spatial(spec.stride, dims),
                pads=begins + ends, dilations=_spatial(spec.dilation, dims), group=spec.groups)


def _pool_attrs(spec, dims):
    pads = _spatial(spec.padding, dims)
    return dict(kernel_shape=_spatial((spec.kh, spec.kw), dims), strides=_spatial(spec.stride, dims),
                pads=pads + pads)


def _dims(x):
    return x.ndim - 2


def _export_conv(w, node):
    a = node.args
    x, weight, bias = a["input"], a["weight"], a["bias"]
    dims = _dims(x)
    spec = shapes.conv_spec(x.shape, weight.shape, None if bias is None else bias.shape, a["stride"],
                            a["padding"], a["dilation"], a["groups"], dims)
    inputs = [w.name(x), w.name(weight)] + ([w.name(bias)] if bias is not None else [])
    return w.add("Conv", inputs, **_conv_attrs(spec, dims))


def _export_conv_transpose(w, node):
    a = node.args
    x, weight, bias = a["input"], a["weight"], a["bias"]
    dims = _dims(x)
    spec = shapes.conv_transpose_spec(x.shape, weight.shape, None if bias is None else bias.shape, a["stride"],
                                      a["padding"], a["output_padding"], a["groups"], a["dilation"], dims)
    inputs = [w.name(x), w.name(weight)] + ([w.name(bias)] if bias is not None else [])
    return w.add("ConvTranspose", inputs, output_padding=list(shapes.ints("output_padding", a["output_padding"],
                                                                             dims, 0)),
                 **_conv_attrs(spec, dims))


def _pool_spec(node, **extra):
    a = node.args
    x = a["input"]
    return shapes.pool_spec(x.shape, a["kernel_size"], a["stride"], a.get("padding", 0), a.get("dilation", 1),
                            a["ceil_mode"], dims=_dims(x), **extra)


def _export_max_pool(w, node):
    x = node.args["input"]
    dims, spec = _dims(x), _pool_spec(node)
    attrs = dict(_pool_attrs(spec, dims), dilations=_spatial(spec.dilation, dims), ceil_mode=int(spec.ceil_mode))
    if not node.args["return_indices"]:
        return w.add("MaxPool", [w.name(x)], **attrs)
    # ONNX numbers the argmax over the whole (N, C, ...) tensor; fastconv (and PyTorch) within each plane
    out, flat = w.add("MaxPool", [w.name(x)], [w.fresh("maxpool"), w.fresh("indices")], **attrs)
    plane = int(np.prod(x.shape[2:]))
    return [out] + w.add("Mod", [flat, w.const(np.array(plane, np.int64), "plane_size")])


def _export_avg_pool(w, node):
    x = node.args["input"]
    dims, spec = _dims(x), _pool_spec(node, count_include_pad=node.args["count_include_pad"])
    return w.add("AveragePool", [w.name(x)], ceil_mode=int(spec.ceil_mode),
                 count_include_pad=int(spec.count_include_pad), **_pool_attrs(spec, dims))


def _export_lp_pool(w, node):
    a = node.args
    p = a["norm_type"]
    if float(p) != int(p):
        raise ValueError(f"ONNX LpPool takes an integer norm_type, got {p}")
    dims, spec = _dims(a["input"]), _pool_spec(node)
    return w.add("LpPool", [w.name(a["input"])], p=int(p), ceil_mode=int(spec.ceil_mode),
                 **_pool_attrs(spec, dims))


def _export_max_unpool(w, node):
    a = node.args
    x, indices, y = a["input"], a["indices"], node.output
    dims = _dims(x)
    kernel = shapes.ints("kernel_size", a["kernel_size"], dims, 1)
    stride = kernel if a["stride"] is None else shapes.ints("stride", a["stride"], dims, 1)
    padding = list(shapes.ints("padding", a["padding"], dims, 0))
    # per-plane argmax positions -> positions in the whole output tensor, as ONNX numbers them
    n, c = x.shape[:2]
    offsets = (np.arange(n * c, dtype=np.int64) * int(np.prod(y.shape[2:]))).reshape((n, c) + (1,) * dims)
    (flat,) = w.add("Add", [w.name(indices), w.const(offsets, "plane_offsets")])
    size = w.const(np.array(y.shape, np.int64), "output_shape")
    return w.add("MaxUnpool", [w.name(x), flat, size], kernel_shape=list(kernel), strides=list(stride),
                 pads=padding + padding)


def _export_adaptive_avg_pool(w, node):
    x, y = node.args["input"], node.output
    sizes, outs = x.shape[2:], y.shape[2:]
    if all(o == 1 for o in outs):
        return w.add("GlobalAveragePool", [w.name(x)])
    if all(s % o == 0 for s, o in zip(sizes, outs)):
        kernel = [s // o for s, o in zip(sizes, outs)]
        return w.add("AveragePool", [w.name(x)], kernel_shape=kernel, strides=kernel)
    # uneven windows: the op is one averaging matrix per axis, as fastconv computes it
    mats = [F._adaptive_matrix(s, o).astype(x.dtype) for s, o in zip(sizes, outs)]
    value = w.name(x)
    if len(mats) == 2:
        (value,) = w.add("MatMul", [w.const(mats[0], "rows"), value])
    return w.add("MatMul", [value, w.const(np.ascontiguousarray(mats[-1].T), "columns")])


def _export_interpolate(w, node):
    a = node.args
    x, y = a["input"], node.output
    mode = "nearest" if a["mode"] == "nearest" else "linear"
    if mode == "nearest":
        attrs = dict(coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    else:
        attrs = dict(coordinate_transformation_mode="align_corners" if a["align_corners"] else "half_pixel")
    if a["size"] is not None:
        inputs = ["", "", w.const(np.array(y.shape, np.int64), "sizes")]
    else:  # the factors as given (PyTorch's coordinates use them, not the rounded sizes); 1 where unchanged
        factors = a["scale_factor"]
        factors = (factors,) * _dims(x) if isinstance(factors, (int, float)) else tuple(factors)
        scales = [1.0, 1.0] + [1.0 if o == s else float(f) for f, o, s in zip(factors, y.shape[2:], x.shape[2:])]
        inputs = ["", w.const(np.array(scales, np.float32), "scales")]
    return w.add("Resize", [w.name(x)] + inputs, mode=mode, **attrs)


def _export_linear(w, node):
    a = node.args
    x, weight, bias = a["input"], a["weight"], a["bias"]
    if x.ndim == 2:
        inputs = [w.name(x), w.name(weight)] + ([w.name(bias)] if bias is not None else [])
        return w.add("Gemm", inputs, transB=1)
    (wt,) = w.add("Transpose", [w.name(weight)], perm=[1, 0])
    out = w.add("MatMul", [w.name(x), wt])
    return w.add("Add", out + [w.name(bias)]) if bias is not None else out


def _unary(op_type):
    def export(w, node):
        return w.add(op_type, [w.name(node.args.get("input", node.args.get("self")))])
    return export


def _export_flatten(w, node):
    x = node.args.get("input", node.args.get("self"))
    if node.args["start_dim"] == 1 and x.ndim >= 2:
        return w.add("Flatten", [w.name(x)], axis=1)
    return _reshape_to(w, x, node.output)


def _reshape_to(w, x, y):
    return w.add("Reshape", [w.name(x), w.const(np.array(y.shape, np.int64), "shape")])


def _export_reshape(w, node):
    return _reshape_to(w, node.args.get("input", node.args.get("self")), node.output)


def _softmax(op_type):
    def export(w, node):
        x = node.args["input"]
        return w.add(op_type, [w.name(x)], axis=int(node.args["dim"]) % x.ndim)
    return export


def _export_dropout(w, node):
    a = node.args
    if a["training"] and a["p"] > 0:
        raise ValueError("dropout runs in training mode (training=True passed to F.dropout): a random op "
                         "cannot be exported; call it with training=self.training")
    return [w.name(a["input"])]  # the identity: the output is the input's value


def _operand(w, value, like):
    """The name of an operand that may be a Tensor, an array or a Python number (cast to ``like``)."""
    if isinstance(value, Tensor):
        return w.name(value)
    return w.const(np.asarray(value, dtype=like.dtype), "scalar")


def _binary(op_type, reflected=False):
    def export(w, node):
        x, other = node.args["self"], node.args["other"]
        operands = [w.name(x), _operand(w, other, x)]
        return w.add(op_type, operands[::-1] if reflected else operands)
    return export


def _export_neg(w, node):
    return w.add("Neg", [w.name(node.args["self"])])


def _export_pow(w, node):
    x = node.args["self"]
    return w.add("Pow", [w.name(x), _operand(w, node.args["exponent"], x)])


def _reduce(op_type):
    def export(w, node):
        x, axis = node.args["self"], node.args["axis"]
        axes = range(x.ndim) if axis is None else ((axis,) if isinstance(axis, int) else axis)
        axes = np.array(sorted(a % x.ndim for a in axes), np.int64)
        return w.add(op_type, [w.name(x), w.const(axes, "axes")], keepdims=int(node.args["keepdims"]))
    return export


def _export_transpose(w, node):
    x, axes = node.args["self"], node.args["axes"]
    axes = axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
    perm = [int(a) for a in axes] or list(reversed(range(x.ndim)))
    return w.add("Transpose", [w.name(x)], perm=perm)


def _export_astype(w, node):
    x = node.args["self"]
    return w.add("Cast", [w.name(x)], to=w.helper.np_dtype_to_tensor_dtype(node.output.dtype))


EXPORTERS = {
    "conv1d": _export_conv, "conv2d": _export_conv,
    "conv_transpose1d": _export_conv_transpose, "conv_transpose2d": _export_conv_transpose,
    "max_pool1d": _export_max_pool, "max_pool2d": _export_max_pool,
    "avg_pool1d": _export_avg_pool, "avg_pool2d": _export_avg_pool,
    "lp_pool1d": _export_lp_pool, "lp_pool2d": _export_lp_pool,
    "max_unpool1d": _export_max_unpool, "max_unpool2d": _export_max_unpool,
    "adaptive_avg_pool1d": _export_adaptive_avg_pool, "adaptive_avg_pool2d": _export_adaptive_avg_pool,
    "interpolate": _export_interpolate, "linear": _export_linear,
    "relu": _unary("Relu"), "tanh": _unary("Tanh"), "sigmoid": _unary("Sigmoid"), "exp": _unary("Exp"),
    "log": _unary("Log"), "abs": _unary("Abs"),
    "flatten": _export_flatten, "reshape": _export_reshape, "view": _export_reshape,
    "softmax": _softmax("Softmax"), "log_softmax": _softmax("LogSoftmax"), "dropout": _export_dropout,
    "__add__": _binary("Add"), "__radd__": _binary("Add"), "__sub__": _binary("Sub"),
    "__rsub__": _binary("Sub", reflected=True), "__mul__": _binary("Mul"), "__rmul__": _binary("Mul"),
    "__truediv__": _binary("Div"), "__rtruediv__": _binary("Div", reflected=True),
    "__matmul__": _binary("MatMul"), "__neg__": _export_neg, "__pow__": _export_pow,
    "sum": _reduce("ReduceSum"), "mean": _reduce("ReduceMean"),
    "transpose": _export_transpose, "permute": _export_transpose, "astype": _export_astype,
}
EXPORTED_OPS = frozenset(EXPORTERS)


def export(model, example_input, path=None, check=True):
    """Write ``model`` as an ONNX file at ``path`` (opset :data:`OPSET`) and return the ``ModelProto``.

    ``example_input``: an array or Tensor of the shape to export (the graph's input is named ``input``,
    its output ``output``). The model runs once, in eval mode (its mode is restored afterwards).
    ``check`` runs ``onnx.checker`` on the result. An op that ONNX export does not know is a
    ``NotImplementedError`` naming it and the layer that ran it.
    """
    onnx = _onnx()
    if not isinstance(model, Module):
        raise TypeError(f"model must be a fastconv.nn.Module, got {type(model).__name__}")
    was_training = model.training
    model.eval()
    try:
        graph = trace(model, example_input)
    finally:
        model.train(was_training)
    for node in graph.nodes:  # every op is checked before anything is written
        if node.op not in EXPORTERS:
            where = f" (in {node.module})" if node.module else ""
            raise NotImplementedError(f"fastconv.onnx.export: the model runs {node.op!r}{where}, which has no "
                                      f"ONNX export; supported: {', '.join(sorted(EXPORTED_OPS))}")
    w = _Writer(onnx, graph)
    w.bind(graph.input, "input")
    for node in graph.nodes:
        for t, name in zip(node.outputs, EXPORTERS[node.op](w, node)):
            w.bind(t, name)
    outputs = graph.output if isinstance(graph.output, tuple) else (graph.output,)
    if not all(isinstance(t, Tensor) for t in outputs):
        raise TypeError("the model must return a Tensor or a tuple of Tensors")
    out_names = ["output"] if len(outputs) == 1 else [f"output_{i}" for i in range(len(outputs))]
    for t, name in zip(outputs, out_names):
        w.add("Identity", [w.name(t)], [name])
    proto = onnx.helper.make_model(
        onnx.helper.make_graph(w.nodes, type(model).__name__, [w.value_info("input", graph.input)],
                               [w.value_info(n, t) for n, t in zip(out_names, outputs)], w.initializers),
        opset_imports=[onnx.helper.make_opsetid("", OPSET)], producer_name="fastconv",
        producer_version=__version__)
    if check:
        onnx.checker.check_model(proto, full_check=True)
    if path is not None:
        onnx.save(proto, os.fspath(path))
    return proto
