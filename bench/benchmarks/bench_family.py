"""The convolution family: locally-connected and tiled layers (forward, forward + backward, peak memory)
against PyTorch's unfold workarounds (``family``), and building convolution matrices (``fc.conv_matrix``)."""
from fastconv.bench import common

from . import family
from .family import IMPLS, LAYERS

common.preload()


class _Family:
    params = [list(IMPLS), family.grid()]
    param_names = ["impl", "layer"]
    grad = False
    timeout = 300

    def setup(self, impl, layer):
        self.run = family.warm_runner(impl, LAYERS[layer], self.grad)


class FamilyForward(_Family):
    def time_forward(self, impl, layer):
        self.run()


class FamilyForwardBackward(_Family):
    grad = True

    def time_forward_backward(self, impl, layer):
        self.run()


class FamilyPeakMemory(_Family):
    """Peak resident memory of forward + backward (the process's peak: compare implementations)."""
    grad = True

    def peakmem_forward_backward(self, impl, layer):
        self.run()


class ConvMatrix:
    """Building the CSR matrix of a 3x3 convolution (``fc.conv_matrix``), input ``(C, S, S)``, C -> C
    channels, padding 1; ``track_`` gives the nonzeros written per second."""
    params = [[(8, 64), (16, 128), (8, 256)] if not common.SMOKE else [(2, 8)]]
    param_names = ["channels_size"]
    timeout = 300

    def setup(self, channels_size):
        import numpy as np

        import fastconv as fc
        common.set_threads(common.BENCH_THREADS)
        c, s = channels_size
        self.weight = np.random.default_rng(0).standard_normal((c, c, 3, 3)).astype(np.float32)
        self.build = lambda: fc.conv_matrix(self.weight, (c, s, s), padding=1)  # noqa: E731
        self.build()  # compiled

    def time_build(self, channels_size):
        self.build()

    def track_nonzeros_per_second(self, channels_size):
        import time
        start = time.perf_counter()
        nnz = self.build().nnz
        return nnz / (time.perf_counter() - start)
    track_nonzeros_per_second.unit = "nonzeros/s"
