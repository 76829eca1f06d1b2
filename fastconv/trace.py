"""Recording what a model computes: ``trace(model, x)`` runs it once and returns the ops it ran, in order.

The recorded ops are fastconv's public functional ops (``fastconv.functional``) and the Tensor methods
that compute (arithmetic, ``reshape``, ``relu``, ...). While tracing, each is wrapped by a recorder, and
put back afterwards (also on error); an op that runs inside another recorded op (``softmax`` calling
``log_softmax``, ``lp_pool2d`` calling ``avg_pool2d``) belongs to the outer one. Module calls are followed
too, so each node knows the layer that ran it. As with ``torch.jit.trace``, the graph is the path this
input took: Python control flow is fixed by the example. Tracing patches module-level names: do not trace
from two threads at once.

Used by the ONNX exporter, ``fastconv.summary`` and ``fastconv.viz``.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
from dataclasses import dataclass, field

import numpy as np

from . import functional as F
from .nn.layers import Sequential
from .nn.module import Module, Parameter
from .tensor import Tensor, tensor

__all__ = ["Node", "Graph", "trace", "TENSOR_METHODS"]

# Tensor methods that compute something (their aliases, such as ``view``, are separate attributes).
TENSOR_METHODS = ("__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__",
                  "__rtruediv__", "__neg__", "__pow__", "__matmul__", "__getitem__", "exp", "log", "tanh",
                  "sigmoid", "relu", "abs", "sum", "mean", "reshape", "view", "flatten", "transpose",
                  "permute", "astype")


@dataclass
class Node:
    """One op call: its name (``"conv2d"``, ``"__add__"``), its arguments bound to their names with the
    defaults filled in (Tensors included), its output Tensors, and the innermost module that ran it."""
    op: str
    args: dict
    outputs: tuple
    module: str = ""              # dotted name in the traced model ("" for the model's own forward)
    layer: Module | None = None

    @property
    def output(self):
        return self.outputs[0]

    def tensors(self):
        """The Tensor arguments, in the order of the op's signature (one level into tuples and lists)."""
        found = []
        for value in self.args.values():
            items = value if isinstance(value, (tuple, list)) else (value,)
            found.extend(v for v in items if isinstance(v, Tensor))
        return found


@dataclass
class Graph:
    """The traced model: its input, its nodes in execution order, and what it returned."""
    input: Tensor
    nodes: list = field(default_factory=list)
    output: object = None
    params: dict = field(default_factory=dict)  # id(Parameter) -> dotted name

    def producers(self):
        """id(Tensor) -> the node that made it."""
        return {id(t): node for node in self.nodes for t in node.outputs}


class _Recorder:
    def __init__(self, model):
        self.nodes, self.depth, self.stack = [], 0, []
        self.names = {id(m): name for name, m in model.named_modules()}

    def wrap(self, name, fn):
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def recorded(*args, **kwargs):
            if self.depth:
                return fn(*args, **kwargs)
            self.depth += 1
            try:
                out = fn(*args, **kwargs)
            finally:
                self.depth -= 1
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            outputs = tuple(v for v in (out if isinstance(out, tuple) else (out,)) if isinstance(v, Tensor))
            module, layer = self.stack[-1] if self.stack else ("", None)
            self.nodes.append(Node(name, dict(bound.arguments), outputs, module, layer))
            return out
        return recorded

    def wrap_call(self, call):
        @functools.wraps(call)
        def recorded_call(module, *args, **kwargs):
            if self.depth:  # a module run inside a recorded op is part of that op
                return call(module, *args, **kwargs)
            self.stack.append((self.names.get(id(module), type(module).__name__), module))
            try:
                return call(module, *args, **kwargs)
            finally:
                self.stack.pop()
        return recorded_call


@contextlib.contextmanager
def _recording(recorder):
    """Swap the recorders in for the ops (functional names, Tensor methods, Module.__call__), then back."""
    saved = [(F, name, getattr(F, name)) for name in F.__all__]
    saved += [(Tensor, name, Tensor.__dict__[name]) for name in TENSOR_METHODS]
    saved.append((Module, "__call__", Module.__call__))
    saved.append((Sequential, "fuses", Sequential.fuses))
    try:
        for owner, name, original in saved[:-2]:
            setattr(owner, name, recorder.wrap(name, original))
        Module.__call__ = recorder.wrap_call(Module.__call__)
        Sequential.fuses = False  # every layer as written, not activations run inside their neighbours
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


def trace(model, example_input, eval_mode=True):
    """Run ``model`` on ``example_input`` (an array or Tensor; it is copied) and return the :class:`Graph`
    of the ops it ran: in eval mode by default (dropout off; the model's mode is restored afterwards),
    in the model's own mode with ``eval_mode=False``."""
    if not isinstance(model, Module):
        raise TypeError(f"model must be a fastconv.nn.Module, got {type(model).__name__}")
    x = tensor(example_input.numpy() if isinstance(example_input, Tensor) else example_input)
    if x.dtype.kind == "f":
        x.requires_grad = True  # every value computed from the input is then a graph node, never a leaf
    recorder = _Recorder(model)
    was_training = model.training
    if eval_mode:
        model.eval()
    try:
        with _recording(recorder):
            output = model(x)
    finally:
        model.train(was_training)
    params = {id(p): name for name, p in model.named_parameters()}
    return Graph(x, recorder.nodes, output, params)


def is_constant(t):
    """A leaf Tensor the model did not compute from its input: a parameter, or a constant it made."""
    return isinstance(t, Parameter) or t.is_leaf


def as_array(value):
    return value.numpy() if isinstance(value, Tensor) else np.asarray(value)
