"""Winograd suites: each kernel with each tile size forced, beside the kernel the automatic choice runs, and
forward / forward + backward through the autograd API beside PyTorch, on stride-1 3x3 layers.

The shapes (``SHAPES``) are also those of ``bench/winograd.py``, which prints the same comparison side by
side in one process.
"""
from fastconv.bench import common
from fastconv.bench.common import Conv

common.preload()

SHAPES = {s.name: s for s in (
    common.SHAPES["vgg_3x3"],
    Conv("vgg_3x3_b1", (1, 64, 56, 56), (64, 64, 3, 3), padding=1),
    Conv("c256_28_b1", (1, 256, 28, 28), (256, 256, 3, 3), padding=1),
    Conv("c256_28_b8", (8, 256, 28, 28), (256, 256, 3, 3), padding=1),
    Conv("c512_14_b1", (1, 512, 14, 14), (512, 512, 3, 3), padding=1),
    Conv("c512_14_b8", (8, 512, 14, 14), (512, 512, 3, 3), padding=1),
    common.SHAPES["dilated"],
)}
TINY = {s.name: s for s in (common.SHAPES["tiny_3x3"],
                            Conv("tiny_dilated", (2, 5, 9, 11), (6, 5, 3, 3), padding=2, dilation=2))}
GRID = list(TINY if common.SMOKE else SHAPES)
TILES = ("4", "2", "auto")  # "auto": the kernel fastconv's automatic choice runs, for comparison


def shape(name):
    return {**SHAPES, **TINY}[name]


def warm_kernel(tile, kernel, name):
    """One kernel of ``name`` with ``tile`` forced (or the automatic choice's kernel), run once, or a skip."""
    def build():
        common.skip_unless_runnable("winograd")
        import numpy as np

        from fastconv.backends import plan, registry
        conv = shape(name)
        spec = conv.spec()
        x, w, b, gy = common.inputs(conv)
        args = {"conv2d": (x, w, b), "conv2d_grad_input": (gy, w), "conv2d_grad_weight": (gy, x)}[kernel]
        if tile == "auto":
            fn, kw = plan.plan(kernel, spec, np.float32), {}
        else:
            fn, kw = getattr(registry.load("winograd"), kernel), {"tile": int(tile)}

        def run():
            return fn(*args, spec, **kw)
        run()
        return run
    return common.warm(("winograd", tile, kernel, name), build)


class WinogradKernels:
    """Forward, input gradient and weight gradient, each tile size forced: what a planner weighs."""
    params = [list(TILES), list(common.CONV_KERNELS), GRID]
    param_names = ["tile", "kernel", "shape"]
    timeout = 180

    def setup(self, tile, kernel, name):
        self.run = warm_kernel(tile, kernel, name)

    def time_kernel(self, tile, kernel, name):
        self.run()


class _Winograd:
    params = [[common.TORCH, "winograd", "auto"], GRID]
    param_names = ["impl", "shape"]
    grad = False
    timeout = 180

    def setup(self, impl, name):
        self.run = common.warm_runner(impl, shape(name), self.grad)


class WinogradForward(_Winograd):
    def time_forward(self, impl, name):
        self.run()


class WinogradForwardBackward(_Winograd):
    grad = True

    def time_forward_backward(self, impl, name):
        self.run()
