"""One seeded random generator for initialisation, dropout and shuffling: ``fc.manual_seed(n)``."""
import numpy as np

_generator = np.random.default_rng()


def manual_seed(seed):
    """Seed fastconv's generator so that runs are reproducible."""
    global _generator
    _generator = np.random.default_rng(seed)
    return _generator


def generator():
    """The current generator (use it rather than ``np.random`` so that ``manual_seed`` covers it)."""
    return _generator
