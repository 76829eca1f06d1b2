"""Training loop for the reference tasks: LeNet-5 on MNIST and CNNs on MNIST-1D (``fastconv train``).

One run = a :class:`TrainConfig`; fields left ``None`` take the task's recipe (``RECIPES``, by model).
Each epoch: shuffled batches (optionally randomly shifted), forward, cross-entropy, backward, optimizer and
schedule step (the schedule counts optimizer steps); then evaluation under ``no_grad`` in batches, one
accuracy line, and, in ``out``:

- ``checkpoint.npz``: model, optimizer, schedule, every random generator, the epoch and the log, written
  to a temporary file, flushed to disk (``fsync``) and moved into place (``os.replace``, then the folder
  is flushed too), so an interrupted run or a power loss never leaves a torn or empty checkpoint.
  ``resume=True`` continues from it exactly: the batches, shifts and updates are those the uninterrupted
  run would have seen. Settings left out (``None``) are the checkpoint's; a given setting that differs is
  refused (``RESUME_FIXED``), except the run's length and how it runs (``RESUME_CHANGEABLE``), which are
  applied and reported (a longer run re-times its schedule: the lr from then on is the new schedule's).
- ``log.json``: the configuration, every epoch's metrics and every step's loss (rewritten after each
  evaluation and at the end).
- ``curves.png``: loss and accuracy curves (skipped, with a message, without matplotlib).
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import math
import os
import sys
import time

import numpy as np

from . import functional as F
from . import models, optim, runtime
from .data import MNIST, MNIST1D, DataLoader, random_shift
from .data.mnist import MEAN, STD
from .device import check_device, to_device
from .checkpoint import (CheckpointError, atomic_write, load_checkpoint, read_checkpoint, restore,
                         save_checkpoint)
from .random import generator, manual_seed
from .tensor import Tensor, no_grad

__all__ = ["TrainConfig", "RECIPES", "resolve", "train", "evaluate", "read_checkpoint", "load_checkpoint",
           "save_checkpoint", "CheckpointError", "Interrupted"]

TASKS = {"lenet5": ("lenet5", "lenet5-classic"), "mnist1d": ("paper", "book", "wide")}

# Defaults per task and model; anything given explicitly in the config wins.
RECIPES = {
    # LeNet-5: Adam with cosine decay and +-2 pixel shifts: 99.29% after 10 epochs (seed 0).
    "lenet5": dict(epochs=10, batch_size=128, optimizer="adam", lr=2e-3, schedule="cosine", augment=True),
    "lenet5-classic": dict(epochs=10, batch_size=128, optimizer="adam", lr=2e-3, schedule="cosine",
                           augment=True),
    # The MNIST-1D paper's recipe: Adam 1e-2, batch 100, 8000 steps (200 epochs of 40 steps), no decay:
    # 92.1% (seed 0; 92.3-93.3% from epoch 40 to 160; the paper's PyTorch CNN: 92.4%).
    "paper": dict(steps=8000, batch_size=100, optimizer="adam", lr=1e-2, schedule="none", augment=False,
                  eval_every=5),
    # Understanding Deep Learning (ch. 10 notebook): SGD 0.05 momentum 0.9, the lr halved every 20 epochs.
    "book": dict(epochs=100, batch_size=100, optimizer="sgd", lr=0.05, momentum=0.9, schedule="step",
                 step_size=20, gamma=0.5, augment=False, eval_every=5),
    # The wide net overfits (train loss ~1e-3 with plain Adam: 97.7%); decoupled weight decay 0.1: 98.1%.
    "wide": dict(epochs=100, batch_size=100, optimizer="adamw", lr=3e-3, weight_decay=0.1, schedule="cosine",
                 augment=False, eval_every=5),
}
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("none", "step", "cosine")


@dataclasses.dataclass
class TrainConfig:
    """One training run. ``None`` fields take the recipe of ``model`` (default: the task's first)."""
    task: str = "mnist1d"
    model: str | None = None
    epochs: int | None = None
    steps: int | None = None          # total optimizer steps; overrides epochs (last epoch may be short)
    batch_size: int | None = None
    lr: float | None = None
    optimizer: str | None = None
    schedule: str | None = None       # per optimizer step: cosine over the run, or step every step_size epochs
    step_size: int | None = None      # epochs between lr drops of the "step" schedule
    gamma: float | None = None
    momentum: float | None = None     # SGD only
    weight_decay: float | None = None
    augment: bool | None = None       # random shifts (+-2 pixels for images, +-3 samples for signals)
    seed: int | None = None           # default 0
    device: str | None = None         # default "cpu"
    backend: str | None = None        # default "auto"
    threads: int | None = None        # threads of the compiled CPU kernels (default: fastconv's)
    data_dir: str | None = None
    download: bool = False
    out: str | None = None            # default: runs/<task>-<model>
    resume: bool = False
    progress: bool = True
    eval_every: int | None = None     # evaluate on the test set every this many epochs (and the last)
    eval_batch_size: int | None = None  # default 1000
    subset: int | None = None         # use the first `subset` training and test samples (quick checks)
    workers: int | None = None        # compute each step's gradients on this many local dask workers
    dask_scheduler: str | None = None  # ... or on the dask cluster at this address (fastconv.dask)


# What ``resume`` does with each setting the checkpoint holds (every TrainConfig field is in one group):
# what the run computes must stay; its length and how it runs may change (applied and reported); where the
# data come from, where the run lives and what it shows are not compared.
RESUME_FIXED = ("task", "model", "batch_size", "lr", "optimizer", "schedule", "step_size", "gamma", "momentum",
                "weight_decay", "augment", "seed", "subset")
RESUME_CHANGEABLE = ("epochs", "steps", "device", "backend", "threads", "eval_every", "eval_batch_size",
                     "workers", "dask_scheduler")
RESUME_FREE = ("data_dir", "download", "out", "resume", "progress")


def resolve(config):
    """A copy of ``config`` with every ``None`` filled from its recipe, checked (ValueError naming the
    field)."""
    cfg = dataclasses.replace(config)
    if cfg.task not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {cfg.task!r}")
    cfg.model = cfg.model or TASKS[cfg.task][0]
    if cfg.model not in TASKS[cfg.task]:
        raise ValueError(f"model for task {cfg.task!r} must be one of {TASKS[cfg.task]}, got {cfg.model!r}")
    recipe = dict(epochs=None, steps=None, step_size=None, gamma=0.1, momentum=0.9, weight_decay=0.0,
                  eval_every=1, seed=0, device="cpu", backend="auto", eval_batch_size=1000)
    recipe.update(RECIPES[cfg.model])
    if cfg.steps is not None and cfg.epochs is None:
        recipe["epochs"] = None  # explicit steps replace the recipe's epochs
    if cfg.epochs is not None and cfg.steps is None:
        recipe["steps"] = None
    for field, value in recipe.items():
        if getattr(cfg, field) is None:
            setattr(cfg, field, value)
    cfg.out = cfg.out or os.path.join("runs", f"{cfg.task}-{cfg.model}")
    cfg.device = check_device(cfg.device)
    if cfg.optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {cfg.optimizer!r}")
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {cfg.schedule!r}")
    for field in ("epochs", "steps", "batch_size", "step_size", "eval_every", "eval_batch_size", "subset",
                  "threads", "workers"):
        value = getattr(cfg, field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{field} must be a positive int, got {value!r}")
    if cfg.epochs is None and cfg.steps is None:
        raise ValueError("give epochs or steps")
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int) or cfg.seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {cfg.seed!r}")
    if not (isinstance(cfg.lr, (int, float)) and cfg.lr > 0):
        raise ValueError(f"lr must be a positive number, got {cfg.lr!r}")
    if cfg.backend != "auto":
        from .backends import registry
        registry.load(registry.parse(cfg.backend)[0])  # unknown or unusable backends fail here, before any work
    return cfg


# ------------------------------------------------------------------------------------- data
def load_data(cfg):
    """``(x_train, y_train, x_test, y_test)`` as float32 / int64 NumPy arrays shaped for the model."""
    if cfg.task == "lenet5":
        train_set = MNIST(cfg.data_dir, train=True, download=cfg.download)
        test_set = MNIST(cfg.data_dir, train=False, download=cfg.download)
        (x, y), (xt, yt) = train_set.tensors(pad=True), test_set.tensors(pad=True)
    else:
        (x, y), (xt, yt) = MNIST1D(train=True).tensors(), MNIST1D(train=False).tensors()
    if cfg.subset is not None:
        x, y, xt, yt = x[:cfg.subset], y[:cfg.subset], xt[:cfg.subset], yt[:cfg.subset]
    return x, y, xt, yt


class Augment:
    """Random translations of a batch: +-2 pixels for images (padding = background), +-3 samples for
    MNIST-1D signals (circular, as the signals are shifted copies of templates)."""

    def __init__(self, task, seed):
        self.task = task
        self.rng = np.random.default_rng([seed, 1])
        self.out = None

    def __call__(self, xb):
        if self.out is None or self.out.shape[1:] != xb.shape[1:] or len(self.out) < len(xb):
            self.out = np.empty_like(xb)
        out = self.out[:len(xb)]
        if self.task == "lenet5":
            return random_shift(xb, 2, self.rng, fill=np.float32(-MEAN / STD), out=out)
        shifts = self.rng.integers(-3, 4, len(xb))
        cols = (np.arange(xb.shape[-1]) - shifts[:, None]) % xb.shape[-1]
        out[...] = np.take_along_axis(xb, cols[:, None, :], axis=-1)
        return out


def evaluate(model, x, y, batch_size=1000, device="cpu"):
    """``(mean loss, accuracy)`` of ``model`` on arrays ``x, y``, under ``no_grad`` in eval mode."""
    was_training = model.training
    model.eval()
    total, correct = 0.0, 0
    with no_grad():
        for start in range(0, len(y), batch_size):
            xb, yb = x[start:start + batch_size], y[start:start + batch_size]
            logits = model(Tensor(to_device(xb, device)))
            total += F.cross_entropy(logits, Tensor(to_device(yb, device)), reduction="sum").item()
            correct += int(np.count_nonzero(logits.numpy().argmax(1) == yb))
    model.train(was_training)
    return total / len(y), correct / len(y)


def _write_json(path, obj):
    """A dict of JSON values, one top-level key per line and one list item of dicts per line: readable,
    and fast (``indent`` would switch ``json`` to its pure-Python encoder, ~10 ms for 8000 step losses)."""
    def value(v):
        if isinstance(v, list) and v and isinstance(v[0], dict):
            return "[\n" + ",\n".join("  " + json.dumps(item) for item in v) + "\n ]"
        return json.dumps(v)
    text = "{\n" + ",\n".join(f" {json.dumps(k)}: {value(v)}" for k, v in obj.items()) + "\n}\n"
    atomic_write(path, lambda f: f.write(text.encode()))


# --------------------------------------------------------------------------------- resuming
def _resumed_config(config, saved, path):
    """The config that continues the checkpointed run whose (resolved) config is ``saved``.

    Settings ``config`` leaves out (None) are the checkpoint's. A given setting that differs is refused if
    it is in RESUME_FIXED (one ValueError listing every ``setting: old -> new``) and applied if it is in
    RESUME_CHANGEABLE. Giving ``epochs`` or ``steps`` sets a new length: the checkpoint's are dropped.
    Returns ``(config, {setting: (old, new)} of the applied changes)``, the config yet to be resolved.
    """
    merged = dataclasses.replace(config)
    new_length = config.epochs is not None or config.steps is not None
    changes, refused = {}, {}
    for name in RESUME_FIXED + RESUME_CHANGEABLE:
        old, new = saved.get(name), getattr(config, name)
        if new is None and not (new_length and name in ("epochs", "steps")):
            setattr(merged, name, old)
        elif new != old:
            (changes if name in RESUME_CHANGEABLE else refused)[name] = (old, new)
    if refused:
        raise ValueError(f"cannot resume {path} with other settings ({_listed(refused)}): leave them out to "
                         f"continue the run as it was, or give another --out to start a new one")
    return merged, changes


def _listed(changes):
    return ", ".join(f"{name}: {old} -> {new}" for name, (old, new) in changes.items())


def _resume(cfg, path, checkpoint, changes, pieces, total_steps):
    """Load ``checkpoint`` (``(meta, arrays)``) into the run's ``pieces`` (model, optimizer, scheduler,
    loader, augment, log), say what changed, and return the ``(epoch, step)`` it ends at.

    The schedule keeps this run's length and takes the checkpoint's position: with a new length the lr
    from here on is the new schedule's (a cosine over the new number of steps)."""
    model, optimizer, scheduler, loader, augment, log = pieces
    meta, arrays = checkpoint
    epoch = meta["epoch"]
    step = meta["log"]["epochs"][-1]["step"] if meta["log"]["epochs"] else 0
    if total_steps < step:
        raise ValueError(f"cannot resume {path} for {total_steps} steps in all: it has run {step} steps "
                         f"({epoch} epochs) already; give more --epochs or --steps")
    restore(path, meta, arrays, model, optimizer, None)
    saved_lr = optimizer.param_groups[0]["lr"]
    if scheduler is not None:
        scheduler.last_epoch = meta["scheduler"]["last_epoch"] - 1
        scheduler.step()
    generator().bit_generator.state = meta["rng"]["fastconv"]
    loader.load_state_dict(meta["rng"]["loader"])
    if augment is not None:
        augment.rng.bit_generator.state = meta["rng"]["augment"]
    log["epochs"], log["step_loss"] = meta["log"]["epochs"], meta["log"]["step_loss"]
    log["resumed"] = meta["log"].get("resumed", []) + [
        {"epoch": epoch, "step": step, "changes": {name: list(pair) for name, pair in changes.items()}}]
    print(f"resuming from {path} after epoch {epoch} (step {step} of {total_steps})")
    if changes:
        print(f"changed on resume: {_listed(changes)}")
    lr = optimizer.param_groups[0]["lr"]
    if lr != saved_lr:
        print(f"the {cfg.schedule} schedule now spans {total_steps} steps: the lr at step {step} is {lr:.4g} "
              f"(was {saved_lr:.4g})")
    return epoch, step


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or a callback's KeyboardInterrupt) stopped :func:`train`. ``epoch``: the last epoch in the
    checkpoint, None if there is none to continue from; the message says which and what to do."""

    def __init__(self, message, epoch):
        super().__init__(message)
        self.epoch = epoch


def _interrupted(cfg, path, epoch):
    if epoch is not None:
        return Interrupted(f"epoch {epoch} is in {path}; continue with --resume", epoch)
    text = "no epoch was completed, so there is nothing to resume"
    if not os.path.isdir(cfg.out):
        text += f" ({cfg.out} was not created)"
    elif os.path.exists(path):
        text += f" ({path} is from an earlier run, left as it was)"
    return Interrupted(text, None)


def _is_terminal(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


# ---------------------------------------------------------------------------------- pieces
def _gradient_step(cfg, model):
    """``(step, close)``: ``step(xb, yb) -> (loss, outputs)`` gives the batch's mean loss and the model's
    outputs and leaves the gradients in the parameters; computed in shards on dask workers with
    ``workers`` or ``dask_scheduler`` (``fastconv.dask.DataParallel``: the same gradients, averaged), else
    here. ``close()`` lets the workers go."""
    if cfg.workers is not None or cfg.dask_scheduler is not None:
        if cfg.device != "cpu":
            raise ValueError(f"data-parallel training runs on the dask workers' CPUs: use device 'cpu', "
                             f"got {cfg.device!r}")
        try:
            from .dask.parallel import from_config
        except ImportError as err:
            raise ImportError(f"training on dask workers needs dask and distributed: pip install "
                              f"'fastconv[dask]' ({err})") from None
        parallel = from_config(model, cfg.workers, cfg.dask_scheduler)
        return parallel.step, parallel.close

    def step(xb, yb):
        logits = model(Tensor(to_device(xb, cfg.device)))
        loss = F.cross_entropy(logits, Tensor(to_device(yb, cfg.device)))
        loss.backward()
        return loss.item(), logits.numpy()
    return step, lambda: None


def _make_optimizer(cfg, params):
    if cfg.optimizer == "sgd":
        return optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    cls = optim.Adam if cfg.optimizer == "adam" else optim.AdamW
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _make_schedule(cfg, optimizer, total_steps, steps_per_epoch):
    if cfg.schedule == "cosine":
        return optim.CosineAnnealingLR(optimizer, T_max=total_steps)
    if cfg.schedule == "step":
        size = cfg.step_size or max(1, math.ceil(total_steps / steps_per_epoch) // 3)
        return optim.StepLR(optimizer, step_size=size * steps_per_epoch, gamma=cfg.gamma)
    return None


class _Progress:
    """A tqdm bar per epoch (loss, images/s) when tqdm is installed and wanted, else a plain line every
    quarter epoch (or nothing with ``enabled=False``)."""

    def __init__(self, enabled, total, desc, stream):
        self.enabled, self.total, self.desc, self.stream = enabled, total, desc, stream
        self.bar, self.count, self.start = None, 0, time.perf_counter()
        if enabled:
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, desc=desc, unit="batch", leave=False, file=stream,
                                mininterval=0.5, dynamic_ncols=True)
            except ImportError:
                pass

    def update(self, loss, images):
        self.count += 1
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            if self.count % 10 == 0 or self.count == self.total:
                rate = images / max(time.perf_counter() - self.start, 1e-9)
                self.bar.set_postfix_str(f"loss {loss:.4f}, {rate:,.0f} img/s", refresh=False)
        elif self.count % max(1, self.total // 4) == 0 and self.count < self.total:
            rate = images / max(time.perf_counter() - self.start, 1e-9)
            print(f"  {self.desc} step {self.count}/{self.total}  loss {loss:.4f}  {rate:,.0f} img/s",
                  file=self.stream, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _plot(log, path):
    """Loss and accuracy per epoch as a PNG; returns False (and says why) without matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        print("matplotlib is not installed: skipping the plot (pip install 'fastconv[plot]')")
        return False
    epochs = [e["epoch"] for e in log["epochs"]]
    tested = [e for e in log["epochs"] if "test_acc" in e]
    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(epochs, [e["train_loss"] for e in log["epochs"]], label="train")
    ax_loss.plot([e["epoch"] for e in tested], [e["test_loss"] for e in tested], ".-", label="test")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", yscale="log", title="loss")
    ax_acc.plot(epochs, [100 * e["train_acc"] for e in log["epochs"]], label="train (running)")
    ax_acc.plot([e["epoch"] for e in tested], [100 * e["test_acc"] for e in tested], ".-", label="test")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{log['config']['task']} / {log['config']['model']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def _plot_kernels(model, path):
    """The first convolution layer's filters as a PNG (see ``fastconv.viz.kernels``)."""
    from . import viz
    name, layer = viz.first_conv(model)
    viz.kernels(layer, path=path, title=f"{name} ({type(layer).__name__}) filters after training")


# -------------------------------------------------------------------------------- the loop
def train(config=None, callback=None, stream=None, **overrides):
    """Run ``config`` (a TrainConfig, or its fields as keywords) and return the log dict.

    ``callback(epoch, metrics)`` runs after each epoch's checkpoint (raising from it interrupts the run
    the way Ctrl-C would). Progress goes to ``stream`` (default stderr), accuracy lines to stdout: a bar
    per epoch and a line per evaluation on a terminal, else (a log file, CI) one line per epoch.
    Ctrl-C raises :class:`Interrupted`, which says what the checkpoint holds.
    """
    config = dataclasses.replace(config or TrainConfig(), **overrides)
    cfg = resolve(config)
    path = os.path.join(cfg.out, "checkpoint.npz")
    checkpoint, changes = None, {}
    if cfg.resume:
        checkpoint = read_checkpoint(path)
        merged, changes = _resumed_config(config, checkpoint[0]["log"]["config"], path)
        cfg = resolve(merged)
    saved = {"epoch": checkpoint[0]["epoch"] if checkpoint else None}  # the last epoch in the checkpoint
    try:
        with _num_threads(cfg.threads), frozen_heap():
            return _run(cfg, path, checkpoint, changes, callback, stream or sys.stderr, saved)
    except KeyboardInterrupt as err:
        raise _interrupted(cfg, path, saved["epoch"]) from err


@contextlib.contextmanager
def _num_threads(n):
    """The compiled CPU kernels use ``n`` threads inside the block (None: as they are), as before after it."""
    if n is None:
        yield
        return
    before = runtime.get_num_threads()
    runtime.set_num_threads(n)
    try:
        yield
    finally:
        runtime.set_num_threads(before)


@contextlib.contextmanager
def frozen_heap():
    """Python's cyclic garbage collector leaves the objects alive now (modules, the libraries' tables)
    alone inside the block. Its full collections walk every tracked object: with NumPy, SciPy and Numba
    loaded, about 100 ms each on a 2-core AVX-512 AMD EPYC, a pause every few hundred steps of a
    millisecond each (MNIST-1D: 0.8 ms per step, 1.9 averaged over 100 steps with one such pause);
    frozen, 1 ms. Objects made inside the block are collected as before."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _run(cfg, ckpt_path, checkpoint, changes, callback, stream, saved):
    if cfg.device == "cpu":
        runtime.set_blas_threads(1)  # the compiled kernels bring their own threads (see set_blas_threads)
    x, y, xt, yt = load_data(cfg)
    manual_seed(cfg.seed)
    model = models.create(cfg.model, backend=cfg.backend).to(cfg.device)
    gradient_step, release_workers = _gradient_step(cfg, model)
    loader = DataLoader(x, y, batch_size=cfg.batch_size, shuffle=True, seed=[cfg.seed, 0], reuse_buffers=True)
    steps_per_epoch = len(loader)
    total_steps = cfg.steps if cfg.steps is not None else cfg.epochs * steps_per_epoch
    optimizer = _make_optimizer(cfg, model.parameters())
    scheduler = _make_schedule(cfg, optimizer, total_steps, steps_per_epoch)
    augment = Augment(cfg.task, cfg.seed) if cfg.augment else None
    log_path = os.path.join(cfg.out, "log.json")
    log = {"config": dataclasses.asdict(cfg), "parameters": model.num_parameters(), "epochs": [],
           "step_loss": []}
    start_epoch, step = 0, 0
    if checkpoint is not None:
        pieces = (model, optimizer, scheduler, loader, augment, log)
        start_epoch, step = _resume(cfg, ckpt_path, checkpoint, changes, pieces, total_steps)
    epochs = start_epoch + math.ceil((total_steps - step) / steps_per_epoch)

    print(f"{cfg.task}: {cfg.model} ({model.num_parameters():,} parameters), {len(y):,} training / "
          f"{len(yt):,} test samples, {cfg.optimizer} lr {cfg.lr:g}, schedule {cfg.schedule}, batch "
          f"{cfg.batch_size}, {total_steps} steps ({epochs} epochs), device {cfg.device}, backend {cfg.backend}")
    interactive = cfg.progress and _is_terminal(stream) and _is_terminal(sys.stdout)
    every_epoch = cfg.progress and not interactive  # a log: one line per epoch instead of bar redraws
    for epoch in range(start_epoch, epochs):
        n_steps = min(steps_per_epoch, total_steps - step)
        model.train()
        progress = _Progress(interactive, n_steps, f"epoch {epoch + 1}/{epochs}", stream)
        loss_sum, correct, seen = 0.0, 0, 0
        start = time.perf_counter()
        for i, (xb, yb) in enumerate(loader):
            if i == n_steps:
                break
            if augment is not None:
                xb = augment(xb)
            optimizer.zero_grad()
            value, logits = gradient_step(xb, yb)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            log["step_loss"].append(value)
            loss_sum += value * len(yb)
            correct += int(np.count_nonzero(logits.argmax(1) == yb))
            seen += len(yb)
            step += 1
            progress.update(value, seen)
        progress.close()
        seconds = time.perf_counter() - start
        metrics = {"epoch": epoch + 1, "step": step, "lr": optimizer.param_groups[0]["lr"],
                   "train_loss": loss_sum / seen, "train_acc": correct / seen, "time_s": seconds,
                   "images_per_s": seen / seconds}
        line = (f"epoch {epoch + 1:>3}/{epochs}  train loss {metrics['train_loss']:.4f} "
                f"acc {100 * metrics['train_acc']:.2f}%")
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == epochs:
            metrics["test_loss"], metrics["test_acc"] = evaluate(model, xt, yt, cfg.eval_batch_size, cfg.device)
            line += f"  test loss {metrics['test_loss']:.4f} acc {100 * metrics['test_acc']:.2f}%"
        if "test_acc" in metrics or every_epoch:
            print(line + f"  {seconds:.2f} s ({metrics['images_per_s']:,.0f} img/s)", flush=True)
        log["epochs"].append(metrics)
        meta = {"epoch": epoch + 1, "log": log,
                "rng": {"fastconv": generator().bit_generator.state, "loader": loader.state_dict(),
                        "augment": augment.rng.bit_generator.state if augment is not None else None}}
        save_checkpoint(ckpt_path, model, optimizer, scheduler, meta)
        saved["epoch"] = epoch + 1
        if "test_acc" in metrics:  # the log also lives in the checkpoint; the JSON copy follows evaluations
            _write_json(log_path, log)
        if callback is not None:
            callback(epoch + 1, metrics)
    release_workers()

    if log["epochs"]:
        last = log["epochs"][-1]
        train_time = sum(e["time_s"] for e in log["epochs"])
        log["final"] = {"test_acc": last.get("test_acc"), "test_loss": last.get("test_loss"),
                        "train_time_s": train_time, "epoch_time_s": train_time / len(log["epochs"])}
        _write_json(log_path, log)
        if _plot(log, os.path.join(cfg.out, "curves.png")):
            _plot_kernels(model, os.path.join(cfg.out, "kernels.png"))
            print(f"wrote {log_path}, {ckpt_path}, {os.path.join(cfg.out, 'curves.png')} and kernels.png")
    return log
