"""Pictures of what a network computes (matplotlib, ``pip install 'fastconv[plot]'``).

- :func:`kernels`: a convolution layer's learned filters, one cell per (output, input) channel pair, on
  one colour scale centred on zero (red positive, blue negative).
- :func:`feature_maps`: the activations after each convolution and pooling layer for one input.
- :func:`receptive_field`: the input region one output unit sees, drawn over an input.

Each returns a ``matplotlib.figure.Figure`` (made without pyplot, so nothing global changes) and, given
``path``, also writes it as a PNG.
"""
from __future__ import annotations

import numpy as np

from .nn.layers import _ConvNd
from .summary import summary
from .trace import trace

__all__ = ["kernels", "feature_maps", "receptive_field", "first_conv"]

WINDOW_OPS = ("conv1d", "conv2d", "conv_transpose1d", "conv_transpose2d", "max_pool1d", "max_pool2d",
              "avg_pool1d", "avg_pool2d", "lp_pool1d", "lp_pool2d", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
              "max_unpool1d", "max_unpool2d")


def _figure(width, height):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("fastconv.viz draws with matplotlib: pip install 'fastconv[plot]'") from None
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _finish(fig, path):
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def first_conv(model):
    """``(name, layer)`` of the first convolution layer of ``model``."""
    found = next(((n, m) for n, m in model.named_modules() if isinstance(m, _ConvNd)), None)
    if found is None:
        raise ValueError(f"{type(model).__name__} has no convolution layer")
    return found


def kernels(layer, max_out=16, max_in=8, path=None, title=None):
    """A grid of ``layer``'s filters: rows are output channels, columns input channels (the first
    ``max_out`` and ``max_in``). 1-D filters are drawn as curves. One colour scale for all cells."""
    if not isinstance(layer, _ConvNd):
        raise TypeError(f"kernels takes a convolution layer (Conv1d, Conv2d, ConvTranspose1d/2d), got "
                        f"{type(layer).__name__}")
    w = layer.weight.numpy()
    if layer.transposed:  # (C_in, C_out/groups, ...): show output channels as rows too
        w = np.swapaxes(w, 0, 1)
    n_out, n_in = min(w.shape[0], max_out), min(w.shape[1], max_in)
    w = w[:n_out, :n_in]
    name = title or f"{type(layer).__name__}({layer.in_channels}, {layer.out_channels}, " \
                    f"{'x'.join(map(str, layer.kernel_size))}) filters"
    if layer.dims == 1:
        fig = _figure(min(2 + 1.6 * n_in, 14), min(1.2 + 0.9 * n_out, 16))
        axes = fig.subplots(n_out, n_in, squeeze=False, sharex=True, sharey=True)
        taps = np.arange(w.shape[-1])
        for o in range(n_out):
            for i in range(n_in):
                ax = axes[o, i]
                ax.axhline(0, color="0.7", lw=0.8)
                ax.plot(taps, w[o, i], "o-", color="C0", ms=3)
                ax.set_xticks(taps if len(taps) <= 9 else taps[::max(1, len(taps) // 5)])
                ax.tick_params(labelsize=7)
        _label_grid(axes, n_out, n_in)
        fig.suptitle(name + _shown(layer, n_out, n_in), fontsize=10)
        return _finish(fig, path)
    limit = float(np.abs(w).max()) or 1.0
    if n_in == 1:  # one input channel: the filters side by side, up to 8 a row
        cols = min(n_out, 8)
        rows = -(-n_out // cols)
        cells = [(o, 0) for o in range(n_out)]
    else:
        rows, cols = n_out, n_in
        cells = [(o, i) for o in range(n_out) for i in range(n_in)]
    size = 0.9 if max(w.shape[-2:]) <= 7 else 1.3
    fig = _figure(max(4.5, 1.6 + size * cols), 1.1 + size * rows)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for k, (o, i) in enumerate(cells):
        ax = axes.flat[k]
        ax.set_axis_on()
        image = ax.imshow(w[o, i], cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        if n_in == 1:
            ax.set_title(f"filter {o}", fontsize=8)
    if n_in > 1:
        _label_grid(axes, n_out, n_in)
    fig.colorbar(image, ax=axes, shrink=0.8, label="weight")
    fig.suptitle(name + _shown(layer, n_out, n_in), fontsize=10)
    return _finish(fig, path)


def _shown(layer, n_out, n_in):
    w = layer.weight
    total_out, total_in = (w.shape[1], w.shape[0]) if layer.transposed else w.shape[:2]
    return "" if (n_out, n_in) == (total_out, total_in) else f"\n(first {n_out} of {total_out} outputs, " \
                                                             f"{n_in} of {total_in} inputs)"


def _label_grid(axes, rows, cols):
    for o in range(rows):
        axes[o, 0].set_ylabel(f"out {o}", fontsize=8)
    for i in range(cols):
        axes[-1, i].set_xlabel(f"in {i}", fontsize=8)


def feature_maps(model, x, max_channels=8, path=None):
    """The activations of one input (``x``: one sample with its batch axis of 1, e.g. (1, 1, 32, 32) for
    LeNet-5; a first axis of another size gets a batch axis put in front) after each
    convolution and pooling op: a row per layer, a cell per channel (the first ``max_channels``), each
    layer on its own colour scale. 1-D activations are drawn as a channels x positions image."""
    x = np.asarray(x.numpy() if hasattr(x, "numpy") else x, dtype=np.float32)
    x = x if x.shape[:1] == (1,) else x[None]
    graph = trace(model, x)
    layers = [n for n in graph.nodes if n.op in WINDOW_OPS and n.output.ndim in (3, 4)
              and np.prod(n.output.shape[2:]) > 1]  # 1x1 maps (LeNet's C5) are not pictures
    if not layers:
        raise ValueError("the model runs no convolution or pooling op: there are no feature maps to show")
    two_d = layers[0].output.ndim == 4
    cols = max_channels if two_d else 1
    fig = _figure(1.5 + 1.5 * cols if two_d else 9, 0.6 + 1.6 * len(layers))
    grid = fig.subplots(len(layers), cols, squeeze=False)
    for row, node in zip(grid, layers):
        maps = node.output.numpy()[0]
        label = f"{node.module or node.op}\n{node.op} {'x'.join(map(str, maps.shape))}"
        low, high = float(maps.min()), float(maps.max())
        if maps.ndim == 1 or not two_d:
            image = row[0].imshow(maps.reshape(maps.shape[0], -1), aspect="auto", cmap="viridis",
                                  interpolation="nearest")
            row[0].set_ylabel(label + "\nchannel", fontsize=8)
            row[0].set_xlabel("position", fontsize=8)
            row[0].xaxis.get_major_locator().set_params(integer=True)
            fig.colorbar(image, ax=row[0], pad=0.01)
            continue
        for c, ax in enumerate(row):
            ax.set_xticks([])
            ax.set_yticks([])
            if c < maps.shape[0]:
                image = ax.imshow(maps[c], cmap="viridis", vmin=low, vmax=high, interpolation="nearest")
                ax.set_title(f"ch {c}", fontsize=7)
            else:
                ax.set_axis_off()
        row[0].set_ylabel(label, fontsize=8)
        fig.colorbar(image, ax=list(row), pad=0.01, shrink=0.9)
    fig.suptitle(f"{type(model).__name__}: feature maps")
    return _finish(fig, path)


def receptive_field(model, input_shape, position, layer=None, x=None, path=None):
    """Draw the input region that output unit ``position`` (one index per spatial axis) of ``layer``
    sees (default: the last layer whose output still has positions), over ``x`` (default: a blank input
    of ``input_shape``). The region comes from the layers' windows (kernel, stride, dilation, padding);
    where it reaches past the input's border, the part inside is drawn solid and the whole box dashed.
    Returns the figure; the region is in ``fig.region`` as ``((start, stop), ...)`` per axis (stop
    excluded, unclipped)."""
    table = summary(model, input_shape, file=None)
    rows = [r for r in table.rows if r.windows and r.op in WINDOW_OPS]
    if layer is not None:
        rows = [r for r in rows if r.name.split(" ")[0] == layer]
        if not rows:
            names = sorted({r.name.split(" ")[0] for r in table.rows if r.windows and r.op in WINDOW_OPS})
            raise ValueError(f"layer {layer!r} has no receptive field here; layers that do: {names}")
    if not rows:
        raise ValueError("the model has no convolution or pooling layer: no receptive field to draw")
    row = rows[-1]
    spatial = row.output_shape[2:]
    position = (position,) if isinstance(position, (int, np.integer)) else tuple(position)
    if len(position) != len(spatial) or any(not 0 <= p < s for p, s in zip(position, spatial)):
        raise ValueError(f"position must index the {len(spatial)}-D output {spatial} of {row.name}, "
                         f"got {position}")
    region = tuple(_interval(p, windows) for p, windows in zip(position, row.windows))
    canvas = np.zeros(input_shape, np.float32) if x is None else np.asarray(
        x.numpy() if hasattr(x, "numpy") else x, np.float32)
    canvas = canvas.reshape(-1, *canvas.shape[-len(spatial):])[0]  # first sample, first channel
    where = ", ".join(f"{a}..{b - 1}" for a, b in region)
    unit = position[0] if len(position) == 1 else position
    title = (f"{row.name}: unit {unit} of {'x'.join(map(str, spatial))} sees input [{where}]\n"
             f"field {'x'.join(map(str, row.receptive_field))}, jump {'x'.join(map(str, row.jump))}")
    fig = _figure(6, 5.5 if len(spatial) == 2 else 3.2)
    ax = fig.subplots()
    if len(spatial) == 2:
        _draw_region_2d(ax, canvas, region)
    else:
        _draw_region_1d(ax, canvas, region[0])
    ax.set_title(title, fontsize=10)
    fig.region = region
    return _finish(fig, path)


def _interval(position, windows):
    """Input indices ``[start, stop)`` that output ``position`` depends on, through ``windows`` (kernel,
    stride, dilation, padding before), last window first."""
    start = stop = position
    for kernel, stride, dilation, before in reversed(windows):
        start, stop = start * stride - before, stop * stride - before + dilation * (kernel - 1)
    return start, stop + 1


def _draw_region_2d(ax, image, region):
    from matplotlib.patches import Rectangle
    (top, bottom), (left, right) = region
    h, w = image.shape
    ax.imshow(image, cmap="gray_r" if image.min() >= 0 else "gray", interpolation="nearest")
    clipped = (max(top, 0), min(bottom, h)), (max(left, 0), min(right, w))
    (ct, cb), (cl, cr) = clipped
    ax.add_patch(Rectangle((cl - 0.5, ct - 0.5), cr - cl, cb - ct, facecolor=(1.0, 0.5, 0.05, 0.18),
                           edgecolor="tab:orange", lw=2.5, label="receptive field"))
    if clipped != region:
        ax.add_patch(Rectangle((left - 0.5, top - 0.5), right - left, bottom - top, fill=False,
                               edgecolor="tab:red", lw=1.5, ls="--", label="reaching into the padding"))
    ax.set_xlim(min(left, 0) - 1, max(right, w))
    ax.set_ylim(max(bottom, h), min(top, 0) - 1)
    ax.set_xlabel("column")
    ax.set_ylabel("row")
    for axis in (ax.xaxis, ax.yaxis):
        axis.get_major_locator().set_params(integer=True)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, fontsize=8, frameon=False)


def _draw_region_1d(ax, signal, interval):
    start, stop = interval
    ax.plot(np.arange(len(signal)), signal, color="0.3", lw=1)
    ax.axvspan(max(start, 0) - 0.5, min(stop, len(signal)) - 0.5, color="tab:orange", alpha=0.3,
               label="receptive field")
    if start < 0 or stop > len(signal):
        ax.axvspan(start - 0.5, stop - 0.5, fill=False, edgecolor="tab:red", ls="--", label="reaching into the padding")
    ax.set_xlim(min(start, 0) - 1, max(stop, len(signal)))
    ax.set_xlabel("position")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, fontsize=8, frameon=False)
