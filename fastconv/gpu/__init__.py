"""fastconv on NVIDIA GPUs, with Numba CUDA (also under Numba's simulator, ``NUMBA_ENABLE_CUDASIM=1``).

- ``array.py``: :class:`CudaArray`, the array type GPU tensors hold; ``alloc.py``: the caching allocator.
- ``xp.py``: the NumPy-like namespace of GPU arrays (``array_module("cuda")``), with the fused ops.
- ``conv.py``, ``pool.py``: convolution and pooling with their epilogues fused; ``backend.py``: the op
  table of ``backend="cuda"``; ``optim.py``: optimizer updates over every parameter in one launch.
- ``kernels/``: the CUDA kernel templates; ``launch.py``: the one launch path and the profiler behind
  ``fastconv.cuda.profile()``.

Importing any of these needs no GPU; a kernel compiles on its first launch.
"""
