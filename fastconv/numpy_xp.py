"""The CPU array namespace (``array_module("cpu")``): NumPy itself, plus the fused ops of the GPU namespace
(``fastconv.gpu.xp``) under the same names and signatures.

On the GPU each fused op is one kernel; here each is written with NumPy as the unfused ops it stands for,
the same operations in the same order, so that code written once for both devices (``functional.py``,
``tensor.py``) computes on the CPU exactly what it computed before the ops were fused.
"""
import builtins

import numpy as np
from numpy import *  # noqa: F401,F403  (this namespace is NumPy's: sum, max, abs, ... are NumPy's here)

from . import runtime

#: Linear layers' products of at most this many multiply-adds run NumPy's BLAS on one thread. With more,
#: its threads spin after the call and take the cores from the compiled kernels that follow: LeNet-5
#: training steps (a 128 x 400 x 120 product first) ran 22.7 ms with 2 BLAS threads on 2 cores, 8.7 ms
#: with 1, where the product alone takes 0.10 ms on one thread and 0.06 ms on two.
SMALL_GEMM = 1 << 25


def add_at(a, index, values):
    """``np.add.at``: unbuffered in-place addition (repeated indices add up)."""
    np.add.at(a, index, values)


def constant(value, shape, dtype):
    """An array of ``value`` that the caller only reads (the seed gradient of ``backward()``)."""
    return np.full(shape, value, dtype)


_ACTIVATIONS = {  # name: (act(x), the gradient through it given its output y)
    "relu": (lambda x: np.maximum(x, 0), lambda g, y: g * (y > 0)),  # maximum keeps the dtype and NaN
    "tanh": (np.tanh, lambda g, y: g * (1 - y * y)),
    "sigmoid": (lambda x: 1 / (1 + np.exp(-x)), lambda g, y: g * y * (1 - y)),
}


def activation(x, act):
    """``act(x)`` for ``"relu"``, ``"tanh"``, ``"sigmoid"`` (None: ``x`` itself)."""
    return _ACTIVATIONS[act][0](x) if act else x


def activation_grad(g, y, act):
    """The gradient through ``act`` given its output ``y``: ``g * act'(x)``."""
    return _ACTIVATIONS[act][1](g, y) if act else g


def linear(x, w, b=None, act=None):
    """``act(x @ w.T + b)`` for ``x (M, K)``, ``w (N, K)``."""
    y = gemm(x, w.T)
    if b is not None:
        y += b
    return activation(y, act)


def linear_grad(g, x, w, y, act=None, need=(True, True, True)):
    """Gradients ``(gx, gw, gb)`` of :func:`linear` given its output ``y`` (None where ``need`` says no)."""
    need_x, need_w, need_b = need
    g = activation_grad(g, y, act)
    gx = gemm(g, w) if need_x else None
    gw = gemm(g.T, x) if need_w else None
    gb = np.sum(g, axis=0) if need_b else None
    return gx, gw, gb


def gemm(a, b):
    """``a @ b`` for 2-D ``a``, ``b``, small products on one BLAS thread (``SMALL_GEMM``)."""
    if a.shape[0] * a.shape[1] * b.shape[1] > SMALL_GEMM:
        return np.matmul(a, b)
    with runtime.numpy_blas_threads(1):
        return np.matmul(a, b)


def log_softmax(x, axis=-1):
    """``x - logsumexp(x, axis)``, computed stably."""
    shifted = x - np.max(x, axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def log_softmax_grad(g, out, axis=-1):
    """Gradient of :func:`log_softmax` given its output: ``g - exp(out) * sum(g, axis)``."""
    return g - np.exp(out) * np.sum(g, axis=axis, keepdims=True)


def _scale(reduction, n):
    return {"mean": 1.0 / builtins.max(n, 1), "sum": 1.0, "none": None}[reduction]


def cross_entropy(logits, target, reduction="mean"):
    """Log-softmax + NLL of ``logits (N, C)`` against integer ``target (N,)``: ``(loss, logp)``."""
    logp = log_softmax(logits, 1)
    picked = np.take_along_axis(logp, target.reshape(-1, 1).astype(np.int64), axis=1)[:, 0]
    scale = _scale(reduction, logp.shape[0])
    loss = -picked if scale is None else -np.sum(picked) * scale
    return np.asarray(loss, dtype=logp.dtype), logp


def cross_entropy_grad(g, logp, target, reduction="mean"):
    """Gradient of :func:`cross_entropy` for the logits: the NLL's gradient (``-g * scale`` at each
    target) through :func:`log_softmax_grad`."""
    n = logp.shape[0]
    scale = _scale(reduction, n)
    full = np.zeros(logp.shape, dtype=logp.dtype)
    rows = -(g if scale is None else g * scale) * np.ones((n,), dtype=logp.dtype)
    np.put_along_axis(full, target.reshape(-1, 1).astype(np.int64), rows.reshape(-1, 1), axis=1)
    return log_softmax_grad(full, logp, 1)
