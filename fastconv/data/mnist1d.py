"""MNIST-1D (Greydanus, 2020), generated offline with the ``mnist1d`` package.

``mnist1d.data.make_dataset(get_dataset_args())`` regenerates the published set (4,000 training and 1,000
test signals of length 40, seed 42) in about two seconds, with no network access; ``get_dataset`` would
try to download, so it is never used. The generated arrays are cached in memory per argument set.
``make_dataset`` seeds NumPy's and Python's global generators; their states are restored afterwards so
that loading data does not change anyone else's random numbers.
"""
from __future__ import annotations

import random

import numpy as np

__all__ = ["MNIST1D", "generate"]

_cache = {}


def generate(**overrides):
    """The dataset dict of ``make_dataset`` (keys ``x``, ``y``, ``x_test``, ``y_test``, ``t``), for
    ``get_dataset_args()`` updated with ``overrides`` (e.g. ``seed``, ``num_samples``)."""
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as err:
        raise ImportError("MNIST-1D needs the mnist1d package: pip install 'fastconv[datasets]'") from err
    args = get_dataset_args(as_dict=True)
    unknown = sorted(set(overrides) - set(args))
    if unknown:
        raise ValueError(f"unknown MNIST-1D arguments {unknown}; known: {sorted(args)}")
    args.update(overrides)
    key = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in args.items()))
    if key not in _cache:
        np_state, py_state = np.random.get_state(), random.getstate()
        try:
            data = make_dataset(_view(args))
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
        for name in ("x", "y", "x_test", "y_test"):
            data[name].flags.writeable = False
        _cache[key] = data
    return _cache[key]


def _view(args):
    from mnist1d.utils import ObjectView
    return ObjectView(dict(args))


class MNIST1D:
    """The MNIST-1D training or test split: ``x`` float ``(N, length)``, ``y`` int64 ``(N,)``.

    ``num_samples`` (total, 80% for training), ``length`` and ``seed`` map to ``mnist1d``'s
    ``num_samples``, ``final_seq_length`` and ``seed``; any other of its arguments may be passed by name.
    """

    def __init__(self, train=True, num_samples=5000, length=40, seed=42, dtype=np.float32, **dataset_args):
        data = generate(num_samples=num_samples, final_seq_length=length, seed=seed, **dataset_args)
        self.train = bool(train)
        x, y = (data["x"], data["y"]) if self.train else (data["x_test"], data["y_test"])
        self.x = x.astype(dtype)  # a private copy (the cached arrays are read-only)
        self.y = y.astype(np.int64)

    def __len__(self):
        return len(self.y)

    def tensors(self, channels=True):
        """``(x, y)`` with ``x`` shaped ``(N, 1, length)`` (``channels=True``) or ``(N, length)``."""
        return (self.x[:, None, :] if channels else self.x), self.y

    def __repr__(self):
        return f"MNIST1D({'train' if self.train else 'test'}, {len(self)} signals of length {self.x.shape[1]})"
