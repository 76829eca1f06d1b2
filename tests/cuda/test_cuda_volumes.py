"""3-D ops on GPU tensors (the depth decomposition over the GPU's 2-D kernels) against the same ops on the
CPU: forward values, max-pool indices and every input gradient. Tiny volumes: a simulated GPU thread is a
Python thread."""
import numpy as np

import fastconv as fc
import fastconv.functional as F
from fastconv.backends import plan

from cuda_helpers import CUDA_TESTS, assert_close, host
from test_cuda_functional import _rand, check_op

pytestmark = CUDA_TESTS


def test_convolutions_of_volumes():
    x, w, b = _rand(1, 2, 3, 4, 3), _rand(2, 2, 2, 3, 2), _rand(2)
    check_op(lambda x, w, b: F.conv3d(x, w, b, stride=(2, 1, 1), padding=(1, 1, 0)), x, w, b)
    check_op(lambda x, w: F.conv3d(x, w), x, _rand(3, 2, 1, 1, 1))  # planes stacked (pointwise)
    xt, wt = _rand(1, 2, 2, 2, 2), _rand(2, 1, 2, 2, 2)
    check_op(lambda x, w: F.conv_transpose3d(x, w, stride=2, groups=2), xt, wt)


def test_pooling_of_volumes():
    x = np.random.default_rng(0).permutation(2 * 4 * 4 * 3).reshape(1, 2, 4, 4, 3).astype(np.float32)
    check_op(lambda x: F.max_pool3d(x, 2, (1, 2, 2), padding=(1, 0, 1)), x)
    check_op(lambda x: F.avg_pool3d(x, (3, 2, 2), 2, padding=1, ceil_mode=True, count_include_pad=False), x)
    y, idx = F.max_pool3d(fc.tensor(x, device="cuda"), 2, (1, 2, 2), padding=(1, 0, 1), return_indices=True)
    _, ref = F.max_pool3d(x, 2, (1, 2, 2), padding=(1, 0, 1), return_indices=True)
    assert idx.device == "cuda"
    assert_close(idx, ref)
    check_op(lambda v: F.max_unpool3d(v, ref if v.device == "cpu" else idx, 2, (1, 2, 2), padding=(1, 0, 1),
                                      output_size=x.shape[2:]), host(y))


def test_resampling_volumes():
    x = _rand(1, 2, 2, 3, 2)
    check_op(lambda x: F.interpolate(x, scale_factor=(2, 1, 1.5), mode="trilinear"), x)
    check_op(lambda x: F.adaptive_avg_pool3d(x, (1, 2, 1)), x)


def test_gpu_volumes_run_the_gpu_kernels():
    x, w = fc.tensor(_rand(1, 2, 3, 4, 4), device="cuda"), fc.tensor(_rand(2, 2, 3, 3, 3), device="cuda")
    with plan.recording() as layers:
        assert F.conv3d(x, w, padding=1).device == "cuda"
    made = layers[0].plans["conv2d"]
    assert made.name == "depth:cuda" and "folded into the channels" in made.reason
