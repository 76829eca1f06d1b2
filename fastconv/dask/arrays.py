"""``apply``: a fastconv op or network on a dask array, one task per block of the output.

The graph is built here rather than from ``map_overlap``: each output block's task reads the input range
its plan needs (``geometry.plan``), gathered from as many chunks as that range covers (a kernel larger
than a chunk reaches past its neighbours) as slices of those chunks, and replays the whole network on it
(``Program.run``). One task per block plus one per halo slice, whatever the number of layers.
"""
from __future__ import annotations

import copy
import itertools
import operator

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from .. import shapes
from ..tensor import Tensor, no_grad
from . import geometry
from .chunking import auto_chunks
from .program import Program, as_module

def apply(module_or_fn, x, chunks=None):
    """Run a fastconv network or function on a dask array, lazily; returns a dask array.

    ``module_or_fn``: an ``nn.Module`` or a function of one Tensor (``lambda t: F.conv2d(t, w,
    padding="same")``), run in eval mode on a copy of its weights as they are now. ``x``: an
    ``(N, C, L)`` or ``(N, C, H, W)`` float32/float64 dask array (or NumPy array), chunked along any axes.
    ``chunks``: rechunk ``x`` first (dask's chunk syntax); for a NumPy array without ``chunks``,
    :func:`auto_chunks` chooses them.

    The network is traced once on a small example (``fastconv.trace``). If every op it runs is local
    (convolutions, pooling, activations, arithmetic with constants that do not vary in space), each
    output block runs the whole network on exactly the input range it reads: the receptive field with
    each op's stride, dilation and padding, gathered from neighbouring chunks however small they are.
    Block edges fall on the overall stride, the array's outer border keeps each op's own padding (zeros
    for convolution, -inf for max pooling, average pooling's divisors and ``ceil_mode``), so the result
    is the in-memory one (up to the rounding of a kernel the planner picks for the block's shape; big
    kernels run as one FFT per block). Channel chunks are merged when an op mixes channels (any
    convolution, or a constant that varies along channels); pooling and elementwise ops keep them. With
    no spatial chunks, the network runs per batch chunk (a plain ``map_blocks``). A network with an op
    that needs whole planes (flatten, linear, adaptive pooling, max pooling with indices) runs on whole
    samples: spatial and channel chunks are merged first.
    """
    model = as_module(module_or_fn)
    shape, dtype = _check_input(x)
    program = Program.of(model, shape, dtype)
    if isinstance(x, da.Array):
        x = x if chunks is None else x.rechunk(chunks)
    else:
        x = da.from_array(np.asarray(x), chunks=auto_chunks(shape, dtype, program) if chunks is None else chunks)
    whole = {axis: -1 for axis in range(2, x.ndim)}
    if not program.local:
        return _per_sample(model, program, x.rechunk({1: -1, **whole}))
    if program.mixes_channels and x.numblocks[1] > 1:
        x = x.rechunk({1: -1})
    if all(n == 1 for n in x.numblocks[2:]):
        return _per_sample(model, program, x)
    return _blocks(program, x)


def _check_input(x):
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"x must be a dask or NumPy array, got {type(x).__name__}")
    if len(x.shape) not in (3, 4):
        raise ValueError(f"x must be 3-D (N, C, L) or 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    if any(s == 0 for s in x.shape):
        raise ValueError(f"x must not be empty, got shape {tuple(x.shape)}")
    return tuple(x.shape), shapes.check_float(x=x.dtype)


# ------------------------------------------------------------------------------------ graphs
def _array(name, dsk, x, chunks, dtype):
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[x])
    return da.Array(graph, name, chunks, meta=np.empty((0,) * len(chunks), dtype))


def _per_sample(model, program, x):
    """One task per chunk of ``x`` (spatial axes whole): the model itself on each, as in memory."""
    snapshot = copy.deepcopy(model).eval()
    token = tokenize(x.name, snapshot)
    name, model_key = f"fastconv-apply-{token}", f"fastconv-model-{token}"
    dsk = {model_key: snapshot}
    if program.local:
        channels = x.chunks[1] if not program.mixes_channels else (program.out_shape[1],)
        sizes = program.sizes(x.shape[2:])[program.output]
        chunks = (x.chunks[0], channels) + tuple((s,) for s in sizes)
    else:
        chunks = (x.chunks[0],) + tuple((s,) for s in program.out_shape[1:])
    zeros = (0,) * (len(chunks) - 2)
    for i, c in itertools.product(*map(range, x.numblocks[:2])):
        out = (name, i) + ((c,) + zeros if program.local else (0,) * (len(chunks) - 1))
        dsk[out] = (_run_model, model_key, (x.name, i, c) + (0,) * (x.ndim - 2))
    return _array(name, dsk, x, chunks, program.dtype)


def _run_model(model, block):
    with no_grad():
        return model(Tensor(block)).numpy()


def _blocks(program, x):
    """One task per output block: the program on the input range the block reads (plus one task per
    slice of a chunk that range covers in part)."""
    dims = x.ndim - 2
    spatial = x.shape[2:]
    sizes = program.sizes(spatial)
    jumps = program.jumps(dims)[program.output]
    axes = []  # per spatial axis: [(AxisPlan, input pieces)] per output block
    for axis in range(dims):
        starts = np.cumsum((0,) + x.chunks[2 + axis][:-1]).tolist()
        blocks = geometry.out_blocks(starts, jumps[axis], sizes[program.output][axis])
        plans = [geometry.plan(program.steps, program.output, sizes, axis, o0, o1) for o0, o1 in blocks]
        axes.append([(p, _pieces(p.need[program.input], starts, x.chunks[2 + axis])) for p in plans])
    token = tokenize(x.name, program.steps, program.out_shape)
    name, halo, program_key = (f"fastconv-apply-{token}", f"fastconv-halo-{token}", f"fastconv-program-{token}")
    dsk = {program_key: program}
    for i, c in itertools.product(*map(range, x.numblocks[:2])):
        for index in itertools.product(*map(range, map(len, axes))):
            chosen = [axes[axis][j] for axis, j in enumerate(index)]

            def piece(parts):
                source = (x.name, i, c) + tuple(k for k, _, _ in parts)
                if all(whole for _, _, whole in parts):
                    return source
                key = (halo, i, c) + index + tuple(k for k, _, _ in parts)
                dsk[key] = (operator.getitem, source, (slice(None), slice(None)) + tuple(s for _, s, _ in parts))
                return key

            dsk[(name, i, c) + index] = (_run_block, program_key, [p for p, _ in chosen],
                                         _nested([parts for _, parts in chosen], piece))
    channels = x.chunks[1] if not program.mixes_channels else (program.out_shape[1],)
    chunks = (x.chunks[0], channels) + tuple(tuple(p.need[program.output][1] - p.need[program.output][0]
                                                   for p, _ in axis) for axis in axes)
    return _array(name, dsk, x, chunks, program.dtype)


def _pieces(need, starts, sizes):
    """The chunks the range ``need`` covers along one axis: ``(chunk, slice in it, whole chunk?)``."""
    lo, hi = need
    out = []
    for k, (start, size) in enumerate(zip(starts, sizes)):
        a, b = max(lo, start), min(hi, start + size)
        if a < b:
            out.append((k, slice(a - start, b - start), b - a == size))
    return out or [(0, slice(0, 0), False)]  # a block that reads only padding along this axis


def _nested(parts, make, prefix=()):
    """Nested lists (one level per spatial axis) of ``make(parts chosen along each axis)``."""
    if not parts:
        return make(prefix)
    return [_nested(parts[1:], make, prefix + (part,)) for part in parts[0]]


def _run_block(program, plans, pieces):
    """Assemble the block's input from its pieces (nested lists, one level per spatial axis) and run the
    program on it."""
    single = pieces
    while isinstance(single, list) and len(single) == 1:
        single = single[0]
    return program.run(single if isinstance(single, np.ndarray) else np.block(pieces), plans)
