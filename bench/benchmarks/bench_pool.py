"""Pooling suites (max and average, 2x2 stride 2): forward, forward + backward, peak memory."""
from fastconv.bench import common
from fastconv.bench.common import POOL_IMPLS, SHAPES, grid

common.preload()


class _Pool:
    params = [list(POOL_IMPLS), grid("pool")]
    param_names = ["impl", "shape"]
    grad = False
    timeout = 120

    def setup(self, impl, shape):
        self.run = common.warm_runner(impl, SHAPES[shape], self.grad)


class PoolForward(_Pool):
    def time_forward(self, impl, shape):
        self.run()


class PoolForwardBackward(_Pool):
    grad = True

    def time_forward_backward(self, impl, shape):
        self.run()


class PoolPeakMemory(_Pool):
    """Peak resident memory of forward + backward on the large pooling shapes (process peak)."""
    params = [list(POOL_IMPLS), grid("peak_pool")]
    grad = True

    def peakmem_forward_backward(self, impl, shape):
        self.run()
