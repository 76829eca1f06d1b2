"""Scratch arrays reused from call to call, so that kernels do not allocate large buffers every time, and
results on recycled memory (``result``).

Why: glibc hands large freed blocks back to the system, so a buffer of a few MB allocated and freed on
every call costs a page fault per 4 KB page when it is touched again (thousands per call). Each Python
thread keeps one grow-only flat buffer per ``(name, dtype)``; ``workspace`` views its start in the
shape a call needs. A name is held only while one kernel call runs: the caller owns the contents until
it returns, and two arrays that must coexist need two names.

Buffers start on a cache line (``ALIGN`` bytes): NumPy's own blocks start 16 or 32 bytes into one, and
then every 64-byte vector a kernel loads or stores straddles two lines.
"""
import functools
import threading

import numpy as np

from ..shapes import integer


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
    """Free this thread's buffers (they are rebuilt on demand) and the recycled results' free list."""
    _local.buffers.clear()
    if _memory() is not None:
        _memory().release()


#: Results of at least this many bytes go on recycled memory; smaller ones come from NumPy (glibc keeps
#: blocks that small in its heap).
RECYCLE_BYTES = 1 << 20


def result(shape, dtype):
    """An uninitialised array for a kernel's result. From ``RECYCLE_BYTES`` on, its memory comes from the
    free list of ``fastconv._cy._memory`` and goes back there when the array and its views die: the next
    result of that size (the same layer's, a training step later) writes to pages already mapped instead
    of faulting each one in again. Else (and without the compiled extension, or with reuse off) from
    NumPy."""
    dtype = np.dtype(dtype)
    count = 1
    for s in shape:
        count *= s
    memory = _memory()
    if memory is None or count * dtype.itemsize < RECYCLE_BYTES or memory.limit() == 0:
        return np.empty(shape, dtype)
    return np.frombuffer(memory.take(count * dtype.itemsize), dtype, count).reshape(shape)


def set_memory_reuse(nbytes):
    """Keep at most ``nbytes`` of freed results for reuse (default 256 MB; 0: none, results come from
    NumPy as other arrays do)."""
    nbytes = integer("nbytes", nbytes, 0)
    if _memory() is None:
        raise RuntimeError("fastconv's compiled extension is not built: results are not recycled")
    _memory().set_limit(nbytes)


def get_memory_reuse():
    """``(limit, held)``: the most bytes of freed results kept for reuse, and the bytes kept now."""
    return (0, 0) if _memory() is None else (_memory().limit(), _memory().held())


@functools.lru_cache(maxsize=None)
def _memory():
    """The compiled free list, loaded on first use, or None where the extension is not built."""
    try:
        from .._cy import _memory as memory
    except ImportError:
        return None
    return memory
