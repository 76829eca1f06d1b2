"""Volume suites (3-D convolution, transposed convolution and max pooling): forward and forward + backward,
per implementation x shape (``common.CONV3D``, ``common.POOL3D``)."""
from fastconv.bench import common
from fastconv.bench.common import IMPLS, POOL_IMPLS, SHAPES, grid

common.preload()


class _Volume:
    params = [list(IMPLS), grid("volumes")]
    param_names = ["impl", "shape"]
    grad = False
    timeout = 600

    def setup(self, impl, shape):
        self.run = common.warm_runner(impl, SHAPES[shape], self.grad)


class Conv3dForward(_Volume):
    def time_forward(self, impl, shape):
        self.run()


class Conv3dForwardBackward(_Volume):
    grad = True

    def time_forward_backward(self, impl, shape):
        self.run()


class Pool3dForward(_Volume):
    params = [list(POOL_IMPLS), grid("pool3d")]

    def time_forward(self, impl, shape):
        self.run()


class Pool3dForwardBackward(_Volume):
    params = Pool3dForward.params
    grad = True

    def time_forward_backward(self, impl, shape):
        self.run()
