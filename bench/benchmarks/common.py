"""The benchmark shapes and the runners that time them, shared by the asv suites and ``bench/compare.py``.

One table of shapes (NCHW float32, 1-D shapes as NCL) and one way to build a callable for each
(implementation, shape, mode): an implementation is ``"torch"`` (``torch.nn.functional`` on the CPU, the
speed peer) or a fastconv backend name (``"auto"``, ``"numpy"``, ``"numba"``, ...). ``grad=False`` times
the forward pass without a graph; ``grad=True`` times forward + backward through the autograd API
(input, weight and bias gradients), the same for both libraries.

Nothing here runs a kernel at import time (asv imports this module in its discovery pass).
"""
from __future__ import annotations

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
CONV1D = (  # the first two layers of the MNIST-1D CNN of Understanding Deep Learning (models 'book')
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
LARGE = ("vgg_3x3", "resnet_s2", "maxpool_large")  # the peak-memory suites


# ----------------------------------------------------------------------- implementations
def backend_status(names=None):
    """``{name: None if usable else the reason}`` for the fastconv backends ``names`` (default: all)."""
    from fastconv.backends import registry
    status = {}
    for name in registry.MODULES if names is None else names:
        try:
            registry.load(name)
            status[name] = None
        except Exception as err:  # missing module, unbuilt extension, no GPU: say why, don't fail
            status[name] = str(err).splitlines()[0] if str(err) else type(err).__name__
    return status


def cpu_backends():
    """The fastconv CPU backends that can run here, in the order the registry lists them."""
    import fastconv
    return [name for name in fastconv.available_backends() if name in CPU_BACKENDS]


def supports(impl, shape):
    """Whether ``impl`` runs ``shape`` itself (a forced backend without pooling would just run "auto")."""
    if impl in (TORCH, "auto"):
        return True
    from fastconv.backends import registry
    op = "conv2d" if shape.kind == "conv" else f"{shape.op}_pool2d"
    return registry.runs(registry.parse(impl)[0], op)


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


def runner(impl, shape, grad, seed=0, device="cpu"):
    """A no-argument callable that runs ``shape`` once on ``impl`` (forward, or forward + backward).

    On ``device="cuda"`` the inputs live on the GPU and the callable waits for the GPU to finish.
    """
    arrays = inputs(shape, seed)
    make = _torch_runner if impl == TORCH else _fastconv_runner
    fn = make(impl, shape, grad, device, *arrays)
    return fn if device == "cpu" else _synchronized(fn, impl)


def _synchronized(fn, impl):
    if impl == TORCH:
        import torch
        sync = torch.cuda.synchronize
    else:
        from numba import cuda
        sync = cuda.synchronize

    def run():
        out = fn()
        sync()
        return out
    return run


def _fastconv_runner(backend, shape, grad, device, x, w, b, gy):
    import fastconv as fc
    import fastconv.functional as F
    leaves = [fc.tensor(a, requires_grad=grad, device=device) for a in (x, w, b) if a is not None]
    gy = fc.tensor(gy, device=device)
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


def _torch_runner(_, shape, grad, device, x, w, b, gy):
    import torch
    import torch.nn.functional as TF
    leaves = [torch.from_numpy(a).to(device).requires_grad_(grad) for a in (x, w, b) if a is not None]
    tgy = torch.from_numpy(gy).to(device)
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


def set_blas_threads(n):
    """Set the thread count of every BLAS NumPy and SciPy loaded (see ``fastconv.config``)."""
    from fastconv.config import set_blas_threads as set_them
    return set_them(n)


def cpu_name():
    """The CPU's model name (Linux), else what ``platform`` knows."""
    import platform
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def vector_isa():
    """The widest x86 vector instruction set the CPU reports (Linux ``/proc/cpuinfo`` flags), else the
    machine's name."""
    import platform
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    except OSError:
        flags = set()
    for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"), ("sse4_2", "SSE4.2")):
        if flag in flags:
            return name
    return platform.machine()


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


# ------------------------------------------------------------------------------------ asv
# A fixed grid, so that results stay comparable across machines. The NumPy reference is the oracle, not a
# speed path: bench/compare.py times it, asv does not (it would double the CI's quick run).
IMPLS = (TORCH, "auto", "numba", "cython", "fft")
POOL_IMPLS = (TORCH, "auto", "numba", "cython")  # the FFT backend has no pooling
BENCH_THREADS = int(os.environ.get("FASTCONV_BENCH_THREADS", "2"))
# FASTCONV_BENCH_SMOKE=1: every suite runs the tiny shapes (and batches of 8), to check in seconds that no
# benchmark has rotted (CI); results under it are not comparable with real runs and should not be saved.
SMOKE = os.environ.get("FASTCONV_BENCH_SMOKE", "") not in ("", "0")
_GRID = {
    "conv2d": [s.name for s in CONV2D],
    "conv1d": [s.name for s in CONV1D],
    "pool": [s.name for s in POOL],
    "gemm": [s.name for s in CONV2D if s.gemm_bound],
    "peak_conv": [n for n in LARGE if SHAPES[n].kind == "conv"],
    "peak_pool": [n for n in LARGE if SHAPES[n].kind == "pool"],
}
_SMOKE_GRID = {"conv2d": ["tiny_3x3", "tiny_s2_dil"], "conv1d": ["tiny_1d"],
               "pool": ["tiny_maxpool", "tiny_avgpool"],
               "gemm": ["tiny_3x3"], "peak_conv": ["tiny_3x3"], "peak_pool": ["tiny_maxpool"]}


def grid(group):
    """Shape names of one asv suite's grid (``conv2d``, ``conv1d``, ``pool``, ``gemm``, ``peak_conv``,
    ``peak_pool``): the real shapes, or the tiny ones under FASTCONV_BENCH_SMOKE=1."""
    return list((_SMOKE_GRID if SMOKE else _GRID)[group])


def skip_unless_runnable(impl, shape=None):
    """Raise NotImplementedError (asv's "skip") when ``impl`` cannot run here or has no kernel for
    ``shape``; otherwise set the benchmark thread count."""
    if impl == TORCH:
        if not has_torch():
            raise NotImplementedError("PyTorch is not installed")
    elif impl != "auto":
        reason = backend_status([impl]).get(impl, f"unknown backend {impl!r}")
        if reason is not None:
            raise NotImplementedError(reason)
        if shape is not None and not supports(impl, shape):
            raise NotImplementedError(f"backend {impl} has no kernel for {shape.name}")
    set_threads(BENCH_THREADS)


_warm = {}


def warm(key, build):
    """asv ``setup`` helper: ``build()`` once per process and keep the result under ``key``.

    asv re-runs ``setup`` before every sample but runs each parameter combination in a process of its
    own, so only the first ``setup`` pays for compilation and warm-up. A skip (NotImplementedError) raised
    by ``build`` is raised again at the next ``setup``.
    """
    if key not in _warm:
        _warm[key] = build()
    return _warm[key]


def warm_runner(impl, shape, grad, device="cpu"):
    """A runner that has run once (JIT compiled), or a skip where ``impl`` cannot run it here."""
    def build():
        _skip_unless(impl, device, shape)
        fn = runner(impl, shape, grad, device=device)
        try:
            fn()
        except (ValueError, TypeError, NotImplementedError) as err:  # geometry this backend rejects
            raise NotImplementedError(f"{impl} cannot run {shape.name}: {err}") from err
        return fn
    return warm((impl, shape.name, grad, device), build)


#: The kernels of one convolution, as the backends name them.
CONV_KERNELS = ("conv2d", "conv2d_grad_input", "conv2d_grad_weight")


def warm_kernel(backend, algorithm, kernel, shape):
    """One kernel of a 2-D convolution (``CONV_KERNELS``) called on ``backend``'s module with
    ``algorithm=`` forced, run once (compiled), or a skip: where the automatic choices come from."""
    def build():
        skip_unless_runnable(backend)
        from fastconv.backends import registry
        module = registry.load(backend)
        spec = shape.spec()
        if not registry.supports(backend, kernel, spec, np.float32, algorithm):
            raise NotImplementedError(f"{backend}:{algorithm} cannot run {kernel} on {shape.name}")
        x, w, _, gy = inputs(shape)
        x, w, gy = x.reshape(spec.x_shape), w.reshape(spec.w_shape), gy.reshape(spec.y_shape)
        args = {"conv2d": (x, w, None), "conv2d_grad_input": (gy, w), "conv2d_grad_weight": (gy, x)}[kernel]
        fn = getattr(module, kernel)

        def run():
            return fn(*args, spec, algorithm=algorithm)
        run()
        return run
    return warm((backend, algorithm, kernel, shape.name), build)


def warm_trainer(task, impl, device="cpu"):
    """``(trainer, batch)`` after one training step (compilation, autotuning), or a skip."""
    def build():
        _skip_unless(impl, device)
        trainer = Trainer(task, impl, device)
        batch = synthetic_batch(task)
        trainer.step(*batch)
        return trainer, batch
    return warm(("train", task, impl, device), build)


def _skip_unless(impl, device, shape=None):
    if device == "cpu":
        skip_unless_runnable(impl, shape)
    else:
        skip_unless_gpu(impl)


def skip_unless_gpu(impl):
    """Raise NotImplementedError unless ``impl`` (fastconv's ``"cuda"`` or ``"torch"``) has a CUDA GPU.

    Numba's CUDA simulator counts as none (it measures Python, not a GPU). Without any NVIDIA device node
    it skips before importing numba.cuda or initialising torch.cuda (seconds per benchmark).
    """
    import glob
    if os.name == "posix" and not (glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/dxg")):
        raise NotImplementedError("no NVIDIA GPU device on this machine")
    if impl == TORCH:
        if not has_torch():
            raise NotImplementedError("PyTorch is not installed")
        import torch
        if not torch.cuda.is_available():
            raise NotImplementedError("PyTorch sees no CUDA GPU")
        return
    import fastconv
    if not fastconv.cuda.is_available() or fastconv.cuda.is_simulator():
        raise NotImplementedError("no CUDA GPU for fastconv (numba.cuda), or only the simulator")


def preload():
    """Import torch, fastconv and its models once, in asv's forkserver (a benchmark module's import),
    rather than in every forked benchmark process.

    The backends are left to the forked processes: the Numba backend starts Numba's OpenMP thread pool
    when it is imported, and Numba terminates any process forked from one whose pool runs. For the same
    reason nothing here touches CUDA (a CUDA context does not survive fork).
    """
    has_torch()
    try:
        import fastconv.functional  # noqa: F401
        import fastconv.models  # noqa: F401
        import fastconv.optim  # noqa: F401
    except ImportError:
        pass


def gflops_of(fn, flops, repeat=2):
    """GFLOP/s of the fastest of ``repeat`` calls (asv ``track_`` helper)."""
    import time
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return flops / best / 1e9


# ------------------------------------------------------------------------------- training
# task -> (fastconv.models name, input shape of one sample, batch size, Adam lr): the recipes of
# fastconv.train (LeNet-5 on 32x32 MNIST; the MNIST-1D paper's CNN), without schedule or augmentation.
TRAIN_TASKS = {
    "lenet5": ("lenet5", (1, 32, 32), 128, 2e-3),
    "mnist1d": ("paper", (1, 40), 100, 1e-2),
}
TRAIN_IMPLS = (TORCH, "auto", "numba", "cython")

# fastconv.nn layer -> the torch.nn layer with the same arguments
_TWIN_ARGS = {
    "Conv1d": ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups"),
    "Linear": ("in_features", "out_features"),
    "MaxPool1d": ("kernel_size", "stride", "padding", "dilation", "ceil_mode"),
    "AvgPool1d": ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad"),
    "AdaptiveAvgPool1d": ("output_size",),
    "Flatten": ("start_dim",),
    "Dropout": ("p",),
    "ReLU": (), "Tanh": (), "Sigmoid": (), "Identity": (),
}
for _name in ("Conv", "MaxPool", "AvgPool", "AdaptiveAvgPool"):
    _TWIN_ARGS[_name + "2d"] = _TWIN_ARGS[_name + "1d"]


def torch_twin(module):
    """The PyTorch copy of a fastconv model built from ``fastconv.nn`` layers: same layers, same
    arguments, same parameter names, same initial weights. A model is ``features`` then ``classifier``
    (as in ``fastconv.models``); NotImplementedError for anything else."""
    import torch
    twin = _twin_layer(module, torch)
    twin.load_state_dict({k: torch.from_numpy(v) for k, v in module.state_dict().items()}, strict=True)
    return twin


def _twin_layer(module, torch):
    name = type(module).__name__
    if name == "Sequential":
        return torch.nn.Sequential(*(_twin_layer(m, torch) for m in module.children()))
    if name in _TWIN_ARGS:
        kwargs = {a: getattr(module, a) for a in _TWIN_ARGS[name]}
        if hasattr(module, "bias"):
            kwargs["bias"] = module.bias is not None
        return getattr(torch.nn, name)(**kwargs)
    if hasattr(module, "features") and hasattr(module, "classifier"):
        twin = torch.nn.Module()
        twin.features = _twin_layer(module.features, torch)
        twin.classifier = _twin_layer(module.classifier, torch)
        twin.forward = lambda x: twin.classifier(twin.features(x))
        return twin
    raise NotImplementedError(f"no PyTorch twin for {name}")


class Trainer:
    """One model and its Adam optimizer on one implementation, for timing training steps.

    ``impl``: a fastconv backend (``"auto"``, ``"numba"``, ...) or ``"torch"`` (the fastconv model's twin,
    starting from the same weights); ``device``: ``"cpu"`` or ``"cuda"``. Every Trainer of a task built
    with the same seed starts from the same weights. NotImplementedError when fastconv.models is missing.
    """

    def __init__(self, task, impl, device="cpu", seed=0):
        try:
            import fastconv as fc
            from fastconv import models
        except ImportError as err:
            raise NotImplementedError(f"fastconv.models is not available: {err}") from err
        name, self.sample_shape, self.batch_size, lr = TRAIN_TASKS[task]
        self.impl, self.device = impl, device
        fc.manual_seed(seed)
        model = models.create(name, backend="auto" if impl == TORCH else impl)
        if impl == TORCH:
            import torch
            self.model = torch_twin(model).to(device)
            self.opt = torch.optim.Adam(self.model.parameters(), lr=lr)
        else:
            from fastconv import optim
            self.model = model.to(device)
            self.opt = optim.Adam(self.model.parameters(), lr=lr)

    def _inputs(self, x, y):
        if self.impl == TORCH:
            import torch
            return torch.from_numpy(x).to(self.device), torch.from_numpy(y).to(self.device)
        import fastconv as fc
        return fc.tensor(x, device=self.device), fc.tensor(y, device=self.device)

    def step(self, x, y):
        """One optimizer step on the batch ``(x, y)`` (NumPy float32 / int64); returns the loss."""
        xb, yb = self._inputs(x, y)
        if self.impl == TORCH:
            import torch.nn.functional as TF
            loss = TF.cross_entropy(self.model(xb), yb)
        else:
            import fastconv.functional as F
            loss = F.cross_entropy(self.model(xb), yb)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return loss.item()  # waits for the GPU, so that timings are honest

    def accuracy(self, x, y, batch_size=1000):
        """Share of ``x`` classified as ``y``, in evaluation mode without a graph."""
        correct = 0
        self.model.eval()
        if self.impl == TORCH:
            import torch
            guard = torch.no_grad
        else:
            import fastconv as fc
            guard = fc.no_grad
        with guard():
            for start in range(0, len(y), batch_size):
                xb, _ = self._inputs(x[start:start + batch_size], y[start:start + batch_size])
                logits = self.model(xb)
                logits = logits.cpu().numpy() if self.impl == TORCH else logits.numpy()
                correct += int(np.count_nonzero(logits.argmax(1) == y[start:start + batch_size]))
        self.model.train()
        return correct / len(y)


def synthetic_batch(task, seed=0):
    """A random batch of the task's shape and batch size, 8 under FASTCONV_BENCH_SMOKE=1 (timing needs no
    real data)."""
    _, sample, batch, _ = TRAIN_TASKS[task]
    batch = 8 if SMOKE else batch
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch,) + sample, dtype=np.float32), rng.integers(0, 10, batch)
