"""Synchronous data-parallel training on a dask.distributed cluster.

Each step, :class:`DataParallel` ships the model (its current weights) to every worker once, splits the
global batch into one shard per worker, computes each shard's loss and gradients there, and averages them
weighted by shard size: the gradient of the mean loss over the whole batch, as one process computes it
(up to float rounding). The optimizer then steps once, here. A worker that dies mid-step has its shard
rerun elsewhere by the scheduler (``distributed.scheduler.allowed-failures`` times); if it keeps dying, or
the shard raises, the step fails with an error naming the step and the shard, before any gradient is set:
no shard is ever dropped from the average.

:func:`fit` is the loop around it, with checkpoints in ``fastconv train``'s format; ``fastconv train
--workers N`` / ``--dask-scheduler ADDRESS`` use :func:`from_config`.
"""
from __future__ import annotations

import itertools
import math
import os
import threading
import weakref

import numpy as np
from distributed import Client, KilledWorker, LocalCluster
from distributed.client import FutureCancelledError

from .. import functional as F
from ..checkpoint import load_checkpoint, save_checkpoint
from ..tensor import Tensor
from .workers import set_worker_threads

__all__ = ["DataParallel", "fit", "from_config"]

# Tasks of one worker process share the model it received: one shard at a time runs on it.
_LOCK = threading.Lock()
_STEPS = itertools.count()


def _shard(model, x, y, loss, training):
    """Loss, outputs and parameter gradients of ``model`` on one shard (runs on a worker)."""
    with _LOCK:
        model.train(training)
        model.zero_grad()
        out = model(Tensor(x))
        value = loss(out, Tensor(y))
        value.backward()
        grads = [None if p.grad is None else np.array(p.grad.numpy()) for p in model.parameters()]
        return float(value.item()), out.numpy(), grads


class DataParallel:
    """Gradients of ``model`` on a global batch, computed in shards on the workers of ``client``.

    ``loss(outputs, targets)``: a mean over the batch (default cross-entropy). ``shards``: how many
    pieces each batch is cut into (default: one per worker, at least 1; a batch smaller than that is cut
    into one sample per shard). ``retries``: how often a step whose shipped model was lost with its
    workers is shipped again. Dropout draws its masks on the workers, so a model with dropout does not
    repeat single-process training draw for draw.
    """

    def __init__(self, model, client, loss=F.cross_entropy, shards=None, retries=2):
        if not isinstance(client, Client):
            raise TypeError(f"client must be a dask.distributed Client, got {type(client).__name__}")
        if not callable(loss):
            raise TypeError(f"loss must be a function of (outputs, targets), got {type(loss).__name__}")
        if shards is not None and (isinstance(shards, bool) or not isinstance(shards, int) or shards < 1):
            raise ValueError(f"shards must be a positive int, got {shards!r}")
        if any(p.device != "cpu" for p in model.parameters()):
            raise ValueError("the workers compute on their CPUs: move the model there first (model.to('cpu'))")
        self.model, self.client, self.loss, self.retries = model, client, loss, retries
        self.shards = shards or max(1, len(client.scheduler_info()["workers"]))
        self.params = list(model.parameters())
        self._owned = None

    def step(self, xb, yb):
        """Set every parameter's ``grad`` to the gradient of the batch's mean loss; returns ``(loss,
        outputs)``, the mean loss (a float) and the model's outputs for the batch (NumPy, in order)."""
        xb, yb = np.asarray(xb), np.asarray(yb)
        if len(xb) != len(yb) or len(xb) == 0:
            raise ValueError(f"a batch needs as many targets as inputs (and at least one), got "
                             f"{len(xb)} inputs and {len(yb)} targets")
        cuts = np.array_split(np.arange(len(xb)), min(self.shards, len(xb)))
        results = self._run(next(_STEPS), xb, yb, cuts)
        sizes = np.array([len(c) for c in cuts], dtype=np.float64)
        weights = sizes / sizes.sum()
        loss = float(sum(w * value for w, (value, _, _) in zip(weights, results)))
        for i, p in enumerate(self.params):
            parts = [grads[i] for _, _, grads in results]
            if all(g is None for g in parts):
                p.grad = None
                continue
            total = sum(w * g.astype(np.float64) for w, g in zip(weights, parts) if g is not None)
            p.grad = Tensor(np.asarray(total, dtype=p.dtype))
        return loss, np.concatenate([out for _, out, _ in results])

    def _run(self, number, xb, yb, cuts):
        """Every shard's ``(loss, outputs, grads)``, or an error naming the shard that failed."""
        for attempt in range(self.retries + 1):
            model = self.client.scatter(self.model, broadcast=True, hash=False)
            futures = [self.client.submit(_shard, model, xb[c], yb[c], self.loss, self.model.training,
                                          key=f"fastconv-shard-{number}-{k}-{attempt}-{os.getpid()}")
                       for k, c in enumerate(cuts)]
            try:
                return self.client.gather(futures)
            except KilledWorker as err:
                raise RuntimeError(f"data-parallel step {number}: a shard's worker died while computing it, "
                                   f"as often as the scheduler allows (distributed.scheduler.allowed-failures): "
                                   f"{err}. No gradient was set; the model is unchanged") from err
            except FutureCancelledError:  # the shipped model was lost with every worker holding it
                if attempt == self.retries:
                    raise RuntimeError(f"data-parallel step {number}: the model shipped to the workers was lost "
                                       f"{attempt + 1} times (workers died); no gradient was set") from None
            except Exception as err:
                failed = [k for k, f in enumerate(futures) if f.status == "error"]
                shard = failed[0] if failed else "?"
                rows = f"samples {cuts[shard][0]}..{cuts[shard][-1]}" if failed else "a shard"
                raise RuntimeError(f"data-parallel step {number}: shard {shard} ({rows} of the batch) raised "
                                   f"{type(err).__name__}: {err}") from err
            finally:
                for f in futures:
                    f.release()
                model.release()

    def close(self):
        """Close the client and the cluster :func:`from_config` opened for this object; a no-op for a
        client given to it."""
        if self._owned is not None:
            self._owned()


def from_config(model, workers=None, scheduler=None):
    """The :class:`DataParallel` of ``fastconv train``: a new LocalCluster of ``workers`` processes (one
    thread each, the cores shared among them), or the cluster at ``scheduler``; None when neither is given.
    The client (and the cluster) it opens are closed by ``close()``, else when the object is collected."""
    if workers is not None and scheduler is not None:
        raise ValueError("give workers (a local cluster) or dask_scheduler (an address), not both")
    if workers is None and scheduler is None:
        return None
    if workers is not None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive int, got {workers!r}")
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=":0")
        client = Client(cluster)
        set_worker_threads(client, max(1, (os.cpu_count() or 1) // workers))
    else:
        try:
            client, cluster = Client(scheduler, timeout="20s"), None
        except (OSError, TimeoutError) as err:
            raise RuntimeError(f"cannot reach the dask scheduler at {scheduler!r}: {err}") from None
    parallel = DataParallel(model, client)
    parallel._owned = weakref.finalize(parallel, _close, client, cluster)
    return parallel


def _close(client, cluster):
    client.close()
    if cluster is not None:
        cluster.close()


def fit(model, optimizer, loader, client, *, epochs=1, steps=None, loss=F.cross_entropy, scheduler=None,
        shards=None, checkpoint=None, resume=False, callback=None):
    """Train ``model`` with ``optimizer`` on the batches of ``loader``, each step's gradients computed in
    shards on ``client``'s workers (:class:`DataParallel`); returns every step's loss.

    ``epochs`` passes over ``loader``, or ``steps`` optimizer steps in all (the last epoch may be short).
    ``scheduler``: a learning-rate schedule stepped after each optimizer step. ``checkpoint``: a path
    written after every epoch as ``fastconv train`` writes its ``checkpoint.npz`` (model, optimizer,
    schedule, the loader's shuffling state and the losses; temporary file, then ``os.replace``); with
    ``resume=True`` training continues from it when it exists. ``callback(epoch, losses)`` runs after each
    epoch's checkpoint.
    """
    for name, value in (("epochs", epochs), ("steps", steps)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    parallel = DataParallel(model, client, loss=loss, shards=shards)
    per_epoch = len(loader)
    total = steps if steps is not None else epochs * per_epoch
    losses, log, start = [], {"config": {"fit": True}, "epochs": []}, 0
    if resume and checkpoint is not None and os.path.exists(checkpoint):
        meta = load_checkpoint(checkpoint, model, optimizer, scheduler)
        losses, log["epochs"], start = meta["log"]["step_loss"], meta["log"]["epochs"], meta["epoch"]
        if hasattr(loader, "load_state_dict"):
            loader.load_state_dict(meta["rng"]["loader"])
    for epoch in range(start, math.ceil(total / per_epoch)):
        for xb, yb in itertools.islice(loader, min(per_epoch, total - len(losses))):
            optimizer.zero_grad()
            value, _ = parallel.step(xb, yb)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            losses.append(value)
        log["epochs"].append({"epoch": epoch + 1, "step": len(losses)})
        if checkpoint is not None:
            meta = {"epoch": epoch + 1, "log": dict(log, step_loss=losses),
                    "rng": {"loader": loader.state_dict() if hasattr(loader, "state_dict") else None}}
            save_checkpoint(checkpoint, model, optimizer, scheduler, meta)
        if callback is not None:
            callback(epoch + 1, losses)
    return losses
