"""Separable (rank-1) kernels: one ``kh x kw`` convolution as a ``kh x 1`` pass and a ``1 x kw`` pass.

When every kernel slice is an outer product, ``w[o, c] = u[o, c] v[o, c]^T`` (Gaussian and box blurs,
Sobel, many designed filters), a direct convolution needs ``kh + kw`` multiply-adds per output and channel
pair instead of ``kh * kw``. Both passes are ordinary convolutions, planned like any other (``passes`` below gives each pass's
kernel):

* pass 1 (columns): every input channel is its own group and gets one output per ``u[o, c]``, with the
  row stride, padding and dilation: ``t[n, (g, c, o)] = x[n, (g, c)] (*) u[g, o, c]``;
* pass 2 (rows): the channels of ``t`` reordered to ``(g, o, c)``, one group per output channel, summing
  ``c`` with the column stride, padding and dilation: ``y[n, (g, o)] = sum_c t[n, (g, o, c)] (*) v[g, o, c]``.

The input gradient runs the adjoint passes in reverse order; the weight gradient is not separable (it is
a full ``kh x kw`` array) and stays with the backend's own kernel. The intermediate ``t`` holds
``C_in * C_out / groups`` planes, so the two passes only pay when channel counts are small or the kernel
is large; the planner decides where to look for rank-1 weights (``model.separable_worthwhile``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..shapes import ConvSpec


def tolerance(dtype):
    """Largest ``s1 / s0`` (second over first singular value) a slice may have to count as rank 1."""
    return 1e-6 if np.dtype(dtype) == np.float32 else 1e-13


def factors(w, rtol=None):
    """``(u (C_out, C_in/g, kh), v (C_out, C_in/g, kw))`` with ``w[o, c] ~ outer(u[o, c], v[o, c])`` for
    every slice, or None when some slice has rank above 1 (``s1 > rtol * s0``) or the kernel is 1-D.

    A cheap test against the outer product through each slice's largest entry rejects most kernels
    before the batched SVD that gives the factors.
    """
    n_out, n_in, kh, kw = w.shape
    if kh == 1 or kw == 1 or w.size == 0:
        return None
    rtol = tolerance(w.dtype) if rtol is None else rtol
    if not _minor_small(w[0, 0], rtol):  # most kernels stop here, in about a microsecond
        return None
    flat = np.asarray(w, dtype=np.float64).reshape(-1, kh, kw)
    if not _near_rank1(flat, rtol):
        return None
    u, s, vt = np.linalg.svd(flat)
    if np.any(s[:, 1] > rtol * s[:, 0]):
        return None
    cols, rows = _outer_factors(u, s, vt, 1, (n_out, n_in), w.dtype)
    return cols[0], rows[0]


def _outer_factors(u, s, vt, rank, lead, dtype):
    """The first ``rank`` singular triplets of slices ``(S, kh, kw)`` as column and row factors, each
    scaled by the root of its singular value: ``(rank, *lead, kh)`` and ``(rank, *lead, kw)``."""
    scale = np.sqrt(s[:, :rank])
    cols = np.moveaxis(u[:, :, :rank] * scale[:, None, :], 2, 0)
    rows = np.moveaxis(vt[:, :rank, :] * scale[:, :, None], 1, 0)
    return (np.ascontiguousarray(cols.reshape((rank,) + lead + (u.shape[1],)), dtype=dtype),
            np.ascontiguousarray(rows.reshape((rank,) + lead + (vt.shape[2],)), dtype=dtype))


@dataclass(frozen=True)
class Separation:
    """A 2-D kernel (or every kernel of a weight) as a sum of ``rank`` outer products:
    ``weight[..., i, j] ~ sum_r col_kernels[r, ..., i] * row_kernels[r, ..., j]``."""
    row_kernels: np.ndarray       # (rank, *lead, KW): the horizontal factors
    col_kernels: np.ndarray       # (rank, *lead, KH): the vertical factors
    rank: int
    error: float                  # largest relative error of one kernel (Frobenius norm)
    singular_values: np.ndarray   # (*lead, min(KH, KW)), largest first

    def weight(self):
        """The kernel the factors make: ``(*lead, KH, KW)``."""
        return np.einsum("r...i,r...j->...ij", self.col_kernels, self.row_kernels)


def separate(weight, tol=None, rank=None):
    """Factor a 2-D kernel ``(KH, KW)``, or every kernel of a weight ``(..., KH, KW)``, into outer
    products of a column and a row (its SVD): the fewest products, at most ``min(KH, KW)``, that leave
    every kernel within relative error ``tol`` (Frobenius norm; default: what the dtype rounds to), or
    exactly ``rank`` of them. Returns a :class:`Separation`, whose ``error`` says how exact it is;
    ``F.separable_conv2d(x, s.row_kernels, s.col_kernels)`` then runs the convolution as 1-D passes.

    >>> import numpy as np, fastconv as fc
    >>> sobel = np.array([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
    >>> s = fc.separate(sobel)
    >>> s.rank, bool(s.error < 1e-15), np.allclose(s.weight(), sobel)
    (1, True, True)
    """
    w = np.asarray(weight.numpy() if hasattr(weight, "numpy") else weight)
    if w.dtype not in (np.float32, np.float64):
        raise TypeError(f"weight must be float32 or float64, got {w.dtype}")
    if w.ndim < 2 or 0 in w.shape:
        raise ValueError(f"weight must be a kernel (KH, KW) or a weight (..., KH, KW) with no empty dim, "
                         f"got shape {w.shape}")
    lead, (kh, kw) = w.shape[:-2], w.shape[-2:]
    most = min(kh, kw)
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, (int, np.integer))
                             or not 1 <= rank <= most):
        raise ValueError(f"rank must be an int from 1 to min(KH, KW) = {most}, got {rank!r}")
    if tol is not None and not tol >= 0:
        raise ValueError(f"tol must be a non-negative number, got {tol!r}")
    u, s, vt = np.linalg.svd(w.reshape(-1, kh, kw).astype(np.float64))
    energy = np.sum(s ** 2, axis=1, keepdims=True)
    tail = np.sqrt(np.maximum(energy - np.cumsum(s ** 2, axis=1), 0.0) / np.where(energy == 0, 1.0, energy))
    errors = tail.max(axis=0)  # errors[r - 1]: the worst kernel's relative error with r products
    if rank is None:
        limit = 10 * np.finfo(w.dtype).eps if tol is None else tol
        rank = next(r for r in range(1, most + 1) if errors[r - 1] <= limit)
    cols, rows = _outer_factors(u, s, vt, rank, lead, w.dtype)
    return Separation(rows, cols, int(rank), float(errors[rank - 1]), s.reshape(lead + (most,)))


def _minor_small(a, rtol):
    """The top-left 2x2 minor of the slice ``a`` is as small as a rank-1 slice's (within ``rtol``)."""
    (p, q), (r, t) = a[:2, :2].tolist()
    peak = float(np.abs(a).max())
    return abs(p * t - q * r) <= 100 * rtol * max(a.shape) * peak * peak


def _near_rank1(flat, rtol):
    """Every slice of ``flat (S, kh, kw)`` is close to the outer product of the row and the column
    through its largest entry (a loose test: it only screens out kernels before the SVD)."""
    n, kh, kw = flat.shape
    rows, cols = np.divmod(np.abs(flat).reshape(n, -1).argmax(axis=1), kw)
    at = np.arange(n)
    peak = flat[at, rows, cols]
    safe = np.where(peak == 0, 1.0, peak)
    skeleton = flat[at, :, cols][:, :, None] * flat[at, rows, :][:, None, :] / safe[:, None, None]
    return bool(np.all(np.abs(flat - skeleton).max(axis=(1, 2)) <= 100 * rtol * max(kh, kw) * np.abs(peak)))


def pass_specs(spec):
    """The specs of the column pass and of the row pass of ``spec``."""
    cig, cog = spec.c_in // spec.groups, spec.c_out // spec.groups
    pt, pb, pl, pr = spec.padding
    (sh, sw), (dh, dw) = spec.stride, spec.dilation
    first = ConvSpec(spec.n, spec.c_in, spec.h, spec.w, spec.c_in * cog, spec.kh, 1, spec.oh, spec.w,
                     (sh, 1), (pt, pb, 0, 0), (dh, 1), spec.c_in)
    second = ConvSpec(spec.n, spec.c_out * cig, spec.oh, spec.w, spec.c_out, 1, spec.kw, spec.oh, spec.ow,
                      (1, sw), (0, 0, pl, pr), (1, dw), spec.c_out)
    return first, second


def _contiguous(a):
    """``a`` C-contiguous, a NumPy or a GPU array alike (a copy only where it is not)."""
    return a if a.flags.c_contiguous else a.copy()


def pass_weights(u, v, spec):
    """The pass kernels: ``(C_in * C_out/g, 1, kh, 1)`` ordered ``(g, c, o)`` and ``(C_out, C_in/g, 1, kw)``."""
    g, cig, cog = spec.groups, spec.c_in // spec.groups, spec.c_out // spec.groups
    first = _contiguous(u.reshape(g, cog, cig, spec.kh).transpose(0, 2, 1, 3)).reshape(-1, 1, spec.kh, 1)
    return first, _contiguous(v).reshape(spec.c_out, cig, 1, spec.kw)


def _reorder(t, spec, src):
    """Channels of an intermediate between the ``(g, c, o)`` order of pass 1 and ``(g, o, c)`` of pass 2."""
    g, cig, cog = spec.groups, spec.c_in // spec.groups, spec.c_out // spec.groups
    inner = (cig, cog) if src == "gco" else (cog, cig)
    if 1 in inner:
        return t
    n, _, h, w = t.shape
    return _contiguous(t.reshape((n, g) + inner + (h, w)).swapaxes(2, 3)).reshape(t.shape)


def conv2d(x, u, v, b, spec, passes):
    """Forward convolution with the rank-1 kernel ``(u, v)``: ``passes(op, spec)`` gives the kernel of
    each pass (a planned convolution)."""
    first, second = pass_specs(spec)
    wu, wv = pass_weights(u, v, spec)
    t = _reorder(passes("conv2d", first)(x, wu, None, first), spec, "gco")
    return passes("conv2d", second)(t, wv, b, second)


def conv2d_grad_input(gy, u, v, spec, passes):
    """Input gradient of :func:`conv2d`: the adjoint passes, rows then columns."""
    first, second = pass_specs(spec)
    wu, wv = pass_weights(u, v, spec)
    t = _reorder(passes("conv2d_grad_input", second)(gy, wv, second), spec, "goc")
    return passes("conv2d_grad_input", first)(t, wu, first)


_last = [None]  # (weight copy, factors) of the last rank-1 weight: the backward pass finds it again


def cached_factors(w):
    """:func:`factors` of ``w``, remembered for the last rank-1 weight (compared by value)."""
    last = _last[0]
    if last is not None and last[0].shape == w.shape and last[0].dtype == w.dtype and np.array_equal(last[0], w):
        return last[1]
    found = factors(w)
    if found is not None:
        _last[0] = (w.copy(), found)
    return found


def kernel(op, fallback, passes):
    """The kernel of ``op`` (``"conv2d"`` or ``"conv2d_grad_input"``) that runs rank-1 weights as two
    passes and every other weight with ``fallback`` (the usual case, rejected by the cheap test)."""
    if op == "conv2d":
        def run(x, w, b, spec):
            found = cached_factors(w)
            return fallback(x, w, b, spec) if found is None else conv2d(x, *found, b, spec, passes)
    elif op == "conv2d_grad_input":
        def run(gy, w, spec):
            found = cached_factors(w)
            return fallback(gy, w, spec) if found is None else conv2d_grad_input(gy, *found, spec, passes)
    else:
        raise ValueError(f"separable passes run conv2d and conv2d_grad_input, not {op!r}")
    return run
