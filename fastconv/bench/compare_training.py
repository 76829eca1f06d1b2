"""Training speed of fastconv against PyTorch, on every device and backend there is (``fastconv compare``).

Trains LeNet-5 on MNIST and the MNIST-1D paper's CNN for a fixed number of Adam steps with each
implementation: fastconv on the CPU (``auto``, ``numba``, ``cython``) and on the GPU (``cuda``), and
PyTorch on the CPU and the GPU as the reference, each run in a process of its own (``--same-process``:
all in this one). Every run starts from the same weights (the PyTorch model is the idiomatic one, e.g.
LeNet-5's C5 as flatten + ``Linear(400, 120)``, loaded with the initial weights of ``fastconv.models``'
model) and sees the same batches in the same order; a few warm-up steps (compilation, autotuning) run
first on a throwaway copy. Reported per task
and implementation: ms per step, seconds per epoch (extrapolated), images/s, the final loss and test
accuracy, and the speed-up over fastconv on the CPU (``auto``, else the first fastconv CPU run). Writes
``training.md``, ``training.json`` and, with matplotlib, a bar chart ``training.png`` to ``--out``.
Where there is no GPU it says so and compares what exists.

    python bench/compare_training.py                          # 100 steps of each task
    python bench/compare_training.py --tasks mnist1d --steps 500 --out runs/compare
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

from ..train import frozen_heap
from . import common

BASELINE = "fastconv cpu auto"
# label -> (implementation, device); the fastconv CPU backends come from the registry at run time
GPU_RUNS = {"fastconv cuda": ("cuda", "cuda"), "pytorch cuda": (common.TORCH, "cuda")}


def candidate_runs(out):
    """``{label: (impl, device)}`` of every run possible here; prints why each missing one is missing."""
    runs = {BASELINE: ("auto", "cpu")}
    status = common.backend_status(("numba", "cython"))
    for name, reason in status.items():
        if reason is None:
            runs[f"fastconv cpu {name}"] = (name, "cpu")
        else:
            print(f"note: fastconv cpu {name} skipped: {reason}", file=out)
    torch_ok = common.has_torch()
    if torch_ok:
        runs["pytorch cpu"] = (common.TORCH, "cpu")
    else:
        print("note: PyTorch is not installed: no reference runs (pip install torch)", file=out)
    import fastconv
    fc_gpu = fastconv.cuda.is_available() and not fastconv.cuda.is_simulator()
    torch_gpu = False
    if torch_ok:
        import torch
        torch_gpu = torch.cuda.is_available()
    if fc_gpu:
        runs["fastconv cuda"] = GPU_RUNS["fastconv cuda"]
    if torch_gpu:
        runs["pytorch cuda"] = GPU_RUNS["pytorch cuda"]
    if not (fc_gpu or torch_gpu):
        why = "Numba's CUDA simulator only" if fastconv.cuda.is_simulator() else "numba.cuda sees no GPU"
        print(f"note: no CUDA GPU here ({why}): comparing the CPU implementations only", file=out)
    elif not fc_gpu:
        print("note: fastconv sees no CUDA GPU (numba.cuda): fastconv cuda skipped", file=out)
    return runs


def default_data_dir():
    """``$FASTCONV_DATA``; else ``../shared/data`` beside the repository when it holds MNIST (the
    project's development layout); else None (fastconv's default folder)."""
    if os.environ.get("FASTCONV_DATA"):
        return os.environ["FASTCONV_DATA"]
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    shared = os.path.join(os.path.dirname(repo), "shared", "data")
    return shared if os.path.isdir(os.path.join(shared, "mnist")) else None


def load_task_data(task, data_dir):
    """``(x_train, y_train, x_test, y_test)`` shaped for the task's model (MNIST padded to 32x32)."""
    from fastconv.data import MNIST, MNIST1D
    data_dir = data_dir or default_data_dir()
    if task == "lenet5":
        (x, y), (xt, yt) = (MNIST(data_dir, train=True).tensors(pad=True),
                            MNIST(data_dir, train=False).tensors(pad=True))
    else:
        (x, y), (xt, yt) = MNIST1D(train=True).tensors(), MNIST1D(train=False).tensors()
    return x, y, xt, yt


def batch_indices(n, batch_size, steps, seed):
    """The sample indices of every step: a fresh permutation per epoch, the same for every run."""
    rng = np.random.default_rng(seed)
    per_epoch = n // batch_size
    order = np.concatenate([rng.permutation(n)[:per_epoch * batch_size]
                            for _ in range(math.ceil(steps / per_epoch))])
    return order[:steps * batch_size].reshape(steps, batch_size)


def train_run(task, impl, device, data, steps, warmup, seed, eval_limit):
    """Train one implementation; returns its row of the table."""
    x, y, xt, yt = data
    batches = batch_indices(len(y), common.TRAIN_TASKS[task][2], steps, seed)
    throwaway = common.Trainer(task, impl, device, seed)
    for idx in batches[:warmup]:
        throwaway.step(x[idx], y[idx])
    trainer = common.Trainer(task, impl, device, seed)  # fresh weights and optimizer state
    losses = []
    with frozen_heap():  # as ``fastconv train`` runs (and the same for every library)
        start = time.perf_counter()
        for idx in batches:
            losses.append(trainer.step(x[idx], y[idx]))
        seconds = time.perf_counter() - start
    n_eval = len(yt) if eval_limit is None else min(eval_limit, len(yt))
    batch = batches.shape[1]
    return {"task": task, "run": None, "impl": impl, "device": device, "steps": steps, "batch_size": batch,
            "seconds": seconds, "ms_per_step": 1e3 * seconds / steps,
            "epoch_s": seconds / steps * (len(y) // batch), "images_per_s": steps * batch / seconds,
            "final_loss": float(np.mean(losses[-min(10, steps):])), "first_loss": losses[0],
            "test_acc": trainer.accuracy(xt[:n_eval], yt[:n_eval]), "test_samples": n_eval}


def markdown(rows, info):
    threads = f"{info['threads']} CPU thread" + ("s" if info["threads"] != 1 else "")
    lines = [f"Training, {info['steps']} Adam steps per run, {threads}, on {info['cpu']} ({info.get('isa', '?')})"
             + (f" and {info['gpu']}" if info.get("gpu") else "") + ". Same initial weights and batches for "
             "every run" + (", each in its own process" if info.get("isolate") else "") + "; PyTorch runs the "
             "idiomatic model (LeNet-5's C5 as flatten + Linear(400, 120)); loss = mean of the last 10 steps; "
             "epoch time extrapolated from the steps.", "",
             "| task | implementation | ms/step | s/epoch | images/s | final loss | test acc | speed-up vs "
             "fastconv CPU |", "|---|---|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        speed = "-" if r.get("speedup") is None else f"{r['speedup']:.2f}x"
        lines.append(f"| {r['task']} | {r['run']} | {r['ms_per_step']:.1f} | {r['epoch_s']:.1f} | "
                     f"{r['images_per_s']:,.0f} | {r['final_loss']:.4f} | {100 * r['test_acc']:.2f}% | {speed} |")
    return "\n".join(lines)


def bar_chart(rows, path):
    """images/s per run, one panel per task; False (with nothing written) without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 3.8), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        mine = [r for r in rows if r["task"] == task]
        colors = ["tab:blue" if r["impl"] != common.TORCH else "tab:gray" for r in mine]
        ax.barh([r["run"] for r in mine], [r["images_per_s"] for r in mine], color=colors)
        ax.invert_yaxis()
        ax.set_xlabel("training images / s (higher is better)")
        ax.set_title(f"{task}: {mine[0]['steps']} steps, batch {mine[0]['batch_size']}")
        for i, r in enumerate(mine):
            ax.text(r["images_per_s"], i, f" {r['images_per_s']:,.0f}", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def parse_args(argv):
    p = argparse.ArgumentParser(prog="fastconv compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=100, help="timed Adam steps per run (default 100)")
    p.add_argument("--tasks", default="lenet5,mnist1d", help="comma-separated: lenet5, mnist1d")
    p.add_argument("--out", default=os.path.join("runs", "compare"), help="folder for the table, JSON, chart")
    p.add_argument("--data-dir", help="folder holding mnist/ (default: $FASTCONV_DATA, else ../shared/data)")
    p.add_argument("--runs", help="comma-separated subset of the runs, e.g. 'fastconv cpu auto,pytorch cpu' "
                   "('fastconv cpu numpy' or 'fastconv cpu fft' add those backends)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for fastconv, torch and BLAS (default 2)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps on a throwaway model first (default 2)")
    p.add_argument("--eval-limit", type=int, help="test samples for the accuracy (default: the whole test set)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--same-process", action="store_true", help="run every implementation in this process")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # one task and run, its row to this file
    args = p.parse_args(argv)
    args.task_list = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in args.task_list if t not in common.TRAIN_TASKS]
    if unknown or not args.task_list:
        p.error(f"--tasks: unknown {unknown}; choose from {', '.join(common.TRAIN_TASKS)}")
    for name in ("steps", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if args.warmup < 0 or (args.eval_limit is not None and args.eval_limit < 1):
        p.error("--warmup must be >= 0 and --eval-limit >= 1")
    return args, p


def compare_training(args, out=None):
    """Run every task on every implementation; returns ``{"info", "rows"}`` and writes the files."""
    out = out or sys.stdout
    try:
        import fastconv.models  # noqa: F401
        import fastconv.optim  # noqa: F401
    except ImportError as err:
        raise SystemExit(f"fastconv.models / fastconv.optim are not available: {err}")
    threads = common.set_threads(args.threads)
    threads["numpy blas"] = common.set_blas_threads(1)  # as fastconv's trainer does (small GEMMs)
    runs = candidate_runs(out)
    if args.runs:
        wanted = [r.strip() for r in args.runs.split(",") if r.strip()]
        for label in wanted:  # any CPU backend may be asked for by name, the reference included
            backend = label[len("fastconv cpu "):] if label.startswith("fastconv cpu ") else None
            if backend in common.CPU_BACKENDS and common.backend_status([backend])[backend] is None:
                runs.setdefault(label, (backend, "cpu"))
        for label in wanted:
            if label not in runs:
                print(f"note: run {label!r} is not available here (available: {', '.join(runs)})", file=out)
        runs = {label: runs[label] for label in wanted if label in runs}
    info = {"steps": args.steps, "threads": args.threads, "threads_set": threads, "cpu": common.cpu_name(),
            "isa": common.cpu_isa(), "allocator": common.allocator(), "isolate": not args.same_process,
            "runs": list(runs), "gpu": _gpu_name(runs)}
    print(f"{info['cpu']} ({info['isa']}); threads {threads}; malloc: {info['allocator']}; runs: {', '.join(runs)}; "
          + ("all in this process" if args.same_process else "each in its own process"), file=out)
    rows = []
    for task in args.task_list:
        try:
            data = load_task_data(task, args.data_dir)
        except Exception as err:  # data missing or unreadable: say so, go on with the other task
            print(f"note: task {task} skipped: cannot load its data: {err}", file=out)
            continue
        task_rows = []
        for label, (impl, device) in runs.items():
            print(f"{task}: {label} ...", end=" ", file=out, flush=True)
            try:
                if args.same_process:
                    row = train_run(task, impl, device, data, args.steps, args.warmup, args.seed,
                                    args.eval_limit)
                else:
                    row = run_in_process(task, label, args)
            except NotImplementedError as err:
                print(f"skipped: {err}", file=out)
                continue
            row["run"] = label
            task_rows.append(row)
            print(f"{row['ms_per_step']:.1f} ms/step, loss {row['final_loss']:.4f}, "
                  f"test acc {100 * row['test_acc']:.2f}%", file=out, flush=True)
        base = next((r for r in task_rows if r["run"] == BASELINE),
                    next((r for r in task_rows if r["run"].startswith("fastconv cpu")), None))
        for r in task_rows:
            r["speedup"] = base["seconds"] / r["seconds"] if base else None
        rows += task_rows
    table = markdown(rows, info)
    print("\n" + table, file=out)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "training.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.out, "training.json"), "w") as f:
        json.dump({"info": info, "rows": rows}, f, indent=1)
    png = os.path.join(args.out, "training.png")
    if rows and bar_chart(rows, png):
        print(f"\nwrote {args.out}/training.md, training.json and training.png", file=out)
    else:
        print(f"\nwrote {args.out}/training.md and training.json (no chart: matplotlib is not installed"
              f"{' or nothing ran' if not rows else ''})", file=out)
    return {"info": info, "rows": rows}


def run_in_process(task, label, args):
    """``train_run`` of one task and run in a fresh Python process (its own allocator, thread pools and
    caches); the row comes back through a JSON file."""
    import subprocess
    import tempfile
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "row.json")
        argv = [sys.executable, "-m", "fastconv.bench.compare_training", "--worker", path, "--tasks", task,
                "--runs", label, "--steps", str(args.steps), "--threads", str(args.threads),
                "--warmup", str(args.warmup), "--seed", str(args.seed)]
        argv += ["--data-dir", args.data_dir] if args.data_dir else []
        argv += ["--eval-limit", str(args.eval_limit)] if args.eval_limit else []
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0 or not os.path.exists(path):
            why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
            raise NotImplementedError(f"worker process failed: {why}")
        with open(path) as f:
            return json.load(f)


def _worker(args):
    """``--worker PATH``: train one task with one run (``--tasks``, ``--runs``), its row to PATH."""
    common.set_threads(args.threads)
    common.set_blas_threads(1)
    label = args.runs
    backend = label[len("fastconv cpu "):] if label.startswith("fastconv cpu ") else None
    impl, device = GPU_RUNS.get(label) or ((common.TORCH, "cpu") if label == "pytorch cpu" else (backend, "cpu"))
    task = args.task_list[0]
    row = train_run(task, impl, device, load_task_data(task, args.data_dir), args.steps, args.warmup, args.seed,
                    args.eval_limit)
    with open(args.worker, "w") as f:
        json.dump(row, f)
    return 0


def _gpu_name(runs):
    if "pytorch cuda" in runs:
        import torch
        return torch.cuda.get_device_name()
    if "fastconv cuda" in runs:
        import fastconv
        return fastconv.cuda.device_name()
    return None


def main(argv=None):
    args, _ = parse_args(argv)
    if args.worker:
        return _worker(args)
    compare_training(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
