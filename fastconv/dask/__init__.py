"""fastconv on Dask: networks on arrays larger than memory, and data-parallel training.

    import fastconv.dask as fcd
    y = fcd.apply(model, x)                  # x: a dask array (N, C, H, W), chunked along any axes
    y = fcd.apply(lambda t: F.conv2d(t, bank, padding="same"), image)   # a filter bank on a huge image
    fcd.fit(model, optimizer, loader, client, epochs=2)   # synchronous SGD on a dask.distributed cluster

Needs the optional packages ``dask[array]`` and ``distributed`` (``pip install "fastconv[dask]"``).
"""
from .arrays import apply
from .chunking import auto_chunks
from .parallel import DataParallel, fit
from .program import Program
from .workers import set_worker_threads

__all__ = ["apply", "auto_chunks", "Program", "DataParallel", "fit", "set_worker_threads"]
