"""Check and time fastconv's CUDA backend on a GPU machine, in one run.

1. Correctness: every GPU op against fastconv's CPU path on the benchmark shapes of
   ``fastconv/bench/common.py``: fresh random data for every check, every output the GPU writes filled
   with NaN beforehand (``fastconv.gpu.alloc.poison_outputs``), and the CPU oracle computed in float64
   from the same inputs. Convolutions: forward through both kernels (direct and implicit GEMM) and through
   ``F.conv{1,2}d``, input/weight/bias gradients through autograd; transposed convolution; max pooling
   (values, int64 indices exactly, gradient), average pooling and its gradient; the fused ops (bias and
   activation in convolution and linear layers, activation before pooling, cross-entropy); every function
   of the GPU array namespace against NumPy; a LeNet-5 training step (loss and updated weights).
2. Launches: microseconds per launch (Numba's own launch of an empty kernel, fastconv's launch path, a
   whole elementwise op), and per training step (LeNet-5, MNIST-1D): launches, host microseconds per
   launch, the kernels' GPU time, ms per step against PyTorch (cuDNN) and fastconv on the CPU.
3. Speed: fastconv ``cuda`` against PyTorch (cuDNN) side by side, forward and forward + backward, median
   ms over interleaved repetitions, the GPU synchronised after every call; a Markdown table. Without
   PyTorch (or without a GPU for it) the torch columns are left out.

Every section reports its own failures and the run goes on, so one missing piece (no PyTorch, no CUDA
PyTorch, a failing kernel) never hides the rest.

    python bench/gpu_check.py                  # benchmark shapes, float32 checks, launches, timings
    python bench/gpu_check.py --tiny           # tiny shapes; also runs under NUMBA_ENABLE_CUDASIM=1
    python bench/gpu_check.py --shapes vgg_3x3,resnet_s2 --repeat 21 --markdown results.md
    python bench/gpu_check.py --ptx            # no GPU: compile every kernel for sm_80/sm_90 with NVVM

Exit status 1 when a check fails.
"""
from __future__ import annotations

import argparse
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np
from numba import cuda  # a module global: the simulator swaps it for its own inside kernels

from fastconv.bench import common  # the one shape table

RTOL = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}  # x max|oracle|; sums of up to 25k terms


# ------------------------------------------------------------------------------ checking
class Checker:
    """Runs named checks, prints one line each, remembers failures."""

    def __init__(self):
        self.failures, self.count = [], 0

    def close(self, what, gpu, oracle, dtype, exact=False):
        gpu = gpu.numpy() if hasattr(gpu, "numpy") else (gpu.copy_to_host() if hasattr(gpu, "copy_to_host")
                                                         else np.asarray(gpu))
        oracle = np.asarray(oracle.numpy() if hasattr(oracle, "numpy") else oracle)
        self.count += 1
        if gpu.shape != oracle.shape:
            return self._fail(what, f"shape {gpu.shape} != {oracle.shape}")
        if exact:
            bad = int(np.count_nonzero(gpu != oracle))
            return self._fail(what, f"{bad} elements differ") if bad else self._ok(what, "exact")
        if np.isnan(gpu).any():
            return self._fail(what, f"{int(np.isnan(gpu).sum())} NaN (unwritten or wrong) elements")
        scale = max(1.0, float(np.abs(oracle).max())) if oracle.size else 1.0
        err = float(np.abs(gpu - oracle).max()) / scale if oracle.size else 0.0
        tol = RTOL[np.dtype(dtype)]
        return self._ok(what, f"rel err {err:.1e}") if err <= tol else self._fail(what, f"rel err {err:.1e} > {tol:.0e}")

    def run(self, what, fn):
        try:
            fn()
        except Exception as err:  # a crash is a failed check, not the end of the run
            self.count += 1
            self._fail(what, f"{type(err).__name__}: {err}")
            traceback.print_exc()

    def _ok(self, what, detail):
        print(f"  ok    {what}: {detail}")

    def _fail(self, what, detail):
        print(f"  FAIL  {what}: {detail}")
        self.failures.append(f"{what}: {detail}")


def _rand(rng, shape, dtype, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def _run(fn, arrays, device, dtype, gy):
    """Forward and every input gradient of ``fn`` on ``device`` with inputs cast to ``dtype``."""
    import fastconv as fc
    ts = [fc.tensor(a.astype(dtype), requires_grad=True, device=device) for a in arrays]
    y = fn(*ts)
    y.backward(gy.astype(dtype))
    return y, [t.grad for t in ts]


def check_autograd(chk, what, fn, arrays, gy, dtype):
    """``fn`` on the GPU (``dtype``) against ``fn`` on the CPU in float64, forward and gradients."""
    y, grads = _run(fn, arrays, "cuda", dtype, gy)
    y64, grads64 = _run(fn, arrays, "cpu", np.float64, gy)
    chk.close(f"{what} forward", y, y64, dtype)
    for name, g, g64 in zip("xwb", grads, grads64):
        chk.close(f"{what} grad {name}", g, g64, dtype)


def check_conv(chk, shape, dtype, rng):
    import fastconv.functional as F
    from fastconv.backends import reference as ref
    from fastconv.gpu import conv as kc
    from fastconv.gpu import xp as ca
    spec = shape.spec()
    fan_in = float(np.prod(shape.w[1:]))
    x, w, b = _rand(rng, shape.x, dtype), _rand(rng, shape.w, dtype, fan_in ** -0.5), _rand(rng, shape.w[0], dtype)
    gy = _rand(rng, spec.user_shape(spec.y_shape), dtype)
    op = F.conv1d if shape.dims == 1 else F.conv2d
    check_autograd(chk, f"{shape.name} conv {np.dtype(dtype)}", lambda x, w, b: op(x, w, b, **shape.kwargs),
                   [x, w, b], gy, dtype)
    y64 = ref.conv2d(x.reshape(spec.x_shape).astype(np.float64), w.reshape(spec.w_shape).astype(np.float64),
                     b.astype(np.float64), spec)
    xd, wd, bd = (ca.asarray(a) for a in (x.reshape(spec.x_shape), w.reshape(spec.w_shape), b))
    chk.close(f"{shape.name} implicit-GEMM kernel", kc.conv2d_gemm(xd, wd, bd, spec), y64, dtype)
    if kc.direct_fits(spec):
        chk.close(f"{shape.name} direct kernel", kc.conv2d_direct(xd, wd, bd, spec), y64, dtype)
    if shape.groups == 1 and shape.stride == 1:  # the transposed convolution of the same weight
        xt = _rand(rng, spec.user_shape(spec.y_shape), dtype)
        opt = F.conv_transpose1d if shape.dims == 1 else F.conv_transpose2d
        check_autograd(chk, f"{shape.name} conv_transpose {np.dtype(dtype)}",
                       lambda x, w: opt(x, w, padding=shape.padding, dilation=shape.dilation),
                       [xt, w], _rand(rng, shape.x, dtype), dtype)


def check_pool(chk, shape, dtype, rng):
    import fastconv as fc
    import fastconv.functional as F
    dims = shape.dims
    x = _rand(rng, shape.x, dtype)
    name = f"{shape.name} {np.dtype(dtype)}"
    if shape.op == "max":
        op = getattr(F, f"max_pool{dims}d")
        y, i = op(fc.tensor(x, device="cuda"), shape.kernel, shape.stride, return_indices=True)
        y64, i64 = op(fc.tensor(x.astype(np.float64)), shape.kernel, shape.stride, return_indices=True)
        chk.close(f"{name} max values", y.numpy().astype(np.float64), y64, np.float64, exact=True)
        chk.close(f"{name} max indices", i, i64, dtype, exact=True)
    op = getattr(F, f"{shape.op}_pool{dims}d")
    gy = _rand(rng, op(fc.tensor(x), shape.kernel, shape.stride).shape, dtype)
    check_autograd(chk, f"{name} {shape.op}_pool", lambda x: op(x, shape.kernel, shape.stride), [x], gy, dtype)


def check_glue(chk, dtype, rng, tiny):
    """The layers' glue a LeNet training step runs: linear + bias (LeNet's first dense layer, or a tiny
    one), log-softmax / cross-entropy."""
    import fastconv as fc
    import fastconv.functional as F
    n, k, m = (4, 20, 12) if tiny else (128, 400, 120)
    x, w, b = _rand(rng, (n, k), dtype), _rand(rng, (m, k), dtype, k ** -0.5), _rand(rng, m, dtype)
    check_autograd(chk, f"linear {np.dtype(dtype)}", F.linear, [x, w, b], _rand(rng, (n, m), dtype), dtype)
    labels = rng.integers(0, 10, n)
    logits = _rand(rng, (n, 10), dtype)
    for reduction in ("mean", "sum", "none"):
        check_autograd(chk, f"cross_entropy {reduction} {np.dtype(dtype)}",
                       lambda z: F.cross_entropy(z, fc.tensor(labels, device=z.device), reduction), [logits],
                       np.ones(n if reduction == "none" else ()), dtype)


def check_fused(chk, dtype, rng, tiny):
    """The fused ops against the same ops unfused on the CPU: convolution + bias + activation (both
    kernels: few and many output channels), linear + bias + activation, activation + pooling."""
    import fastconv.functional as F
    n = 2 if tiny else 32
    for act in ("relu", "tanh", "sigmoid"):
        for c_out in (6, 40):
            x, w = _rand(rng, (n, 3, 9, 8), dtype), _rand(rng, (c_out, 3, 3, 3), dtype, 0.2)
            b = _rand(rng, c_out, dtype)
            gy = _rand(rng, (n, c_out, 9, 8), dtype)
            check_autograd(chk, f"conv {c_out} channels + {act} {np.dtype(dtype)}",
                           lambda x, w, b: F.conv2d(x, w, b, padding=1, activation=act), [x, w, b], gy, dtype)
        x, w, b = _rand(rng, (n, 20), dtype), _rand(rng, (12, 20), dtype, 0.2), _rand(rng, 12, dtype)
        check_autograd(chk, f"linear + {act} {np.dtype(dtype)}", lambda x, w, b: F.linear(x, w, b, activation=act),
                       [x, w, b], _rand(rng, (n, 12), dtype), dtype)
        x = _rand(rng, (n, 3, 9, 8), dtype)
        check_autograd(chk, f"{act} + max_pool {np.dtype(dtype)}",
                       lambda x: F.max_pool2d(x, 3, 2, padding=1, activation=act), [x], _rand(rng, (n, 3, 5, 4), dtype),
                       dtype)


def check_namespace(chk, dtype, rng):
    """Every function of the GPU array namespace against NumPy on the same values (float64 oracle)."""
    from fastconv.gpu import xp
    a, b = _rand(rng, (3, 4, 5), dtype), np.abs(_rand(rng, (4, 1), dtype)) + np.asarray(0.5, dtype)
    da, db = xp.asarray(a), xp.asarray(b)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    name = np.dtype(dtype)
    for op in ("add", "subtract", "multiply", "divide", "maximum", "minimum"):
        chk.close(f"xp.{op} {name}", getattr(xp, op)(da, db), getattr(np, op)(a64, b64), dtype)
    chk.close(f"xp.power {name}", xp.power(db, 1.5), b64 ** 1.5, dtype)
    for op in ("exp", "tanh", "abs", "sign", "square", "negative"):
        chk.close(f"xp.{op} {name}", getattr(xp, op)(da), getattr(np, op)(a64), dtype)
    for op in ("log", "sqrt"):
        chk.close(f"xp.{op} {name}", getattr(xp, op)(db), getattr(np, op)(b64), dtype)
    for op in ("greater", "less_equal", "equal"):
        chk.close(f"xp.{op} {name}", getattr(xp, op)(da, 0.1), getattr(np, op)(a, np.dtype(dtype).type(0.1)), dtype, exact=True)
    chk.close(f"xp.where {name}", xp.where(da > 0, da, 0), np.where(a64 > 0, a64, 0), dtype)
    for axis in (None, 0, (0, 2), -1):
        for op in ("sum", "max", "min", "mean"):
            chk.close(f"xp.{op} axis={axis} {name}", getattr(xp, op)(da, axis=axis, keepdims=True),
                      getattr(np, op)(a64, axis=axis, keepdims=True), dtype)
    chk.close(f"xp.matmul batched {name}", xp.matmul(da, xp.swapaxes(da, 1, 2)), a64 @ np.swapaxes(a64, 1, 2), dtype)
    idx = rng.integers(0, 5, (3, 4, 2))
    chk.close(f"xp.take_along_axis {name}", xp.take_along_axis(da, xp.asarray(idx), axis=2),
              np.take_along_axis(a64, idx, axis=2), dtype)
    out, ref = xp.zeros((3, 4, 5), dtype), np.zeros((3, 4, 5))
    xp.put_along_axis(out, xp.asarray(idx[..., :1]), 1.0, axis=2)
    np.put_along_axis(ref, idx[..., :1], 1.0, axis=2)
    chk.close(f"xp.put_along_axis {name}", out, ref, dtype)
    rows = np.array([2, 0, 2])
    out, ref = xp.zeros((3, 4, 5), dtype), np.zeros((3, 4, 5))
    xp.add_at(out, rows, da)
    np.add.at(ref, rows, a64)
    chk.close(f"xp.add_at {name}", out, ref, dtype)
    chk.close(f"CudaArray.astype {name}", da.T.astype(np.float64), a64.T, np.float64)
    shifted = a64 - a64.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    chk.close(f"xp.log_softmax {name}", xp.log_softmax(da, 1), logp, dtype)
    chk.close(f"xp.log_softmax_grad {name}", xp.log_softmax_grad(da, xp.asarray(logp.astype(dtype)), 1),
              a64 - np.exp(logp) * a64.sum(axis=1, keepdims=True), dtype)


def check_optimizers(chk, dtype, rng):
    """Three steps of each optimizer's fused update on the GPU against the CPU's, same gradients."""
    import fastconv as fc
    from fastconv import optim
    makers = {"adam": lambda ps: optim.Adam(ps, lr=1e-2, weight_decay=1e-2),
              "adamw": lambda ps: optim.AdamW(ps, lr=1e-2),
              "sgd": lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, dampening=0.1, weight_decay=1e-2)}
    values = [_rand(rng, s, dtype) for s in ((4, 3), (7,), (2, 2, 5))]
    grads = [[_rand(rng, v.shape, dtype) for v in values] for _ in range(3)]
    for name, make in makers.items():
        results = {}
        for device in ("cuda", "cpu"):
            params = [fc.tensor(v, requires_grad=True, device=device) for v in values]
            opt = make(params)
            for step in grads:
                for p, g in zip(params, step):
                    p.grad = fc.tensor(g, device=device).data
                opt.step()
            results[device] = params
        for i, (p, q) in enumerate(zip(results["cuda"], results["cpu"])):
            chk.close(f"{name} fused step {np.dtype(dtype)} parameter {i}", p, q, dtype)


def check_training(chk):
    """One Adam step of LeNet-5 on the GPU against the same step on the CPU (same initial weights)."""
    import fastconv
    if fastconv.cuda.is_simulator():  # a LeNet step takes minutes simulated; tests/cuda trains a tiny net
        print("  skip  training step: simulator")
        return
    try:
        gpu = common.Trainer("lenet5", "cuda", device="cuda")
        cpu = common.Trainer("lenet5", "auto")
    except NotImplementedError as err:
        print(f"  skip  training step: {err}")
        return
    x, y = common.synthetic_batch("lenet5")
    loss_gpu, loss_cpu = gpu.step(x, y), cpu.step(x, y)
    chk.close("lenet5 Adam step loss", np.array(loss_gpu), np.array(loss_cpu), np.float32)
    for (name, p), (_, q) in zip(gpu.model.named_parameters(), cpu.model.named_parameters()):
        chk.close(f"lenet5 Adam step {name}", p, q, np.float32)


def run_checks(shapes, dtypes, tiny, seed):
    from fastconv.gpu import alloc
    chk = Checker()
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    alloc.poison_outputs(True)
    try:
        for shape in shapes:
            for dtype in dtypes:
                print(f"{shape.name} ({shape.describe()}), {np.dtype(dtype)} [{time.perf_counter() - start:.0f} s]")
                check = check_conv if shape.kind == "conv" else check_pool
                chk.run(shape.name, lambda: check(chk, shape, dtype, rng))
        print("array namespace, fused ops, glue and training")
        for dtype in dtypes:
            chk.run("namespace", lambda: check_namespace(chk, dtype, rng))
            chk.run("fused", lambda: check_fused(chk, dtype, rng, tiny))
            chk.run("optimizers", lambda: check_optimizers(chk, dtype, rng))
            chk.run("glue", lambda: check_glue(chk, dtype, rng, tiny))
        chk.run("training", lambda: check_training(chk))
    finally:
        alloc.poison_outputs(False)
    return chk


# ------------------------------------------------------------------------------ launches
def _noop_kernel():
    """A kernel that does nothing (reads and writes back one element): what a launch costs by itself."""
    @cuda.jit
    def noop(a, n):
        i = cuda.grid(1)
        if i < n:
            a[i] = a[i]
    return noop


def _per_call_us(fn, number):
    from fastconv.gpu import launch
    fn()  # compile
    launch.synchronize()
    start = time.perf_counter()
    for _ in range(number):
        fn()
    launch.synchronize()
    return (time.perf_counter() - start) / number * 1e6


def launch_overhead(number):
    """Host microseconds per launch, the GPU synchronised once after ``number`` launches: Numba's own
    launch of an empty kernel, the same kernel through fastconv's launch path (resolved once, reused),
    and a whole one-element op (``xp.add(a, b, out=c)``: arguments, plan and launch)."""
    from fastconv.gpu import launch, xp
    a, b, c = (xp.ones(1, np.float32) for _ in range(3))
    raw = _noop_kernel()
    calls = {"numba kernel[1, 32](...)": lambda: raw[1, 32](a._buf, 1),
             "fastconv launch()": lambda: launch.launch(_noop_kernel, (), 1, 32, a._buf, 1),
             "fastconv xp.add(a, b, out=c)": lambda: xp.add(a, b, out=c)}
    return {name: _per_call_us(fn, number) for name, fn in calls.items()}


def training_launches(tasks, simulated, with_torch, repeat, min_time):
    """Per task: launches per Adam step (counted without running them), by category; on a GPU also the
    host microseconds per launch, the kernels' GPU time, and ms per step of fastconv cuda, PyTorch cuda
    and fastconv on the CPU, interleaved."""
    import fastconv
    from fastconv.bench.compare import time_blocks  # blocks of back-to-back calls, rotating order
    rows = []
    for task in tasks:
        row = {"task": task, "batch": common.TRAIN_TASKS[task][2]}
        x, y = common.synthetic_batch(task)
        trainer = common.Trainer(task, "cuda", device="cuda")
        with fastconv.cuda.profile(count_only=True):
            trainer.step(x, y)  # makes the optimizer's state
        with fastconv.cuda.profile(count_only=True) as counted:
            trainer.step(x, y)
        row["launches"], row["categories"] = len(counted), dict(counted.counts().most_common())
        if not simulated:
            for _ in range(3):
                trainer.step(x, y)
            with fastconv.cuda.profile() as prof:
                trainer.step(x, y)
            row["host_us"] = sum(r.host_us for r in prof.launches) / max(1, len(prof))
            row["gpu_us"] = sum(r.gpu_us or 0.0 for r in prof.launches)
            calls = {"fastconv cuda": lambda: trainer.step(x, y)}
            others = {"torch cuda": (common.TORCH, "cuda")} if with_torch else {}
            others["fastconv cpu"] = ("auto", "cpu")
            for name, (impl, device) in others.items():
                try:  # a missing piece leaves its column empty
                    other = common.Trainer(task, impl, device=device)
                    other.step(x, y)
                    calls[name] = (lambda t: lambda: t.step(x, y))(other)
                except Exception as err:
                    print(f"  {task} {name}: {type(err).__name__}: {err}")
            for name, samples in time_blocks(calls, repeat, min_time).items():
                row[name] = _median_ms(samples)
        rows.append(row)
        print(f"  {task}: {row}")
    return rows


def launches_markdown(overhead, rows, device):
    lines = [f"Launches on {device}. Host microseconds per launch (GPU synchronised after the loop):", ""]
    lines += [f"- {name}: {us:.1f} us" for name, us in (overhead or {}).items()]
    head = ["task", "batch", "launches/step", "by category", "host us/launch", "kernel us/step",
            "fastconv cuda ms/step", "torch cuda ms/step", "torch/fastconv", "fastconv cpu ms/step", "cpu/cuda"]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def num(v, fmt):
        return format(v, fmt) if isinstance(v, float) else "-"

    for r in rows:
        gpu, torch_ms, cpu = r.get("fastconv cuda"), r.get("torch cuda"), r.get("fastconv cpu")
        cells = [r["task"], str(r["batch"]), str(r["launches"]),
                 ", ".join(f"{k} {v}" for k, v in r["categories"].items()), num(r.get("host_us"), ".1f"),
                 num(r.get("gpu_us"), ".0f"), num(gpu, ".3f"), num(torch_ms, ".3f"),
                 num(torch_ms / gpu if gpu and torch_ms else None, ".2f"), num(cpu, ".3f"),
                 num(cpu / gpu if gpu and cpu else None, ".2f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_launches(args, simulated, with_torch, device):
    """The launches section; every failure is reported and the run goes on."""
    overhead, rows = None, []
    try:
        overhead = launch_overhead(50 if simulated else 5000)
    except Exception:
        traceback.print_exc()
    try:
        rows = training_launches(list(common.TRAIN_TASKS), simulated, with_torch, 3 if simulated else args.repeat,
                                 0.0 if simulated else args.min_time)
    except Exception:
        traceback.print_exc()
    table = launches_markdown(overhead, rows, device)
    if simulated:
        table += "\n\nsimulator: microseconds measure Python, not a GPU; launches are counted as on a GPU"
    return table


# -------------------------------------------------------------------------------- timing
def _median_ms(samples):
    return statistics.median(samples) * 1e3


def time_shapes(shapes, repeat, min_time, with_torch):
    """Rows of (shape, {impl: {mode: ms}}) with fastconv 'cuda' and, if asked, torch on the GPU."""
    from fastconv.bench.compare import MODES, time_blocks  # blocks of back-to-back calls, rotating order
    impls = ["cuda"] + (["torch"] if with_torch else [])
    rows = []
    for shape in shapes:
        result = {impl: {} for impl in impls}
        for mode, grad in MODES:
            calls = {}
            for impl in impls:
                try:
                    fn = common.runner(impl, shape, grad, device="cuda")
                    fn()
                    fn()
                    calls[impl] = fn
                except Exception as err:  # report and go on
                    result[impl][mode] = f"error: {type(err).__name__}"
            for impl, samples in time_blocks(calls, repeat, min_time).items():
                result[impl][mode] = _median_ms(samples)
        rows.append((shape, result))
        print(f"  timed {shape.name}: " + ", ".join(f"{i} {m} {v:.3f} ms" if isinstance(v, float) else f"{i} {m} {v}"
                                                    for i, r in result.items() for m, v in r.items()))
    return rows


def markdown(rows, with_torch, device):
    def cell(v):
        return f"{v:.3f}" if isinstance(v, float) else (v or "-")

    def ratio(t, f):
        return f"{t / f:.2f}" if isinstance(t, float) and isinstance(f, float) else "-"
    head = ["shape", "geometry", "fastconv fwd ms"]
    if with_torch:
        head += ["torch fwd ms", "torch/fastconv"]
    head += ["fastconv fwd+bwd ms"]
    if with_torch:
        head += ["torch fwd+bwd ms", "torch/fastconv"]
    head += ["fastconv fwd GFLOP/s"]
    lines = [f"GPU: {device}. Median ms (GPU synchronised after every call); torch/fastconv > 1: fastconv "
             "is faster.", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for shape, r in rows:
        f, t = r["cuda"], r.get("torch", {})
        cells = [shape.name, shape.describe(), cell(f.get("fwd"))]
        if with_torch:
            cells += [cell(t.get("fwd")), ratio(t.get("fwd"), f.get("fwd"))]
        cells += [cell(f.get("fwd+bwd"))]
        if with_torch:
            cells += [cell(t.get("fwd+bwd")), ratio(t.get("fwd+bwd"), f.get("fwd+bwd"))]
        flops = shape.flops(False)
        cells += [f"{flops / f['fwd'] / 1e6:.0f}" if flops and isinstance(f.get("fwd"), float) else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def torch_gpu():
    """PyTorch's CUDA version and cuDNN version if it can use the GPU, else None."""
    if not common.has_torch():
        return None
    import torch
    if not torch.cuda.is_available():
        return None
    return f"torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}"


# ------------------------------------------------------------------- PTX, without a GPU
def compile_ptx(ccs):
    """Compile every kernel the --tiny checks launch to PTX (NVVM) for each compute capability in ``ccs``,
    and show registers and spills (ptxas) where the CUDA toolkit has ptxas. Needs no GPU: the launches
    are recorded under the simulator in a subprocess, then compiled here. Where no driver or NVRTC is
    installed, three numba-cuda lookups that would ask for them are patched (numba-cuda 0.2x-0.30)."""
    with tempfile.TemporaryDirectory() as tmp:
        records = os.path.join(tmp, "launches.pkl")
        env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
        done = subprocess.run([sys.executable, os.path.abspath(__file__), "--tiny", "--no-timing", "--no-launches",
                               "--record", records], env=env, capture_output=True, text=True)
        if done.returncode:
            print(done.stdout[-3000:], done.stderr[-3000:])
            return 1
        with open(records, "rb") as f:
            launches = sorted(pickle.load(f), key=str)
        return _compile_records(launches, ccs, tmp)


def _patch_numba_cuda_without_driver():
    from numba.cuda.cudadrv import driver
    try:
        driver.driver.cuInit  # noqa: B018  (raises without a driver)
        return
    except Exception:
        pass
    import glob
    import types
    import numba.cuda.dispatcher as dispatcher
    from numba.cuda.cudadrv import libs, nvrtc, nvvm
    try:
        nvrtc.get_supported_ccs()
    except Exception:
        nvrtc.get_supported_ccs = lambda: ((7, 5), (8, 0), (8, 6), (8, 9), (9, 0))
    found = sorted(glob.glob("/usr/local/cuda*/nvvm/libdevice/libdevice*.bc"))
    if found:
        libs.get_libdevice = nvvm.get_libdevice = lambda: found[-1]
        nvvm.open_libdevice = lambda: open(found[-1], "rb").read()
    dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=(9, 0))


def _compile_records(launches, ccs, tmp):
    import importlib
    import shutil
    _patch_numba_cuda_without_driver()
    from fastconv.gpu import launch
    ptxas = shutil.which("ptxas") or ("/usr/local/cuda/bin/ptxas" if os.path.exists("/usr/local/cuda/bin/ptxas")
                                      else None)
    failures = 0
    for module, factory, key, sig in launches:
        kernel = launch.kernel(getattr(importlib.import_module(module), factory), key)
        for cc in ccs:
            try:
                ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=cc)
            except Exception as err:
                failures += 1
                print(f"FAIL  sm_{cc[0]}{cc[1]} {factory}{key}: {type(err).__name__}: {str(err)[:2000]}")
                continue
            usage = ""
            if ptxas:
                path = os.path.join(tmp, "k.ptx")
                with open(path, "w") as f:
                    f.write(ptx)
                out = subprocess.run([ptxas, "-v", f"-arch=sm_{cc[0]}{cc[1]}", path, "-o", path + ".cubin"],
                                     capture_output=True, text=True).stderr
                usage = "; ".join(line.split("info    : ")[-1].strip() for line in out.splitlines()
                                  if "Used" in line or "spill" in line)
            print(f"ok    sm_{cc[0]}{cc[1]} {factory}{key}  {usage}")
    print(f"{len(launches)} kernels x {len(ccs)} targets, {failures} failures")
    return 1 if failures else 0


# ---------------------------------------------------------------------------------- main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (seconds; runs under the simulator)")
    parser.add_argument("--shapes", help="comma-separated shape names of fastconv/bench/common.py")
    parser.add_argument("--dtypes", default=None, help="checked dtypes (default float32; --tiny: both)")
    parser.add_argument("--seed", type=int, help="random data seed (default: the time)")
    parser.add_argument("--repeat", type=int, default=11)
    parser.add_argument("--min-time", type=float, default=0.05, help="seconds per timing sample")
    parser.add_argument("--no-timing", action="store_true", help="no speed table of the shapes")
    parser.add_argument("--no-launches", action="store_true", help="no launch counts and overheads")
    parser.add_argument("--no-torch", action="store_true", help="leave PyTorch out of the timings")
    parser.add_argument("--markdown", help="also write the timing table to this file")
    parser.add_argument("--ptx", action="store_true", help="no GPU: compile every kernel to PTX and stop")
    parser.add_argument("--cc", default="8.0,9.0", help="--ptx targets (compute capabilities)")
    parser.add_argument("--record", help=argparse.SUPPRESS)  # used by --ptx: pickle every kernel launch
    args = parser.parse_args(argv)

    if args.ptx:
        return compile_ptx([tuple(int(v) for v in cc.split(".")) for cc in args.cc.split(",")])
    import fastconv
    if not fastconv.cuda.is_available():
        print("no CUDA GPU here (and NUMBA_ENABLE_CUDASIM is not set): nothing to check. "
              "Use --ptx to compile the kernels without a GPU.")
        return 1
    simulated = fastconv.cuda.is_simulator()
    if simulated:
        sys.setswitchinterval(1e-4)  # simulated threads poll at syncthreads(): a short interval is faster
    if args.shapes:
        shapes = [common.SHAPES[name] for name in args.shapes.split(",")]
    else:
        shapes = list(common.TINY if args.tiny else common.FULL)
    dtypes = [np.dtype(d) for d in (args.dtypes or ("float32,float64" if args.tiny else "float32")).split(",")]
    device = fastconv.cuda.device_name()
    torch_info = None if args.no_torch or simulated else torch_gpu()
    print(f"fastconv {fastconv.__version__} on {device}; PyTorch: {torch_info or 'not used'}")

    start = time.perf_counter()
    seed = int(time.time()) if args.seed is None else args.seed  # fresh data on every run by default
    print(f"seed {seed} (--seed {seed} repeats this run's data)")
    if args.record:  # every launch's kernel and argument types, for --ptx
        from fastconv.gpu import launch
        recorder = launch.Profile(signatures=True)
        previous = launch.start_profile(recorder)
    chk = run_checks(shapes, dtypes, args.tiny, seed)
    print(f"\n{chk.count} checks, {len(chk.failures)} failures ({time.perf_counter() - start:.1f} s)")
    for failure in chk.failures:
        print(f"  FAIL {failure}")
    if args.record:
        launch.stop_profile(previous)
        with open(args.record, "wb") as f:
            pickle.dump(list(set(recorder.signatures)), f)

    if not args.no_launches:
        print("\nlaunches")
        table = run_launches(args, simulated, torch_info is not None, f"{device}; {torch_info or 'PyTorch not used'}")
        print("\n" + table)
        if args.markdown:
            with open(args.markdown + ".launches.md", "w") as f:
                f.write(table + "\n")

    if not args.no_timing:
        if simulated:
            print("\nsimulator: the timings below measure Python, not a GPU")
        rows = time_shapes(shapes, 3 if simulated else args.repeat, 0.0 if simulated else args.min_time,
                           torch_info is not None)
        table = markdown(rows, torch_info is not None, f"{device}; {torch_info or 'PyTorch not used'}")
        print("\n" + table)
        if args.markdown:
            with open(args.markdown, "w") as f:
                f.write(table + "\n")
    return 1 if chk.failures else 0


if __name__ == "__main__":
    sys.exit(main())
