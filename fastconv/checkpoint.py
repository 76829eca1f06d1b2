"""Training checkpoints: a model's and an optimizer's arrays with a JSON description of the run, written
atomically (temporary file, fsync, ``os.replace``, fsync of the folder) and read back whole (every CRC
checked), so that an interrupted run never leaves a torn file and a damaged one is a clear error.
Used by ``fastconv train`` and ``fastconv.dask.fit``."""
import json
import os
import tempfile
import zipfile

import numpy as np

class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable, truncated or corrupted; the message names the file and
    what to do."""


def atomic_write(path, write):
    """Write through ``write(fileobj)`` to a temporary file beside ``path``, flush it to disk, move it into
    place and flush the folder: a reader (or a resumed run after a crash or a power loss) sees the old file
    or the new one, never a torn or empty one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # the data reach the disk before the name points at them
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_folder(folder)


def _fsync_folder(folder):
    """Make a rename inside ``folder`` durable (POSIX; Windows cannot open a folder and needs no such step)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_checkpoint(path, model, optimizer, scheduler, meta):
    """Model and optimizer arrays plus a JSON ``meta`` (epoch, schedule, RNG states, log), atomically."""
    arrays = {f"model/{k}": v for k, v in model.state_dict().items()}
    opt_state = optimizer.state_dict()
    scalars = {}
    for i, values in opt_state["state"].items():
        for k, v in values.items():
            if isinstance(v, np.ndarray):
                arrays[f"optimizer/{i}/{k}"] = v
            else:
                scalars[f"{i}/{k}"] = v
    log = dict(meta["log"])
    arrays["log/step_loss"] = np.asarray(log.pop("step_loss", []), dtype=np.float64)
    meta = dict(meta, log=log, optimizer_groups=opt_state["param_groups"], optimizer_scalars=scalars,
                scheduler=scheduler.state_dict() if scheduler is not None else None)
    arrays["meta"] = np.array(json.dumps(meta))
    atomic_write(path, lambda f: np.savez(f, **arrays))


def read_checkpoint(path):
    """``(meta, arrays)`` of a checkpoint, every array read into memory once every CRC is checked.

    A missing, empty, truncated or corrupted file raises :class:`CheckpointError` naming it, never the zip
    reader's own exception (``BadZipFile``, ``EOFError``, ``KeyError``, ...).
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"cannot resume: there is no checkpoint {path} (start a new run without "
                              f"--resume, or give the --out folder of the run to continue)")
    try:
        with zipfile.ZipFile(path) as archive:  # NumPy reads a member only as far as its header says:
            damaged = archive.testzip()          # read every member whole, checking its CRC
        if damaged is not None:
            raise ValueError(f"{damaged} fails its CRC check")
        with np.load(path, allow_pickle=False) as f:
            arrays = {key: f[key] for key in f.files}
        meta = json.loads(str(arrays.pop("meta")))
        meta["log"]["step_loss"] = arrays.pop("log/step_loss").tolist()
        missing = {"epoch", "rng", "optimizer_groups", "optimizer_scalars", "scheduler"} - set(meta)
        missing |= {"config", "epochs"} - set(meta["log"])
        if missing:
            raise KeyError(f"no {', '.join(sorted(missing))} in its meta")
    except Exception as err:  # whatever the damage, the zip and JSON readers' errors say little
        reason = " ".join(f"{type(err).__name__}: {err}".split())
        raise CheckpointError(f"{path} is not a readable checkpoint ({reason}): it is empty, truncated or "
                              f"corrupted; delete it to start the run over, or restore a good copy") from None
    return meta, arrays


def load_checkpoint(path, model, optimizer, scheduler):
    """Restore what :func:`save_checkpoint` wrote into ``model``, ``optimizer`` and ``scheduler`` (each
    may be None); returns ``meta``. CheckpointError if the file is damaged or does not fit them."""
    meta, arrays = read_checkpoint(path)
    restore(path, meta, arrays, model, optimizer, scheduler)
    return meta


def restore(path, meta, arrays, model, optimizer, scheduler):
    """Put the arrays and state of a read checkpoint into ``model``, ``optimizer`` and ``scheduler`` (each
    may be None); CheckpointError naming ``path`` if they do not fit."""
    try:
        if model is not None:
            model.load_state_dict({k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")})
        if optimizer is not None:
            state = {}
            for key, value in arrays.items():
                if key.startswith("optimizer/"):
                    _, i, name = key.split("/", 2)
                    state.setdefault(int(i), {})[name] = value
            for key, value in meta["optimizer_scalars"].items():
                i, name = key.split("/", 1)
                state.setdefault(int(i), {})[name] = value
            groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else g for g in meta["optimizer_groups"]]
            optimizer.load_state_dict({"state": state, "param_groups": groups})
        if scheduler is not None and meta["scheduler"] is not None:
            scheduler.load_state_dict(meta["scheduler"])
    except Exception as err:
        reason = " ".join(f"{type(err).__name__}: {err}".split())
        raise CheckpointError(f"{path} does not fit this model and optimizer ({reason}); resume it with the "
                              f"settings it was made with, or use another --out") from None
