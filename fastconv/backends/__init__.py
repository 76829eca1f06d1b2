"""Backends: sibling modules with identical kernel signatures (see ``reference``), listed in ``registry``,
chosen by ``plan`` (the planner; its rules in ``model``, its measurements in ``tune``).

- ``reference`` (``"numpy"``): the NumPy definition every other backend is tested against.
- ``numba_cpu`` (``"numba"``): ``@njit(parallel=True)`` loops.
- ``cython_cpu`` (``"cython"``): OpenMP kernels compiled from ``src_cython/``.
- ``fft`` (``"fft"``): convolution through ``scipy.fft``.
- ``cuda`` (``"cuda"``): Numba CUDA kernels on device arrays.
"""
