"""Winograd convolution against PyTorch and fastconv's direct path, side by side in one process.

For stride-1 3x3 layers (vgg_3x3 and dilated from the shared shape table; 64 channels at 56x56, 256 at
28x28 and 512 at 14x14, batch 1 and 8) this times, after a warm-up and in interleaved blocks of
back-to-back calls (``fastconv.bench.compare.time_blocks``), with the same thread count for every library:

- end to end through each library's autograd: the forward pass, and forward + backward (input, weight
  and bias gradients): PyTorch, fastconv ``backend="winograd"`` (its default tile) and ``"auto"``;
- each kernel alone (forward, input gradient, weight gradient): PyTorch's (``torch.nn.grad``), Winograd
  with ``tile=4`` and ``tile=2``, and the kernel ``"auto"`` picks.

Printed: median (``--stat min``: fastest) ms, GFLOP/s-equivalent (the direct algorithm's flops over
the time), the ratio ``torch ms / fastconv ms`` (above 1: fastconv is faster), the CPU, its vector
instructions and the float32 GEMM rate measured in the same run. Every output is checked against
PyTorch's first.

    python bench/winograd.py                        # every shape, 2 threads
    python bench/winograd.py --shapes c512_14_b1,vgg_3x3 --repeat 11
    python bench/winograd.py --tiny                 # tiny shapes, seconds (the smoke test)
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fastconv.bench import common  # noqa: E402
from benchmarks.bench_winograd import SHAPES, TINY  # noqa: E402  (the asv suite's shapes)
from fastconv.bench.compare import gemm_rate, time_blocks  # noqa: E402

KERNELS = common.CONV_KERNELS
END_TO_END = (common.TORCH, "winograd", "auto")


def _kernel_calls(shape, kernel):
    """No-argument calls of one kernel: PyTorch's, Winograd per tile, and the one "auto" picks."""
    import torch

    from fastconv.backends import plan, winograd
    spec = shape.spec()
    x, w, b, gy = common.inputs(shape)
    tx, tw, tgy = map(torch.from_numpy, (x, w, gy))
    args = {"conv2d": (x, w, b), "conv2d_grad_input": (gy, w), "conv2d_grad_weight": (gy, x)}[kernel]
    kw = shape.kwargs
    torch_call = {
        "conv2d": lambda: torch.nn.functional.conv2d(tx, tw, torch.from_numpy(b), **kw),
        "conv2d_grad_input": lambda: torch.nn.grad.conv2d_input(tx.shape, tw, tgy, **kw),
        "conv2d_grad_weight": lambda: torch.nn.grad.conv2d_weight(tx, tw.shape, tgy, **kw),
    }[kernel]

    def no_grad(fn):
        def call():
            with torch.no_grad():
                return fn()
        return call
    calls = {common.TORCH: no_grad(torch_call)}
    for tile in winograd.TILES:
        calls[f"winograd{tile}"] = lambda tile=tile: getattr(winograd, kernel)(*args, spec, tile=tile)
    auto = plan.plan(kernel, spec, np.float32)
    calls["auto"] = lambda: auto(*args, spec)
    return calls


def _checked(calls, what):
    """Warm every call twice; drop (and report) any whose result (if it returns one) differs from
    PyTorch's."""
    results = {}
    for name, fn in calls.items():
        fn()
        out = fn()
        if out is not None:
            results[name] = np.asarray(out.detach().numpy() if hasattr(out, "detach") else
                                       out.numpy() if hasattr(out, "numpy") else out)
    expected = results.get(common.TORCH)
    kept = dict(calls)
    for name, out in results.items():
        if expected is not None and name != common.TORCH:
            err = float(np.abs(out - expected).max()) / (float(np.abs(expected).max()) or 1.0)
            if not err < 1e-4:
                print(f"  WARNING: {name} {what} differs from torch (max rel err {err:.1e}); not timed")
                del kept[name]
    return kept


STATS = {"median": statistics.median, "min": min}


def _times(calls, repeat, min_time, stat):
    """Seconds per call of each implementation: ``stat`` ("median" or "min") of its timed blocks."""
    samples = time_blocks(calls, repeat, min_time, settle=0.0 if min_time == 0 else 0.05)
    return {name: STATS[stat](s) for name, s in samples.items()}


def _head(title, columns):
    """Two header lines: the column groups, then ms / GFLOP/s-equivalent / ratio under each."""
    return (f"  {title:<12}" + "".join(f"{c:>27}" for c in columns) + "\n  " + " " * 12
            + f"{'ms':>11}{'GF/s-eq':>8}{'torch/':>8}" * len(columns))


def _row(label, seconds, flops, torch_s):
    cells = [f"{label:<12}"]
    for s, f, t in zip(seconds, flops, torch_s):
        if s is None:
            cells.append(f"{'-':>11}{'-':>8}{'-':>8}")
            continue
        ratio = f"{t / s:8.2f}" if t is not None and label != common.TORCH else f"{'':>8}"
        cells.append(f"{s * 1e3:11.3f}{f / s / 1e9:8.1f}{ratio}")
    return "".join(cells)


def bench_shape(shape, repeat, min_time, stat="median"):
    """Print the end-to-end and the per-kernel tables of one shape; returns {(table, impl, col): ms}."""
    spec = shape.spec()
    print(f"\n{shape.name}: {shape.describe()}  ({spec.flops / 1e9:.2f} GFLOP per direct pass)")
    times = {}
    heads = ("fwd", "fwd+bwd")
    end = {}
    for mode, grad in zip(heads, (False, True)):
        calls = _checked({impl: common.runner(impl, shape, grad) for impl in END_TO_END}, mode)
        end[mode] = _times(calls, repeat, min_time, stat)
    print(_head("autograd", heads))
    for impl in END_TO_END:
        seconds = [end[h].get(impl) for h in heads]
        torch_s = [end[h].get(common.TORCH) for h in heads]
        print("  " + _row(impl, seconds, [spec.flops, 3 * spec.flops], torch_s))
        times.update({("autograd", impl, h): s * 1e3 for h, s in zip(heads, seconds) if s is not None})
    per = {}
    for kernel in KERNELS:
        per[kernel] = _times(_checked(_kernel_calls(shape, kernel), kernel), repeat, min_time, stat)
    names = list(dict.fromkeys(n for k in KERNELS for n in per[k]))
    print(_head("kernel", [k.replace("conv2d_", "").replace("conv2d", "forward") for k in KERNELS]))
    for name in names:
        seconds = [per[k].get(name) for k in KERNELS]
        print("  " + _row(name, seconds, [spec.flops] * 3, [per[k].get(common.TORCH) for k in KERNELS]))
        times.update({("kernel", name, k): s * 1e3 for k, s in zip(KERNELS, seconds) if s is not None})
    return times


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", help=f"comma-separated names (default: all): {', '.join(SHAPES)}")
    p.add_argument("--threads", type=int, default=2, help="threads for fastconv, torch and BLAS (default 2)")
    p.add_argument("--repeat", type=int, default=7, help="interleaved repetitions (default 7)")
    p.add_argument("--min-time", type=float, default=0.05, help="seconds per timed block (default 0.05)")
    p.add_argument("--stat", choices=list(STATS), default="median",
                   help="block statistic (default median; min: the least disturbed on a busy machine)")
    p.add_argument("--tiny", action="store_true", help="tiny shapes, 3 repetitions: runs in seconds")
    args = p.parse_args(argv)
    table = TINY if args.tiny else SHAPES
    if args.tiny:
        args.repeat, args.min_time = 3, 0.0
    names = [s.strip() for s in args.shapes.split(",")] if args.shapes else list(table)
    unknown = [n for n in names if n not in table]
    if unknown:
        p.error(f"unknown shape(s) {unknown}; known: {', '.join(table)}")
    args.shape_list = [table[n] for n in names]
    return args


def main(argv=None):
    args = parse_args(argv)
    if not common.has_torch():
        raise SystemExit("bench/winograd.py compares with PyTorch: pip install torch==2.13.0")
    reason = common.backend_status(["winograd"])["winograd"]
    if reason is not None:
        raise SystemExit(f"the winograd backend cannot run here: {reason}")
    from fastconv._cy import _omp
    set_to = common.set_threads(args.threads)
    gemm = gemm_rate(256 if args.tiny else 2048)
    print(f"CPU: {common.cpu_name()} ({os.cpu_count()} cores), {_omp.simd()}; threads: {set_to}")
    print("float32 GEMM (same run): " + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in gemm.items()))
    print(f"{args.stat} of {args.repeat} interleaved blocks; GF/s-eq = direct-algorithm GFLOP / time; "
          f"torch/ = torch ms / fastconv ms")
    return {s.name: bench_shape(s, args.repeat, args.min_time, args.stat) for s in args.shape_list}


if __name__ == "__main__":
    main()
