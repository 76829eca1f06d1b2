"""3-D ops: float64 gradients against finite differences, properties, and the 3-D U-Net trained side by
side with PyTorch.

Properties: a convolution commutes with shifts along depth (translation equivariance, on every CPU plan),
``conv_transpose3d`` is the adjoint of ``conv3d`` (``<conv3d(x), y> == <x, conv_transpose3d(y)>``), a 3-D op
on a unit depth is its 2-D op, and pooling a depth-constant volume pools each plane.
"""
import numpy as np
import pytest

import fastconv as fc
import fastconv.functional as F
from fastconv import models

import cases
from helpers import torch
from test_gradcheck import _distinct, _normal, gradcheck

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch (the oracle) is not installed")


# ----------------------------------------------------------------------------- finite differences
CONV = [  # (x shape, C_out, kernel, stride, padding, dilation, groups, bias)
    ((1, 2, 4, 3, 4), 2, (2, 2, 3), (2, 1, 1), (1, 0, 1), (1, 1, 1), 1, True),  # stride does not divide
    ((1, 2, 5, 3, 3), 2, (2, 1, 2), 1, "same", (2, 1, 1), 2, False),            # 'same', dilated depth, groups
]


@pytest.mark.parametrize("backend", ["numpy", "auto"])
@pytest.mark.parametrize("xs, c_out, k, s, p, d, g, bias", CONV)
def test_conv3d_gradcheck(backend, xs, c_out, k, s, p, d, g, bias):
    arrays = [_normal(*xs), _normal(c_out, xs[1] // g, *k, seed=1)] + ([_normal(c_out, seed=2)] if bias else [])
    gradcheck(lambda x, w, *b: F.conv3d(x, w, *b, stride=s, padding=p, dilation=d, groups=g, backend=backend),
              arrays, f"conv3d {backend} k={k} s={s} p={p} d={d} g={g}")


@pytest.mark.parametrize("backend", ["numpy", "auto"])
def test_conv_transpose3d_gradcheck(backend):
    arrays = [_normal(1, 2, 2, 3, 2), _normal(2, 1, 2, 2, 3, seed=1), _normal(2, seed=2)]
    gradcheck(lambda x, w, b: F.conv_transpose3d(x, w, b, stride=(2, 1, 2), padding=(0, 1, 1),
                                                 output_padding=(1, 0, 0), groups=2, backend=backend),
              arrays, f"conv_transpose3d {backend}")


@pytest.mark.parametrize("backend", ["numpy", "auto"])
@pytest.mark.parametrize("op, kwargs", [
    ("max_pool3d", dict(kernel_size=(2, 2, 3), stride=(1, 2, 2), padding=(1, 0, 1), dilation=(2, 1, 1),
                        ceil_mode=True)),
    ("avg_pool3d", dict(kernel_size=(3, 2, 2), stride=(2, 1, 2), padding=(1, 1, 0), ceil_mode=True,
                        count_include_pad=False)),
])
def test_pool3d_gradcheck(backend, op, kwargs):
    gradcheck(lambda x: getattr(F, op)(x, backend=backend, **kwargs), [_distinct(1, 2, 5, 4, 5)], f"{op} {backend}")


@pytest.mark.parametrize("fn, shape", [
    (lambda x: F.adaptive_avg_pool3d(x, (2, 3, 2)), (1, 2, 3, 4, 4)),
    (lambda x: F.interpolate(x, scale_factor=(1.5, 2, 0.5), mode="trilinear"), (1, 2, 3, 4, 4)),
    (lambda x: F.max_unpool3d(x, np.arange(8).reshape(1, 1, 2, 2, 2) * 5, 2), (1, 1, 2, 2, 2)),
], ids=["adaptive", "trilinear", "unpool"])
def test_resampling_gradcheck(fn, shape):
    gradcheck(fn, [_normal(*shape)], "resampling")


# ------------------------------------------------------------------------------------ properties
@pytest.mark.parametrize("name", cases.cpu_plans())
def test_conv3d_commutes_with_depth_shifts(name):
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 8, 9, 6, 6)).astype(np.float32), rng.standard_normal((8, 8, 3, 3, 3)).astype(np.float32)
    shifted = np.zeros_like(x)
    shifted[:, :, 2:] = x[:, :, :-2]
    y = cases.runs_here(name, lambda: F.conv3d(x, w, padding=1, backend=name))
    if y is None:
        pytest.skip(f"{name} does not run this case")
    y_shifted = F.conv3d(shifted, w, padding=1, backend=name).numpy()
    # away from the ends (where the shift brought in zeros), the output shifted by the same amount
    np.testing.assert_allclose(y_shifted[:, :, 3:-1], y.numpy()[:, :, 1:-3], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["numpy", "auto"])
def test_conv_transpose3d_is_the_adjoint_of_conv3d(name):
    rng = np.random.default_rng(1)
    kwargs = dict(stride=(2, 1, 3), padding=(1, 0, 1), dilation=(1, 2, 1), groups=2)
    x, w = rng.standard_normal((2, 4, 7, 6, 8)), rng.standard_normal((6, 2, 3, 2, 3))
    y = F.conv3d(x, w, backend=name, **kwargs).numpy()
    r = rng.standard_normal(y.shape)
    back = F.conv_transpose3d(r, w, backend=name, output_padding=(0, 0, 1), **kwargs).numpy()
    assert back.shape == x.shape
    assert np.sum(y * r) == pytest.approx(np.sum(x * back), rel=1e-12)


def test_unit_depth_is_the_2d_op():
    rng = np.random.default_rng(2)
    x, w = rng.standard_normal((2, 3, 1, 7, 6)), rng.standard_normal((4, 3, 1, 3, 2))
    y3 = F.conv3d(x, w, stride=(1, 2, 1), padding=(0, 1, 1))
    y2 = F.conv2d(x[:, :, 0], w[:, :, 0], stride=(2, 1), padding=1)
    np.testing.assert_allclose(y3.numpy()[:, :, 0], y2.numpy(), rtol=1e-12)
    y3, i3 = F.max_pool3d(x, (1, 3, 2), (1, 2, 2), (0, 1, 1), return_indices=True)
    y2, i2 = F.max_pool2d(x[:, :, 0], (3, 2), 2, 1, return_indices=True)
    np.testing.assert_array_equal(y3.numpy()[:, :, 0], y2.numpy())
    np.testing.assert_array_equal(i3.numpy()[:, :, 0], i2.numpy())


def test_pooling_a_depth_constant_volume_pools_each_plane():
    plane = np.random.default_rng(3).standard_normal((2, 3, 1, 6, 7))
    x = np.repeat(plane, 4, axis=2)
    y = F.avg_pool3d(x, (2, 3, 3), (2, 2, 2), (1, 1, 1)).numpy()
    y2 = F.avg_pool2d(plane[:, :, 0], 3, 2, 1).numpy()
    # the depth windows' padding counts (count_include_pad): the first and last hold half real depth
    np.testing.assert_allclose(y, y2[:, :, None] * np.array([0.5, 1.0, 0.5])[:, None, None], rtol=1e-12)


# ----------------------------------------------------------------------------------- the model
def test_unet3d_shapes_and_bad_input():
    model = models.UNet3d(in_channels=2, num_classes=3, width=4)
    assert model(np.zeros((1, 2, 4, 6, 8), np.float32)).shape == (1, 3, 4, 6, 8)
    assert models.UNet3d().num_parameters() == 15146
    with pytest.raises(ValueError, match="even D, H and W"):
        model(np.zeros((1, 2, 4, 5, 8), np.float32))
    rows = fc.summary(models.UNet3d(), (1, 1, 8, 8, 8), file=None).rows
    assert rows[0].macs == 8 * 27 * 8 ** 3 and rows[0].receptive_field == (3, 3, 3)  # 1 -> 8 channels, 3x3x3
    assert rows[4].op == "max_pool3d" and rows[4].receptive_field == (6, 6, 6) and rows[4].jump == (2, 2, 2)


class _TorchUNet3d(torch.nn.Module if torch else object):
    """``models.UNet3d`` as a PyTorch user writes it."""

    def __init__(self, width=8):
        super().__init__()
        nn = torch.nn
        self.encoder = nn.Sequential(nn.Conv3d(1, width, 3, padding=1), nn.ReLU(),
                                     nn.Conv3d(width, width, 3, padding=1), nn.ReLU())
        self.down = nn.MaxPool3d(2)
        self.bottom = nn.Sequential(nn.Conv3d(width, 2 * width, 3, padding=1), nn.ReLU(),
                                    nn.Conv3d(2 * width, 2 * width, 3, padding=1), nn.ReLU())
        self.up = nn.ConvTranspose3d(2 * width, width, 2, stride=2)
        self.decoder = nn.Sequential(nn.Conv3d(width, width, 3, padding=1), nn.ReLU())
        self.head = nn.Conv3d(width, 2, 1)

    def forward(self, x):
        skip = self.encoder(x)
        return self.head(self.decoder(self.up(self.bottom(self.down(skip))) + skip))


def _voxel_loss(logits, labels):
    """Cross-entropy over every voxel: logits (N, K, D, H, W) as (N*D*H*W, K) rows (PyTorch's
    ``cross_entropy`` takes the volumes as they are)."""
    k = logits.shape[1]
    return F.cross_entropy(logits.transpose(0, 2, 3, 4, 1).reshape(-1, k), labels.reshape(-1))


@needs_torch
def test_unet3d_trains_like_torch():
    """Five Adam steps on synthetic volumes (a bright ball to segment in noise), the same weights in
    both: the losses agree step by step."""
    fc.manual_seed(0)
    model, theirs = models.UNet3d(width=4), _TorchUNet3d(width=4)
    state = model.state_dict()
    assert list(state) == list(theirs.state_dict())
    theirs.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in state.items()})
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.arange(8)] * 3, indexing="ij"))
    centres = rng.uniform(2, 6, (2, 3))
    labels = np.stack([(((grid - c[:, None, None, None]) ** 2).sum(0) < 5) for c in centres]).astype(np.int64)
    x = (labels[:, None] + 0.5 * rng.standard_normal((2, 1, 8, 8, 8))).astype(np.float32)
    ours_opt, their_opt = fc.optim.Adam(model.parameters(), lr=1e-2), torch.optim.Adam(theirs.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        ours_opt.zero_grad()
        loss = _voxel_loss(model(x), labels)
        loss.backward()
        ours_opt.step()
        their_opt.zero_grad()
        ref = torch.nn.functional.cross_entropy(theirs(torch.from_numpy(x)), torch.from_numpy(labels))
        ref.backward()
        their_opt.step()
        losses.append((loss.item(), ref.item()))
    for step, (ours, ref) in enumerate(losses):
        assert ours == pytest.approx(ref, rel=1e-4), f"step {step}: {losses}"
    assert losses[-1][0] < losses[0][0]  # it learns
