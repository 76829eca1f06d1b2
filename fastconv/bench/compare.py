"""fastconv against PyTorch on the CPU, side by side (``fastconv bench``).

For every shape in the table of ``fastconv.bench.common`` and every implementation (PyTorch, fastconv
``"auto"`` and each fastconv CPU backend that can run here) this times the forward pass and forward +
backward (input, weight and bias gradients through each library's autograd), at the same thread count,
after a warm-up (Numba compilation is not timed). Each library is timed in blocks of back-to-back calls:
a block first runs the implementation untimed for ``--settle`` seconds (an OpenMP pool keeps spinning
after its library's last call and would steal the cores from the next library), then times a sample of
calls lasting ``--min-time``; repetitions rotate the order of the blocks, so that drift in the machine's
speed hits every implementation alike. By default both libraries share one process (and its allocator);
``--isolate`` runs each implementation in a process of its own. Every table is headed by the machine: CPU
model, its vector instructions (and those fastconv's kernels were built for) and the float32 GEMM rate
measured in the same run. Reported: median ms, GFLOP/s, the ratio ``torch_ms / fastconv_ms`` (above 1:
fastconv is faster) and, for the GEMM-bound shapes, the share of the GEMM rate each reaches.

    fastconv bench                                # every shape, 2 threads
    fastconv bench --shapes vgg_3x3,pointwise --backends auto,numba --repeat 11
    fastconv bench --isolate --markdown --json results.json
    fastconv bench --tiny                         # tiny shapes, seconds (the smoke test)
    fastconv bench --volumes                      # the 3-D shapes (C3D, 3-D U-Net: seconds per call)
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from . import common

MODES = (("fwd", False), ("fwd+bwd", True))
GEMM_REPEAT = 7


# --------------------------------------------------------------------------------- timing
def _sample(fn, number):
    """Seconds per call of ``fn``, over ``number`` back-to-back calls with the garbage collector off."""
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in range(number):
            fn()
        return (time.perf_counter() - start) / number
    finally:
        gc.enable()


def _settle(fn, seconds):
    """Run ``fn`` untimed for at least ``seconds`` (and at least once)."""
    end = time.perf_counter() + seconds
    fn()
    while time.perf_counter() < end:
        fn()


def time_blocks(calls, repeat, min_time, settle=0.0):
    """``{name: [seconds per call, one per repetition]}`` for already warm no-argument ``calls``.

    Every sample is a block of one implementation: ``settle`` seconds of untimed calls (the previous
    block's OpenMP pool stops spinning), then back-to-back calls lasting ``min_time`` (short ops are
    otherwise all timer noise). Repetition ``r`` starts from the ``r``-th implementation, so none always
    goes first.
    """
    number = {name: max(1, min(10_000, math.ceil(min_time / max(_sample(fn, 1), 1e-7))))
              for name, fn in calls.items()}
    names = list(calls)
    samples = {name: [] for name in names}
    for r in range(repeat):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            if settle:
                _settle(calls[name], settle)
            samples[name].append(_sample(calls[name], number[name]))
    return samples


def gemm_rate(n, repeat=GEMM_REPEAT):
    """float32 GEMM GFLOP/s of ``numpy.matmul`` (and ``torch.mm``) on ``n x n`` matrices.

    The best of ``repeat`` samples, not the median: this is the roof the conv kernels are held against,
    and on a shared machine the slower samples measure the neighbours.
    """
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, n, n), dtype=np.float32)
    calls = {"numpy": lambda: np.matmul(a, b)}
    if common.has_torch():
        import torch
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        calls["torch"] = lambda: torch.mm(ta, tb)
    for fn in calls.values():
        fn()
    samples = time_blocks(calls, repeat, min_time=0.05, settle=0.05)
    return {name: 2 * n ** 3 / min(s) / 1e9 for name, s in samples.items()}


# ------------------------------------------------------------------------------- one shape
def _as_numpy(out):
    return np.asarray(out.numpy() if hasattr(out, "numpy") else out)


def _warm(impls, shape, grad):
    """Build and warm every implementation's runner; returns (calls, errors, forward outputs).

    The first call compiles (Numba); the second settles caches and allocations.
    """
    calls, errors, outputs = {}, {}, {}
    for impl in impls:
        try:
            fn = common.runner(impl, shape, grad)
            out = fn()
            fn()
        except Exception as err:  # a backend that rejects this geometry: report it and go on
            errors[impl] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            continue
        calls[impl] = fn
        if not grad:
            outputs[impl] = _as_numpy(out)
    return calls, errors, outputs


def mismatches(outputs):
    """``{impl: max relative error}`` of the forward outputs that differ from PyTorch's, so that no wrong
    kernel is ever reported as fast."""
    ref = outputs.get(common.TORCH)
    found = {}
    for impl, out in outputs.items():
        if ref is not None and impl != common.TORCH:
            if out.shape != ref.shape:
                found[impl] = float("inf")
                continue
            err = float(np.abs(out - ref).max()) / (float(np.abs(ref).max()) or 1.0)
            if not err < 1e-4:  # also catches NaN
                found[impl] = err
    return found


def measure_shape(shape, impls, repeat, min_time, settle):
    """Rows (dicts) of one shape, one per implementation and mode, with times but no ratios; and the
    forward outputs."""
    rows, outputs = [], {}
    for mode, grad in MODES:
        calls, errors, outs = _warm(impls, shape, grad)
        outputs.update(outs)
        samples = time_blocks(calls, repeat, min_time, settle) if calls else {}
        for impl in impls:
            row = {"shape": shape.name, "kind": shape.kind, "dims": shape.dims, "impl": impl, "mode": mode}
            if impl in errors:
                rows.append({**row, "error": errors[impl]})
                continue
            rows.append({**row, "ms": statistics.median(samples[impl]) * 1e3,
                         "samples_ms": [t * 1e3 for t in samples[impl]]})
    return rows, outputs


def finish_rows(shape, rows, gemm_gflops, wrong):
    """Add GFLOP/s, the ratio to PyTorch, the share of the GEMM rate and the mismatches to ``rows``."""
    torch_ms = {r["mode"]: r["ms"] for r in rows if r["impl"] == common.TORCH and "ms" in r}
    for r in rows:
        if "ms" not in r:
            continue
        flops = shape.flops(r["mode"] != "fwd")
        gflops = flops / r["ms"] / 1e6 if flops else None
        r.update(gflops=gflops,
                 ratio=(torch_ms[r["mode"]] / r["ms"]) if r["mode"] in torch_ms and r["impl"] != common.TORCH
                 else None,
                 pct_gemm=(100 * gflops / gemm_gflops) if shape.gemm_bound and gflops else None,
                 mismatch=wrong.get(r["impl"]))
    return rows


def bench_shape(shape, impls, repeat, min_time, gemm_gflops, settle=0.0):
    """Rows (dicts) for one shape, every implementation in this process: one per implementation and mode."""
    rows, outputs = measure_shape(shape, impls, repeat, min_time, settle)
    return finish_rows(shape, rows, gemm_gflops, mismatches(outputs))


def bench_isolated(shape, impls, args, gemm_gflops, folder):
    """Rows for one shape, each implementation timed in a process of its own (``--isolate``); the forward
    outputs travel through ``folder`` to be checked against PyTorch's."""
    rows, outputs = [], {}
    for impl in impls:
        path = os.path.join(folder, f"{shape.name}.{impl}")
        argv = [sys.executable, "-m", "fastconv.bench.compare", "--worker", path, "--shapes", shape.name,
                "--backends", impl, "--repeat", str(args.repeat), "--threads", str(args.threads),
                "--min-time", str(args.min_time), "--settle", str(args.settle)]
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
            rows += [{"shape": shape.name, "kind": shape.kind, "dims": shape.dims, "impl": impl, "mode": mode,
                      "error": f"worker process failed: {why}"} for mode, _ in MODES]
            continue
        with open(path + ".json") as f:
            rows += json.load(f)
        if os.path.exists(path + ".npy"):
            outputs[impl] = np.load(path + ".npy")
    return finish_rows(shape, rows, gemm_gflops, mismatches(outputs))


def _worker(args):
    """``--worker PATH``: time one implementation on one shape; rows to PATH.json, output to PATH.npy."""
    common.set_threads(args.threads)
    impl, shape = args.backends, args.shape_list[0]
    rows, outputs = measure_shape(shape, [impl], args.repeat, args.min_time, args.settle)
    with open(args.worker + ".json", "w") as f:
        json.dump(rows, f)
    if impl in outputs:
        np.save(args.worker + ".npy", outputs[impl])
    return 0


# ------------------------------------------------------------------------------ reporting
def _fmt(value, spec, missing="-"):
    return missing if value is None else format(value, spec)


def _cells(row):
    if row is None:
        return ["-"] * 4
    if "error" in row:
        return ["n/a", "", "", ""]
    ratio = _fmt(row["ratio"], ".2f") + ("!" if row.get("mismatch") is not None else "")
    return [_fmt(row["ms"], ".3f"), _fmt(row["gflops"], ".1f"), ratio, _fmt(row["pct_gemm"], ".0f")]


def print_shape(shape, rows, out):
    by = {(r["impl"], r["mode"]): r for r in rows}
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    print(f"\n{shape.name}: {shape.describe()}", file=out)
    head = ["impl", "fwd ms", "GFLOP/s", "torch/fc", "%gemm", "f+b ms", "GFLOP/s", "torch/fc", "%gemm"]
    widths = [8, 10, 9, 9, 6, 10, 9, 9, 6]
    print("  " + "".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(head, widths))), file=out)
    for impl in impls:
        cells = [impl] + _cells(by.get((impl, "fwd"))) + _cells(by.get((impl, "fwd+bwd")))
        print("  " + "".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))),
              file=out)
    for r in rows:
        if "error" in r:
            print(f"  note: {r['impl']} {r['mode']} not run: {r['error']}", file=out)
        elif r.get("mismatch") is not None:
            print(f"  WARNING: {r['impl']} {r['mode']} output differs from torch (max rel err "
                  f"{r['mismatch']:.1e}); marked '!'", file=out)


def _geomean(values):
    values = [v for v in values if v]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None


def summarize(rows):
    """Per fastconv implementation: geometric-mean ratios over the 2-D conv, 1-D conv, pooling and 3-D
    (volumes) shapes (forward and forward + backward), and the smallest 2-D conv ratio with its shape."""
    summary = {}
    impls = dict.fromkeys(r["impl"] for r in rows if r["impl"] != common.TORCH)
    for impl in impls:
        mine = [r for r in rows if r["impl"] == impl and r.get("ratio")]
        entry = {}
        for group, keep in (("conv2d", lambda r: r["kind"] == "conv" and r["dims"] == 2),
                            ("conv1d", lambda r: r["kind"] == "conv" and r["dims"] == 1),
                            ("pool", lambda r: r["kind"] == "pool" and r["dims"] < 3),
                            ("volumes", lambda r: r["dims"] == 3)):
            for mode, _ in MODES:
                chosen = [r for r in mine if keep(r) and r["mode"] == mode]
                entry[f"{group} {mode}"] = _geomean(r["ratio"] for r in chosen)
                entry[f"{group} {mode} n"] = len(chosen)
        convs = [r for r in mine if r["kind"] == "conv" and r["dims"] == 2]
        if convs:
            worst = min(convs, key=lambda r: r["ratio"])
            entry["min conv2d"] = {"ratio": worst["ratio"], "shape": worst["shape"], "mode": worst["mode"]}
        summary[impl] = entry
    return summary


def print_summary(summary, out):
    print("\nSummary: torch_ms / fastconv_ms, geometric mean over shapes (above 1: fastconv is faster)",
          file=out)
    for impl, e in summary.items():
        parts = []
        for group in ("conv2d", "conv1d", "pool", "volumes"):
            if e[f"{group} fwd n"] or e[f"{group} fwd+bwd n"]:
                parts.append(f"{group} fwd {_fmt(e[f'{group} fwd'], '.2f')}x, "
                             f"fwd+bwd {_fmt(e[f'{group} fwd+bwd'], '.2f')}x")
        worst = e.get("min conv2d")
        if worst:
            parts.append(f"min conv2d {worst['ratio']:.2f}x ({worst['shape']} {worst['mode']})")
        print(f"  {impl:<8}" + ("; ".join(parts) if parts else "no ratio (torch missing?)"), file=out)


def markdown(rows, summary, info):
    """A Markdown table of every row plus the summary, for the README."""
    lines = [f"fastconv vs PyTorch {info.get('torch', '?')}: {machine_line(info)}; {info['allocator']}; "
             + ("each library in its own process." if info.get("isolate") else "both libraries in one process."),
             "Ratio = torch ms / fastconv ms (above 1: fastconv is faster).", "",
             "| shape | impl | fwd ms | fwd GFLOP/s | fwd ratio | fwd+bwd ms | fwd+bwd GFLOP/s | fwd+bwd ratio |",
             "|---|---|--:|--:|--:|--:|--:|--:|"]
    by = {(r["shape"], r["impl"], r["mode"]): r for r in rows}
    for shape, impl in dict.fromkeys((r["shape"], r["impl"]) for r in rows):
        cells = []
        for mode, _ in MODES:
            c = _cells(by.get((shape, impl, mode)))
            cells += c[:3]
        lines.append(f"| {shape} | {impl} | " + " | ".join(cells) + " |")
    lines.append("")
    for impl, e in summary.items():
        text = ", ".join(f"{k} {_fmt(v, '.2f')}x" for k, v in e.items()
                         if not k.endswith(" n") and k != "min conv2d" and e[f"{k} n"])
        worst = e.get("min conv2d")
        if worst:
            text += f", min conv2d {worst['ratio']:.2f}x ({worst['shape']} {worst['mode']})"
        lines.append(f"- **{impl}** (geometric mean): {text}")
    return "\n".join(lines)


def machine_info(threads, set_to, gemm):
    import fastconv
    info = {"cpu": common.cpu_name(), "cores": os.cpu_count(), "isa": common.cpu_isa(),
            "kernels_isa": common.kernels_isa(), "threads": threads, "threads_set": set_to,
            "allocator": common.allocator(), "python": platform.python_version(),
            "numpy": np.__version__, "fastconv": fastconv.__version__, "gemm_gflops": gemm}
    try:
        info["fastconv_config"] = {k: str(v) for k, v in fastconv.info.config().items()}
    except Exception as err:  # show_config is informative only
        info["fastconv_config"] = {"error": str(err)}
    if common.has_torch():
        import torch
        info["torch"] = torch.__version__
    return info


def machine_line(info):
    """The machine in one line, for the head of every table: CPU, vector instructions, threads, and the
    float32 GEMM rate measured in the same run."""
    threads = f"{info['threads']} thread" + ("s" if info["threads"] != 1 else "")
    gemm = ", ".join(f"{k} {v:.0f}" for k, v in info["gemm_gflops"].items())
    return (f"{info['cpu']} ({info['cores']} cores, {info['isa']}; fastconv kernels: {info['kernels_isa']}), "
            f"{threads}; float32 GEMM in this run: {gemm} GFLOP/s")


# ----------------------------------------------------------------------------------- main
def parse_args(argv):
    p = argparse.ArgumentParser(prog="fastconv bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", help="comma-separated shape names (default: all); see --list")
    p.add_argument("--backends", help="comma-separated fastconv backends, 'auto' included "
                   "(default: auto and every available CPU backend)")
    p.add_argument("--repeat", type=int, help="timed repetitions per implementation (default 7)")
    p.add_argument("--threads", type=int, default=2, help="threads for fastconv, torch and BLAS (default 2)")
    p.add_argument("--min-time", type=float, help="seconds each timed sample lasts at least (default 0.02)")
    p.add_argument("--settle", type=float, help="seconds of untimed calls before each timed sample, so that "
                   "the previous library's threads stop spinning (default 0.05)")
    p.add_argument("--isolate", action="store_true", help="time each implementation in a process of its own")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # one implementation and shape, for --isolate
    p.add_argument("--gemm-size", type=int, help="n of the n x n x n GEMM rate check (default 2048)")
    p.add_argument("--quick", action="store_true", help="every shape, 3 repetitions, short samples")
    p.add_argument("--tiny", action="store_true", help="tiny shapes, 3 repetitions: runs in seconds")
    p.add_argument("--volumes", action="store_true", help="the 3-D shapes instead (with --tiny: tiny ones)")
    p.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    p.add_argument("--json", metavar="FILE", help="write every number to FILE")
    p.add_argument("--list", action="store_true", help="list the shapes and exit")
    args = p.parse_args(argv)
    fast = args.quick or args.tiny
    if args.repeat is None:
        args.repeat = 3 if fast else 7
    args.min_time = args.min_time if args.min_time is not None else (0.0 if args.tiny else 0.005 if fast else 0.02)
    if args.settle is None:
        args.settle = 0.0 if args.tiny else 0.01 if fast else 0.05
    if args.gemm_size is None:
        args.gemm_size = 256 if args.tiny else 1024 if fast else 2048
    for name in ("repeat", "threads", "gemm_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.min_time < 0 or args.settle < 0:
        p.error("--min-time and --settle must not be negative")
    table = {(False, False): common.FULL, (True, False): common.TINY, (False, True): common.VOLUMES,
             (True, True): common.TINY_VOLUMES}[args.tiny, args.volumes]
    if args.shapes:
        wanted = [s.strip() for s in args.shapes.split(",") if s.strip()]
        unknown = [s for s in wanted if s not in common.SHAPES]
        if unknown:
            p.error(f"unknown shape(s) {unknown}; known: {', '.join(common.SHAPES)}")
        args.shape_list = [common.SHAPES[s] for s in wanted]
    else:
        args.shape_list = list(table)
    return args, p


def choose_impls(requested, out):
    """Implementations to time: torch first (the reference), then the fastconv backends that can run;
    every backend left out is named with the reason."""
    status = common.backend_status()
    cpu = [name for name in common.CPU_BACKENDS if status.get(name) is None]
    wanted = ["auto"] + cpu if requested is None else [b.strip() for b in requested.split(",") if b.strip()]
    impls = [common.TORCH] if common.has_torch() else []
    if not impls:
        print("note: PyTorch is not installed: times only, no ratios (pip install torch)", file=out)
    for name in wanted:
        if name == common.TORCH:
            continue
        if name != "auto" and name not in status:
            raise SystemExit(f"--backends: unknown backend {name!r}; known: auto, {', '.join(status)}")
        if name == "cuda":
            print("note: cuda skipped: this compares CPU implementations", file=out)
        elif name != "auto" and status[name] is not None:
            print(f"note: backend {name} skipped: {status[name]}", file=out)
        else:
            impls.append(name)
    if requested is None:
        for name in common.CPU_BACKENDS:
            if status.get(name) is not None:
                print(f"note: backend {name} not available: {status[name]}", file=out)
    return impls


def compare(args, out=None):
    """Run the comparison that ``args`` describes; returns ``{"info", "rows", "summary"}``."""
    out = out or sys.stdout
    set_to = common.set_threads(args.threads)
    impls = choose_impls(args.backends, out)
    gemm = gemm_rate(args.gemm_size)
    info = machine_info(args.threads, set_to, gemm)
    info["isolate"] = bool(args.isolate)
    print(machine_line(info), file=out)
    if hasattr(os, "getloadavg"):
        print(f"load average before the run: {os.getloadavg()[0]:.1f}", file=out)
    print(f"threads set: {set_to}; malloc: {info['allocator']}; fastconv {info['fastconv']}, torch "
          f"{info.get('torch', 'missing')}, numpy {info['numpy']}; implementations: {', '.join(impls)}", file=out)
    print(f"median of {args.repeat} blocks per implementation ({args.settle:g} s untimed, then calls for "
          f">= {args.min_time:g} s), {'each implementation in its own process' if args.isolate else 'one process'}; "
          f"ratio = torch ms / fastconv ms; %gemm = GFLOP/s as a share of numpy's GEMM (GEMM-bound shapes)",
          file=out)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for shape in args.shape_list:
            here = [i for i in impls if common.supports(i, shape)]
            if args.isolate:
                shape_rows = bench_isolated(shape, here, args, gemm["numpy"], folder)
            else:
                shape_rows = bench_shape(shape, here, args.repeat, args.min_time, gemm["numpy"], args.settle)
            print_shape(shape, shape_rows, out)
            out.flush()
            rows += shape_rows
    summary = summarize(rows)
    print("\n" + machine_line(info), file=out)
    print_summary(summary, out)
    result = {"info": info, "rows": rows, "summary": summary}
    if args.markdown:
        print("\n" + markdown(rows, summary, info), file=out)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"\nwrote {args.json}", file=out)
    return result


def main(argv=None):
    args, _ = parse_args(argv)
    if args.worker:
        return _worker(args)
    if args.list:
        for shape in common.SHAPES.values():
            print(f"{shape.name:<14} {shape.describe()}")
        return 0
    compare(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
