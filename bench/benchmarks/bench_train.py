"""One training step (forward, cross-entropy, backward, Adam) of LeNet-5 and the MNIST-1D paper's CNN.

Models come from ``fastconv.models``; the ``torch`` rows run their PyTorch twins from the same weights.
Batches are random (batch 128 of 1x32x32 for LeNet-5, 100 of 1x40 for MNIST-1D): the step's cost does
not depend on the data.
"""
from fastconv.bench import common
from fastconv.bench.common import TRAIN_IMPLS, TRAIN_TASKS

common.preload()


class TrainStep:
    params = [list(TRAIN_IMPLS), list(TRAIN_TASKS)]
    param_names = ["impl", "task"]
    timeout = 180

    def setup(self, impl, task):
        self.trainer, self.batch = common.warm_trainer(task, impl)

    def time_train_step(self, impl, task):
        self.trainer.step(*self.batch)
