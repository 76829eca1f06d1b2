"""The convolution family's benchmark layers and runners, shared by the asv suite ``bench_family`` and
``bench/family.py``: locally-connected and tiled layers in fastconv against the best a PyTorch user can
write today, which is to unfold the input and contract it with the kernels:

- ``torch_einsum``: ``unfold``, the positions split into tiles, one ``einsum`` (no kernel is copied per
  position);
- ``torch_bmm``: ``unfold``, the columns reordered by kernel, one batched matmul (a batch per kernel).

Both run through PyTorch's autograd for the backward pass. A locally-connected layer is the tiled layer
whose tiles are the output size, so one formula serves both. Nothing runs at import time.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastconv.bench import common

IMPLS = ("fastconv", "torch_einsum", "torch_bmm")
TORCH_IMPLS = IMPLS[1:]


@dataclass(frozen=True)
class Layer:
    """A locally-connected (``tiles=None``) or tiled layer with a square kernel on float32 input ``x``."""
    name: str
    x: tuple
    c_out: int
    kernel: int
    tiles: tuple | None = None
    padding: int = 0

    @property
    def out(self):
        return tuple(s + 2 * self.padding - self.kernel + 1 for s in self.x[2:])

    @property
    def grid(self):
        """The tiles: the output size for a locally-connected layer."""
        return self.out if self.tiles is None else self.tiles

    @property
    def w_shape(self):
        return self.grid + (self.c_out, self.x[1], self.kernel, self.kernel)

    @property
    def b_shape(self):
        """One bias per output position for a locally-connected layer, per channel for a tiled one."""
        return (self.c_out,) + (self.out if self.tiles is None else ())

    def flops(self, grad):
        n, c = self.x[:2]
        forward = 2 * n * self.c_out * self.out[0] * self.out[1] * c * self.kernel ** 2
        return forward * (3 if grad else 1)

    def describe(self):
        what = "local" if self.tiles is None else f"tiles {self.tiles}"
        return f"x{self.x} -> {self.c_out} ch, {self.kernel}x{self.kernel}, {what}, weight {self.w_shape}"


LAYERS = {layer.name: layer for layer in (
    Layer("lenet_c1_local", (64, 1, 32, 32), 6, 5),
    Layer("lenet_c3_local", (64, 6, 14, 14), 16, 5),
    Layer("face_3x3_local", (32, 16, 64, 64), 32, 3),
    Layer("face_5x5_local", (32, 16, 64, 64), 32, 5),
    Layer("face_3x3_tiled", (32, 16, 64, 64), 32, 3, (2, 2)),
    Layer("face_5x5_tiled", (32, 16, 64, 64), 32, 5, (2, 2)),
    Layer("tiny_local", (2, 3, 8, 8), 4, 3),
    Layer("tiny_tiled", (2, 3, 8, 8), 4, 3, (2, 3)),
)}
TINY = ("tiny_local", "tiny_tiled")
REAL = tuple(name for name in LAYERS if name not in TINY)


def grid():
    """The layers of the asv suites: the real ones, or the tiny ones under FASTCONV_BENCH_SMOKE=1."""
    return list(TINY if common.SMOKE else REAL)


def inputs(layer, seed=0):
    """Float32 ``(x, w, b, gy)``, the weight scaled by its fan-in."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(layer.x, dtype=np.float32)
    w = rng.standard_normal(layer.w_shape, dtype=np.float32) / np.float32(layer.x[1] * layer.kernel)
    b = rng.standard_normal(layer.b_shape, dtype=np.float32)
    gy = rng.standard_normal((layer.x[0], layer.c_out) + layer.out, dtype=np.float32)
    return x, w, b, gy


def runner(impl, layer, grad, seed=0):
    """A no-argument callable running ``layer`` once on ``impl`` (forward, or forward + backward)."""
    x, w, b, gy = inputs(layer, seed)
    if impl == "fastconv":
        import fastconv as fc
        import fastconv.functional as F
        leaves = [fc.tensor(a, requires_grad=grad) for a in (x, w, b)]
        op = F.conv2d_local if layer.tiles is None else F.conv2d_tiled
        call = lambda: op(*leaves, padding=layer.padding)  # noqa: E731
        backward = lambda y: y.backward(gy)  # noqa: E731
        no_grad = fc.no_grad
    else:
        import torch
        leaves = [torch.from_numpy(a).requires_grad_(grad) for a in (x, w, b)]
        call = lambda: torch_workaround(impl, layer, *leaves)  # noqa: E731
        tgy = torch.from_numpy(gy)
        backward = lambda y: y.backward(tgy)  # noqa: E731
        no_grad = torch.no_grad
    if not grad:
        def forward():
            with no_grad():
                return call()
        return forward

    def forward_backward():
        for t in leaves:
            t.grad = None
        backward(call())
    return forward_backward


def torch_workaround(impl, layer, x, w, b):
    """The layer in PyTorch: ``unfold``, then ``einsum`` (``torch_einsum``) or a batched matmul with a
    batch per kernel (``torch_bmm``)."""
    if impl not in TORCH_IMPLS:
        raise ValueError(f"impl must be one of {TORCH_IMPLS}, got {impl!r}")
    import torch
    import torch.nn.functional as TF
    n, (oh, ow), (th, tw), c_out = layer.x[0], layer.out, layer.grid, layer.c_out
    cols = TF.unfold(x, layer.kernel, padding=layer.padding)                   # (N, K, OH*OW)
    cols = cols.reshape(n, -1, oh // th, th, ow // tw, tw)                     # (N, K, A, i, B, j)
    kernels = w.reshape(th, tw, c_out, -1)                                     # (i, j, C_out, K)
    if impl == "torch_einsum":
        y = torch.einsum("nkaibj,ijok->noaibj", cols, kernels).reshape(n, c_out, oh, ow)
    else:
        # (i j, N A B, K), copied: bmm on the strided view is tens of times slower
        rows = cols.permute(3, 5, 0, 2, 4, 1).reshape(th * tw, -1, cols.shape[1]).contiguous()
        y = torch.bmm(rows, kernels.reshape(th * tw, c_out, -1).transpose(1, 2))  # (i j, N A B, C_out)
        y = y.reshape(th, tw, n, oh // th, ow // tw, c_out).permute(2, 5, 3, 0, 4, 1).reshape(n, c_out, oh, ow)
    return y + (b if b.ndim == 3 else b.reshape(c_out, 1, 1))


def warm_runner(impl, layer, grad):
    """asv ``setup``: a runner that has run twice (compiled, caches settled), or a skip."""
    def build():
        if impl != "fastconv" and not common.has_torch():
            raise NotImplementedError("PyTorch is not installed")
        common.set_threads(common.BENCH_THREADS)
        fn = runner(impl, layer, grad)
        fn()
        fn()
        return fn
    return common.warm((impl, layer.name, grad), build)
