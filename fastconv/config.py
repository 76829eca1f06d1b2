"""Former home of the thread controls and build facts: they live in ``fastconv.runtime`` and
``fastconv.info``; these names stay for existing code."""
from .runtime import get_num_threads, set_blas_threads, set_num_threads  # noqa: F401
