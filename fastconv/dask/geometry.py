"""What a block of a convolutional network reads along one spatial axis: the windows of its ops, and the
input range (the halo) behind any range of outputs.

A windowed op (convolution, pooling) along one axis is a :class:`Window`: output ``o`` reads the inputs
``o*stride - pad_lo + i*dilation`` for ``0 <= i < kernel``, and reads outside ``[0, L)`` see the op's
padding. A block that wants outputs ``[o0, o1)`` reads exactly the inputs those outputs read (the receptive
field), and runs the op without padding on them; where they reach past the array's border, the block pads
with the value the op pads with (zeros for convolution and average pooling, -inf for max pooling), so every
output reads what it reads in memory, ``ceil_mode`` windows included.

Average pooling that leaves padding out of its divisors (``count_include_pad=False``) has no such value: it
runs with its own padding on a range whose start is moved down to a multiple of the stride (so that its
output grid on the block is the global grid), and the block keeps only the outputs that read no padding
but the array's own; that costs less than one stride of extra input.

:func:`plan` walks a network's steps backwards from one block of outputs and returns, per value, the range
the block needs of it and, per windowed step, how the block runs it (:class:`Run`). Axes are independent,
so a block of an N-D output is the product of one plan per axis.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..shapes import conv_output_size, pool_output_size


@dataclass(frozen=True)
class Window:
    """One windowed op along one spatial axis. ``pad_value``: what it reads beyond the array (None: only
    the op knows, see the module's docstring); ``ceil_mode``: pooling's rule for the last window."""
    kernel: int
    stride: int
    dilation: int
    pad_lo: int
    pad_hi: int
    pad_value: float | None = 0.0
    ceil_mode: bool = False

    def out_size(self, length):
        """Number of outputs for ``length`` inputs, as the op computes it."""
        if self.ceil_mode:  # pooling: symmetric padding
            return pool_output_size(length, self.kernel, self.stride, self.pad_lo, self.dilation, True)
        return conv_output_size(length, self.kernel, self.stride, (self.pad_lo, self.pad_hi), self.dilation)

    def reads(self, o0, o1):
        """The inputs ``[lo, hi)`` outputs ``[o0, o1)`` read (beyond ``[0, L)`` where they read padding)."""
        start = o0 * self.stride - self.pad_lo
        return start, (o1 - 1) * self.stride - self.pad_lo + self.dilation * (self.kernel - 1) + 1

    def run(self, o0, o1, length):
        """How a block computes outputs ``[o0, o1)`` from an input of ``length``: a :class:`Run`."""
        lo, hi = self.reads(o0, o1)
        if self.pad_value is not None:  # the receptive field, padded where it leaves the array
            hi = min(hi, length + self.pad_hi)  # a ceil_mode window hanging past the padding reads no more
            a, b = min(max(lo, 0), length), max(min(hi, length), 0)
            return Run(a, b, max(0, min(a, hi) - lo), max(0, hi - max(b, lo)), o0)
        last = length - 1  # outputs reading only right padding still need a window inside the array
        a = min(max(lo, 0), last)
        a -= a % self.stride
        return Run(a, max(min(hi, length), a + 1), 0, 0, a // self.stride)


@dataclass(frozen=True)
class Run:
    """A windowed step on one block along one axis: the input range ``[a, b)`` it reads, the padding it
    adds ``before`` and ``after`` it, and ``first``, the output its first output is."""
    a: int
    b: int
    before: int
    after: int
    first: int


@dataclass
class AxisPlan:
    """One block along one axis: ``need[v]``, the range of value ``v`` it needs; ``runs[s]``, how
    windowed step ``s`` runs (a :class:`Run`)."""
    need: dict
    runs: dict


def plan(steps, output, sizes, axis, o0, o1):
    """The :class:`AxisPlan` of outputs ``[o0, o1)`` of value ``output`` along spatial ``axis``.

    ``steps``: objects with ``inputs`` (value ids), ``output`` (a value id) and ``windows`` (one
    :class:`Window` per spatial axis, or None for an elementwise step), in the order they run; ``sizes``:
    value id -> its spatial sizes. A value used by several steps is needed over the hull of their ranges.
    """
    need, runs = {output: (o0, o1)}, {}
    for index in range(len(steps) - 1, -1, -1):
        step = steps[index]
        if step.output not in need:
            continue
        lo, hi = need[step.output]
        if step.windows is not None and lo < hi:
            (source,) = step.inputs
            run = runs[index] = step.windows[axis].run(lo, hi, sizes[source][axis])
            lo, hi = run.a, run.b
        elif step.windows is not None:
            lo = hi = 0  # none of its outputs (they read only another op's padding)
        for value in step.inputs:
            have = need.get(value, (0, 0))
            need[value] = (lo, hi) if have[0] >= have[1] else have if lo >= hi else (min(have[0], lo),
                                                                                      max(have[1], hi))
    return AxisPlan(need, runs)


def out_blocks(boundaries, jump, out_size):
    """Output blocks ``[(o0, o1), ...]`` along an axis whose input chunks start at ``boundaries`` (0
    first): output ``o`` goes to the chunk holding input ``o * jump``, the start of its stride cell, so
    block edges fall on the overall stride. Chunks smaller than the stride share a block."""
    starts = sorted({min(-(-b // jump), out_size) for b in boundaries} | {0})
    edges = [s for s in starts if s < out_size] + [out_size]
    return list(zip(edges[:-1], edges[1:]))
