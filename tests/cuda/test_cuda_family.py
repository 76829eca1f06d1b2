"""The convolution family on GPU tensors against the same ops on the CPU (forward and every gradient):
tiled and locally-connected layers, separable convolutions. Tiny shapes: the simulator runs every thread
in Python."""
import numpy as np
import pytest

import fastconv.functional as F

from cuda_helpers import CUDA_TESTS, DTYPES
from test_cuda_functional import _rand, check_op

pytestmark = CUDA_TESTS


@pytest.mark.parametrize("dtype", DTYPES)
def test_locally_connected(dtype):
    x, w, b = _rand(2, 4, 4, 5, dtype=dtype), _rand(2, 3, 4, 2, 3, 2, dtype=dtype), _rand(4, 2, 3, dtype=dtype)
    check_op(lambda x, w, b: F.conv2d_local(x, w, b, stride=(1, 2), padding=(0, 1), dilation=(1, 2), groups=2),
             x, w, b)


@pytest.mark.parametrize("dtype", DTYPES)
def test_tiled(dtype):
    x, w, b = _rand(1, 2, 5, 4, dtype=dtype), _rand(2, 2, 3, 2, 2, 3, dtype=dtype), _rand(3, dtype=dtype)
    check_op(lambda x, w, b: F.conv2d_tiled(x, w, b, padding=(0, 1), tiles=(2, 2)), x, w, b)
    x1, w1 = _rand(2, 1, 6, dtype=dtype), _rand(3, 2, 1, 3, dtype=dtype)
    check_op(lambda x, w: F.conv1d_tiled(x, w, padding="same", tiles=3), x1, w1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_separable(dtype):
    x, rows, cols, b = (_rand(1, 2, 5, 4, dtype=dtype), _rand(2, 2, 2, 2, dtype=dtype), _rand(2, 2, 2, 3, dtype=dtype),
                        _rand(2, dtype=dtype))
    check_op(lambda x, r, c, b: F.separable_conv2d(x, r, c, b, padding=(1, 0)), x, rows, cols, b)
