"""The Numba CPU backend (``"numba"``): parallel compiled loops, and BLAS where a convolution is a big GEMM.

Every convolution kernel picks one of two algorithms by shape (:func:`conv_algorithm`):

- ``"direct"``: loops over the window (``_numba_loops.conv_*_direct``), one output plane per thread task.
  Best for small kernels, depthwise and other thin groups, 1-D ops and tiny channel counts, where a GEMM
  would be too thin to pay for building the columns.
- ``"gemm"``: im2col (a parallel Numba kernel) then one BLAS matrix product per group (``numpy.matmul``);
  col2im for the input gradient. The columns of several samples sit side by side when one sample's are
  too few for an efficient GEMM, and a 1x1, stride-1, unpadded convolution skips im2col (its input is its
  columns). Columns and other temporaries live in per-thread workspaces reused from call to call, because
  big buffers freed and allocated again on every call cost page faults.

Pooling, unpooling and their gradients are direct loops over ``n*c`` planes. Signatures are those of
``reference`` (the conv kernels also take ``algorithm=`` to force one). Nothing compiles at import.
"""
import threading

import numpy as np

from . import _numba_loops as loops

ALGORITHMS = ("direct", "gemm")
MIN_GEMM_WIDTH = 1024        # columns per GEMM: merge samples until their output pixels reach this
MAX_COLUMN_BYTES = 8 << 20   # ... but keep a chunk's columns about this size (cache-sized)


# ------------------------------------------------------------------------------- workspaces
class _Workspaces(threading.local):
    """Grow-only flat buffers, one per (name, dtype) and per thread, viewed in the shape a call needs."""

    def __init__(self):
        self.buffers = {}


_workspaces = _Workspaces()


def workspace(name, shape, dtype):
    """An uninitialised array of ``shape`` carved from the reusable buffer ``name``."""
    size = 1
    for s in shape:
        size *= s
    key = (name, dtype)
    buf = _workspaces.buffers.get(key)
    if buf is None or buf.size < size:
        buf = np.empty(size, dtype)
        _workspaces.buffers[key] = buf
    return buf[:size].reshape(shape)


def clear_workspaces():
    """Free this thread's workspaces (they are rebuilt on demand)."""
    _workspaces.buffers.clear()


# ----------------------------------------------------------------------------- convolution
def _geometry(spec):
    """The window arguments every conv loop takes: ``(sh, sw, pt, pl, dh, dw)``."""
    (sh, sw), pad, (dh, dw) = spec.stride, spec.padding, spec.dilation
    return sh, sw, pad[0], pad[2], dh, dw


def _is_pointwise(spec):
    return spec.kh == spec.kw == 1 and spec.stride == (1, 1) and not any(spec.padding)


def conv_algorithm(spec):
    """``"gemm"`` when each group's GEMM is big enough to beat direct loops, else ``"direct"``."""
    cig, cog = spec.c_in // spec.groups, spec.c_out // spec.groups
    depth = cig * spec.kh * spec.kw  # the GEMM's inner dimension
    if cog >= 16 and depth >= 64 and spec.oh * spec.ow * spec.n >= 256:
        return "gemm"
    return "direct"


def _chunks(spec, itemsize):
    """``(n0, nb)`` blocks of samples whose columns form one GEMM: wide enough, cache-sized, balanced."""
    n, pixels = spec.n, spec.oh * spec.ow
    per_sample = spec.c_in * spec.kh * spec.kw * pixels * itemsize
    nb = min(n, max(1, -(-MIN_GEMM_WIDTH // pixels)), max(1, MAX_COLUMN_BYTES // per_sample))
    count = -(-n // nb) if n else 0
    nb = -(-n // count) if n else 1
    return [(n0, min(nb, n - n0)) for n0 in range(0, n, nb)]


def _columns(x, spec, n0, nb):
    """The columns of samples ``n0 .. n0+nb`` as ``(groups, C_in/groups * kh * kw, nb * oh * ow)``."""
    g = spec.groups
    if nb == 1 and _is_pointwise(spec):
        return x[n0].reshape(g, spec.c_in // g, spec.h * spec.w)
    cols = workspace("cols", (spec.c_in, spec.kh, spec.kw, nb, spec.oh, spec.ow), x.dtype)
    loops.im2col(x, n0, cols, *_geometry(spec))
    return cols.reshape(g, -1, nb * spec.oh * spec.ow)


def _merged(a, spec, n0, nb, name):
    """Rows ``a[n0 .. n0+nb]`` of an ``(N, C, oh, ow)`` array as ``(groups, C/groups, nb * oh * ow)``."""
    c, pixels = a.shape[1], spec.oh * spec.ow
    a3 = a.reshape(a.shape[0], c, pixels)
    if nb == 1:
        return a3[n0].reshape(spec.groups, -1, pixels)
    out = workspace(name, (c, nb, pixels), a.dtype)
    loops.merge(a3, n0, out)
    return out.reshape(spec.groups, -1, nb * pixels)


def _bias(b, c_out, dtype):
    return np.zeros(c_out, dtype) if b is None else b


def conv2d(x, w, b, spec, algorithm=None):
    y = np.empty(spec.y_shape, x.dtype)
    if (algorithm or conv_algorithm(spec)) == "direct":
        loops.conv_direct(x, w, _bias(b, spec.c_out, x.dtype), y, *_geometry(spec))
        return y
    g, pixels = spec.groups, spec.oh * spec.ow
    wg = w.reshape(g, spec.c_out // g, -1)
    y3 = y.reshape(spec.n, spec.c_out, pixels)
    bias = _bias(b, spec.c_out, x.dtype)
    for n0, nb in _chunks(spec, x.itemsize):
        cols = _columns(x, spec, n0, nb)
        if nb == 1:
            np.matmul(wg, cols, out=y3[n0].reshape(wg.shape[0], wg.shape[1], pixels))
            if b is not None:
                loops.add_bias(y3[n0:n0 + 1], bias)
        else:
            out = workspace("gemm_out", (g, spec.c_out // g, nb * pixels), x.dtype)
            np.matmul(wg, cols, out=out)
            loops.unmerge(out.reshape(spec.c_out, nb, pixels), n0, bias, y3)
    return y


def conv2d_grad_input(gy, w, spec, algorithm=None):
    gx = np.empty(spec.x_shape, gy.dtype)
    if (algorithm or conv_algorithm(spec)) == "direct":
        loops.conv_grad_input_direct(gy, w, gx, *_geometry(spec))
        return gx
    g = spec.groups
    wt = w.reshape(g, spec.c_out // g, -1).transpose(0, 2, 1)
    pointwise = _is_pointwise(spec)
    for n0, nb in _chunks(spec, gy.itemsize):
        gyc = _merged(gy, spec, n0, nb, "gy_merged")
        if nb == 1 and pointwise:
            np.matmul(wt, gyc, out=gx[n0].reshape(wt.shape[0], wt.shape[1], -1))
            continue
        cols = workspace("cols", (spec.c_in, spec.kh, spec.kw, nb, spec.oh, spec.ow), gy.dtype)
        np.matmul(wt, gyc, out=cols.reshape(wt.shape[0], wt.shape[1], -1))
        loops.col2im(cols, n0, gx, *_geometry(spec))
    return gx


def conv2d_grad_weight(gy, x, spec, algorithm=None):
    gw = np.empty(spec.w_shape, gy.dtype)
    if (algorithm or conv_algorithm(spec)) == "direct":
        loops.conv_grad_weight_direct(gy, x, gw, *_geometry(spec))
        return gw
    g = spec.groups
    gw3 = gw.reshape(g, spec.c_out // g, -1)
    gw3[...] = 0
    for n0, nb in _chunks(spec, gy.itemsize):
        gyc = _merged(gy, spec, n0, nb, "gy_merged")
        cols = _columns(x, spec, n0, nb)
        part = workspace("gemm_gw", gw3.shape, gy.dtype)
        np.matmul(gyc, cols.transpose(0, 2, 1), out=part)
        gw3 += part
    return gw


# ---------------------------------------------------------------------------------- pooling
def _pool_geometry(spec):
    (sh, sw), (pt, pl) = spec.stride, spec.padding
    return spec.kh, spec.kw, sh, sw, pt, pl


def max_pool2d(x, spec):
    y = np.empty(spec.y_shape, x.dtype)
    indices = np.empty(spec.y_shape, np.int64)
    loops.max_pool(x, y, indices, *_pool_geometry(spec), *spec.dilation)
    return y, indices


def _planes(a):
    """``(N*C, H*W)`` view of an NCHW array (explicit sizes: ``reshape(-1)`` fails for an empty batch)."""
    return a.reshape(a.shape[0] * a.shape[1], int(np.prod(a.shape[2:])))


def max_pool2d_grad(gy, indices, spec):
    gx = np.empty(spec.x_shape, gy.dtype)
    loops.scatter_add(_planes(gy), _planes(indices), _planes(gx))
    return gx


def avg_pool2d(x, spec):
    y = np.empty(spec.y_shape, x.dtype)
    loops.avg_pool(x, y, *_pool_geometry(spec), spec.count_include_pad)
    return y


def avg_pool2d_grad(gy, spec):
    gx = np.empty(spec.x_shape, gy.dtype)
    loops.avg_pool_grad(gy, gx, *_pool_geometry(spec), spec.count_include_pad)
    return gx


def max_unpool2d(x, indices, out_hw):
    n, c = x.shape[:2]
    y = np.empty((n, c) + tuple(out_hw), x.dtype)
    loops.scatter(_planes(x), _planes(indices), _planes(y))
    return y


def max_unpool2d_grad(gy, indices):
    n, c = gy.shape[:2]
    gx = np.empty(indices.shape, gy.dtype)
    loops.gather(_planes(gy), _planes(indices), _planes(gx))
    return gx
