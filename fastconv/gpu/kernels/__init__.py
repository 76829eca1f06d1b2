"""The CUDA kernel templates, one module per family. Each factory builds one kernel per key (operation,
rank, dtype, ...), which Numba compiles on its first launch (``fastconv.gpu.launch``); nothing is compiled
or touches a GPU at import time.

- ``elementwise``: ``out = op(a, b, c)`` over a broadcast shape; the activations and their gradients as
  device functions (used by every epilogue); gather / scatter along an axis.
- ``reduce``: sums, maxima and minima over axes (a tree in shared memory per output element).
- ``gemm``: the tiled GEMM, its roles (index maps: matmul, every convolution product), bias and activation
  epilogues, activation-gradient prologues, the bias gradient as an extra column, split-K.
- ``conv``: the geometry of a convolution as index maps, and a direct kernel for few channels.
- ``pool``: max / average pooling and their gradients (gathers, no atomics).
- ``tiled``: tiled and locally-connected convolutions and their gradients (one thread per result element).
- ``loss``: log-softmax and fused log-softmax + NLL (cross-entropy), forward and backward.
- ``optim``: one Adam / AdamW / SGD update over many tensors per launch.
"""
