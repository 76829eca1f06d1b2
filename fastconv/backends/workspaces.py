"""Scratch arrays reused from call to call, so that kernels do not allocate large buffers every time.

Why: glibc hands large freed blocks back to the system, so a buffer of a few MB allocated and freed on
every call costs a page fault per 4 KB page when it is touched again (thousands per call). Each Python
thread keeps one grow-only flat buffer per ``(name, dtype)``; ``workspace`` views its start in the
shape a call needs. A name is held only while one kernel call runs: the caller owns the contents until
it returns, and two arrays that must coexist need two names.
"""
import threading

import numpy as np


class _Buffers(threading.local):
    def __init__(self):
        self.buffers = {}


_local = _Buffers()


def workspace(name, shape, dtype):
    """An uninitialised array of ``shape`` and ``dtype`` carved from this thread's buffer ``name``."""
    size = 1
    for s in shape:
        size *= s
    key = (name, np.dtype(dtype))
    buf = _local.buffers.get(key)
    if buf is None or buf.size < size:
        buf = _local.buffers[key] = np.empty(size, dtype)
    return buf[:size].reshape(shape)


def clear_workspaces():
    """Free this thread's buffers (they are rebuilt on demand)."""
    _local.buffers.clear()
