"""Batches of arrays, by slicing (in order) or fancy indexing (shuffled): no per-sample Python work.

``DataLoader(x, y, batch_size=128, shuffle=True, seed=0)`` yields ``(x_batch, y_batch)`` tuples of NumPy
arrays. Shuffling uses the loader's own generator (seeded by ``seed``, else drawn from fastconv's seeded
generator), whose state ``state_dict()`` captures, so a resumed run sees the same batches.
"""
from __future__ import annotations

import numpy as np

from .. import shapes
from ..random import generator

__all__ = ["DataLoader", "random_shift"]


class DataLoader:
    """Iterate over aligned arrays in batches of ``batch_size`` along axis 0.

    ``shuffle``: a new permutation every epoch. ``drop_last``: skip a final short batch.
    ``reuse_buffers``: shuffled batches are gathered into arrays allocated once and overwritten by the
    next batch (fast; the consumer must be done with a batch before asking for the next).
    Unshuffled batches are views of the arrays (no copy).
    """

    def __init__(self, *arrays, batch_size=1, shuffle=False, drop_last=False, seed=None, reuse_buffers=False):
        if not arrays:
            raise ValueError("DataLoader needs at least one array")
        arrays = tuple(shapes.as_array(f"arrays[{i}]", a) for i, a in enumerate(arrays))
        n = len(arrays[0]) if arrays[0].ndim else 0
        if any(a.ndim == 0 or len(a) != n for a in arrays):
            raise ValueError(f"arrays must share their first dimension, got shapes {[a.shape for a in arrays]}")
        batch_size = shapes.integer("batch_size", batch_size, 1, None)
        shuffle, drop_last = shapes.flag("shuffle", shuffle), shapes.flag("drop_last", drop_last)
        reuse_buffers = shapes.flag("reuse_buffers", reuse_buffers)
        _check_seed(seed)
        if n == 0 or (drop_last and n < batch_size):
            raise ValueError(f"no batch of {batch_size} fits in {n} samples")
        self.arrays, self.n, self.batch_size = arrays, n, int(batch_size)
        self.shuffle, self.drop_last, self.reuse_buffers = bool(shuffle), bool(drop_last), bool(reuse_buffers)
        self.rng = np.random.default_rng(int(generator().integers(2 ** 63)) if seed is None else seed)
        self._buffers = None

    def __len__(self):
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def __iter__(self):
        bs = self.batch_size
        stop = len(self) * bs
        if not self.shuffle:
            for start in range(0, stop, bs):
                yield tuple(a[start:start + bs] for a in self.arrays)
            return
        order = self.rng.permutation(self.n)
        if self.reuse_buffers and self._buffers is None:
            self._buffers = tuple(np.empty((bs,) + a.shape[1:], a.dtype) for a in self.arrays)
        for start in range(0, stop, bs):
            index = order[start:start + bs]
            if self.reuse_buffers:
                k = len(index)
                yield tuple(np.take(a, index, axis=0, out=buf[:k], mode="clip")
                            for a, buf in zip(self.arrays, self._buffers))
            else:
                yield tuple(a[index] for a in self.arrays)

    def state_dict(self):
        """The shuffling generator's state (plain Python values)."""
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state):
        self.rng.bit_generator.state = state["rng"]


def _check_seed(seed):
    """``seed`` is None, a non-negative int or a non-empty sequence of them (NumPy's seeds)."""
    if seed is None:
        return
    items = (seed,) if shapes.is_int(seed) else seed
    if not isinstance(items, (tuple, list)) or not items or not all(shapes.is_int(v) for v in items):
        raise TypeError(f"seed must be None, a non-negative int or a sequence of them, got {seed!r}")
    if min(items) < 0:
        raise ValueError(f"seed must be non-negative, got {seed!r}")


def random_shift(images, max_shift, rng, fill=0.0, out=None):
    """Translate each image of ``(N, C, H, W)`` by its own random ``(dy, dx)`` in ``[-max_shift,
    max_shift]``, filling the uncovered border with ``fill``.

    Vectorised over images: one pass per distinct shift ((2*max_shift+1)**2 of them), never per image.
    """
    images = shapes.as_array("images", images)
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {images.shape}")
    shapes.integer("max_shift", max_shift, 0, None)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    shapes.real("fill", fill)
    if out is not None and (not isinstance(out, np.ndarray) or out.shape != images.shape
                            or out.dtype != images.dtype):
        raise ValueError(f"out must be an array of the images' shape {images.shape} and dtype {images.dtype}")
    n, _, h, w = images.shape
    m = int(max_shift)
    if out is None:
        out = np.empty_like(images)
    if m == 0:
        out[...] = images
        return out
    side = 2 * m + 1
    shifts = rng.integers(0, side * side, n)
    out.fill(fill)
    for code in np.unique(shifts):
        dy, dx = code // side - m, code % side - m
        sel = np.flatnonzero(shifts == code)
        src_y, dst_y = slice(max(0, -dy), h - max(0, dy)), slice(max(0, dy), h - max(0, -dy))
        src_x, dst_x = slice(max(0, -dx), w - max(0, dx)), slice(max(0, dx), w - max(0, -dx))
        out[sel, :, dst_y, dst_x] = images[sel, :, src_y, src_x]
    return out
