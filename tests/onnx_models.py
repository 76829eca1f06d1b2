"""fastconv nets that use every exportable layer and op, for the ONNX tests."""
import fastconv.functional as F
from fastconv import nn


class EveryLayer2d(nn.Module):
    """Every 2-D op: convolutions (same padding, dilation, groups), transposed convolution, max pooling with
    indices and unpooling, average/L2/adaptive pooling, interpolation, linear, activations, dropout,
    flatten, softmax, and Tensor arithmetic. Input (N, 2, 12, 12)."""

    def __init__(self):
        self.conv = nn.Conv2d(2, 4, 3, padding="same")
        self.dilated = nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=2, bias=False)
        self.strided = nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 0))   # 12x12 -> 6x11
        self.pool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)        # 6x11 -> 4x6
        self.up = nn.ConvTranspose2d(6, 4, 3, stride=2, padding=1, output_padding=1)  # 3x6 -> 6x12
        self.avg = nn.AvgPool2d(2, ceil_mode=True, count_include_pad=False)
        self.adaptive = nn.AdaptiveAvgPool2d((4, 5))
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * 4 * 5, 8)
        self.drop = nn.Dropout(0.5)
        self.out = nn.Linear(8, 5)

    def forward(self, x):
        x = F.tanh(self.conv(x))
        x = F.sigmoid(self.dilated(x)) * 2.0 - x
        x = F.relu(self.strided(x))
        pooled, indices = F.max_pool2d(x, 2, return_indices=True)          # 6x11 -> 3x5
        x = F.max_unpool2d(pooled, indices, 2, output_size=x.shape[2:]) + x  # back to 6x11
        x = self.up(self.pool(x))                                          # 3x6 -> 8x12
        x = F.lp_pool2d(x, 2, 2) + self.avg(x)                             # 4x6
        x = F.interpolate(x, scale_factor=2, mode="nearest")               # 8x12
        x = F.interpolate(x, size=(5, 7), mode="bilinear", align_corners=False)
        x = F.interpolate(x, size=(6, 9), mode="bilinear", align_corners=True)
        x = self.adaptive(x) - self.gap(x)                                 # 6x9 -> 4x5: uneven windows
        x = self.drop(F.relu(self.fc(x.flatten(1))))
        return F.log_softmax(self.out(x), dim=1)


class EveryLayer1d(nn.Module):
    """The 1-D ops on (N, 40) signals: reshape, convolutions, transposed convolution, pools, unpooling,
    interpolation, softmax."""

    def __init__(self):
        self.conv = nn.Conv1d(1, 6, 5, stride=2, padding=1)                  # 40 -> 19
        self.same = nn.Conv1d(6, 6, 4, padding="same", dilation=2)
        self.pool = nn.MaxPool1d(3, stride=2, padding=1)                   # 19 -> 10
        self.up = nn.ConvTranspose1d(6, 4, 4, stride=2, padding=1)         # 10 -> 20
        self.avg = nn.AvgPool1d(3, stride=2, ceil_mode=True)               # 20 -> 10
        self.adaptive = nn.AdaptiveAvgPool1d(3)
        self.fc = nn.Linear(4 * 3, 10)

    def forward(self, x):
        x = x.reshape(x.shape[0], 1, x.shape[1])
        x = F.relu(self.same(F.relu(self.conv(x))))
        pooled, indices = F.max_pool1d(x, 2, return_indices=True)          # 19 -> 9
        x = F.max_unpool1d(pooled, indices, 2, output_size=(19,)) + x
        x = self.avg(self.up(self.pool(x)))
        x = F.lp_pool1d(F.relu(x), 3, 2, ceil_mode=True) + F.interpolate(x, size=5, mode="linear")
        x = F.interpolate(x, scale_factor=1.6, mode="nearest")             # 5 -> 8
        x = self.adaptive(x).flatten(1)
        return F.softmax(self.fc(x), dim=-1)


class EveryLayer3d(nn.Module):
    """The 3-D ops on (N, 2, 6, 8, 8) volumes: convolutions (padding per axis, dilation, groups), max
    pooling with indices and unpooling, average/L2/adaptive pooling, transposed convolution, trilinear
    interpolation."""

    def __init__(self):
        self.conv = nn.Conv3d(2, 4, 3, padding=(1, 1, 0))                        # 6x8x8 -> 6x8x6
        self.grouped = nn.Conv3d(4, 4, (2, 3, 3), padding=2, dilation=(1, 2, 2), groups=2)  # -> 9x8x6
        self.up = nn.ConvTranspose3d(4, 3, 2, stride=2)
        self.gap = nn.AdaptiveAvgPool3d(1)

    def forward(self, x):
        x = F.relu(self.grouped(F.tanh(self.conv(x))))
        pooled, indices = F.max_pool3d(x, 2, return_indices=True)                   # 9x8x6 -> 4x4x3
        x = F.max_unpool3d(pooled, indices, 2, output_size=x.shape[2:]) + x
        x = F.avg_pool3d(x, 2, stride=(1, 2, 2)) + F.lp_pool3d(x, 2, 2, stride=(1, 2, 2))  # -> 8x4x3
        x = F.interpolate(self.up(x), scale_factor=0.5, mode="trilinear")              # -> 8x4x3
        return x - self.gap(x)
