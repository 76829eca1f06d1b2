# cython: language_level=3
"""Whether an array holds only finite numbers: one pass over its bits on every thread.

The planner's NaN/inf guard reads the operands of kernels that would not propagate a NaN or an inf as
the reference does (``registry.nonfinite_checks``); NumPy's reductions run on one thread and a sum
also overflows, so the check reads the exponent bits instead: they are all ones exactly for inf and
NaN, and adding one unit to them then carries into the sign bit.
"""
import numpy as np

cdef extern from *:
    """
    #include <stdint.h>
    #include <stddef.h>
    #define FC_PARALLEL_FROM 65536  /* elements: fewer are read on the calling thread */
    static int fc_finite32(const uint32_t *b, ptrdiff_t n)
    {
        uint32_t seen = 0;
        #pragma omp parallel for reduction(|:seen) schedule(static) if(n >= FC_PARALLEL_FROM)
        for (ptrdiff_t i = 0; i < n; i++)
            seen |= (b[i] & 0x7f800000u) + 0x00800000u;
        return !(seen & 0x80000000u);
    }
    static int fc_finite64(const uint64_t *b, ptrdiff_t n)
    {
        uint64_t seen = 0;
        #pragma omp parallel for reduction(|:seen) schedule(static) if(n >= FC_PARALLEL_FROM)
        for (ptrdiff_t i = 0; i < n; i++)
            seen |= (b[i] & 0x7ff0000000000000u) + 0x0010000000000000u;
        return !(seen & 0x8000000000000000u);
    }
    """
    int fc_finite32(const unsigned int* b, Py_ssize_t n) nogil
    int fc_finite64(const unsigned long long* b, Py_ssize_t n) nogil


def all_finite(a):
    """True when the C-contiguous float32 or float64 array ``a`` has no NaN and no inf; None for any other
    array (the caller checks it another way)."""
    if not a.flags.c_contiguous or a.size == 0:
        return None if a.size else True
    cdef const unsigned int[::1] b32
    cdef const unsigned long long[::1] b64
    cdef int ok
    if a.dtype == np.float32:
        b32 = a.reshape(-1).view(np.uint32)
        with nogil:
            ok = fc_finite32(&b32[0], b32.shape[0])
        return bool(ok)
    if a.dtype == np.float64:
        b64 = a.reshape(-1).view(np.uint64)
        with nogil:
            ok = fc_finite64(&b64[0], b64.shape[0])
        return bool(ok)
    return None
