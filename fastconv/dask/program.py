"""A network as a replayable list of steps, read from a trace: what ``apply`` runs on every block.

``Program.trace(model, example)`` runs the model once on a small example (``fastconv.trace``) and keeps
the ops its output depends on. Convolutions and pooling become windowed steps (their :class:`Window`
per spatial axis, read from the op's own spec in ``fastconv.shapes``), activations and arithmetic with
constants elementwise steps. A program of such steps is *local*: any block of its output needs only a
window of the input, so ``apply`` can run it block by block. Anything else (flatten, linear, adaptive
pooling, max pooling with indices, a constant that varies in space) makes the program non-local: it needs
whole planes.

``Program.run`` replays the steps on one block: each windowed step runs on the input range its
:class:`~fastconv.dask.geometry.AxisPlan` gives, with the op's own arguments except its padding, which
the block adds itself where its range leaves the array (see ``geometry``), and keeps the outputs the
block needs.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np

from .. import functional as F
from .. import shapes
from ..nn.module import Module
from ..tensor import Tensor, no_grad
from ..trace import trace
from . import geometry

#: Spatial sizes above this are traced on an example cut down to it.
EXAMPLE_SIZE = 256
#: Windowed ops: name -> (their kind of window, spatial dims).
WINDOWED = {
    "conv1d": ("conv", 1), "conv2d": ("conv", 2),
    "max_pool1d": ("max", 1), "max_pool2d": ("max", 2),
    "avg_pool1d": ("avg", 1), "avg_pool2d": ("avg", 2),
    "lp_pool1d": ("lp", 1), "lp_pool2d": ("lp", 2),
}
#: Ops that act on each element alone (with scalars, or constants that do not vary in space).
ELEMENTWISE = {"relu", "tanh", "sigmoid", "dropout", "exp", "log", "abs", "astype", "__neg__", "__pow__",
               "__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__",
               "__rtruediv__"}


@dataclass(frozen=True)
class Value:
    """A placeholder in a step's arguments for value ``index`` of the program."""
    index: int


@dataclass
class Step:
    """One op: its function, its arguments (values as :class:`Value`), the values it reads, the one it
    makes, its windows (None for an elementwise step) and whether it mixes channels."""
    name: str
    fn: object
    args: tuple
    kwargs: dict
    inputs: tuple
    output: int
    windows: tuple | None
    mixes_channels: bool


class NotLocal(Exception):
    """The traced network has an op that needs whole planes; the message names it."""


class Program:
    """The steps of a network, replayable on blocks.

    ``local``: blocks need only windows of the input (else ``reason`` names the op that needs whole
    planes and there are no steps). ``out_shape``, ``dtype``: the traced output's (a batch of one);
    ``channels``, ``dtypes``: value index -> its channel count and dtype.
    """

    def __init__(self, steps, channels, dtypes, out_shape, dtype, local=True, reason=""):
        self.steps, self.channels, self.dtypes = steps, channels, dtypes
        self.out_shape, self.dtype, self.local, self.reason = tuple(out_shape), dtype, local, reason
        self.input, self.output = 0, (steps[-1].output if steps else 0)
        self.last_use = {v: i for i, step in enumerate(steps) for v in step.inputs}

    # ------------------------------------------------------------------------------ building
    @classmethod
    def of(cls, model, shape, dtype):
        """The program of ``model`` for ``(N, C, *spatial)`` inputs of ``dtype``: traced on one sample cut
        down to ``EXAMPLE_SIZE`` (the windows do not depend on the size), or on a whole sample where that
        fails or where the network needs whole planes (its output shape depends on it)."""
        small = (1, shape[1]) + tuple(min(s, EXAMPLE_SIZE) for s in shape[2:])
        full = (1,) + tuple(shape[1:])
        if small != full:
            try:
                program = cls.trace(model, np.zeros(small, dtype))
                if program.local:
                    return program
            except ValueError:
                pass  # e.g. a network that takes one input size only
        return cls.trace(model, np.zeros(full, dtype))

    @classmethod
    def trace(cls, model, example):
        """Trace ``model`` on ``example`` (a NumPy array) and keep the ops its output depends on."""
        graph = trace(model, example)
        out = graph.output
        if not isinstance(out, Tensor):
            raise TypeError(f"the model must return one Tensor, got {type(out).__name__}")

        def whole_planes(reason):
            return cls([], {0: example.shape[1]}, {0: example.dtype}, out.shape, out.dtype, False, reason)
        dims = example.ndim - 2
        if out.ndim != example.ndim:
            return whole_planes(f"its output has shape {out.shape}, not (N, C) and {dims} spatial axes")
        index, channels, dtypes, steps = {id(graph.input): 0}, {0: example.shape[1]}, {0: example.dtype}, []
        try:
            for node in _needed(graph):
                if id(node.output) in index:  # an op that returned its input (dropout in eval mode)
                    continue
                steps.append(_step(node, index, dims, len(index)))
                channels[len(index)], dtypes[len(index)] = node.output.shape[1], node.output.dtype
                index[id(node.output)] = len(index)
        except NotLocal as err:
            return whole_planes(str(err))
        if id(out) not in index:
            return whole_planes("its output is not computed from its input")
        return cls(steps, channels, dtypes, out.shape, out.dtype)

    @property
    def mixes_channels(self):
        return any(step.mixes_channels for step in self.steps)

    # ------------------------------------------------------------------------------ geometry
    def _forward(self, start, rule):
        """Value index -> ``rule(window, value of the step's input)`` folded over the steps."""
        out = {self.input: start}
        for step in self.steps:
            source = out[step.inputs[0]]
            out[step.output] = source if step.windows is None else tuple(
                rule(w, s) for w, s in zip(step.windows, source))
        return out

    def sizes(self, spatial):
        """Value index -> its spatial sizes, for an input of spatial sizes ``spatial``."""
        return self._forward(tuple(spatial), lambda w, length: w.out_size(length))

    def jumps(self, dims):
        """Value index -> input positions between its neighbouring elements, per spatial axis (the
        product of the strides before it)."""
        return self._forward((1,) * dims, lambda w, jump: jump * w.stride)

    def halo(self, dims):
        """Per spatial axis, ``(before, after)``: how far an interior block reads past the stride cells of
        its outputs (the receptive field's reach, padding included)."""
        big = 1 << 40  # an interior block, far from the borders of a huge array
        sizes = self.sizes((big,) * dims)
        jump = self.jumps(dims)[self.output]
        halos = []
        for axis in range(dims):
            o = sizes[self.output][axis] // 2
            lo, hi = geometry.plan(self.steps, self.output, sizes, axis, o, o + 1).need[self.input]
            halos.append((o * jump[axis] - lo, hi - (o + 1) * jump[axis]))
        return tuple(halos)

    def bytes_per_position(self, dims, itemsize):
        """Bytes a block holds per input position: the widest step's input and output together (values
        of coarser grids count less), the measure ``auto_chunks`` sizes blocks by."""
        jumps = self.jumps(dims)

        def per_position(v):
            return self.channels[v] / np.prod(jumps[v])
        widest = max([per_position(s.inputs[0]) + per_position(s.output) for s in self.steps],
                     default=2 * per_position(self.input))
        return widest * itemsize

    # ------------------------------------------------------------------------------ running
    def run(self, block, plans):
        """Replay the steps on ``block`` (the input over ``plans[axis].need[input]`` along each spatial
        axis) and return the output over ``plans[axis].need[output]``, a NumPy array."""
        values = {self.input: block}
        need = [p.need for p in plans]
        with no_grad():
            for i, step in enumerate(self.steps):
                if step.output not in need[0]:
                    continue  # not needed by this block
                want = [n[step.output] for n in need]
                if any(lo >= hi for lo, hi in want):  # an empty block (it reads only padding)
                    y = np.empty(block.shape[:1] + (self.channels[step.output],) + tuple(max(0, hi - lo)
                                 for lo, hi in want), self.dtypes[step.output])
                elif step.windows is None:
                    y = _call(step, {v: _crop(values[v], [n[v] for n in need], want) for v in step.inputs})
                else:
                    (source,) = step.inputs
                    runs = [p.runs[i] for p in plans]
                    x = _crop(values[source], [n[source] for n in need], [(r.a, r.b) for r in runs])
                    if any(r.before or r.after for r in runs):
                        pads = ((0, 0), (0, 0)) + tuple((r.before, r.after) for r in runs)
                        x = np.pad(x, pads, constant_values=step.windows[0].pad_value)
                    y = _call(step, {source: x})
                    y = _crop(y, [(r.first, r.first + n) for r, n in zip(runs, y.shape[2:])], want)
                values[step.output] = y
                for v in step.inputs:  # free what no later step reads
                    if self.last_use[v] == i:
                        del values[v]
        return values[self.output]


# ---------------------------------------------------------------------------------- helpers
def _needed(graph):
    """The traced nodes the output depends on, in the order they ran."""
    producers = graph.producers()
    wanted, stack = set(), [id(graph.output)]
    while stack:
        node = producers.get(stack.pop())
        if node is not None and id(node) not in wanted:
            wanted.add(id(node))
            stack.extend(id(t) for t in node.tensors())
    return [node for node in graph.nodes if id(node) in wanted]


def _step(node, index, dims, output):
    """The :class:`Step` of a traced node whose graph inputs are in ``index``; NotLocal otherwise."""
    if node.op not in WINDOWED and node.op not in ELEMENTWISE:
        raise NotLocal(f"{_where(node)}{node.op} needs whole planes")
    if len(node.outputs) != 1:
        raise NotLocal(f"{_where(node)}{node.op} with indices needs whole planes (indices are positions in "
                       f"the whole plane)")
    fn = getattr(F, node.op) if node.op in F.__all__ else getattr(Tensor, node.op)
    args, operands, constants = {}, [], []
    for name, value in node.args.items():
        if isinstance(value, Tensor) and id(value) in index:
            args[name] = Value(index[id(value)])
            operands.append(value)
        elif isinstance(value, Tensor):
            args[name] = Tensor(value.numpy().copy())
            constants.append(value)
        else:
            args[name] = value
    windows = _windows(node, dims) if node.op in WINDOWED else None
    if windows is None:  # elementwise: mixes channels only through an operand broadcast along them
        mixes = any([_varies_along_channels(node, c, dims) for c in constants]) or \
            len({t.shape[1] for t in operands}) > 1
    else:
        mixes = WINDOWED[node.op][0] == "conv"
        if windows[0].pad_value is not None and "padding" in args:
            args["padding"] = 0  # blocks pad themselves (geometry.Window.run)
    inputs = tuple(dict.fromkeys(v.index for v in args.values() if isinstance(v, Value)))
    bound = inspect.BoundArguments(inspect.signature(fn), args)
    return Step(node.op, fn, bound.args, bound.kwargs, inputs, output, windows, mixes)


def _where(node):
    return f"{node.module} ({type(node.layer).__name__}): " if node.module else ""


def _varies_along_channels(node, value, dims):
    """Whether a constant operand of an elementwise op varies along channels; NotLocal if it varies
    along the batch or in space."""
    shape = (1,) * (dims + 2 - value.ndim) + tuple(value.shape)
    if value.ndim > dims + 2 or shape[0] != 1 or any(s != 1 for s in shape[2:]):
        raise NotLocal(f"{_where(node)}{node.op} with a constant of shape {value.shape} that varies in space "
                       f"needs whole planes")
    return shape[1] != 1


def _windows(node, dims):
    """The op's :class:`Window` per spatial axis, from the spec ``fastconv.shapes`` builds for it."""
    kind, op_dims = WINDOWED[node.op]
    if op_dims != dims:
        raise NotLocal(f"{_where(node)}{node.op} on a {dims}-D input")
    a = node.args
    x_shape = a["input"].shape
    if kind == "conv":
        w, b = a["weight"], a["bias"]
        spec = shapes.conv_spec(x_shape, w.shape, None if b is None else b.shape, a["stride"], a["padding"],
                                a["dilation"], a["groups"], dims)
    elif kind == "max":
        spec = shapes.pool_spec(x_shape, a["kernel_size"], a["stride"], a["padding"], a["dilation"],
                                a["ceil_mode"], dims=dims)
    elif kind == "avg":
        spec = shapes.pool_spec(x_shape, a["kernel_size"], a["stride"], a["padding"], 1, a["ceil_mode"],
                                a["count_include_pad"], dims=dims)
    else:  # lp pooling: an average pooling of x**p without padding
        spec = shapes.pool_spec(x_shape, a["kernel_size"], a["stride"], 0, 1, a["ceil_mode"], dims=dims)
    ceil = getattr(spec, "ceil_mode", False)
    value = -np.inf if kind == "max" else 0.0
    if kind == "avg" and not spec.count_include_pad and any(spec.padding):
        value = None  # the divisors leave padding out: no value stands for it
    pt, pb, pl, pr = spec.padding
    (sh, sw), (dh, dw) = spec.stride, spec.dilation
    cols = geometry.Window(spec.kw, sw, dw, pl, pr, value, ceil)
    return (cols,) if dims == 1 else (geometry.Window(spec.kh, sh, dh, pt, pb, value, ceil), cols)


def _crop(array, have, want):
    """The part ``want`` (one ``(lo, hi)`` per spatial axis) of ``array``, which holds ``have``."""
    index = (slice(None), slice(None)) + tuple(slice(w0 - h0, w1 - h0) for (h0, _), (w0, w1) in zip(have, want))
    return array[index]


def _call(step, arrays):
    """Run ``step`` with ``arrays`` (value index -> array) in place of its values; a NumPy array."""
    tensors = {index: Tensor(np.ascontiguousarray(a)) for index, a in arrays.items()}

    def resolve(v):
        return tensors[v.index] if isinstance(v, Value) else v
    args = [resolve(v) for v in step.args]
    kwargs = {k: resolve(v) for k, v in step.kwargs.items()}
    return step.fn(*args, **kwargs).numpy()


def as_module(module_or_fn):
    """A Module to trace: the module itself, or a function ``fn(x) -> Tensor`` wrapped as one."""
    if isinstance(module_or_fn, Module):
        return module_or_fn
    if not callable(module_or_fn):
        raise TypeError(f"module_or_fn must be a fastconv.nn.Module or a function of a Tensor, got "
                        f"{type(module_or_fn).__name__}")
    return Function(module_or_fn)


class Function(Module):
    """A function of one Tensor as a Module (so that it can be traced and shipped like one)."""

    def __init__(self, fn):
        self.fn = fn

    def forward(self, x):
        return self.fn(x)
