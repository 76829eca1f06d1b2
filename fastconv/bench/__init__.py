"""Benchmark tools that ship with the package: the one table of benchmark shapes and the runners that
time them (``common``, shared with the asv suites in the repository's ``bench/benchmarks``), the
per-op comparison with PyTorch (``compare``, ``fastconv bench``) and the training comparison
(``compare_training``, ``fastconv compare``).
"""
