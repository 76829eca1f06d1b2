"""Tiled and locally-connected convolution in NumPy: the definition the other backends are tested against.

A tiled convolution (``shapes.TiledSpec``) computes output ``(oy, ox)`` with kernel ``(oy % th, ox % tw)``
of its weight ``(th, tw, C_out, C_in/groups, kh, kw)``; a locally-connected layer is the tiled one whose
tiles are the output size. Since the tiles divide the output size, the output grid splits into blocks
of ``th x tw`` positions, and position ``(a, i, b, j)`` (``oy = a*th + i``, ``ox = b*tw + j``) uses
kernel ``(i, j)``: with the columns of the input (:func:`reference.im2col`) every kernel is one
contraction, and every gradient a contraction followed by :func:`reference.col2im`.

Kernel signatures, as ``reference``'s: ``tiled_conv2d(x, w, b, spec)``, ``tiled_conv2d_grad_input(gy, w,
spec)``, ``tiled_conv2d_grad_weight(gy, x, spec)``, with C-contiguous NCHW arrays, the 6-D weight and ``b``
None or ``(C_out, BH, BW)``: one bias per channel (``BH = BW = 1``) or per channel and output position
(``(BH, BW) = (oh, ow)``).
"""
import numpy as np

from . import reference


def _blocks(a, spec, channels):
    """``(N, groups, channels/groups, oh/th, th, ow/tw, tw)`` view of an ``(N, channels, ..., oh, ow)`` array."""
    th, tw = spec.tiles
    return a.reshape(spec.n, spec.groups, channels // spec.groups, spec.oh // th, th, spec.ow // tw, tw)


def _cols(x, spec):
    """The input's columns, ``(N, groups, C_in/groups * kh * kw, oh/th, th, ow/tw, tw)``."""
    return _blocks(reference.im2col(x, spec), spec, spec.c_in * spec.kh * spec.kw)


def _kernels(w, spec):
    """``(th, tw, groups, C_out/groups, C_in/groups * kh * kw)`` view of the weight."""
    return w.reshape(spec.tiles + (spec.groups, spec.c_out // spec.groups, -1))


def tiled_conv2d(x, w, b, spec):
    y = np.einsum("ngkaibj,ijgok->ngoaibj", _cols(x, spec), _kernels(w, spec), optimize=True)
    y = np.ascontiguousarray(y).reshape(spec.y_shape)
    if b is not None:
        y += b
    return y


def tiled_conv2d_grad_input(gy, w, spec):
    cols = np.einsum("ngoaibj,ijgok->ngkaibj", _blocks(gy, spec, spec.c_out), _kernels(w, spec), optimize=True)
    return reference.col2im(np.ascontiguousarray(cols).reshape(
        spec.n, spec.c_in, spec.kh, spec.kw, spec.oh, spec.ow), spec)


def tiled_conv2d_grad_weight(gy, x, spec):
    gw = np.einsum("ngoaibj,ngkaibj->ijgok", _blocks(gy, spec, spec.c_out), _cols(x, spec), optimize=True)
    return np.ascontiguousarray(gw).reshape(spec.w_shape)
