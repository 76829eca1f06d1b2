"""Compiled Cython extensions, built at install from ``src_cython/``."""
