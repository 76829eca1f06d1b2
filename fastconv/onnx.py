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
from .tensor import Tensor
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
            raise ValueError(f"a {t.shape} tensor reaches the exported graph from an op that tracing did not "
                             "see: only fastconv.functional's ops and Tensor's methods are recorded, called "
                             "through their module (F.conv2d, not a reference to it taken before export)")
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


def _window(spec, dims):
    """The window of a convolution or pooling ``spec`` over its ``dims`` spatial axes (depth, rows,
    columns; the last ``dims`` of them) as ONNX's attributes: kernel_shape, strides, pads (every axis's
    start, then every axis's end) and dilations."""
    top, bottom, left, right = spec.padding
    axes = ((spec.kd, spec.depth_stride) + tuple(spec.depth_padding) + (spec.depth_dilation,),
            (spec.kh, spec.stride[0], top, bottom, spec.dilation[0]),
            (spec.kw, spec.stride[1], left, right, spec.dilation[1]))[3 - dims:]
    kernel, strides, begins, ends, dilations = ([int(v) for v in column] for column in zip(*axes))
    return dict(kernel_shape=kernel, strides=strides, pads=begins + ends, dilations=dilations)


def _conv_attrs(spec, dims):
    return dict(_window(spec, dims), group=spec.groups)


def _pool_attrs(spec, dims):
    attrs = _window(spec, dims)
    del attrs["dilations"]  # only MaxPool has them
    return attrs


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
    attrs = dict(_window(spec, dims), ceil_mode=int(spec.ceil_mode))
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
    if len(sizes) == 3:
        raise NotImplementedError("ONNX export of adaptive_avg_pool3d takes a global average or sizes the "
                                  f"output divides, got {tuple(sizes)} -> {tuple(outs)}")
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
    **{f"{op}{dims}d": export for dims in (1, 2, 3) for op, export in (
        ("conv", _export_conv), ("conv_transpose", _export_conv_transpose), ("max_pool", _export_max_pool),
        ("avg_pool", _export_avg_pool), ("lp_pool", _export_lp_pool), ("max_unpool", _export_max_unpool),
        ("adaptive_avg_pool", _export_adaptive_avg_pool))},
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
ACTIVATIONS = {"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid"}


def _export_node(w, node):
    """The ONNX nodes of one recorded op. An ``activation=`` argument (a fused activation) becomes a node of
    its own: before a pooling, after a convolution or a linear layer."""
    act = node.args.get("activation")
    if not act:
        return EXPORTERS[node.op](w, node)
    if "pool" in node.op:
        x = node.args["input"]
        bound = w.names.get(id(x))
        w.bind(x, w.add(ACTIVATIONS[act], [w.name(x)])[0])  # the pooling reads the activated input
        try:
            return EXPORTERS[node.op](w, node)
        finally:
            w.names[id(x)] = bound
    names = list(EXPORTERS[node.op](w, node))
    names[0] = w.add(ACTIVATIONS[act], [names[0]])[0]
    return names


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
    graph = trace(model, example_input)
    for node in graph.nodes:  # every op is checked before anything is written
        if node.op not in EXPORTERS:
            where = f" (in {node.module})" if node.module else ""
            raise NotImplementedError(f"fastconv.onnx.export: the model runs {node.op!r}{where}, which has no "
                                      f"ONNX export; supported: {', '.join(sorted(EXPORTED_OPS))}")
    w = _Writer(onnx, graph)
    w.bind(graph.input, "input")
    for node in graph.nodes:
        for t, name in zip(node.outputs, _export_node(w, node)):
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


# ================================================================================== import
class _Op(Module):
    """One ONNX node that has no fastconv layer of its own: a function and its fixed arguments."""

    def __init__(self, op_type, fn, **kwargs):
        self.op_type, self.fn, self.kwargs = op_type, fn, kwargs

    def forward(self, *args):
        return self.fn(*args, **self.kwargs)

    def __repr__(self):
        return f"{self.op_type}(" + ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items()
                                              if not callable(v)) + ")"


class GraphModule(Module):
    """A module built from an ONNX graph: its layers are children (named after their ONNX weights where
    they have some, so PyTorch's exported names come back as ``features.0.weight``), run in graph order.

    Values flowing between the steps are Tensors, or NumPy arrays for the shape arithmetic
    (``Shape``/``Slice``/``Concat``) and constants that exporters put in graphs.
    """

    def __init__(self, inputs, outputs, steps, constants):
        self._inputs, self._outputs, self._steps, self._constants = inputs, outputs, [], constants
        for name, module, args, results in steps:
            setattr(self, name, module)
            self._steps.append((name, args, results))

    def forward(self, *inputs):
        if len(inputs) != len(self._inputs):
            raise TypeError(f"this graph takes {len(self._inputs)} input(s) ({', '.join(self._inputs)}), "
                            f"got {len(inputs)}")
        env = dict(self._constants)
        env.update(zip(self._inputs, (x if isinstance(x, Tensor) else Tensor(np.asarray(x)) for x in inputs)))
        for name, args, results in self._steps:
            out = getattr(self, name)(*(env[a] if a else None for a in args))
            env.update(zip(results, out if isinstance(out, tuple) else (out,)))
        outs = tuple(env[name] for name in self._outputs)
        return outs[0] if len(outs) == 1 else outs


def _pairs(attrs, dims, name, default):
    return tuple(int(v) for v in attrs.get(name, [default] * dims))


def _symmetric_pads(node, attrs, dims, same=None):
    """ONNX ``pads`` (begins then ends) as fastconv's symmetric padding, or ``"same"`` where they are those
    of a stride-1 "same" convolution whose total padding per axis is ``same``; NotImplementedError
    otherwise."""
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto not in ("NOTSET", "VALID"):
        raise NotImplementedError(f"{node.op_type} node {node.name!r}: auto_pad={auto} is not supported "
                                  "(export with explicit pads)")
    pads = [int(p) for p in attrs.get("pads", [0] * (2 * dims))] if auto == "NOTSET" else [0] * (2 * dims)
    if pads[:dims] != pads[dims:] and same is not None and pads == [t // 2 for t in same] + [t - t // 2 for t in same] \
            and all(int(s) == 1 for s in attrs.get("strides", [1] * dims)):
        return "same"
    if pads[:dims] != pads[dims:]:
        raise NotImplementedError(f"{node.op_type} node {node.name!r}: asymmetric pads {pads} are not supported")
    return tuple(pads[:dims])


def _weights(node, consts, index):
    value = consts[index] if index < len(consts) else None
    if index < len(node.input) and node.input[index] and value is None:
        raise NotImplementedError(f"{node.op_type} node {node.name!r}: input {index} must be an initializer "
                                  "or a constant (weights computed in the graph are not supported)")
    return value


def _set(param, value):
    param.data[...] = np.asarray(value, dtype=param.dtype)


def _import_conv(node, attrs, consts):
    weight, bias = _weights(node, consts, 1), _weights(node, consts, 2)
    dims, transposed = weight.ndim - 2, node.op_type == "ConvTranspose"
    if dims not in (1, 2, 3):
        raise NotImplementedError(f"{node.op_type} node {node.name!r}: {dims}-D convolution is not supported")
    if "output_shape" in attrs:
        raise NotImplementedError(f"ConvTranspose node {node.name!r}: output_shape is not supported "
                                  "(export with pads and output_padding)")
    groups, dilation = int(attrs.get("group", 1)), _pairs(attrs, dims, "dilations", 1)
    same = None if transposed else [d * (k - 1) for d, k in zip(dilation, weight.shape[2:])]
    args = dict(kernel_size=tuple(weight.shape[2:]), stride=_pairs(attrs, dims, "strides", 1),
                padding=_symmetric_pads(node, attrs, dims, same), dilation=dilation, groups=groups,
                bias=bias is not None, dtype=weight.dtype)
    if transposed:
        layer = getattr(nn, f"ConvTranspose{dims}d")(weight.shape[0], weight.shape[1] * groups,
                    output_padding=_pairs(attrs, dims, "output_padding", 0), **args)
    else:
        layer = getattr(nn, f"Conv{dims}d")(weight.shape[1] * groups, weight.shape[0], **args)
    _set(layer.weight, weight)
    if bias is not None:
        _set(layer.bias, bias)
    return layer, node.input[:1]


def _import_gemm(node, attrs, consts):
    weight, bias = _weights(node, consts, 1), _weights(node, consts, 2)
    if int(attrs.get("transA", 0)):
        raise NotImplementedError(f"Gemm node {node.name!r}: transA=1 is not supported")
    weight = weight * float(attrs.get("alpha", 1.0))
    weight = weight if int(attrs.get("transB", 0)) else weight.T
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype)
    _set(layer.weight, weight)
    if bias is not None:
        _set(layer.bias, np.broadcast_to(bias * float(attrs.get("beta", 1.0)), (weight.shape[0],)))
    return layer, node.input[:1]


def _pool_args(node, attrs):
    kernel = tuple(int(k) for k in attrs["kernel_shape"])
    dims = len(kernel)
    if dims not in (1, 2, 3):
        raise NotImplementedError(f"{node.op_type} node {node.name!r}: {dims}-D pooling is not supported")
    args = dict(kernel_size=kernel, stride=_pairs(attrs, dims, "strides", 1),
                ceil_mode=bool(attrs.get("ceil_mode", 0)))
    return dims, args


def _import_max_pool(node, attrs, consts):
    dims, args = _pool_args(node, attrs)
    args.update(padding=_symmetric_pads(node, attrs, dims), dilation=_pairs(attrs, dims, "dilations", 1))
    if int(attrs.get("storage_order", 0)):
        raise NotImplementedError(f"MaxPool node {node.name!r}: storage_order=1 is not supported")
    op = getattr(F, f"max_pool{dims}d")
    if len(node.output) < 2 or not node.output[1]:
        return getattr(nn, f"MaxPool{dims}d")(**args), node.input[:1]
    return _Op("MaxPool", _max_pool_flat_indices, op=op, **args), node.input[:1]


def _max_pool_flat_indices(x, op, **args):
    """Max pooling with ONNX's indices: positions in the whole input tensor, not within each plane."""
    y, indices = op(x, return_indices=True, **args)
    return y, Tensor(indices.numpy() + _plane_offsets(x.shape))


def _plane_offsets(shape):
    n, c, plane = shape[0], shape[1], int(np.prod(shape[2:]))
    return (np.arange(n * c, dtype=np.int64) * plane).reshape((n, c) + (1,) * (len(shape) - 2))


def _import_max_unpool(node, attrs, consts):
    kernel = tuple(int(k) for k in attrs["kernel_shape"])
    dims = len(kernel)
    size = consts[2] if len(consts) > 2 else None
    if len(node.input) > 2 and node.input[2] and size is None:
        raise NotImplementedError(f"MaxUnpool node {node.name!r}: a computed output_shape is not supported")
    return _Op("MaxUnpool", _max_unpool_flat_indices, op=getattr(F, f"max_unpool{dims}d"),
               kernel_size=kernel, stride=_pairs(attrs, dims, "strides", 1),
               padding=_symmetric_pads(node, attrs, dims),
               output_size=None if size is None else tuple(int(s) for s in size[2:])), node.input[:2]


def _max_unpool_flat_indices(x, indices, op, output_size, **args):
    out = output_size or shapes.unpool_output_size(x.shape, args["kernel_size"], args["stride"], args["padding"],
                                                   None, x.ndim - 2)
    plane = Tensor(np.mod(as_array(indices), int(np.prod(out))))
    return op(x, plane, output_size=output_size, **args)


def _import_avg_pool(node, attrs, consts):
    dims, args = _pool_args(node, attrs)
    if any(d != 1 for d in attrs.get("dilations", [1] * dims)):
        raise NotImplementedError(f"AveragePool node {node.name!r}: dilations are not supported")
    args.update(padding=_symmetric_pads(node, attrs, dims),
                count_include_pad=bool(attrs.get("count_include_pad", 0)))
    return getattr(nn, f"AvgPool{dims}d")(**args), node.input[:1]


def _import_lp_pool(node, attrs, consts):
    dims, args = _pool_args(node, attrs)
    if any(_symmetric_pads(node, attrs, dims)) or any(d != 1 for d in attrs.get("dilations", [1] * dims)):
        raise NotImplementedError(f"LpPool node {node.name!r}: pads and dilations are not supported")
    return _Op("LpPool", getattr(F, f"lp_pool{dims}d"), norm_type=int(attrs.get("p", 2)), **args), node.input[:1]


def _global_pool(kind):
    def pool(x):
        if x.ndim not in (3, 4, 5):
            raise ValueError(f"Global{kind}Pool takes 3-D, 4-D or 5-D input, got shape {x.shape}")
        if kind == "Average":
            return getattr(F, f"adaptive_avg_pool{x.ndim - 2}d")(x, 1)
        return getattr(F, f"max_pool{x.ndim - 2}d")(x, tuple(x.shape[2:]))
    return lambda node, attrs, consts: (_Op(f"Global{kind}Pool", pool), node.input[:1])


def _import_resize(node, attrs, consts):
    mode = attrs.get("mode", b"nearest").decode()
    coords = attrs.get("coordinate_transformation_mode", b"half_pixel" if node.op_type == "Resize"
                       else b"asymmetric").decode()
    nearest = attrs.get("nearest_mode", b"round_prefer_floor" if node.op_type == "Resize" else b"floor").decode()
    if node.op_type == "Upsample":
        coords, nearest = "asymmetric", "floor"
    if mode == "nearest" and (coords, nearest) == ("asymmetric", "floor"):
        args = dict(mode="nearest")
    elif mode == "linear" and coords in ("half_pixel", "pytorch_half_pixel", "align_corners"):
        args = dict(mode="linear", align_corners=coords == "align_corners")
    else:
        raise NotImplementedError(f"{node.op_type} node {node.name!r}: mode={mode} with coordinate_transformation_"
                                  f"mode={coords}, nearest_mode={nearest} is not supported (nearest: asymmetric "
                                  "and floor; linear: half_pixel or align_corners)")
    scales = node.input[1 if node.op_type == "Upsample" else 2] if len(node.input) > 2 or \
        node.op_type == "Upsample" else ""
    sizes = node.input[3] if len(node.input) > 3 else ""
    return _Op(node.op_type, _resize, **args), [node.input[0], scales, sizes]


def _resize(x, scales=None, sizes=None, mode="nearest", align_corners=None):
    mode = {("linear", 3): "linear", ("linear", 4): "bilinear", ("linear", 5): "trilinear"}.get((mode, x.ndim), mode)
    if sizes is not None and np.size(sizes):
        return F.interpolate(x, size=tuple(int(s) for s in as_array(sizes)[2:]), mode=mode, align_corners=align_corners)
    factors = [float(f) for f in as_array(scales)]
    if factors[:2] != [1.0, 1.0]:
        raise ValueError(f"Resize: scales of the batch and channel axes must be 1, got {factors[:2]}")
    return F.interpolate(x, scale_factor=tuple(factors[2:]), mode=mode, align_corners=align_corners)


def _import_flatten(node, attrs, consts):
    axis = int(attrs.get("axis", 1))
    if axis == 1:
        return nn.Flatten(1), node.input[:1]
    return _Op("Flatten", _flatten_at, axis=axis), node.input[:1]


def _flatten_at(x, axis):
    axis %= x.ndim
    return x.reshape((int(np.prod(x.shape[:axis])), int(np.prod(x.shape[axis:]))))


def _reshape(x, shape, allowzero=0):
    shape = [int(s) for s in as_array(shape)]
    if not allowzero:  # 0 copies the input's size
        shape = [np.shape(x)[i] if s == 0 else s for i, s in enumerate(shape)]
    known = int(np.prod([s for s in shape if s != -1]))
    return _reshape_any(x, [int(np.prod(np.shape(x))) // max(known, 1) if s == -1 else s for s in shape])


def _softmax_import(fn):
    def factory(node, attrs, consts, opset=13):
        axis = int(attrs.get("axis", -1 if opset >= 13 else 1))

        def softmax(x):
            if opset < 13 and axis % x.ndim != x.ndim - 1:
                raise NotImplementedError(f"{node.op_type} before opset 13 over axes {axis}.. of a {x.ndim}-D "
                                          "input is not supported")
            return fn(x, dim=axis)
        return _Op(node.op_type, softmax), node.input[:1]
    return factory


def _elementwise(op_type, tensor_fn, numpy_fn):
    """An op on Tensors (with autograd) or, when every operand is a NumPy array, on arrays."""
    def run(*args):
        if any(isinstance(a, Tensor) for a in args):
            return tensor_fn(*(a if isinstance(a, Tensor) else Tensor(np.asarray(a)) for a in args))
        return numpy_fn(*args)
    return lambda node, attrs, consts: (_Op(op_type, run), list(node.input))


def _pow(x, e):
    e = as_array(e)
    if e.size != 1:
        raise NotImplementedError("Pow with a non-scalar exponent is not supported")
    return x ** float(e)


def _array_only(op_type, fn):
    """Shape arithmetic: ops on NumPy arrays (shapes, indices), which fastconv does not run on Tensors."""
    def factory(node, attrs, consts):
        def run(*args):
            if any(isinstance(a, Tensor) and a.dtype.kind == "f" for a in args):
                raise NotImplementedError(f"{op_type} node {node.name!r} on computed float tensors is not "
                                          "supported (only on shapes and constants)")
            return fn(*(as_array(a) if a is not None else None for a in args), **attrs)
        return _Op(op_type, run), list(node.input)
    return factory


def _slice_index(ndim, starts, ends, axes, steps):
    index = [slice(None)] * ndim
    axes = range(len(starts)) if axes is None else as_array(axes)
    steps = [1] * len(starts) if steps is None else as_array(steps)
    for axis, start, end, step in zip(axes, starts, ends, steps):
        index[int(axis)] = slice(int(start), int(end), int(step))
    return tuple(index)


def _axes(axes):
    return tuple(int(a) for a in np.ravel(as_array(axes)))


def _import_reduce(node, attrs, consts):
    keepdims, method = bool(attrs.get("keepdims", 1)), "mean" if node.op_type == "ReduceMean" else "sum"
    empty_is_noop = bool(attrs.get("noop_with_empty_axes", 0))

    def reduce(x, axes=attrs.get("axes")):
        axes = None if axes is None else _axes(axes)
        if not axes and empty_is_noop:
            return x
        return getattr(x, method)(axis=axes or None, keepdims=keepdims)
    return _Op(node.op_type, reduce), list(node.input)


def _reshape_any(x, shape):
    return x.reshape(tuple(shape)) if isinstance(x, Tensor) else np.reshape(x, shape)


def _unsqueeze(x, axes):
    shape, axes = list(np.shape(x)), _axes(axes)
    for a in sorted(a % (len(shape) + len(axes)) for a in axes):
        shape.insert(a, 1)
    return _reshape_any(x, shape)


def _squeeze(x, axes=None):
    shape = np.shape(x)
    axes = [a % len(shape) for a in _axes(axes)] if axes is not None else [i for i, s in enumerate(shape) if s == 1]
    return _reshape_any(x, [s for i, s in enumerate(shape) if i not in axes])


def _with_attrs(op_type, fn):
    """Ops whose arguments are inputs in new opsets and attributes in old ones (``axes``)."""
    return lambda node, attrs, consts: (_Op(op_type, fn, **attrs), list(node.input))


def _shape(x, start=0, end=None):
    return np.array(np.shape(x)[start:end], np.int64)


def _import_cast(node, attrs, consts):
    onnx = _onnx()
    dtype = onnx.helper.tensor_dtype_to_np_dtype(int(attrs["to"]))
    return _Op("Cast", lambda x: x.astype(dtype) if isinstance(x, Tensor) else np.asarray(x).astype(dtype)), \
        node.input[:1]


def _import_transpose(node, attrs, consts):
    perm = attrs.get("perm")
    return _Op("Transpose", lambda x: x.transpose(*perm) if perm else x.transpose()), node.input[:1]


def _layer(cls):
    return lambda node, attrs, consts: (cls(), node.input[:1])


def _identity(node, attrs, consts):
    if len(node.output) > 1 and node.output[1]:
        raise NotImplementedError(f"{node.op_type} node {node.name!r}: the mask output is not supported")
    return nn.Identity(), node.input[:1]


IMPORTERS = {
    "Conv": _import_conv, "ConvTranspose": _import_conv, "Gemm": _import_gemm,
    "MaxPool": _import_max_pool, "AveragePool": _import_avg_pool, "LpPool": _import_lp_pool,
    "MaxUnpool": _import_max_unpool, "GlobalAveragePool": _global_pool("Average"),
    "GlobalMaxPool": _global_pool("Max"), "Resize": _import_resize, "Upsample": _import_resize,
    "Relu": _layer(nn.ReLU), "Tanh": _layer(nn.Tanh), "Sigmoid": _layer(nn.Sigmoid),
    "Flatten": _import_flatten, "Dropout": _identity, "Identity": _identity,
    "Softmax": _softmax_import(F.softmax), "LogSoftmax": _softmax_import(F.log_softmax),
    "Add": _elementwise("Add", lambda a, b: a + b, np.add),
    "Sub": _elementwise("Sub", lambda a, b: a - b, np.subtract),
    "Mul": _elementwise("Mul", lambda a, b: a * b, np.multiply),
    "Div": _elementwise("Div", lambda a, b: a / b, lambda a, b: a // b if a.dtype.kind in "iu" else a / b),
    "MatMul": _elementwise("MatMul", lambda a, b: a @ b, np.matmul),
    "Pow": _elementwise("Pow", _pow, np.power),
    "Neg": _elementwise("Neg", lambda a: -a, np.negative),
    "Exp": _elementwise("Exp", lambda a: a.exp(), np.exp),
    "Log": _elementwise("Log", lambda a: a.log(), np.log),
    "Abs": _elementwise("Abs", lambda a: a.abs(), np.abs),
    "Sqrt": _elementwise("Sqrt", lambda a: a ** 0.5, np.sqrt),
    "Sign": _elementwise("Sign", lambda a: Tensor(np.sign(a.numpy())), np.sign),  # gradient 0: a constant
    "Mod": _elementwise("Mod", lambda a, b: Tensor(np.mod(a.numpy(), b.numpy())), np.mod),
    "Reshape": _with_attrs("Reshape", _reshape),
    "Transpose": _import_transpose, "Cast": _import_cast,
    "ReduceMean": _import_reduce, "ReduceSum": _import_reduce,
    "Unsqueeze": _with_attrs("Unsqueeze", _unsqueeze), "Squeeze": _with_attrs("Squeeze", _squeeze),
    "Shape": _with_attrs("Shape", _shape),
    "Gather": _array_only("Gather", lambda data, indices, axis=0: np.take(data, indices, axis=axis)),
    "Concat": _array_only("Concat", lambda *parts, axis: np.concatenate(parts, axis=axis)),
    "Slice": _array_only("Slice", lambda data, starts, ends, axes=None, steps=None:
                         data[_slice_index(data.ndim, starts, ends, axes, steps)]),
}
IMPORTED_OPS = frozenset(IMPORTERS) | {"Constant"}


def load(path):
    """An nn.Module (a :class:`GraphModule`) that computes the ONNX model at ``path`` (or a
    ``ModelProto``), with its weights as the layers' parameters. Ops outside :data:`IMPORTED_OPS` raise a
    ``NotImplementedError`` naming the first one."""
    onnx = _onnx()
    proto = path if isinstance(path, onnx.ModelProto) else onnx.load(os.fspath(path))
    graph = proto.graph
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), OPSET)
    for node in graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type not in IMPORTED_OPS:
            raise NotImplementedError(f"fastconv.onnx.load: op {node.op_type!r} (node {node.name!r}) is not "
                                      f"supported; supported: {', '.join(sorted(IMPORTED_OPS))}")
    constants = {init.name: onnx.numpy_helper.to_array(init) for init in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in constants]
    steps, used = [], set()
    for index, node in enumerate(graph.node):
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Constant":
            constants[node.output[0]] = _constant_value(onnx, node, attrs)
            continue
        consts = [constants.get(name) for name in node.input]
        factory = IMPORTERS[node.op_type]
        if node.op_type in ("Softmax", "LogSoftmax"):
            module, args = factory(node, attrs, consts, opset)
        else:
            module, args = factory(node, attrs, consts)
        name = _step_name(node, index, used)
        steps.append((name, module, list(args), [o for o in node.output]))
    return GraphModule(inputs, [o.name for o in graph.output], steps, constants)


def _constant_value(onnx, node, attrs):
    if "value" in attrs:
        return onnx.numpy_helper.to_array(attrs["value"])
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32), ("value_int", np.int64),
                       ("value_ints", np.int64)):
        if key in attrs:
            return np.array(attrs[key], dtype)
    raise NotImplementedError(f"Constant node {node.name!r}: attribute {sorted(attrs)} is not supported")


def _step_name(node, index, used):
    """The child's name: its weight's prefix (``features.0`` for ``features.0.weight``), else op and index."""
    weight = node.input[1] if node.op_type in ("Conv", "ConvTranspose", "Gemm") and len(node.input) > 1 else ""
    name = weight[:-len(".weight")] if weight.endswith(".weight") else f"{node.op_type.lower()}_{index}"
    while name in used:
        name += "_"
    used.add(name)
    return name
