"""PyTorch twins of fastconv's models, written as a PyTorch user would (for interchange tests)."""
try:
    import torch
    from torch import nn
except ImportError:  # the tests that use these skip without PyTorch
    torch = nn = None


class TorchLeNet5(nn.Module if nn else object):
    """The idiomatic LeNet-5 with fastconv.models.LeNet5's layout (``features``, ``classifier``)."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 120, 5), nn.ReLU(), nn.Flatten())
        self.classifier = nn.Sequential(nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


class TorchEveryLayer2d(nn.Module if nn else object):
    """Every 2-D layer kind that fastconv imports, in one small net for (N, 2, 12, 12) input."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, stride=1, padding=1, dilation=1)
        self.conv_grouped = nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=2, bias=False)
        self.pool = nn.MaxPool2d(2, stride=2)
        self.up = nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1)
        self.avg = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
        self.lp = nn.LPPool2d(2, 2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(3 * 6 * 6, 5)
        self.drop = nn.Dropout(0.3)

    def forward(self, x):
        x = torch.tanh(self.conv(x))
        x = torch.sigmoid(self.conv_grouped(x)) * 2.0 - 1.0
        x = self.pool(torch.relu(x))
        x = self.up(x)                                                   # 6 -> 12
        x = self.avg(x) + x
        small = self.lp(x)                                               # 12 -> 6
        big = nn.functional.interpolate(small, scale_factor=2, mode="nearest")
        x = nn.functional.interpolate(big, size=(6, 6), mode="bilinear", align_corners=False)
        x = x - self.gap(x)                                              # broadcast (N, C, 1, 1)
        return torch.log_softmax(self.fc(self.drop(torch.flatten(x, 1))), dim=1)


class TorchEveryLayer1d(nn.Module if nn else object):
    """The 1-D layers for (N, 1, 40) input: convolutions, transposed convolution, pools, interpolation."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 8, 5, stride=2, padding=1)
        self.pool = nn.MaxPool1d(3, stride=2, padding=1)
        self.up = nn.ConvTranspose1d(8, 4, 4, stride=2, padding=1)
        self.avg = nn.AvgPool1d(2)
        self.gap = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(4 * 10, 10)

    def forward(self, x):
        x = self.pool(torch.relu(self.conv(x)))                           # 40 -> 19 -> 10
        x = self.avg(self.up(x))                                         # 10 -> 20 -> 10
        x = nn.functional.interpolate(x, scale_factor=2, mode="linear")  # 10 -> 20
        x = nn.functional.avg_pool1d(x, 2) + self.gap(x)                 # 20 -> 10
        return torch.softmax(self.fc(x.reshape(x.shape[0], -1)), dim=-1)
