"""Datasets (MNIST, MNIST-1D) and a batching DataLoader."""
from .loader import DataLoader, random_shift
from .mnist import MNIST, DatasetError, MissingData
from .mnist1d import MNIST1D

__all__ = ["MNIST", "MNIST1D", "DataLoader", "DatasetError", "MissingData", "random_shift"]
