"""Set-up of the CUDA tests: they run under Numba's simulator (``NUMBA_ENABLE_CUDASIM=1``, set before numba
is imported; CI runs ``NUMBA_ENABLE_CUDASIM=1 pytest -q -m cudasim tests/cuda``) or on a real GPU, and
skip cleanly elsewhere (see cuda_helpers.CUDA_TESTS). Shapes are tiny: a simulated GPU thread is a Python
thread."""
import os
import sys

import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    # Simulated threads meet at syncthreads() by polling; a short switch interval makes them ~10x faster.
    sys.setswitchinterval(1e-4)


@pytest.fixture
def poisoned_outputs():
    """New device arrays start as NaN: an output element a kernel fails to write makes the test fail."""
    from fastconv.gpu import alloc
    alloc.poison_outputs(True)
    yield
    alloc.poison_outputs(False)
