"""Activations fused into the layer beside them: after a convolution (with its bias, in the epilogue) and
before a pooling (in the prologue), forward and backward.

A backend that fuses them (``FUSES_EPILOGUES``: the GPU's) gets the activation and runs the layer and the
activation in one launch, and the gradients in as few; any other backend runs the plain op and the
activation (``xp.activation``) one after the other, the same operations as when the user writes them out,
so that fusing changes the numbers nowhere.
"""
ACTIVATIONS = ("relu", "tanh", "sigmoid")


def check_activation(activation):
    """``activation``: None or one of ``ACTIVATIONS``; a ValueError otherwise."""
    if activation is not None and activation not in ACTIVATIONS:
        raise ValueError(f"activation must be None or one of {ACTIVATIONS}, got {activation!r}")
    return activation


def fuses(impl):
    return getattr(impl, "FUSES_EPILOGUES", False)


def bias_grad(xp, g4):
    """Gradient of a per-channel bias: the sum of ``g4 (N, C, H, W)`` over all but the channels."""
    # Sum over the batch first (contiguous rows), then over positions: ~20x faster in NumPy than one
    # sum over axes (0, 2, 3) for the small maps of MNIST-1D and LeNet.
    n, c, h, w = g4.shape  # explicit sizes: reshape with -1 fails for an empty batch
    return xp.sum(xp.sum(g4.reshape(n, c, h * w), axis=0), axis=1)


def conv2d(impl, xp, x4, w4, b, spec, act):
    """``act(conv2d(x4, w4) + b)``."""
    if fuses(impl):
        return impl.conv2d(x4, w4, b, spec, act=act)
    return xp.activation(impl.conv2d(x4, w4, b, spec), act)


def conv2d_grads(select, xp, g4, x4, w4, y4, spec, act, need):
    """``(gx, gw, gb)`` of :func:`conv2d` given the gradient ``g4`` of its output ``y4`` (None where
    ``need`` says no); ``select(op)`` is the backend module that runs ``op``."""
    need_x, need_w, need_b = need
    gx = gw = gb = None
    impl = select("conv2d_grad_weight" if need_w else "conv2d_grad_input")
    if fuses(impl):
        if need_x:
            gx = impl.conv2d_grad_input(g4, w4, spec, act=act, y=y4)
        if need_w:
            gw = impl.conv2d_grad_weight(g4, x4, spec, act=act, y=y4, bias=need_b)
            gw, gb = gw if need_b else (gw, None)
        elif need_b:
            gb = impl.conv2d_grad_bias(g4, act=act, y=y4)
        return gx, gw, gb
    g4 = xp.activation_grad(g4, y4, act)
    if need_x:
        gx = select("conv2d_grad_input").conv2d_grad_input(g4, w4, spec)
    if need_w:
        gw = select("conv2d_grad_weight").conv2d_grad_weight(g4, x4, spec)
    if need_b:
        gb = bias_grad(xp, g4)
    return gx, gw, gb


def pool(impl, xp, kind, x4, spec, act):
    """``(kind_pool2d(act(x4)), saved)``; ``saved`` is what :func:`pool_grad` needs besides the pool's."""
    op = getattr(impl, f"{kind}_pool2d")
    if not act:
        return op(x4, spec), None
    if fuses(impl):
        return op(x4, spec, act=act), x4
    a4 = xp.activation(x4, act)
    return op(a4, spec), a4


def pool_grad(impl, xp, kind, g4, indices, spec, act, saved):
    """The input gradient of :func:`pool` (``indices``: the max pool's, else None)."""
    args = (g4, indices, spec) if kind == "max" else (g4, spec)
    grad = getattr(impl, f"{kind}_pool2d_grad")
    if not act:
        return grad(*args)
    if fuses(impl):
        return grad(*args, act=act, x=saved)
    return xp.activation_grad(grad(*args), saved, act)
