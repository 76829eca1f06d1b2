"""The convolution family against PyTorch, side by side in one process: locally-connected and tiled layers
(forward, forward + backward, peak memory) and building convolution matrices.

PyTorch has no locally-connected or tiled layer; its users unfold the input and contract it with the
kernels (``bench/benchmarks/family.py`` holds both ways: ``torch_einsum`` and ``torch_bmm``). Every
implementation runs warm (Numba compiled), in the same process, on the same threads, in interleaved
blocks of back-to-back calls (``fastconv.bench.compare.time_blocks``), and its output is checked against the
others'. Reported: the median ms of the repetitions with their range, GFLOP/s, and the ratio of the
faster PyTorch workaround's median to fastconv's (above 1: fastconv is faster); the CPU, its vector
ISA and the float32 GEMM rate measured in the same run. ``--memory`` adds the peak memory of one forward +
backward above what the process held before it (each implementation in a fresh process; Linux).

    python bench/family.py                         # every layer, 2 threads
    python bench/family.py --layers face_3x3_local --repeat 9 --memory
    python bench/family.py --tiny                  # tiny layers, seconds (the smoke test)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmarks import family  # noqa: E402  (the asv suite's layers)
from fastconv.bench import common, compare  # noqa: E402  (the shape tools, timing and GEMM rate)

MATRICES = ((8, 64), (16, 128), (8, 256))  # (channels, size) of the 3x3 layers whose matrices are built


def bench_layer(layer, repeat, min_time):
    """Rows (dicts) for one layer: one per implementation and mode."""
    impls = [i for i in family.IMPLS if i == "fastconv" or common.has_torch()]
    rows = []
    for mode, grad in compare.MODES:
        calls = {impl: family.runner(impl, layer, grad) for impl in impls}
        outputs = {impl: fn() for impl, fn in calls.items()}
        for fn in calls.values():
            fn()
        if not grad:
            ref = np.asarray(outputs["fastconv"].numpy())
            for impl in impls[1:]:
                err = np.abs(outputs[impl].numpy() - ref).max() / max(1.0, np.abs(ref).max())
                assert err < 1e-4, f"{impl} and fastconv differ on {layer.name} by {err:.2g}"
        samples = compare.time_blocks(calls, repeat, min_time, settle=0.05 if min_time else 0.0)
        torch_best = min((statistics.median(samples[i]) for i in impls[1:]), default=None)
        for impl in impls:
            seconds = statistics.median(samples[impl])
            rows.append({"layer": layer.name, "impl": impl, "mode": mode, "ms": 1e3 * seconds,
                         "range_ms": [1e3 * min(samples[impl]), 1e3 * max(samples[impl])],
                         "gflops": layer.flops(grad) / seconds / 1e9,
                         "ratio": torch_best / seconds if impl == "fastconv" and torch_best else None})
    return rows


def peak_mb(impl, name, threads):
    """Peak memory (MB) of one forward + backward of ``name`` on ``impl``, in a fresh process."""
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--peak", impl, name, "--threads", str(threads)],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.split()[-1])


def _memory(field):
    """A field of /proc/self/status (``VmRSS``, ``VmHWM``), in bytes."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


def _measure_peak(impl, name, threads):
    """Child process: warm the kernels on the tiny layer of the same kind, build the inputs, then print the
    resident-memory high-water mark of one forward + backward above the memory held just before it (Linux:
    the mark is reset first, through /proc/self/clear_refs)."""
    common.set_threads(threads)
    layer = family.LAYERS[name]
    family.runner(impl, family.LAYERS["tiny_local" if layer.tiles is None else "tiny_tiled"], True)()
    run = family.runner(impl, layer, True)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    before = _memory("VmRSS")
    run()
    print(max(0, _memory("VmHWM") - before) / 2**20)


def bench_matrices(sizes):
    """Seconds to build each 3x3, C -> C, padding 1 layer's matrix, and its nonzeros."""
    import fastconv as fc
    rows = []
    for c, s in sizes:
        w = np.random.default_rng(0).standard_normal((c, c, 3, 3)).astype(np.float32)
        fc.conv_matrix(w, (c, 8, 8), padding=1)  # compiled
        start = time.perf_counter()
        m = fc.conv_matrix(w, (c, s, s), padding=1)
        seconds = time.perf_counter() - start
        rows.append({"channels": c, "size": s, "nnz": m.nnz, "seconds": seconds, "mb": (m.data.nbytes + m.indices.nbytes + m.indptr.nbytes) / 2**20})
        del m
    return rows


def report(info, rows, matrices, memory, out):
    print(f"{info['cpu']} ({info['isa']}), {info['threads']} threads; float32 GEMM {info['gemm']['numpy']:.0f} "
          f"GFLOP/s (numpy" + (f", torch {info['gemm']['torch']:.0f}" if "torch" in info["gemm"] else "")
          + f") in this run; PyTorch {info.get('torch', 'absent')}", file=out)
    print("Ratio: the faster PyTorch workaround's median / fastconv's (above 1: fastconv is faster)", file=out)
    for name in dict.fromkeys(r["layer"] for r in rows):
        print(f"\n{name}: {family.LAYERS[name].describe()}", file=out)
        print(f"  {'impl':<13}{'mode':<9}{'ms (median)':>12}{'range':>20}{'GFLOP/s':>9}{'ratio':>8}"
              + (f"{'peak MB':>9}" if memory else ""), file=out)
        for r in (r for r in rows if r["layer"] == name):
            lo, hi = r["range_ms"]
            ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}x"
            peak = memory.get((name, r["impl"])) if r["mode"] == "fwd+bwd" else None
            print(f"  {r['impl']:<13}{r['mode']:<9}{r['ms']:>12.2f}{f'{lo:.1f}-{hi:.1f}':>20}{r['gflops']:>9.2f}"
                  f"{ratio:>8}" + (f"{peak:>9.0f}" if peak is not None else ""), file=out)
    if matrices:
        print("\nconv_matrix (3x3, C -> C, padding 1, float32):", file=out)
        for m in matrices:
            print(f"  C={m['channels']:<3} {m['size']}x{m['size']}: {m['nnz']:>11,} nonzeros, {m['mb']:7.0f} MB, "
                  f"{m['seconds']:.3f} s ({m['nnz'] / m['seconds'] / 1e6:.0f} M nonzeros/s)", file=out)


def main(argv=None):
    p = argparse.ArgumentParser(prog="bench/family.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", help=f"comma-separated layers (default: all real ones): {', '.join(family.REAL)}")
    p.add_argument("--repeat", type=int, default=5, help="interleaved repetitions (default 5)")
    p.add_argument("--min-time", type=float, default=0.2, help="seconds of back-to-back calls per sample")
    p.add_argument("--threads", type=int, default=2, help="threads for fastconv, PyTorch and BLAS (default 2)")
    p.add_argument("--memory", action="store_true", help="also the peak memory of forward + backward")
    p.add_argument("--no-matrix", action="store_true", help="skip the conv_matrix timings")
    p.add_argument("--tiny", action="store_true", help="tiny layers and matrices, few repetitions (smoke test)")
    p.add_argument("--json", help="write the rows and the machine to this file")
    p.add_argument("--peak", nargs=2, metavar=("IMPL", "LAYER"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.peak:
        return _measure_peak(*args.peak, args.threads)
    names = list(family.TINY) if args.tiny else (args.layers.split(",") if args.layers else list(family.REAL))
    unknown = [n for n in names if n not in family.LAYERS]
    if unknown:
        p.error(f"unknown layers {unknown}; known: {', '.join(family.LAYERS)}")
    repeat, min_time = (2, 0.0) if args.tiny else (args.repeat, args.min_time)
    info = {"cpu": common.cpu_name(), "isa": common.cpu_isa(), "threads": args.threads,
            "threads_set": common.set_threads(args.threads), "gemm": compare.gemm_rate(256 if args.tiny else 2048)}
    if common.has_torch():
        import torch
        info["torch"] = torch.__version__
    rows = [row for name in names for row in bench_layer(family.LAYERS[name], repeat, min_time)]
    memory = {(name, impl): peak_mb(impl, name, args.threads) for name in names
              for impl in sorted({r["impl"] for r in rows})} if args.memory else {}
    matrices = [] if args.no_matrix else bench_matrices([(2, 8)] if args.tiny else MATRICES)
    report(info, rows, matrices, memory, sys.stdout)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "rows": rows, "matrices": matrices,
                       "peak_mb": [{"layer": k[0], "impl": k[1], "mb": v} for k, v in memory.items()]}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
