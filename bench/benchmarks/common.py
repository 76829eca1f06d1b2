"""The benchmark shapes and the runners that time them, shared by the asv suites and ``bench/compare.py``.

One table of shapes (NCHW float32, 1-D shapes as NCL) and one way to build a callable for each
(implementation, shape, mode): an implementation is ``"torch"`` (``torch.nn.functional`` on the CPU, the
speed peer) or a fastconv backend name (``"auto"``, ``"numpy"``, ``"numba"``, ...). ``grad=False`` times
the forward pass without a graph; ``grad=True`` times forward + backward through the autograd API
(input, weight and bias gradients), the same for both libraries.

Nothing here runs a kernel at import time (asv imports this module in its discovery pass).
"""
from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

import numpy as np

CPU_BACKENDS = ("numpy", "numba", "cython", "fft")  # fastconv's CPU backends, "auto" aside
TORCH = "torch"


# ---------------------------------------------------------------------------------- shapes
@dataclass(frozen=True)
class Conv:
    """One convolution: input and weight shapes plus its geometry (ints, as PyTorch takes them)."""
    name: str
    x: tuple
    w: tuple
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    groups: int = 1
    gemm_bound: bool = False  # dense enough that im2col + GEMM is the natural bound

    kind = "conv"

    @property
    def dims(self):
        return len(self.x) - 2

    @property
    def kwargs(self):
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)

    def spec(self):
        from fastconv import shapes
        return shapes.conv_spec(self.x, self.w, (self.w[0],), dims=self.dims, **self.kwargs)

    def flops(self, grad):
        """Floating-point operations of the forward pass, or of forward + both backward convolutions."""
        return self.spec().flops * (3 if grad else 1)

    def describe(self):
        extra = "".join(f" {k}={v}" for k, v in self.kwargs.items() if v != Conv.__dataclass_fields__[k].default)
        return f"x{self.x} w{self.w}{extra}"


@dataclass(frozen=True)
class Pool:
    """One pooling op, ``op`` in ("max", "avg"), with a square window and stride."""
    name: str
    op: str
    x: tuple
    kernel: int = 2
    stride: int = 2

    kind = "pool"
    gemm_bound = False

    @property
    def dims(self):
        return len(self.x) - 2

    def flops(self, grad):
        return None  # memory-bound: GFLOP/s says nothing here

    def describe(self):
        return f"{self.op} {self.kernel}x{self.kernel}/{self.stride} x{self.x}"


CONV2D = (
    Conv("lenet_c1", (64, 1, 32, 32), (6, 1, 5, 5)),
    Conv("lenet_c3", (64, 6, 14, 14), (16, 6, 5, 5)),
    Conv("vgg_3x3", (8, 64, 56, 56), (64, 64, 3, 3), padding=1, gemm_bound=True),
    Conv("resnet_s2", (8, 128, 28, 28), (256, 128, 3, 3), stride=2, padding=1, gemm_bound=True),
    Conv("dilated", (8, 32, 64, 64), (32, 32, 3, 3), padding=2, dilation=2),
    Conv("bigkernel", (4, 8, 128, 128), (8, 8, 15, 15), padding=7),
    Conv("pointwise", (16, 256, 28, 28), (128, 256, 1, 1), gemm_bound=True),
    Conv("depthwise", (8, 128, 56, 56), (128, 1, 3, 3), padding=1, groups=128),
)
CONV1D = (  # the MNIST-1D conv net's first two layers
    Conv("mnist1d_c1", (100, 1, 40), (15, 1, 3), stride=2),
    Conv("mnist1d_c2", (100, 15, 19), (15, 15, 3), stride=2),
)
POOL = (
    Pool("maxpool_lenet", "max", (64, 6, 28, 28)),
    Pool("maxpool_large", "max", (8, 64, 112, 112)),
    Pool("avgpool_lenet", "avg", (64, 6, 28, 28)),
    Pool("avgpool_large", "avg", (8, 64, 112, 112)),
)
# Shapes of a few kilobytes with the same variety (stride, dilation, groups, 1-D), for smoke tests.
TINY = (
    Conv("tiny_3x3", (2, 4, 10, 10), (6, 4, 3, 3), padding=1, gemm_bound=True),
    Conv("tiny_s2_dil", (2, 4, 11, 11), (4, 2, 3, 3), stride=2, padding=2, dilation=2, groups=2),
    Conv("tiny_1d", (4, 2, 15), (3, 2, 3), stride=2),
    Pool("tiny_maxpool", "max", (2, 3, 8, 8)),
    Pool("tiny_avgpool", "avg", (2, 3, 8, 8)),
)
SHAPES = {s.name: s for s in CONV2D + CONV1D + POOL + TINY}
FULL = CONV2D + CONV1D + POOL
LARGE = ("vgg_3x3", "resnet_s2", "pointwise", "depthwise", "maxpool_large")  # peak-memory suite


# ----------------------------------------------------------------------- implementations
def backend_status():
    """``{name: None if usable else the reason}`` for each fastconv backend (CPU and GPU)."""
    from fastconv.backends import dispatch
    status = {}
    for name in dispatch.MODULES:
        try:
            dispatch.load(name)
            status[name] = None
        except Exception as err:  # missing module, unbuilt extension, no GPU: say why, don't fail
            status[name] = str(err).splitlines()[0] if str(err) else type(err).__name__
    return status


def cpu_backends():
    """The fastconv CPU backends that can run here, in the order dispatch lists them."""
    import fastconv
    return [name for name in fastconv.available_backends() if name in CPU_BACKENDS]


def supports(impl, shape):
    """Whether ``impl`` runs ``shape`` itself (a forced backend without pooling would just run "auto")."""
    if impl in (TORCH, "auto"):
        return True
    from fastconv.backends import dispatch
    op = "conv2d" if shape.kind == "conv" else f"{shape.op}_pool2d"
    return hasattr(dispatch.load(impl), op)


def has_torch():
    try:
        import torch  # noqa: F401
        return True
    except ImportError:
        return False


# -------------------------------------------------------------------------------- runners
def inputs(shape, seed=0):
    """Float32 arrays for ``shape``: ``(x, w, b, gy)`` for a conv, ``(x, None, None, gy)`` for a pool."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape.x, dtype=np.float32)
    if shape.kind == "conv":
        spec = shape.spec()
        w = rng.standard_normal(shape.w, dtype=np.float32) / np.float32(np.sqrt(np.prod(shape.w[1:])))
        b = rng.standard_normal(shape.w[0], dtype=np.float32)
        gy = rng.standard_normal(spec.user_shape(spec.y_shape), dtype=np.float32)
        return x, w, b, gy
    from fastconv import shapes
    spec = shapes.pool_spec(shape.x, shape.kernel, shape.stride, dims=shape.dims)
    return x, None, None, rng.standard_normal(spec.user_shape(spec.y_shape), dtype=np.float32)


def runner(impl, shape, grad, seed=0):
    """A no-argument callable that runs ``shape`` once on ``impl`` (forward, or forward + backward)."""
    arrays = inputs(shape, seed)
    return (_torch_runner if impl == TORCH else _fastconv_runner)(impl, shape, grad, *arrays)


def _fastconv_runner(backend, shape, grad, x, w, b, gy):
    import fastconv as fc
    import fastconv.functional as F
    leaves = [fc.tensor(a, requires_grad=grad) for a in (x, w, b) if a is not None]
    if shape.kind == "conv":
        op = F.conv1d if shape.dims == 1 else F.conv2d
        call = lambda: op(*leaves, backend=backend, **shape.kwargs)  # noqa: E731
    else:
        op = getattr(F, f"{shape.op}_pool{shape.dims}d")
        call = lambda: op(leaves[0], shape.kernel, shape.stride, backend=backend)  # noqa: E731
    if not grad:
        return call

    def forward_backward():
        for t in leaves:
            t.grad = None
        call().backward(gy)
    return forward_backward


def _torch_runner(_, shape, grad, x, w, b, gy):
    import torch
    import torch.nn.functional as TF
    leaves = [torch.from_numpy(a).requires_grad_(grad) for a in (x, w, b) if a is not None]
    tgy = torch.from_numpy(gy)
    if shape.kind == "conv":
        op = TF.conv1d if shape.dims == 1 else TF.conv2d
        call = lambda: op(*leaves, **shape.kwargs)  # noqa: E731
    else:
        op = getattr(TF, f"{shape.op}_pool{shape.dims}d")
        call = lambda: op(leaves[0], shape.kernel, shape.stride)  # noqa: E731
    if not grad:
        def forward():
            with torch.no_grad():
                return call()
        return forward

    def forward_backward():
        for t in leaves:
            t.grad = None
        call().backward(tgy)
    return forward_backward


# ------------------------------------------------------------------------------- threads
def set_threads(n):
    """Run fastconv, PyTorch and NumPy's BLAS on ``n`` threads; returns what each was set to."""
    import fastconv
    fastconv.set_num_threads(n)
    done = {"fastconv": fastconv.get_num_threads(), "blas": set_blas_threads(n)}
    if has_torch():
        import torch
        torch.set_num_threads(n)
        done["torch"] = torch.get_num_threads()
    return done


_BLAS_SETTERS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                 "openblas_set_num_threads64_", "openblas_set_num_threads", "MKL_Set_Num_Threads")


def set_blas_threads(n):
    """Set the thread count of the BLAS that NumPy loaded (OpenBLAS or MKL, found in /proc/self/maps).

    Returns ``n``, or None where no known BLAS could be told (then ``OPENBLAS_NUM_THREADS`` rules).
    """
    try:
        with open("/proc/self/maps") as maps:
            libs = {line.split()[-1] for line in maps if "blas" in line.lower() or "mkl_rt" in line}
    except OSError:
        return None
    for path in sorted(libs):
        if not os.path.exists(path):
            continue
        lib = ctypes.CDLL(path)
        for symbol in _BLAS_SETTERS:
            setter = getattr(lib, symbol, None)
            if setter is not None:
                setter(ctypes.c_int(n))
                return n
    return None


def allocator():
    """Which malloc this process runs under: an LD_PRELOADed or linked jemalloc/tcmalloc/mimalloc, else glibc."""
    preload = os.environ.get("LD_PRELOAD", "")
    try:
        with open("/proc/self/maps") as maps:
            mapped = " ".join(line.split()[-1] for line in maps if "/" in line)
    except OSError:
        mapped = ""
    for name in ("jemalloc", "tcmalloc", "mimalloc"):
        if name in preload or f"lib{name}" in mapped:
            return f"{name} (LD_PRELOAD={preload or 'unset'})"
    return f"glibc malloc (LD_PRELOAD={preload or 'unset'})"
