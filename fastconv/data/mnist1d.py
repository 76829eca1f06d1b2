"""MNIST-1D (Greydanus, 2020), generated offline with the ``mnist1d`` package.

``mnist1d.data.make_dataset(get_dataset_args())`` regenerates the published set (4,000 training and 1,000
test signals of length 40, seed 42) with no network access; ``get_dataset`` would try to download, so it
is never used. Importing ``mnist1d`` and generating take ~4 s, so the arrays are cached: in memory per
argument set, and on disk (``$FASTCONV_CACHE_DIR``, else ``~/.cache/fastconv``) per argument set and
``mnist1d`` version, written atomically and regenerated whenever unreadable. ``make_dataset`` seeds NumPy's
and Python's global generators; their states are restored afterwards so that loading data does not
change anyone else's random numbers.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile

import numpy as np

from .. import shapes

__all__ = ["MNIST1D", "generate", "cache_dir"]

ARRAYS = ("x", "y", "x_test", "y_test", "t")
_cache = {}


def cache_dir():
    """``$FASTCONV_CACHE_DIR``, else ``~/.cache/fastconv``."""
    return os.environ.get("FASTCONV_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "fastconv")


def _version():
    try:
        from importlib.metadata import version
        return version("mnist1d")
    except Exception:  # not installed: generation will say so
        return "unknown"


def _cache_path(overrides):
    key = json.dumps({"mnist1d": _version(), **overrides}, sort_keys=True)
    return os.path.join(cache_dir(), f"mnist1d-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz")


def _load_cached(path):
    """The arrays of a cache file, or None when it is absent or unreadable."""
    try:
        with np.load(path, allow_pickle=False) as f:
            data = {name: f[name] for name in ARRAYS}
        if len(data["x"]) != len(data["y"]) or len(data["x_test"]) != len(data["y_test"]):
            return None
        return data
    except Exception:
        return None


def _save_cached(path, data):
    """Best effort (a read-only home only costs the regeneration next time)."""
    tmp = None
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".mnist1d-", suffix=".tmp", dir=os.path.dirname(path))
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **{name: data[name] for name in ARRAYS})
        os.replace(tmp, path)
    except OSError:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def generate(cache=True, **overrides):
    """The arrays of ``make_dataset`` (keys ``x``, ``y``, ``x_test``, ``y_test``, ``t``), for
    ``get_dataset_args()`` updated with ``overrides`` (e.g. ``seed``, ``num_samples``).

    ``cache=False`` regenerates (and refreshes the caches); arrays are read-only.
    """
    cache = shapes.flag("cache", cache)
    key = json.dumps(overrides, sort_keys=True)
    path = _cache_path(overrides)
    if cache and key in _cache:
        return _cache[key]
    data = _load_cached(path) if cache else None
    if data is None:
        data = _make(overrides)
        _save_cached(path, data)
    for name in ARRAYS:
        data[name].flags.writeable = False
    _cache[key] = data
    return data


def _make(overrides):
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as err:
        raise ImportError("MNIST-1D needs the mnist1d package: pip install 'fastconv[datasets]'") from err
    args = get_dataset_args(as_dict=True)
    unknown = sorted(set(overrides) - set(args))
    if unknown:
        raise ValueError(f"unknown MNIST-1D arguments {unknown}; known: {sorted(args)}")
    args.update(overrides)
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(_view(args))
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return {name: np.asarray(data[name]) for name in ARRAYS}


def _view(args):
    from mnist1d.utils import ObjectView
    return ObjectView(dict(args))


class MNIST1D:
    """The MNIST-1D training or test split: ``x`` float ``(N, length)``, ``y`` int64 ``(N,)``.

    ``num_samples`` (total, 80% for training), ``length`` and ``seed`` map to ``mnist1d``'s
    ``num_samples``, ``final_seq_length`` and ``seed``; any other of its arguments may be passed by name.
    ``cache=False`` regenerates the data instead of reading the caches.
    """

    def __init__(self, train=True, num_samples=5000, length=40, seed=42, dtype=np.float32, cache=True,
                 **dataset_args):
        num_samples = shapes.integer("num_samples", num_samples, 2, None)
        length = shapes.integer("length", length, 1, None)
        seed = shapes.integer("seed", seed, 0, 2 ** 32 - 1)  # NumPy's legacy seeds
        dtype = shapes.float_dtype("dtype", dtype)
        self.train = shapes.flag("train", train)
        data = generate(cache, num_samples=num_samples, final_seq_length=length, seed=seed, **dataset_args)
        x, y = (data["x"], data["y"]) if self.train else (data["x_test"], data["y_test"])
        self.x = x.astype(dtype)  # a private copy (the cached arrays are read-only)
        self.y = y.astype(np.int64)

    def __len__(self):
        return len(self.y)

    def tensors(self, channels=True):
        """``(x, y)`` with ``x`` shaped ``(N, 1, length)`` (``channels=True``) or ``(N, length)``."""
        return (self.x[:, None, :] if shapes.flag("channels", channels) else self.x), self.y

    def __repr__(self):
        return f"MNIST1D({'train' if self.train else 'test'}, {len(self)} signals of length {self.x.shape[1]})"
