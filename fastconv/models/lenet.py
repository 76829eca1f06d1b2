"""LeNet-5 (LeCun et al., 1998) for 32x32 inputs (MNIST's 28x28 zero-padded by 2).

C1 6@5x5 -> S2 pool 2 -> C3 16@5x5 -> S4 pool 2 -> C5 120@5x5 (1x1 output) -> F6 84 -> 10 outputs.
``variant="modern"``: ReLU and max pooling; ``"classic"``: tanh and average pooling (the paper's
trainable subsampling and RBF output layer are replaced by their usual simplifications). 61,706 parameters.
"""
from .. import nn


class LeNet5(nn.Module):
    def __init__(self, variant="modern", num_classes=10, backend="auto"):
        if variant not in ("modern", "classic"):
            raise ValueError(f"variant must be 'modern' or 'classic', got {variant!r}")
        self.variant = variant
        act = nn.ReLU if variant == "modern" else nn.Tanh
        pool = (lambda: nn.MaxPool2d(2, backend=backend)) if variant == "modern" \
            else (lambda: nn.AvgPool2d(2, backend=backend))
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 5, backend=backend), act(), pool(),      # C1, S2: 32 -> 28 -> 14
            nn.Conv2d(6, 16, 5, backend=backend), act(), pool(),     # C3, S4: 14 -> 10 -> 5
            nn.Conv2d(16, 120, 5, backend=backend), act(), nn.Flatten())  # C5: 5 -> 1
        self.classifier = nn.Sequential(nn.Linear(120, 84), act(), nn.Linear(84, num_classes))

    def forward(self, x):
        if x.shape[-2:] != (32, 32):
            raise ValueError(f"LeNet5 takes (N, 1, 32, 32) input (pad 28x28 by 2), got shape {tuple(x.shape)}")
        return self.classifier(self.features(x))
