"""Setting up dask workers for fastconv: the threads of its compiled kernels, in every worker.

A worker runs one task per thread, and fastconv's kernels bring threads of their own: give the kernels
the cores a worker may use (``cores // workers`` on one machine), and BLAS one thread (training's small
GEMMs, see ``fastconv.runtime.set_blas_threads``). The setting is a worker plugin, so workers that join
later, or that the nanny restarts after a crash, get it too.
"""
from __future__ import annotations

from distributed.diagnostics.plugin import WorkerPlugin

__all__ = ["Threads", "set_worker_threads"]


class Threads(WorkerPlugin):
    """Run fastconv's kernels on ``n`` threads (and BLAS on one) in every worker."""

    name = "fastconv-threads"

    def __init__(self, n):
        self.n = n

    def setup(self, worker):
        from fastconv.runtime import set_blas_threads, set_num_threads
        set_num_threads(self.n)
        set_blas_threads(1)


def set_worker_threads(client, n):
    """Give fastconv ``n`` threads in every worker of ``client``, now and in workers that start later."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    client.register_plugin(Threads(n), name=Threads.name)
