"""The caching allocator behind every GPU array: device memory carved from slabs and reused.

Numba allocates with cuMemAlloc and frees with cuMemFree, which synchronises the device, and a training
step allocates the same sizes every iteration. So requests are rounded up to 512 bytes; those up to
``SMALL`` bytes are carved from slabs of ``SLAB`` bytes, larger ones get a buffer of their own. A block
returns to a free list of its size when the last array viewing it is gone (a weakref finalizer) and is
reused before new memory is carved. Kernels run in stream order, so a kernel still reading a returned
block finishes before the next one writing it starts.

Small arrays share slabs, so one kernel can reach many of them: :func:`locate` gives an array's slab and
offset (the fused optimizer updates every parameter of a model in one launch).
"""
from __future__ import annotations

import weakref

import numpy as np
from numba import cuda

ALIGN = 512
SLAB = 64 << 20        # bytes per slab
SMALL = 4 << 20        # requests up to this size are carved from slabs
POOL_LIMIT = 4 << 30   # bytes of free dedicated buffers kept for reuse; beyond it they go back to the driver


class Slab:
    """One device buffer (uint8) that blocks are carved from; ``view(dtype)`` is all of it as ``dtype``."""
    __slots__ = ("raw", "nbytes", "_views", "__weakref__")

    def __init__(self, nbytes):
        self.raw = cuda.device_array(nbytes, dtype=np.uint8)
        self.nbytes = nbytes
        self._views = {}

    def view(self, dtype):
        dtype = np.dtype(dtype)
        found = self._views.get(dtype)
        if found is None:
            found = self._views[dtype] = self.raw[:self.nbytes - self.nbytes % dtype.itemsize].view(dtype)
        return found


class Block:
    """Owner of one allocation (``offset`` bytes into ``slab``): every array viewing it holds it, and the
    memory returns to the pool when the last one is gone."""
    __slots__ = ("slab", "offset", "__weakref__")

    def __init__(self, slab, offset):
        self.slab, self.offset = slab, offset


_free = {}          # rounded size -> [(slab, offset)]
_free_bytes = 0     # bytes in dedicated (not slab) free buffers
_current = None     # the slab being carved, and how far
_top = 0
_generation = 0     # empty_cache() starts a new one: blocks of older ones are not taken back
_poison = False


def allocate(nbytes):
    """``(buffer, block)``: a uint8 device buffer of ``nbytes`` and the block that owns it."""
    global _free_bytes, _current, _top
    size = max(ALIGN, -(-nbytes // ALIGN) * ALIGN)
    free = _free.get(size)
    if free:
        slab, offset = free.pop()
        if size > SMALL:
            _free_bytes -= size
    elif size > SMALL:
        slab, offset = Slab(size), 0
    else:
        if _current is None or _top + size > _current.nbytes:
            _current, _top = Slab(SLAB), 0
        slab, offset = _current, _top
        _top += size
    block = Block(slab, offset)
    weakref.finalize(block, _release, size, slab, offset, _generation).atexit = False
    return slab.raw[offset:offset + nbytes], block


def _release(size, slab, offset, generation):
    global _free_bytes
    if generation != _generation:
        return
    if size > SMALL:
        if _free_bytes + size > POOL_LIMIT:
            return
        _free_bytes += size
    _free.setdefault(size, []).append((slab, offset))


def empty_cache():
    """Forget every free block and slab (memory goes back to the driver once no array uses it)."""
    global _free_bytes, _current, _top, _generation
    _free.clear()
    _free_bytes, _current, _top = 0, None, 0
    _generation += 1


def cached_blocks():
    """How many free blocks wait for reuse."""
    return sum(len(v) for v in _free.values())


def poison_outputs(flag=True):
    """Debugging aid: fill every array ``empty`` makes with NaN (floats) or the most negative int, so
    that an element a kernel forgets to write shows up in a comparison (bench/gpu_check.py, tests)."""
    global _poison
    _poison = bool(flag)


def poisoned():
    return _poison


def locate(a):
    """``(buffer, element offset)`` of a C-contiguous CudaArray: the slab it lives in as a flat array of
    its dtype (one object per slab and dtype, so arrays sharing it can be updated by one launch), or, for
    arrays from elsewhere, their own buffer."""
    block = a._owner
    if block is None:
        return a._buf, a.offset
    return block.slab.view(a.dtype), block.offset // a.dtype.itemsize + a.offset
