"""Draw docs/conv_family.png: the matrices of three real 1-D layers of the same shape (12 inputs, kernel 3,
10 outputs), from ``fc.conv_matrix``: locally-connected, tiled (2 kernels) and convolution. Each weight
is set to its own number, so equal colours are shared weights.

    python docs/conv_family.py
"""
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

import fastconv as fc  # noqa: E402
from fastconv import nn  # noqa: E402

SIZE, KERNEL = 12, 3
LAYERS = [("Locally-connected", "a kernel per output", nn.LocallyConnected1d(1, 1, KERNEL, SIZE, bias=False)),
          ("Tiled, 2 kernels", "kernels used in turn", nn.TiledConv1d(1, 1, KERNEL, tiles=2, bias=False)),
          ("Convolution", "one kernel, shared", nn.Conv1d(1, 1, KERNEL, bias=False))]


def main(path=os.path.join(os.path.dirname(os.path.abspath(__file__)), "conv_family.png")):
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.6), constrained_layout=True)
    palette = plt.get_cmap("tab10").colors
    for ax, (title, note, layer) in zip(axes, LAYERS):
        w = layer.weight.numpy()
        kernels = w.size // KERNEL
        layer.weight.data[...] = np.arange(1, w.size + 1).reshape(w.shape)  # weight k is the number k
        m = fc.conv_matrix(layer.weight, (1, SIZE)).toarray()
        kernel_of = np.where(m > 0, (m - 1) // KERNEL, -1)  # which kernel each entry comes from
        colours = ListedColormap([(1, 1, 1)] + [palette[k % len(palette)] for k in range(kernels)])
        ax.imshow(kernel_of + 1, cmap=colours, vmin=0, vmax=kernels, aspect="equal")
        for (i, j), value in np.ndenumerate(m):
            if value:
                ax.text(j, i, f"{int(value)}", ha="center", va="center", fontsize=8, color="white",
                        fontweight="bold")
        ax.set_xticks(np.arange(-0.5, SIZE), minor=True)
        ax.set_yticks(np.arange(-0.5, m.shape[0]), minor=True)
        ax.grid(which="minor", color="0.85", linewidth=0.6)
        ax.tick_params(which="both", length=0, labelsize=8)
        ax.set_xticks(range(0, SIZE, 2))
        ax.set_yticks(range(0, m.shape[0], 2))
        ax.set_xlabel("input position")
        ax.set_ylabel("output position")
        ax.set_title(f"{title}: {w.size} weights\n{note}", fontsize=11)
    fig.suptitle("One 1-D layer (12 inputs, kernel 3, 10 outputs) as the matrix y = M x "
                 "(fc.conv_matrix); numbers are weights, colours kernels", fontsize=11)
    fig.savefig(path, dpi=110)
    return path


if __name__ == "__main__":
    print(main())
