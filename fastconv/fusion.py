"""Activations fused into the layer beside them: after a convolution (with its bias, in the epilogue) and
before a pooling (in the prologue), forward and backward.

Where a layer's plan runs on a backend that fuses them (``FUSES_EPILOGUES``: the GPU's), its kernels get
the activation and run layer and activation in one launch (and the gradients in two: the activation's
gradient is taken as the incoming gradient is loaded, the bias gradient comes with the weight gradient);
elsewhere the planned kernel and the activation (``xp.activation``) run one after the other, the same
operations as when the user writes them out, so that fusing changes the numbers nowhere. One exception
in order, not in numbers: ReLU before a max pool runs after it (``relu(max(x)) == max(relu(x))``, and the
gradient reaches the same pixel), on a quarter of the pixels of a 2x2 pool, unless the caller wants the
indices (where every value of a window is negative they would differ).
"""
import functools

import numpy as np

from .backends import depth, registry

ACTIVATIONS = ("relu", "tanh", "sigmoid")


def check_activation(activation):
    """``activation``: None or one of ``ACTIVATIONS``; a ValueError otherwise."""
    if activation is not None and activation not in ACTIVATIONS:
        raise ValueError(f"activation must be None or one of {ACTIVATIONS}, got {activation!r}")
    return activation


def fusing(plan):
    """Whether ``plan``'s backend runs activations (and the bias gradient) inside its kernels."""
    return plan.backend in registry.MODULES and getattr(registry.load(plan.backend), "FUSES_EPILOGUES", False)


#: Elements of a gradient from which its bias gradient is the compiled sums (``_reduce.channel_sums``:
#: float64 sums of each plane on every thread), where built: on two threads, ms against NumPy's pairwise
#: sums and ``einsum``, 8x128x28x28 (grouped_3x3) 0.023 against 0.083 and 0.038, 8x64x56x56 (vgg_3x3)
#: 0.040 against 0.16 and 0.071, 128x6x28x28 (LeNet-5's C1) 0.018 against 0.043 and 0.028; below this
#: size (100x32x40, MNIST-1D's, 0.015 against 0.011) the parallel region costs more than it saves.
COMPILED_BIAS_GRAD_FROM = 1 << 17
#: Without it, elements from which the bias gradient is NumPy's ``einsum`` (one pass of vector adds, 2-4x
#: faster than its sums on large gradients); smaller ones keep the pairwise sums, as fast there and more
#: accurate. (A BLAS product with ones was faster still on its own, but BLAS's threads then spin beside
#: the next kernel's: vgg_3x3 forward + backward 7.5 -> 16 ms.)
EINSUM_BIAS_GRAD_FROM = 1 << 20


@functools.lru_cache(maxsize=None)
def _channel_sums():
    """The compiled per-channel sums, loaded on first use, or a stand-in that declines every array where
    the extension is not built."""
    try:
        from ._cy._reduce import channel_sums
    except ImportError:
        return lambda g: None
    return channel_sums


def bias_grad(xp, g4):
    """Gradient of a per-channel bias: the sum of ``g4 (N, C, H, W)`` (or ``(N, C, D, H, W)``) over all but
    the channels."""
    n, c = g4.shape[:2]
    planes = 1
    for size in g4.shape[2:]:  # explicit sizes: reshape with -1 fails for an empty batch
        planes *= size
    if isinstance(g4, np.ndarray):
        sums = _channel_sums()(g4) if g4.size >= COMPILED_BIAS_GRAD_FROM else None
        if sums is not None:
            return sums
        if g4.size >= EINSUM_BIAS_GRAD_FROM:
            return np.einsum("ncp->c", g4.reshape(n, c, planes))  # 8x64x56x56: 0.15 -> 0.07 ms
    if n == 1:  # nothing to add over the batch (a sum over it would copy the whole gradient)
        return xp.sum(g4.reshape(c, planes), axis=1)
    return xp.sum(xp.sum(g4.reshape(n, c, planes), axis=0), axis=1)


def conv2d(run, xp, x4, w4, b, spec, act):
    """``act(conv2d(x4, w4) + b)`` with the plans of the layer ``run`` (``backends.plan.layer``)."""
    if fusing(run.conv2d):
        return run.conv2d.kernel(x4, w4, b, spec, act=act)
    return xp.activation(run.conv2d(x4, w4, b, spec), act)


def conv2d_grads(run, xp, g4, x4, w4, y4, spec, act, need):
    """``(gx, gw, gb)`` of :func:`conv2d` given the gradient ``g4`` of its output ``y4`` (None where
    ``need`` says no)."""
    need_x, need_w, need_b = need
    gx = gw = gb = None
    if fusing(run.conv2d):
        if need_x:
            gx = run.conv2d_grad_input.kernel(g4, w4, spec, act=act, y=y4)
        if need_w:
            gw = run.conv2d_grad_weight.kernel(g4, x4, spec, act=act, y=y4, bias=need_b)
            gw, gb = gw if need_b else (gw, None)
        elif need_b:
            gb = bias_grad(xp, xp.activation_grad(g4, y4, act))
        return gx, gw, gb
    g4 = xp.activation_grad(g4, y4, act)
    with depth.one_backward():  # a volume's two gradients lay out g4 once
        if need_x:
            gx = run.conv2d_grad_input(g4, w4, spec)
        if need_w:
            gw = run.conv2d_grad_weight(g4, x4, spec)
    if need_b:
        gb = bias_grad(xp, g4)
    return gx, gw, gb


def relu_after(kind, act, indices):
    """Whether the max pool runs before the ReLU it was given (see the module's docstring)."""
    return kind == "max" and act == "relu" and not indices


def pool(run, xp, kind, x4, spec, act, indices=False):
    """``(kind_pool2d(act(x4)), saved)``; ``saved`` is what :func:`pool_grad` needs besides the pool's;
    ``indices``: whether the caller returns the max pool's indices."""
    plan = getattr(run, f"{kind}_pool2d")
    if not act:
        return plan(x4, spec), None
    if fusing(plan):
        return plan.kernel(x4, spec, act=act), x4
    if relu_after(kind, act, indices):
        y4, where = plan(x4, spec)
        y4 = xp.activation(y4, act)
        return (y4, where), y4
    a4 = xp.activation(x4, act)
    return plan(a4, spec), a4


def pool_grad(run, xp, kind, g4, indices, spec, act, saved, returned=False):
    """The input gradient of :func:`pool` (``indices``: the max pool's, else None; ``returned``: what
    :func:`pool` was told of them)."""
    plan = getattr(run, f"{kind}_pool2d_grad")
    args = (g4, indices, spec) if kind == "max" else (g4, spec)
    if not act:
        return plan(*args)
    if fusing(plan):
        return plan.kernel(*args, act=act, x=saved)
    if relu_after(kind, act, returned):
        return plan(xp.activation_grad(g4, saved, act), indices, spec)
    return xp.activation_grad(plan(*args), saved, act)
