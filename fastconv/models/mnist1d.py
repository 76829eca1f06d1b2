"""Convolutional nets for MNIST-1D (signals of length 40).

- ``MNIST1DConvNet("paper")``: the MNIST-1D paper's CNN (Greydanus, 2020): Conv1d(1, 25, 5, stride 2,
  padding 1) -> 19, Conv1d(25, 25, 3, 2, 1) -> 10, Conv1d(25, 25, 3, 2, 1) -> 5, ReLU after each,
  flatten 25*5 = 125, Linear(125, 10). 5,210 parameters.
- ``MNIST1DConvNet("book")``: the CNN of *Understanding Deep Learning* (Prince, 2023, notebook 10.2):
  three Conv1d with 15 channels, kernel 3, stride 2, no padding (40 -> 19 -> 9 -> 4), ReLU, Linear(60, 10).
  2,050 parameters.
- ``MNIST1DWideNet``: a wider all-convolutional net (88,010 parameters): two convolutions with 64
  channels at full length, max pooling, two with 128 channels, then global average pooling (the mean over
  positions, insensitive to where a digit's pattern sits) feeds Linear(128, 10). ~98% on the test set
  (AdamW 3e-3, weight decay 0.1, cosine decay, 100 epochs).
"""
from .. import nn


class MNIST1DConvNet(nn.Module):
    def __init__(self, variant="paper", num_classes=10, length=40, backend="auto"):
        if variant not in ("paper", "book"):
            raise ValueError(f"variant must be 'paper' or 'book', got {variant!r}")
        self.variant = variant
        if variant == "paper":
            c, convs = 25, [(1, 5, 1), (25, 3, 1), (25, 3, 1)]  # (in_channels, kernel, padding), stride 2
        else:
            c, convs = 15, [(1, 3, 0), (15, 3, 0), (15, 3, 0)]
        layers = []
        for c_in, k, p in convs:
            layers += [nn.Conv1d(c_in, c, k, stride=2, padding=p, backend=backend), nn.ReLU()]
            length = (length + 2 * p - k) // 2 + 1
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.classifier = nn.Linear(c * length, num_classes)

    def forward(self, x):
        if x.ndim == 2:  # (N, L) signals: add the channel axis
            x = x.reshape(x.shape[0], 1, x.shape[1])
        return self.classifier(self.features(x))


class MNIST1DWideNet(nn.Module):
    def __init__(self, num_classes=10, widths=(64, 128), backend="auto"):
        a, b = widths
        self.features = nn.Sequential(
            nn.Conv1d(1, a, 5, padding=2, backend=backend), nn.ReLU(),
            nn.Conv1d(a, a, 3, padding=1, backend=backend), nn.ReLU(),
            nn.MaxPool1d(2, backend=backend),
            nn.Conv1d(a, b, 3, padding=1, backend=backend), nn.ReLU(),
            nn.Conv1d(b, b, 3, padding=1, backend=backend), nn.ReLU(),
            nn.AdaptiveAvgPool1d(1), nn.Flatten())
        self.classifier = nn.Linear(b, num_classes)

    def forward(self, x):
        if x.ndim == 2:
            x = x.reshape(x.shape[0], 1, x.shape[1])
        return self.classifier(self.features(x))
