"""GPU suites: fastconv's CUDA backend against PyTorch on the GPU (conv, pooling, a training step).

Every benchmark raises NotImplementedError (asv: skipped) where no CUDA GPU is usable; Numba's CUDA
simulator counts as none (it measures Python, not a GPU). Nothing touches CUDA at import: a CUDA context
made in asv's forkserver would not survive the fork.
"""
import glob
import os

from . import common
from .common import SHAPES, TORCH, TRAIN_TASKS, grid

common.preload()

GPU_IMPLS = ("cuda", TORCH)  # fastconv backend "cuda"; PyTorch on the GPU


def _no_gpu_device():
    """True when the machine has no NVIDIA device node at all: then skip before importing numba.cuda or
    initialising torch.cuda (seconds per benchmark, and every GPU benchmark is skipped anyway)."""
    return not (glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/dxg")) and os.name == "posix"


def skip_without_gpu(impl):
    if _no_gpu_device():
        raise NotImplementedError("no NVIDIA GPU device on this machine")
    if impl == TORCH:
        if not common.has_torch():
            raise NotImplementedError("PyTorch is not installed")
        import torch
        if not torch.cuda.is_available():
            raise NotImplementedError("PyTorch sees no CUDA GPU")
        return
    import fastconv
    if not fastconv.cuda.is_available() or fastconv.cuda.is_simulator():
        raise NotImplementedError("no CUDA GPU for fastconv (numba.cuda), or only the simulator")


class _Gpu:
    param_names = ["impl", "shape"]
    grad = False
    timeout = 180

    def setup(self, impl, shape):
        key = ("gpu", impl, shape, self.grad)
        if key not in common._warm:
            skip_without_gpu(impl)
            run = common.runner(impl, SHAPES[shape], self.grad, device="cuda")
            run()  # compiles the kernels
            common._warm[key] = run
        self.run = common._warm[key]


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
        key = ("gputrain", impl, task)
        if key not in common._warm:
            skip_without_gpu(impl)
            trainer = common.Trainer(task, "cuda" if impl == "cuda" else TORCH, device="cuda")
            batch = common.synthetic_batch(task)
            trainer.step(*batch)
            common._warm[key] = trainer, batch
        self.trainer, self.batch = common._warm[key]

    def time_train_step(self, impl, task):
        self.trainer.step(*self.batch)
