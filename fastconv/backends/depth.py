"""3-D convolution and pooling on any backend's 2-D kernels: the depth axis as a planner-level decomposition.

A 3-D convolution is a sum over depth taps of 2-D convolutions of depth slices: output depth ``oz`` of tap
``k`` reads input depth ``oz*sd - pf + k*dd``. Rather than one 2-D call per tap (each adding into the
output), the taps are *folded into the channels*: every (sample, output depth) becomes a 2-D sample whose
``C_in * kd`` channels are the ``kd`` input slices its window reads (zeros for the depth padding),

    xf[n*od + oz, c*kd + k] = x[n, c, oz*sd - pf + k*dd],   wf = w.reshape(C_out, C_in/groups * kd, kh, kw),

so one 2-D convolution of ``xf`` with ``wf`` (``N * od`` samples) is the whole 3-D one, and the depth taps
join the 2-D kernel's reduction (a longer GEMM or register tile, the output written once). Its input
gradient is the 2-D input gradient folded back (each slice added to the depth it came from), its weight
gradient the 2-D weight gradient of the same ``xf``. Where the depth and the rows have unit kernels,
strides and no padding (pointwise, ``1 x 1 x k``), the planes are stacked instead: ``(N, C, D*H, W)`` is
already the 2-D input, and nothing is copied.

Pooling runs the 2-D windows on every depth slice (``(N, C*D, H, W)``, a view), then reduces over the depth
windows; a max pool's index goes into the flat ``D*H*W`` plane, as PyTorch's. The gradients run the same
way back: the depth reduction's adjoint, then the 2-D kernel's gradient.

The planner wraps any 2-D plan (``backend="cython:blocked"``, ``"numba"``, ``"fft"``, ``"cuda"``) with
:func:`kernel`, so every backend runs 3-D ops without a second copy of its kernels; the arrays may be NumPy
or GPU arrays (only slicing, transposes, ``where`` and arithmetic are used here).
"""
from __future__ import annotations

import contextlib
import functools
import threading

import numpy as np

from ..device import array_module, device_of
from ..shapes import ConvSpec, PoolSpec
from .workspaces import workspace

#: The kernels this module runs 3-D specs of, each on the 2-D kernel of the same name.
OPS = ("conv2d", "conv2d_grad_input", "conv2d_grad_weight", "max_pool2d", "max_pool2d_grad", "avg_pool2d",
       "avg_pool2d_grad")


def _xp(a):
    return array_module(device_of(a))


def _scratch(name, shape, like):
    """An uninitialised intermediate that one call owns until it returns: reused from call to call on the
    CPU (a folded input is tens of MB: allocated afresh it would cost a page fault per 4 KB page, see
    ``workspaces``), new on the GPU."""
    if isinstance(like, np.ndarray):
        return workspace(name, shape, like.dtype)
    return _xp(like).empty(shape, like.dtype)


# --------------------------------------------------------------------------- shared layouts
_made = threading.local()


@contextlib.contextmanager
def one_backward():
    """Inside the block each array's depth layouts (:func:`_folded`, :func:`_to_samples`) are made once
    per spec: the two gradients of a layer read the same output gradient (a transposed convolution's both
    fold it), which is tens of MB for a volume. The caller promises that no array changes inside."""
    outer = getattr(_made, "layouts", None)
    if outer is None:
        _made.layouts = {}
    try:
        yield
    finally:
        if outer is None:
            _made.layouts = None


def _once(make, a, spec):
    """``make(a, spec)``, or inside :func:`one_backward` the layout it made last if that was of this very
    array and spec (each layout is a workspace that the next one of its kind overwrites)."""
    layouts = getattr(_made, "layouts", None)
    if layouts is None:
        return make(a, spec)
    last = layouts.get(make.__name__)
    if last is None or last[0] is not a or last[1] != spec:
        last = layouts[make.__name__] = (a, spec, make(a, spec))
    return last[2]


# ------------------------------------------------------------------------------ depth taps
@functools.lru_cache(maxsize=1024)
def taps(spec):
    """``(k, lo, hi, z0)`` for every depth tap ``k`` that reads the input: outputs ``lo <= oz < hi`` read
    input depths ``z0, z0 + sd, ...`` (the others read depth padding)."""
    sd, (pf, _), dd = spec.depth_stride, spec.depth_padding, spec.depth_dilation
    found = []
    for k in range(spec.kd):
        offset = k * dd - pf  # input depth of output 0
        lo = min(spec.od, max(0, -(offset // sd)))                  # first oz with oz*sd + offset >= 0
        hi = min(spec.od, max(0, -((offset - spec.d) // sd)))       # first oz with oz*sd + offset >= d
        if lo < hi:
            found.append((k, lo, hi, lo * sd + offset))
    return tuple(found)


def _slices(spec, lo, hi, z0):
    """The output depths ``lo:hi`` and the input depths they read (a strided slice)."""
    return slice(lo, hi), slice(z0, z0 + (hi - lo - 1) * spec.depth_stride + 1, spec.depth_stride)


# ------------------------------------------------------------------------------ convolution
def stacks_planes(spec):
    """Whether the 3-D convolution ``spec`` is a 2-D one on stacked planes ``(N, C, D*H, W)``: unit kernel,
    stride and no padding along depth and rows, so no window crosses from one plane into the next, and as
    many input rows and depths as output ones (a transposed convolution's output padding adds input rows
    no output reads, which would shift every later plane)."""
    return (spec.kd == spec.kh == spec.depth_stride == spec.stride[0] == 1 and not any(spec.depth_padding)
            and spec.padding[:2] == (0, 0) and (spec.d, spec.h) == (spec.od, spec.oh))


@functools.lru_cache(maxsize=1024)
def inner_spec(spec):
    """The 2-D spec whose kernels run the 3-D ``spec`` (a :class:`ConvSpec` or a :class:`PoolSpec`)."""
    if isinstance(spec, PoolSpec):
        return PoolSpec(spec.n, spec.c * spec.d, spec.h, spec.w, spec.kh, spec.kw, spec.oh, spec.ow, spec.stride,
                        spec.padding, spec.dilation, spec.ceil_mode, spec.count_include_pad)
    if stacks_planes(spec):
        return ConvSpec(spec.n, spec.c_in, spec.d * spec.h, spec.w, spec.c_out, 1, spec.kw, spec.od * spec.oh,
                        spec.ow, (1, spec.stride[1]), spec.padding, (1, spec.dilation[1]), spec.groups)
    return ConvSpec(spec.n * spec.od, spec.c_in * spec.kd, spec.h, spec.w, spec.c_out, spec.kh, spec.kw, spec.oh,
                    spec.ow, spec.stride, spec.padding, spec.dilation, spec.groups)


def describe(spec):
    """How the 3-D ``spec`` runs on 2-D kernels, in words (the plan's reason)."""
    inner = inner_spec(spec)
    if isinstance(spec, PoolSpec):
        return f"3-D pooling as 2-D windows on {inner.c} depth slices, then a reduction over depth"
    if stacks_planes(spec):
        return f"3-D convolution on stacked planes ({inner.h} rows)"
    return (f"3-D convolution with its {spec.kd} depth taps folded into the channels ({inner.n} samples of "
            f"{inner.c_in} channels)")


def _folded(x, spec):
    """``xf (N*od, C_in*kd, H, W)``: the input slice every (sample, output depth, depth tap) reads."""
    xf = _scratch("depth_folded", (spec.n, spec.od, spec.c_in, spec.kd, spec.h, spec.w), x)
    read = {k: (lo, hi, z0) for k, lo, hi, z0 in taps(spec)}
    for k in range(spec.kd):
        lo, hi, z0 = read.get(k, (0, 0, 0))
        xf[:, :lo, :, k] = 0  # the (output depth, tap) slices that read depth padding, and only those
        xf[:, hi:, :, k] = 0  # (zeroing all 50 MB: the U-Net level forward 15.0-15.3 ms, now 13.7-14.1)
        if lo < hi:
            outs, ins = _slices(spec, lo, hi, z0)
            xf[:, outs, :, k] = x[:, :, ins].transpose(0, 2, 1, 3, 4)
    return xf.reshape(inner_spec(spec).x_shape)


def _unfolded(gxf, spec):
    """The adjoint of :func:`_folded`: every slice of ``gxf`` added back to the depth it came from. Where
    no two depth windows overlap (a 2x2x2 stride-2 layer), each depth comes from one slice at most and is
    written once, not zeroed and then added to (the 3-D U-Net's upsampling: 3.1 -> 1.6 ms)."""
    xp = _xp(gxf)
    gxf = gxf.reshape(spec.n, spec.od, spec.c_in, spec.kd, spec.h, spec.w)
    disjoint = spec.depth_dilation * (spec.kd - 1) < spec.depth_stride
    gx = (xp.empty if disjoint else xp.zeros)(spec.x_shape, gxf.dtype)
    written = set()
    for k, lo, hi, z0 in taps(spec):
        outs, ins = _slices(spec, lo, hi, z0)
        if disjoint:
            gx[:, :, ins] = gxf[:, outs, :, k].transpose(0, 2, 1, 3, 4)
            written.update(range(ins.start, ins.stop, ins.step))
        else:
            gx[:, :, ins] += gxf[:, outs, :, k].transpose(0, 2, 1, 3, 4)
    for z in range(spec.d) if disjoint else ():
        if z not in written:
            gx[:, :, z] = 0
    return gx


def _to_samples(a, spec):
    """``(N, C, od, oh, ow) -> (N*od, C, oh, ow)``: each output depth a 2-D sample."""
    n, c, od, oh, ow = a.shape
    samples = _scratch("depth_samples", (n, od, c, oh, ow), a)
    samples[...] = a.transpose(0, 2, 1, 3, 4)
    return samples.reshape(n * od, c, oh, ow)


def _from_samples(a, spec):
    """The inverse of :func:`_to_samples`."""
    n, od = spec.n, spec.od
    return _xp(a).ascontiguousarray(a.reshape((n, od) + a.shape[1:]).transpose(0, 2, 1, 3, 4))


def conv2d(x, w, b, spec, inner):
    s = inner_spec(spec)
    if stacks_planes(spec):
        return inner(x.reshape(s.x_shape), w.reshape(s.w_shape), b, s).reshape(spec.y_shape)
    return _from_samples(inner(_once(_folded, x, spec), w.reshape(s.w_shape), b, s), spec)


def conv2d_grad_input(gy, w, spec, inner):
    s = inner_spec(spec)
    if stacks_planes(spec):
        return inner(gy.reshape(s.y_shape), w.reshape(s.w_shape), s).reshape(spec.x_shape)
    return _unfolded(inner(_once(_to_samples, gy, spec), w.reshape(s.w_shape), s), spec)


def conv2d_grad_weight(gy, x, spec, inner):
    s = inner_spec(spec)
    if stacks_planes(spec):
        return inner(gy.reshape(s.y_shape), x.reshape(s.x_shape), s).reshape(spec.w_shape)
    return inner(_once(_to_samples, gy, spec), _once(_folded, x, spec), s).reshape(spec.w_shape)


# ---------------------------------------------------------------------------------- pooling
def _slices_of(a, spec):
    """``(N, C*D, h, w) -> (N, C, D, h, w)``: a 2-D pooling's planes as the depth slices they are."""
    return a.reshape((spec.n, spec.c, spec.d) + a.shape[2:])


def _depth_windows(spec):
    """For each depth tap: the output depths it feeds, the slices it reads and their depths
    ``(1, 1, hi - lo, 1, 1)`` (ints)."""
    for _, lo, hi, z0 in taps(spec):
        outs, ins = _slices(spec, lo, hi, z0)
        depths = np.arange(z0, z0 + (hi - lo) * spec.depth_stride, spec.depth_stride).reshape(1, 1, -1, 1, 1)
        yield outs, ins, depths


def max_pool2d(x, spec, inner):
    """The 2-D max (and its index) of every slice, then the first largest over each depth window (NaN
    wins, as a 2-D window's); the index points into the flat ``D*H*W`` plane."""
    s = inner_spec(spec)
    xp = _xp(x)
    y2, i2 = inner(x.reshape(s.x_shape), s)
    y2, i2 = _slices_of(y2, spec), _slices_of(i2, spec)
    y = xp.full(spec.y_shape, -np.inf, y2.dtype)
    index = xp.zeros(spec.y_shape, np.int64)
    seen = xp.zeros(spec.y_shape, np.bool_)
    plane = spec.h * spec.w
    for outs, ins, depths in _depth_windows(spec):
        best, candidate = y[:, :, outs], y2[:, :, ins]
        # replace the first value of the window, a smaller one, or a number by a NaN
        larger = xp.where(candidate != candidate, best == best, candidate > best)
        take = xp.where(seen[:, :, outs], larger, True)
        y[:, :, outs] = xp.where(take, candidate, best)
        index[:, :, outs] = xp.where(take, i2[:, :, ins] + xp.asarray(depths * plane), index[:, :, outs])
        seen[:, :, outs] = True
    return y, index


def max_pool2d_grad(gy, indices, spec, inner):
    """Each gradient goes to the slice its maximum came from (the depth window's adjoint), then through
    the 2-D kernel's gradient with the index within that slice."""
    s = inner_spec(spec)
    xp = _xp(gy)
    g2 = xp.zeros((spec.n, spec.c, spec.d, spec.oh, spec.ow), gy.dtype)
    i2 = xp.zeros(g2.shape, np.int64)
    plane = spec.h * spec.w
    for outs, ins, depths in _depth_windows(spec):
        start = xp.asarray(depths * plane)
        index = indices[:, :, outs]
        here = xp.where(index >= start, index < start + plane, False)
        g2[:, :, ins] += xp.where(here, gy[:, :, outs], 0)
        i2[:, :, ins] = xp.where(here, index - start, i2[:, :, ins])
    return inner(g2.reshape(s.y_shape), i2.reshape(s.y_shape), s).reshape(spec.x_shape)


def avg_pool2d(x, spec, inner):
    """The 2-D mean of every slice, then the mean over each depth window (the divisor is a product of
    per-axis counts, so the depth's share divides last)."""
    s = inner_spec(spec)
    xp = _xp(x)
    y2 = _slices_of(inner(x.reshape(s.x_shape), s), spec)
    y = xp.zeros(spec.y_shape, y2.dtype)
    for outs, ins, _ in _depth_windows(spec):
        y[:, :, outs] += y2[:, :, ins]
    return y / _depth_divisors(spec, y.dtype, xp)


def avg_pool2d_grad(gy, spec, inner):
    s = inner_spec(spec)
    xp = _xp(gy)
    g = gy / _depth_divisors(spec, gy.dtype, xp)
    g2 = xp.zeros((spec.n, spec.c, spec.d, spec.oh, spec.ow), gy.dtype)
    for outs, ins, _ in _depth_windows(spec):
        g2[:, :, ins] += g[:, :, outs]
    return inner(g2.reshape(s.y_shape), s).reshape(spec.x_shape)


def _depth_divisors(spec, dtype, xp):
    return xp.asarray(spec.depth_divisors(dtype).reshape(-1, 1, 1))


# ------------------------------------------------------------------------------------- plans
_RUN = {"conv2d": conv2d, "conv2d_grad_input": conv2d_grad_input, "conv2d_grad_weight": conv2d_grad_weight,
        "max_pool2d": max_pool2d, "max_pool2d_grad": max_pool2d_grad, "avg_pool2d": avg_pool2d,
        "avg_pool2d_grad": avg_pool2d_grad}


def kernel(op, inner):
    """The kernel of ``op`` for 3-D specs that runs the 2-D plan ``inner`` (made for :func:`inner_spec`)."""
    return functools.partial(_RUN[op], inner=inner)
