"""Tiled and locally-connected convolution on GPU arrays (``backend="cuda"``): the kernels of
``backends/tiled.py`` (same signatures), one launch each (``kernels/tiled.py``)."""
from . import xp
from .kernels.conv import conv_geometry
from .kernels.tiled import forward_kernel, grad_input_kernel, grad_weight_kernel
from .launch import grid_1d, launch


def _launch(factory, out, *args):
    if out.size:
        blocks, threads = grid_1d(out.size)
        launch(factory, (out.dtype.str,), blocks, threads, *args, out.size)
    return out


def tiled_conv2d(x, w, b, spec):
    x, w = xp.ascontiguousarray(x), xp.ascontiguousarray(w)
    y = xp.empty(spec.y_shape, x.dtype)
    bias = y if b is None else xp.ascontiguousarray(b)
    bh, bw = (1, 1) if b is None else b.shape[1:]
    return _launch(forward_kernel, y, x._flat(), w._flat(), bias._flat(), y._flat(),
                   conv_geometry(spec, b is not None), *spec.tiles, bh, bw)


def tiled_conv2d_grad_input(gy, w, spec):
    gy, w = xp.ascontiguousarray(gy), xp.ascontiguousarray(w)
    gx = xp.empty(spec.x_shape, gy.dtype)
    return _launch(grad_input_kernel, gx, gy._flat(), w._flat(), gx._flat(), conv_geometry(spec), *spec.tiles)


def tiled_conv2d_grad_weight(gy, x, spec):
    gy, x = xp.ascontiguousarray(gy), xp.ascontiguousarray(x)
    gw = xp.empty(spec.w_shape, gy.dtype)
    return _launch(grad_weight_kernel, gw, gy._flat(), x._flat(), gw._flat(), conv_geometry(spec), *spec.tiles)
