"""The ``fastconv`` command.

    fastconv train mnist1d                    # the MNIST-1D paper's CNN and recipe, offline, seconds
    fastconv train lenet5 --epochs 10         # LeNet-5 on MNIST ($FASTCONV_DATA or --data-dir)
    fastconv info                             # versions, threads, OpenMP, BLAS, CUDA, backends
    fastconv plan lenet5 --batch 128          # which kernel runs each pass of a model, and why
    fastconv plan conv2d --input 8,64,56,56 --weight 64,64,3,3 --padding 1 --measure
    fastconv tune                             # measure the kernels of every model's layers, keep the fastest
    fastconv bench [args]                     # bench/compare.py: fastconv vs PyTorch, per op
    fastconv compare [args]                   # bench/compare_training.py: training, fastconv vs PyTorch

``bench`` and ``compare`` run scripts of the repository's ``bench/`` folder (not part of the installed
package): they are found beside the package (editable installs) or in the current directory.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys

# Subcommands that hand their arguments to a script of bench/: name -> (file, what it does)
SCRIPTS = {
    "bench": ("compare.py", "time every op against PyTorch (bench/compare.py)"),
    "compare": ("compare_training.py", "compare training runs against PyTorch (bench/compare_training.py)"),
}


def _bench_script(filename):
    """Path of ``bench/<filename>``: beside the package's source tree, else under the current directory."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for root in (here, os.getcwd()):
        path = os.path.join(root, "bench", filename)
        if os.path.isfile(path):
            return path
    return None


def run_script(command, argv):
    """Import ``bench/<script>`` and return its ``main(argv)`` (0 when it returns None)."""
    filename, _ = SCRIPTS[command]
    path = _bench_script(filename)
    if path is None:
        print(f"fastconv {command}: bench/{filename} not found. It ships with the source repository, not "
              f"the installed package: run this from a checkout of fastconv (or its root directory).",
              file=sys.stderr)
        return 2
    spec = importlib.util.spec_from_file_location(f"fastconv_bench_{command}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "main"):
        print(f"fastconv {command}: {path} defines no main(argv)", file=sys.stderr)
        return 2
    result = module.main(list(argv))
    return 0 if result is None else int(result)


def _parser():
    parser = argparse.ArgumentParser(prog="fastconv", description="fastconv: convolution engine for Python")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,info,plan,tune,bench,compare}")

    from .models import MODELS
    from .train import OPTIMIZERS, SCHEDULES
    t = sub.add_parser("train", help="train LeNet-5 on MNIST or a CNN on MNIST-1D",
                       description="Train a reference model. Options left out take the model's recipe "
                                   "(fastconv.train.RECIPES).")
    t.add_argument("task", choices=["lenet5", "mnist1d"])
    t.add_argument("--model", choices=sorted(MODELS),
                   help="lenet5: lenet5 (ReLU, max pool) or lenet5-classic (tanh, avg pool); "
                        "mnist1d: paper (default), book or wide")
    t.add_argument("--epochs", type=int)
    t.add_argument("--steps", type=int, help="total optimizer steps (overrides --epochs)")
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--optimizer", choices=OPTIMIZERS)
    t.add_argument("--schedule", choices=SCHEDULES, help="lr schedule over optimizer steps")
    t.add_argument("--momentum", type=float, help="SGD momentum (default 0.9)")
    t.add_argument("--weight-decay", type=float)
    t.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random shifts of the training batches (default: on for lenet5, off for mnist1d)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="cpu", help="cpu or cuda")
    t.add_argument("--backend", default="auto", help="auto, numpy, numba, cython, fft or cuda")
    t.add_argument("--threads", type=int, help="threads of the compiled CPU kernels (default: all cores, "
                                               "or NUMBA_NUM_THREADS / OMP_NUM_THREADS)")
    t.add_argument("--data-dir", help="folder holding mnist/ (default $FASTCONV_DATA, else "
                                      "~/.cache/fastconv/data)")
    t.add_argument("--download", action="store_true", help="fetch missing MNIST files")
    t.add_argument("--out", help="output folder (default runs/<task>-<model>)")
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.npz")
    t.add_argument("--eval-every", type=int, help="evaluate on the test set every N epochs")
    t.add_argument("--subset", type=int, help="use the first N training and test samples (quick checks)")
    t.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")

    sub.add_parser("info", help="versions, threads, OpenMP, BLAS, CUDA and backends")
    p = sub.add_parser("plan", help="which kernel runs each pass of a model or a convolution, and why",
                       description="Print the plan of every pass: backend and algorithm, the model's time, "
                                   "the measured time (--measure) and the reason.")
    p.add_argument("target", choices=sorted(MODELS) + ["conv1d", "conv2d"],
                   help="a model (one training step's passes) or one convolution")
    p.add_argument("--batch", type=int, default=128, help="batch size of the model's input (default 128)")
    p.add_argument("--input", type=_shape, help="conv: input shape, e.g. 8,64,56,56")
    p.add_argument("--weight", type=_shape, help="conv: weight shape, e.g. 64,64,3,3")
    for name in ("stride", "padding", "dilation", "groups"):
        p.add_argument(f"--{name}", type=int, default=0 if name == "padding" else 1)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--backend", default="auto", help="auto, a backend (cython) or an algorithm (cython:blocked)")
    p.add_argument("--measure", action="store_true", help="time each kernel here")
    t = sub.add_parser("tune", help="measure the kernels of the models' layers here and keep the fastest",
                       description="Time every candidate kernel of every pass of the reference models' layers "
                                   "(their training batch sizes) and store the fastest in the planner's cache, "
                                   "which later runs on this machine use.")
    t.add_argument("models", nargs="*", choices=sorted(MODELS), metavar="MODEL",
                   help=f"models to measure (default: lenet5 paper wide; any of {', '.join(sorted(MODELS))})")
    t.add_argument("--batch", type=int, help="batch size (default: each model's training recipe)")
    for name, (_, text) in SCRIPTS.items():
        sub.add_parser(name, help=text, add_help=False)
    return parser


def _shape(text):
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints such as 8,3,32,32, got {text!r}")


def plan(args):
    """``fastconv plan``: print :func:`fastconv.explain` for a model or one convolution."""
    import numpy as np

    from . import functional as F
    from . import models
    from .explain import explain
    from .tensor import tensor
    if args.target in ("conv1d", "conv2d"):
        if args.input is None or args.weight is None:
            raise ValueError(f"fastconv plan {args.target} needs --input and --weight shapes")
        rng = np.random.default_rng(0)
        x, w = (tensor(rng.standard_normal(s).astype(args.dtype), requires_grad=True) for s in (args.input, args.weight))
        op = getattr(F, args.target)
        print(explain(op, x, w, stride=args.stride, padding=args.padding, dilation=args.dilation,
                      groups=args.groups, backend=args.backend, measure=args.measure))
        return 0
    model = models.create(args.target, backend=args.backend)
    print(explain(model, (args.batch,) + models.SAMPLE_SHAPES[args.target], measure=args.measure))
    return 0


def tune(args):
    """``fastconv tune``: :func:`fastconv.calibrate.calibrate` over reference models, printed as a table."""
    from . import models
    from .backends import tune as cache
    from .calibrate import calibrate, table
    from .train import RECIPES
    rows = []
    for name in args.models or ["lenet5", "paper", "wide"]:
        batch = args.batch or RECIPES[name]["batch_size"]
        shape = (batch,) + models.SAMPLE_SHAPES[name]
        print(f"measuring {name} on {'x'.join(map(str, shape))} ...", file=sys.stderr, flush=True)
        rows += calibrate(models.create(name), shape,
                          progress=lambda r: print(f"  {r['layer']} {r['pass']} {r['shape']}: {r['winner']}",
                                                   file=sys.stderr, flush=True))
    print(table(rows))
    changed = sum(r["winner"] != r["model"] for r in rows)
    print(f"\n{len(rows)} passes measured; the measured fastest differs from the model's choice in {changed}; "
          f"stored in {cache.cache_path()}")
    return 0


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SCRIPTS:  # everything after the subcommand belongs to the script
        return run_script(argv[0], argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "info":
        from .config import show_config
        show_config()
        return 0
    if args.command == "tune":
        return tune(args)
    if args.command == "plan":
        try:
            return plan(args)
        except (ValueError, TypeError, RuntimeError) as err:
            print(f"fastconv plan: error: {err}", file=sys.stderr)
            return 2
    from .data import DatasetError
    from .train import TrainConfig, train
    fields = {k: v for k, v in vars(args).items() if k != "command"}
    try:
        log = train(TrainConfig(**fields))
    except (ValueError, TypeError, RuntimeError, FileNotFoundError, DatasetError, ImportError) as err:
        print(f"fastconv train: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: the last completed epoch is in the checkpoint; continue with --resume",
              file=sys.stderr)
        return 130
    final = log.get("final") or {}
    if final.get("test_acc") is not None:
        print(f"final test accuracy {100 * final['test_acc']:.2f}% after {log['epochs'][-1]['step']} steps; "
              f"training {final['train_time_s']:.1f} s ({final['epoch_time_s']:.2f} s per epoch)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
