"""Chunk sizes for ``apply`` when the user gives none.

A task holds its input block (with halo), the values between its layers and its output; the budget for
that is dask's ``array.chunk-size`` (128 MiB by default), measured per input position by
``Program.bytes_per_position`` (the widest layer's input and output together, coarser grids counting
less). Whole samples are preferred: while one sample fits the budget, only the batch is chunked (no halo
at all, one task per chunk). Larger samples get one sample per chunk and square (cubic) spatial chunks
of the side that fits, a multiple of the overall stride and at least four times the halo (the halo
then adds at most about half again to a block's input).
"""
from __future__ import annotations

import math

import dask
import numpy as np
from dask.utils import parse_bytes

from .program import Program, as_module


def auto_chunks(shape, dtype, network, limit=None):
    """Chunks (a tuple of ints) for an ``(N, C, *spatial)`` array of ``dtype`` run through ``network``
    (an ``nn.Module``, a function of a Tensor, or its :class:`Program`).

    ``limit``: bytes per task (default: dask's ``array.chunk-size``).
    """
    program = network if isinstance(network, Program) else Program.of(as_module(network), shape, dtype)
    limit = parse_bytes(limit if limit is not None else dask.config.get("array.chunk-size"))
    dims = len(shape) - 2
    spatial = shape[2:]
    per_position = program.bytes_per_position(dims, np.dtype(dtype).itemsize) if program.local \
        else 2 * shape[1] * np.dtype(dtype).itemsize
    sample = per_position * math.prod(spatial)
    if sample <= limit or not program.local:
        return (max(1, min(shape[0], int(limit // sample))), shape[1]) + tuple(spatial)
    jumps = program.jumps(dims)[program.output]
    halos = program.halo(dims)
    side = int((limit / per_position) ** (1 / dims))
    sides = []
    for length, jump, (before, after) in zip(spatial, jumps, halos):
        s = max(side, 4 * (before + after), jump)
        sides.append(min(length, s - s % jump))
    return (1, shape[1]) + tuple(sides)
