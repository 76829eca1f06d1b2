"""Convolution suites: forward, forward + backward, peak memory and GFLOP/s, per implementation x shape.

Implementations are ``torch`` (PyTorch CPU, the peer) and fastconv's ``auto`` and CPU backends; those that
cannot run here are skipped. Shapes come from ``common`` (the table ``bench/compare.py`` uses too).
"""
from fastconv.bench import common
from fastconv.bench.common import IMPLS, SHAPES, grid

common.preload()


class _Conv:
    params = [list(IMPLS), grid("conv2d")]
    param_names = ["impl", "shape"]
    grad = False
    timeout = 180

    def setup(self, impl, shape):
        self.run = common.warm_runner(impl, SHAPES[shape], self.grad)


class Conv2dForward(_Conv):
    def time_forward(self, impl, shape):
        self.run()


class Conv2dForwardBackward(_Conv):
    grad = True

    def time_forward_backward(self, impl, shape):
        self.run()


class Conv1dForward(_Conv):
    params = [list(IMPLS), grid("conv1d")]

    def time_forward(self, impl, shape):
        self.run()


class Conv1dForwardBackward(_Conv):
    params = Conv1dForward.params
    grad = True

    def time_forward_backward(self, impl, shape):
        self.run()


class Conv2dPeakMemory(_Conv):
    """Peak resident memory of forward + backward on the large shapes (the process's peak: interpreter,
    libraries and inputs included, so compare implementations, not absolute values)."""
    params = [list(IMPLS), grid("peak_conv")]
    grad = True

    def peakmem_forward_backward(self, impl, shape):
        self.run()


class Conv2dGflops(_Conv):
    """Forward GFLOP/s (best of 3) on the GEMM-bound shapes: a number to hold against the GEMM rate."""
    params = [list(IMPLS), grid("gemm")]
    unit = "GFLOP/s"

    def track_forward_gflops(self, impl, shape):
        return common.gflops_of(self.run, SHAPES[shape].flops(False))


class Conv2dAlgorithms:
    """Each algorithm of the Cython and Numba backends forced on each conv2d shape, per kernel (forward,
    input gradient, weight gradient): the measurements behind their ``conv_algorithm`` rules."""
    params = [["cython", "numba"], ["direct", "gemm", "blocked", "per_task"], list(common.CONV_KERNELS),
              grid("conv2d")]
    param_names = ["backend", "algorithm", "kernel", "shape"]
    timeout = 180

    def setup(self, backend, algorithm, kernel, shape):
        self.run = common.warm_kernel(backend, algorithm, kernel, SHAPES[shape])

    def time_kernel(self, backend, algorithm, kernel, shape):
        self.run()


class Conv2dBlockedGflops:
    """GFLOP/s (best of 3) of Cython's register-blocked kernel per pass (forward, input gradient, weight
    gradient), on the 3x3 layers of the plain-loop-nest experiment at batch 1 and the GEMM-bound shapes: the
    numbers to hold against the GEMM rate and the plain nest. The weights stay the same from call to call
    (their packed copy is reused, as in inference)."""
    params = [list(common.CONV_KERNELS), grid("blocked")]
    param_names = ["kernel", "shape"]
    unit = "GFLOP/s"
    timeout = 180

    def setup(self, kernel, shape):
        self.run = common.warm_kernel("cython", "blocked", kernel, SHAPES[shape])

    def track_gflops(self, kernel, shape):
        return common.gflops_of(self.run, SHAPES[shape].flops(False))
