"""Scratch arrays reused from call to call, so that kernels do not allocate large buffers every time.

Why: glibc hands large freed blocks back to the system, so a buffer of a few MB allocated and freed on
every call costs a page fault per 4 KB page when it is touched again (thousands per call). Each Python
thread keeps one grow-only flat buffer per ``(name, dtype)``; ``workspace`` views its start in the
shape a call needs. A name is held only while one kernel call runs: the caller owns the contents until
it returns, and two arrays that must coexist need two names.

Buffers start on a cache line (``ALIGN`` bytes): NumPy's own blocks start 16 or 32 bytes into one, and
then every 64-byte vector a kernel loads or stores straddles two lines.
"""
import threading

import numpy as np


class _Buffers(threading.local):
    def __init__(self):
        self.buffers = {}


_local = _Buffers()
#: Bytes every workspace's first element is aligned to (a cache line, and an AVX-512 vector).
ALIGN = 64


def workspace(name, shape, dtype):
    """An uninitialised array of ``shape`` and ``dtype`` carved from this thread's buffer ``name``."""
    size = 1
    for s in shape:
        size *= s
    key = (name, np.dtype(dtype))
    buf = _local.buffers.get(key)
    if buf is None or buf.size < size:
        buf = _local.buffers[key] = _aligned(size, np.dtype(dtype))
    return buf[:size].reshape(shape)


def _aligned(size, dtype):
    """An uninitialised flat array of ``size`` elements whose data starts on an ``ALIGN``-byte boundary."""
    raw = np.empty(size * dtype.itemsize + ALIGN, np.uint8)
    skip = -raw.ctypes.data % ALIGN
    return raw[skip:skip + size * dtype.itemsize].view(dtype)


def clear_workspaces():
    """Free this thread's buffers (they are rebuilt on demand)."""
    _local.buffers.clear()
