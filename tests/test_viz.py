"""fastconv.viz: kernel grids, feature maps and receptive fields render, show the right values, and
reject what they cannot draw."""
import numpy as np
import pytest

import fastconv as fc
from fastconv import models, nn

pytest.importorskip("matplotlib")
viz = pytest.importorskip("fastconv.viz")


def _images(fig):
    return [im for ax in fig.axes for im in ax.get_images()]


def _is_png(path):
    data = path.read_bytes()
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_kernels_grid_values_and_colour_scale(tmp_path):
    fc.manual_seed(0)
    model = models.LeNet5()
    c1, c3 = model.features[0], model.features[3]
    fig = viz.kernels(c1, path=tmp_path / "c1.png")
    images = _images(fig)
    assert len(images) == 6 and _is_png(tmp_path / "c1.png")
    w = c1.weight.numpy()
    for k, im in enumerate(images):  # filter k in cell k, on one symmetric colour scale
        np.testing.assert_array_equal(im.get_array(), w[k, 0])
        assert im.get_clim() == (-np.abs(w).max(), np.abs(w).max())
    assert "Conv2d(1, 6, 5x5)" in fig._suptitle.get_text()
    fig = viz.kernels(c3, max_out=4, max_in=3)
    assert len(_images(fig)) == 12 and "first 4 of 16 outputs, 3 of 6 inputs" in fig._suptitle.get_text()


def test_kernels_of_1d_and_transposed_layers(tmp_path):
    conv = nn.Conv1d(2, 3, 5)
    fig = viz.kernels(conv, path=tmp_path / "k.png")
    curves = [line.get_ydata() for ax in fig.axes for line in ax.get_lines() if len(line.get_ydata()) == 5]
    np.testing.assert_array_equal(curves[1], conv.weight.numpy()[0, 1])
    up = nn.ConvTranspose2d(3, 2, 3)
    assert len(_images(viz.kernels(up))) == 2 * 3  # rows are output channels
    assert _is_png(tmp_path / "k.png")


def test_kernels_rejects_other_layers():
    with pytest.raises(TypeError, match="kernels takes a convolution layer .* got ReLU"):
        viz.kernels(nn.ReLU())


def test_feature_maps_show_each_window_layer(tmp_path):
    model = models.LeNet5()
    x = np.random.default_rng(0).standard_normal((1, 1, 32, 32)).astype(np.float32)
    fig = viz.feature_maps(model, x, max_channels=4, path=tmp_path / "maps.png")
    images = _images(fig)
    assert len(images) == 4 * 4  # C1, S2, C3, S4 (C5's 1x1 maps are left out), 4 channels each
    np.testing.assert_allclose(images[1].get_array(), model.features[0](x).numpy()[0, 1], rtol=1e-6)
    assert _is_png(tmp_path / "maps.png") and model.training
    signal = viz.feature_maps(models.MNIST1DConvNet(), np.zeros(40, np.float32))
    assert len(_images(signal)) == 3  # one channels x positions image per convolution


def test_receptive_field_region_is_where_the_unit_depends_on_the_input(tmp_path):
    """A linear net with positive weights: the unit's gradient is non-zero exactly on its region."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=2, dilation=2), nn.AvgPool2d(2),
                          nn.Conv2d(2, 2, 3, stride=2, padding=1))
    for p in model.parameters():
        p.data[...] = np.abs(p.data) + 0.1
    fig = viz.receptive_field(model, (1, 1, 16, 16), (0, 3), path=tmp_path / "rf.png")
    x = fc.tensor(np.zeros((1, 1, 16, 16), np.float32), requires_grad=True)
    y = model(x)
    g = np.zeros(y.shape, np.float32)
    g[0, 0, 0, 3] = 1
    y.backward(g)
    rows, cols = np.nonzero(x.grad.numpy()[0, 0])
    (top, bottom), (left, right) = fig.region
    assert (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1) == (max(top, 0), min(bottom, 16),
                                                                         max(left, 0), min(right, 16))
    assert fig.region == ((-4, 6), (8, 18))  # reaches past the top and the right border
    assert _is_png(tmp_path / "rf.png")


def test_receptive_field_of_lenet_and_mnist1d():
    lenet = viz.receptive_field(models.LeNet5(), (1, 1, 32, 32), (2, 3), layer="features.3")
    assert lenet.region == ((4, 18), (6, 20))  # 14x14 field, jump 2
    signal = viz.receptive_field(models.MNIST1DConvNet(), (1, 40), 2, x=np.sin(np.arange(40.0)))
    assert signal.region == ((9, 26),)  # field 17, jump 8, padding 1


def test_receptive_field_errors():
    with pytest.raises(ValueError, match=r"position must index the 2-D output \(10, 10\)"):
        viz.receptive_field(models.LeNet5(), (1, 1, 32, 32), (10, 0), layer="features.3")
    with pytest.raises(ValueError, match="layer 'classifier.0' has no receptive field"):
        viz.receptive_field(models.LeNet5(), (1, 1, 32, 32), (0, 0), layer="classifier.0")


def test_missing_matplotlib_says_what_to_install(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"pip install 'fastconv\[plot\]'"):
        viz.kernels(nn.Conv2d(1, 1, 3))
