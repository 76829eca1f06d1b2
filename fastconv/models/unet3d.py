"""A tiny 3-D U-Net (Çiçek et al., 2016) for per-voxel classification of volumes.

One level down and back up: two 3x3x3 convolutions at full resolution, 2x2x2 max pooling, two 3x3x3
convolutions with twice the channels, a 2x2x2 stride-2 transposed convolution back up, the skip from the
encoder *added* (fastconv has no concatenation op; a sum keeps the channel count), one more 3x3x3
convolution and a 1x1x1 convolution to ``num_classes`` logits per voxel. Input ``(N, C, D, H, W)`` with even
``D, H, W``; output ``(N, num_classes, D, H, W)``. 15,146 parameters with the defaults.
"""
from .. import nn


class UNet3d(nn.Module):
    def __init__(self, in_channels=1, num_classes=2, width=8, backend="auto"):
        def conv(c_in, c_out):
            return nn.Conv3d(c_in, c_out, 3, padding=1, backend=backend)
        self.encoder = nn.Sequential(conv(in_channels, width), nn.ReLU(), conv(width, width), nn.ReLU())
        self.down = nn.MaxPool3d(2, backend=backend)
        self.bottom = nn.Sequential(conv(width, 2 * width), nn.ReLU(), conv(2 * width, 2 * width), nn.ReLU())
        self.up = nn.ConvTranspose3d(2 * width, width, 2, stride=2, backend=backend)
        self.decoder = nn.Sequential(conv(width, width), nn.ReLU())
        self.head = nn.Conv3d(width, num_classes, 1, backend=backend)

    def forward(self, x):
        if x.ndim != 5 or any(size % 2 for size in x.shape[2:]):
            raise ValueError(f"UNet3d takes (N, C, D, H, W) input with even D, H and W, got shape {tuple(x.shape)}")
        skip = self.encoder(x)
        up = self.up(self.bottom(self.down(skip)))
        return self.head(self.decoder(up + skip))
