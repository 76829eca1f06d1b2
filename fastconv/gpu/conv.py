"""Convolutions on GPU arrays: the forward pass and both gradients, with their epilogues fused.

Same signatures as ``backends/reference.py`` on :class:`~fastconv.gpu.array.CudaArray` inputs (NCHW,
float32 or float64), plus what the kernels fuse: ``act`` (``"relu"``, ``"tanh"``, ``"sigmoid"``) applied
after the bias in the forward pass; in the gradients, ``act`` and ``y`` (the forward output) make the
incoming gradient pass through the activation as it is loaded, and ``bias=True`` has the weight gradient's
launch write the bias gradient too. So a layer's forward pass is one launch and its backward pass two.

- Forward: the direct kernel for few output channels per group (LeNet, depthwise: a GEMM tile would be
  mostly empty), else the implicit GEMM (``kernels/conv.py``).
- Input gradient (also the transposed convolution's forward pass): the implicit GEMM gathering gy.
- Weight gradient: the implicit GEMM over every output pixel, split over blocks to fill the GPU; the last
  block of each tile sums the partial tiles (no zero-fill, no atomics).
The launch plan of a spec (geometry, kernel, splits) is worked out once and cached.
"""
import functools

import numpy as np

from . import xp
from .kernels.conv import DIRECT_SMEM, conv_geometry, direct_kernel
from .kernels.gemm import launch_gemm
from .launch import MAX_GRID_Z, config, launch


def _contiguous(a, shape, name):
    a = xp.ascontiguousarray(a)
    if a.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {a.shape}")
    return a


@functools.lru_cache(maxsize=1024)
def _direct_patch(spec, cfg):
    """(rows, cols) of the input patch one direct-kernel block reads."""
    tw, th, _ = cfg.direct
    return ((th - 1) * spec.stride[0] + (spec.kh - 1) * spec.dilation[0] + 1,
            (tw - 1) * spec.stride[1] + (spec.kw - 1) * spec.dilation[1] + 1)


def direct_fits(spec):
    """The direct kernel's input patch and filters fit in its shared memory."""
    ph, pw = _direct_patch(spec, config())
    return ph * pw + config().direct[2] * spec.kh * spec.kw <= DIRECT_SMEM and spec.n <= MAX_GRID_Z


def use_direct(spec):
    """Few output channels per group (the GEMM tile would be mostly empty) and a patch that fits."""
    return spec.c_out // spec.groups <= 16 and direct_fits(spec)


def conv2d_direct(x, w, b, spec, act=None):
    """Forward convolution with the direct kernel (any spec whose patch fits; see :func:`use_direct`)."""
    x, w = _contiguous(x, spec.x_shape, "x"), _contiguous(w, spec.w_shape, "w")
    y = xp.empty(spec.y_shape, x.dtype)
    if y.size == 0:
        return y
    if not direct_fits(spec):
        raise ValueError(f"the direct kernel's patch {_direct_patch(spec, config())} does not fit in shared memory")
    tw, th, cob = config().direct
    ph, pw = _direct_patch(spec, config())
    tiles_x, tiles_y = -(-spec.ow // tw), -(-spec.oh // th)
    n_ob = -(-(spec.c_out // spec.groups) // cob)
    bias = y._flat() if b is None else _contiguous(b, (spec.c_out,), "b")._flat()
    launch(direct_kernel, (x.dtype.str, xp.act_key(act)), (tiles_x * tiles_y, spec.groups * n_ob, spec.n),
           (tw, th), x._flat(), w._flat(), bias, y._flat(), conv_geometry(spec, b is not None), tiles_x, ph, pw)
    return y


def conv2d_gemm(x, w, b, spec, act=None):
    """Forward convolution as an implicit GEMM (one z-slice of the grid per group)."""
    x, w = _contiguous(x, spec.x_shape, "x"), _contiguous(w, spec.w_shape, "w")
    y = xp.empty(spec.y_shape, x.dtype)
    if y.size == 0:
        return y
    bias = None if b is None else _contiguous(b, (spec.c_out,), "b")._flat()
    launch_gemm("conv_fwd", w._flat(), x._flat(), y._flat(), conv_geometry(spec, b is not None),
                spec.c_out // spec.groups, spec.n * spec.oh * spec.ow, spec.groups, True, False, bias=bias,
                act=xp.act_key(act))
    return y


def conv2d(x, w, b, spec, act=None):
    """``act(conv(x, w) + b)`` in one launch."""
    return (conv2d_direct if use_direct(spec) else conv2d_gemm)(x, w, b, spec, act)


def _through(act, y, spec):
    """The GEMM prologue that takes gy through ``act`` (its output ``y``), or nothing."""
    act = xp.act_key(act)
    if not act:
        return {}
    return dict(grad_act=act, aux=_contiguous(y, spec.y_shape, "y")._flat())


def conv2d_grad_input(gy, w, spec, act=None, y=None):
    """Input gradient as an implicit GEMM gathering gy (taken through ``act`` as it is loaded)."""
    gy, w = _contiguous(gy, spec.y_shape, "gy"), _contiguous(w, spec.w_shape, "w")
    gx = xp.empty(spec.x_shape, gy.dtype)
    if gx.size:
        launch_gemm("conv_grad_input", w._flat(), gy._flat(), gx._flat(), conv_geometry(spec),
                    spec.c_in // spec.groups, spec.n * spec.h * spec.w, spec.groups, True, False, grad_on="b",
                    **_through(act, y, spec))
    return gx


@functools.lru_cache(maxsize=1024)
def _splits(spec, cfg):
    """Split-K for the weight gradient: enough blocks to fill the GPU, at least a few tiles of K each."""
    bm, bn, bk, _, _ = cfg.gemm
    k = spec.n * spec.oh * spec.ow
    if k == 0:
        return 1, 1
    tiles = -(-(spec.c_out // spec.groups) // bm) * -(-(spec.c_in // spec.groups * spec.kh * spec.kw + 1) // bn)
    target = min(256, cfg.max_blocks)
    splits = max(1, min(-(-target // (tiles * spec.groups)), -(-k // (4 * bk)), MAX_GRID_Z // spec.groups))
    per_split = -(-k // splits)
    chunk = -(-per_split // bk) * bk  # a whole number of K tiles
    return -(-k // chunk), chunk


def conv2d_grad_weight(gy, x, spec, act=None, y=None, bias=False):
    """Weight gradient as an implicit GEMM over every output pixel (gy taken through ``act``), split
    over blocks; with ``bias`` also the bias gradient from the same launch: ``(gw, gb)``."""
    gy, x = _contiguous(gy, spec.y_shape, "gy"), _contiguous(x, spec.x_shape, "x")
    cog, taps = spec.c_out // spec.groups, spec.c_in // spec.groups * spec.kh * spec.kw
    size = spec.c_out * taps
    both = xp.empty(size + (spec.c_out if bias else 0), gy.dtype)
    gw = both[:size].reshape(spec.w_shape)
    if both.size:
        splits, chunk = _splits(spec, config())
        scratch = xp.empty(spec.groups * splits * cog * (taps + bool(bias)), gy.dtype) if splits > 1 else None
        launch_gemm("conv_grad_weight", gy._flat(), x._flat(), both._flat(), conv_geometry(spec, splits, chunk),
                    cog, taps, spec.groups * splits, True, True, grad_on="a", bias_col=bias,
                    scratch=None if scratch is None else scratch._flat(), **_through(act, y, spec))
    return (gw, both[size:]) if bias else gw
