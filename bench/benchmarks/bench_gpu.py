"""GPU suites: fastconv's CUDA backend against PyTorch on the GPU (conv, pooling, a training step), and the
kernel launches of a fastconv training step.

Every benchmark raises NotImplementedError (asv: skipped) where no CUDA GPU is usable
(``common.skip_unless_gpu``). Nothing touches CUDA at import: a CUDA context made in asv's forkserver
would not survive the fork.
"""
from . import common
from .common import SHAPES, TORCH, TRAIN_TASKS, grid

common.preload()

GPU_IMPLS = ("cuda", TORCH)  # fastconv backend "cuda"; PyTorch on the GPU


class _Gpu:
    param_names = ["impl", "shape"]
    grad = False
    timeout = 180

    def setup(self, impl, shape):
        self.run = common.warm_runner(impl, SHAPES[shape], self.grad, device="cuda")


class GpuConv2dForward(_Gpu):
    params = [list(GPU_IMPLS), grid("conv2d")]

    def time_forward(self, impl, shape):
        self.run()


class GpuConv2dForwardBackward(_Gpu):
    params = GpuConv2dForward.params
    grad = True

    def time_forward_backward(self, impl, shape):
        self.run()


class GpuPoolForwardBackward(_Gpu):
    params = [list(GPU_IMPLS), grid("pool")]
    grad = True

    def time_forward_backward(self, impl, shape):
        self.run()


class GpuTrainStep:
    params = [list(GPU_IMPLS), list(TRAIN_TASKS)]
    param_names = ["impl", "task"]
    timeout = 180

    def setup(self, impl, task):
        self.trainer, self.batch = common.warm_trainer(task, "cuda" if impl == "cuda" else TORCH, "cuda")

    def time_train_step(self, impl, task):
        self.trainer.step(*self.batch)


class GpuTrainLaunches:
    """Kernel launches per fastconv training step (counted without running them) and the host time per
    launch of a real step: small nets are bound by launches on a GPU."""
    params = [list(TRAIN_TASKS)]
    param_names = ["task"]
    timeout = 180

    def setup(self, task):
        self.trainer, self.batch = common.warm_trainer(task, "cuda", "cuda")

    def track_launches_per_step(self, task):
        import fastconv
        with fastconv.cuda.profile(count_only=True) as prof:
            self.trainer.step(*self.batch)
        return len(prof)

    track_launches_per_step.unit = "launches"

    def track_host_us_per_launch(self, task):
        import fastconv
        with fastconv.cuda.profile() as prof:
            self.trainer.step(*self.batch)
        return sum(launch.host_us for launch in prof.launches) / max(1, len(prof))

    track_host_us_per_launch.unit = "us"
