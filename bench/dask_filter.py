"""Filtering an image larger than a worker's memory with fastconv on Dask (``fastconv.dask.apply``).

A ``size x size`` float32 image (16384: 1 GiB) is written to a ``.npy`` file and read block by block by
the workers of a LocalCluster (default: 2 worker processes, one thread each, a memory limit of 2 GiB
each). Cases: a bank of 16 5x5 kernels, one 5x5 kernel and one 31x31 kernel (the planner runs it as an
FFT per block), all ``padding="same"``. Each case is reduced to per-channel means, so that every output
is computed and none is kept. Reported per case: wall time, the peak resident memory of each worker
(``VmHWM``, reset before each case), the task count, and, side by side in the same run:

* one process on the in-memory array (all cores; in a subprocess of its own, for its peak memory), on
  the whole image where input and output fit in ``--memory-budget``, else on a strip of rows, scaled;
* dask-image's ``ndfilters.correlate`` (``scipy.ndimage`` per block through ``map_overlap``) on the
  same workers and chunks, for one channel, on a strip of ``--dask-image-rows`` rows, scaled;
* the overhead of the graph: tasks and time of ``apply``, of ``map_overlap`` (dask's own halo exchange)
  and of ``map_blocks`` (no halo: wrong at block edges, the floor) for one 5x5 kernel on a smaller image
  at several chunk sizes.

    python bench/dask_filter.py                          # the full measurement (minutes)
    python bench/dask_filter.py --size 4096 --overhead-size 1024
    python bench/dask_filter.py --tiny                   # seconds: the smoke test
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

CASES = {"bank16x5": (16, 5), "k5": (1, 5), "k31": (1, 31)}  # name -> (kernels, kernel size)


# ----------------------------------------------------------------------------------- the image
class NpyImage:
    """A 2-D ``.npy`` file seen as a ``(1, 1, rows, cols)`` array (``rows`` first rows), read slice by
    slice through a memory map: what ``dask.array.from_array`` ships to workers is only this small object."""

    def __init__(self, path, rows=None, cols=None, planes=True):
        self.path = path
        full = np.load(path, mmap_mode="r")
        self.dtype = full.dtype
        self.shape = ((1, 1) if planes else ()) + (rows or full.shape[0], cols or full.shape[1])
        self.ndim = len(self.shape)

    def __getitem__(self, key):
        image = np.load(self.path, mmap_mode="r")[:self.shape[-2], :self.shape[-1]]
        return np.array((image[None, None] if self.ndim == 4 else image)[key])


def write_image(path, size, seed=0):
    """A ``size x size`` float32 image of standard normal noise, written in strips (little memory)."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(size, size))
    rng = np.random.default_rng(seed)
    for start in range(0, size, 1024):
        out[start:start + 1024] = rng.standard_normal((min(1024, size - start), size), dtype=np.float32)
    out.flush()
    del out


def kernels(name):
    count, k = CASES[name]
    return np.random.default_rng(1).standard_normal((count, 1, k, k)).astype(np.float32) / k


def network(name):
    import fastconv as fc
    w = kernels(name)
    conv = fc.nn.Conv2d(1, w.shape[0], w.shape[-1], padding="same", bias=False)
    conv.weight.data[...] = w
    return conv


def peak_rss():
    """This process's peak resident memory in bytes: since :func:`reset_peak` where Linux allows it
    (``VmHWM``), else since the process started."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak():
    """Start :func:`peak_rss` afresh from the current resident memory (Linux: ``clear_refs`` 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def measured(client, compute):
    """``(seconds, peak MiB of each worker)`` of ``compute()``."""
    client.run(reset_peak)
    start = time.perf_counter()
    compute()
    seconds = time.perf_counter() - start
    return seconds, sorted(p / 2 ** 20 for p in client.run(peak_rss).values())


# ------------------------------------------------------------------------------------- the cases
def run_dask(client, name, path, chunks):
    """fastconv.dask.apply of case ``name`` on the whole image: seconds, worker peaks, tasks, means."""
    import dask.array as da

    import fastconv.dask as fcd
    model = network(name)
    image = NpyImage(path)
    chunks = chunks or fcd.auto_chunks(image.shape, image.dtype, model)
    y = fcd.apply(model, da.from_array(image, chunks=chunks, asarray=True, lock=False))
    means = y.mean(axis=(0, 2, 3))
    values = []
    seconds, peaks = measured(client, lambda: values.append(means.compute()))
    tasks = len(y.dask.layers[y.name])  # the blocks, their halo slices and the program they share
    return {"case": name, "seconds": seconds, "worker_peak_mib": peaks,
            "chunks": list(chunks), "blocks": int(np.prod(y.numblocks)), "tasks": tasks,
            "means": values[0].tolist()}


def run_dask_image(client, name, path, chunks, rows):
    """dask-image's correlate of the case's first kernel on the first ``rows`` rows (one channel)."""
    import dask.array as da
    from dask_image import ndfilters
    image = NpyImage(path, rows=rows, planes=False)
    x = da.from_array(image, chunks=tuple(chunks[-2:]), asarray=True, lock=False)
    y = ndfilters.correlate(x, kernels(name)[0, 0], mode="constant", cval=0.0)
    seconds, peaks = measured(client, y.mean().compute)
    size = np.load(path, mmap_mode="r").shape[0]
    return {"case": name, "rows": rows, "seconds": seconds, "scaled_seconds": seconds * size / rows,
            "worker_peak_mib": peaks, "tasks": len(y.__dask_graph__())}


def in_memory(name, path, rows):
    """One process, the image in memory, fastconv's kernels on every core (run in a subprocess)."""
    import fastconv as fc
    import fastconv.functional as F
    image = np.array(np.load(path, mmap_mode="r")[:rows])[None, None]
    w = kernels(name)
    with fc.no_grad():
        F.conv2d(image[..., :256, :256], w, padding="same")  # plan and compile outside the timing
        start = time.perf_counter()
        y = F.conv2d(image, w, padding="same")
        means = y.numpy().mean(axis=(0, 2, 3))
        seconds = time.perf_counter() - start
    return {"case": name, "rows": rows, "seconds": seconds, "peak_mib": peak_rss() / 2 ** 20,
            "threads": fc.get_num_threads(), "means": means.tolist()}


def run_in_memory(name, path, size, budget):
    """:func:`in_memory` in a fresh process, on the most rows whose input and output fit ``budget``."""
    per_row = size * 4 * (1 + CASES[name][0])
    rows = min(size, max(256, int(budget // per_row) // 256 * 256))
    out = subprocess.run([sys.executable, __file__, "--in-memory-case", name, "--path", path, "--rows", str(rows)],
                         capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["scaled_seconds"] = result["seconds"] * size / rows
    return result


def overhead(client, path, size, sides, repeat=1):
    """Tasks and seconds (one per repetition, the graphs interleaved) of apply, map_overlap and
    map_blocks for one 5x5 kernel, per chunk side."""
    import dask.array as da

    import fastconv as fc
    import fastconv.dask as fcd
    import fastconv.functional as F
    w = kernels("k5")

    def conv(block):
        with fc.no_grad():
            return F.conv2d(block, w, padding="same").numpy()

    def valid(block):
        with fc.no_grad():
            return F.conv2d(block, w).numpy()

    image = NpyImage(path, rows=size, cols=size)
    rows = []
    for side in sides:
        x = da.from_array(image, chunks=(1, 1, side, side), asarray=True, lock=False)
        graphs = {"fastconv.dask.apply": fcd.apply(network("k5"), x),
                  "map_overlap": da.map_overlap(valid, x, depth={2: 2, 3: 2}, boundary=0, trim=False,
                                                dtype=np.float32),
                  "map_blocks (no halo)": x.map_blocks(conv, dtype=np.float32)}
        found = [{"side": side, "graph": label, "tasks": len(y.__dask_graph__()), "seconds": []}
                 for label, y in graphs.items()]
        for _ in range(repeat):
            for row, y in zip(found, graphs.values()):
                row["seconds"].append(measured(client, y.mean().compute)[0])
        rows += found
    return rows


# ---------------------------------------------------------------------------------------- main
def parse_args(argv):
    p = argparse.ArgumentParser(prog="dask_filter", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=16384, help="image side (default 16384: 1 GiB of float32)")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    p.add_argument("--chunk", type=int, help="chunk side (default: fastconv.dask.auto_chunks)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--memory-limit", default="2GiB", help="per worker (default 2GiB)")
    p.add_argument("--memory-budget", type=float, default=6 * 2 ** 30,
                   help="bytes of input + output the one-process run may hold (default 6 GiB)")
    p.add_argument("--dask-image-rows", type=int, help="rows dask-image filters (default: all for 5x5, "
                                                       "an eighth for 31x31, then scaled)")
    p.add_argument("--overhead-size", type=int, default=4096)
    p.add_argument("--overhead-chunks", default="1024,256,128")
    p.add_argument("--repeat", type=int, default=3, help="repetitions of the overhead runs (default 3)")
    p.add_argument("--dir", help="where to write the image (default: a temporary folder)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--tiny", action="store_true", help="a 512 x 512 image and a 256 overhead image: seconds")
    p.add_argument("--in-memory-case", help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    p.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.tiny:
        args.size, args.overhead_size, args.overhead_chunks, args.repeat = 512, 256, "128,64", 1
    return args


def machine():
    import fastconv
    from fastconv.bench import common
    from compare import gemm_rate
    return {"cpu": common.cpu_name(), "cores": os.cpu_count(), "simd": fastconv.info.config().get("cython simd"),
            "gemm_gflops": gemm_rate(1024)["numpy"], "load_average": os.getloadavg(),
            "fastconv": fastconv.__version__}


def report(results, out=sys.stdout):
    m = results["machine"]
    print(f"\n{m['cpu']}, {m['cores']} cores, {m['simd']}; float32 GEMM {m['gemm_gflops']:.0f} GFLOP/s; "
          f"load average {m['load_average'][0]:.1f} at the start", file=out)
    print(f"{results['size']} x {results['size']} float32 image; {results['workers']} workers x 1 thread, "
          f"memory limit {results['memory_limit']} each\n", file=out)
    print("| case | fastconv.dask s | worker peak MiB | chunks | tasks | one process s | its peak MiB "
          "| dask-image s (1 kernel) |", file=out)
    print("|---|--:|--:|---|--:|--:|--:|--:|", file=out)
    for row in results["cases"]:
        mem, img = row.get("in_memory"), row.get("dask_image")
        one = "-" if mem is None else (f"{mem['seconds']:.1f}" if mem["rows"] == results["size"] else
                                       f"{mem['scaled_seconds']:.1f} ({mem['rows']} rows: {mem['seconds']:.1f})")
        di = "-" if img is None else (f"{img['seconds']:.1f}" if img["rows"] == results["size"] else
                                      f"{img['scaled_seconds']:.0f} ({img['rows']} rows: {img['seconds']:.1f})")
        print(f"| {row['case']} | {row['seconds']:.1f} | {', '.join(f'{p:.0f}' for p in row['worker_peak_mib'])} "
              f"| {row['chunks'][2]}x{row['chunks'][3]} | {row['tasks']} | {one} | "
              f"{'-' if mem is None else format(mem['peak_mib'], '.0f')} | {di} |", file=out)
    if results["overhead"]:
        print(f"\nOverhead, one 5x5 kernel on {results['overhead_size']}^2 (seconds: fastest - slowest of "
              f"{len(results['overhead'][0]['seconds'])}):\n\n| chunk | graph | tasks | s |\n|--:|---|--:|--:|",
              file=out)
        for row in results["overhead"]:
            print(f"| {row['side']} | {row['graph']} | {row['tasks']} | {min(row['seconds']):.2f} - "
                  f"{max(row['seconds']):.2f} |", file=out)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.in_memory_case:
        print(json.dumps(in_memory(args.in_memory_case, args.path, args.rows)))
        return 0
    from distributed import Client, LocalCluster

    import fastconv.dask as fcd
    cases = [c for c in args.cases.split(",") if c]
    unknown = set(cases) - set(CASES)
    if unknown:
        raise SystemExit(f"unknown cases {sorted(unknown)}: choose from {list(CASES)}")
    results = {"machine": machine(), "size": args.size, "workers": args.workers,
               "memory_limit": args.memory_limit, "overhead_size": args.overhead_size, "cases": []}
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        path = os.path.join(folder, "image.npy")
        write_image(path, args.size)
        with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                          memory_limit=args.memory_limit, dashboard_address=":0") as cluster, \
                Client(cluster) as client:
            fcd.set_worker_threads(client, 1)
            chunks = None if args.chunk is None else (1, 1, args.chunk, args.chunk)
            for name in cases:
                row = run_dask(client, name, path, chunks)
                row["in_memory"] = run_in_memory(name, path, args.size, args.memory_budget)
                if np.abs(np.subtract(row["means"], row["in_memory"]["means"])).max() > 1e-3 and \
                        row["in_memory"]["rows"] == args.size:
                    raise AssertionError(f"{name}: dask and in-memory means differ")
                try:
                    rows = args.dask_image_rows or (args.size if CASES[name][1] <= 5 else max(64, args.size // 8))
                    if name != "bank16x5":
                        row["dask_image"] = run_dask_image(client, name, path, row["chunks"], rows)
                except ImportError:
                    print("dask-image is not installed: no comparison (pip install dask-image)")
                results["cases"].append(row)
                print(f"{name}: {row['seconds']:.1f} s", flush=True)
            sides = [int(s) for s in args.overhead_chunks.split(",") if s]
            results["overhead"] = overhead(client, path, min(args.overhead_size, args.size), sides, args.repeat)
    report(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
