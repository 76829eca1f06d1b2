"""A generated sweep of bad arguments over every public entry point.

Each public op, layer, Tensor method, optimizer, shape helper and data loader is described once: a valid
call and the kind of each argument. Bad values of that kind replace one argument at a time, and each case
must raise a TypeError or ValueError whose message names the argument, before any work (``nowork``: no
kernel chosen, no arithmetic on the inputs, no large allocation) and within a deadline. Absurd sizes must
be refused by the memory rule, before anything is allocated. Valid but non-contiguous or negative-stride
inputs must give the contiguous input's results and gradients.
"""
import re
from dataclasses import dataclass

import numpy as np
import pytest

import fastconv as fc
import fastconv.functional as F
import nowork
from fastconv import nn, optim, shapes
from fastconv.data import MNIST, MNIST1D, DataLoader, random_shift
from fastconv.data.mnist import normalize
from fastconv.nn import Parameter

NAN, INF = float("nan"), float("inf")
DEADLINE_S = 10


# ----------------------------------------------------------------------------- bad values by kind
def not_arrays(optional=False):
    values = [("str", "abc"), ("list of str", ["a", "b"]), ("object", object()), ("dict", {"a": 1}),
              ("ragged list", [[1.0, 2.0], [3.0]])]
    return values if optional else values + [("None", None)]


def float_dtypes(alone=False):
    """Dtypes no op computes in; float64 too where other float32 arrays come with it (not ``alone``)."""
    return [("float16", np.float16), ("int32", np.int32), ("bool", np.bool_), ("complex64", np.complex64),
            ("object", object)] + ([] if alone else [("float64 beside float32", np.float64)])


def sizes(minimum, optional=False, dims=2):
    """Bad values of an int-or-tuple size argument (kernel_size, stride, padding, output_size, ...) of an
    op with ``dims`` spatial dims."""
    values = [("str", "2"), ("float", 2.5), ("nan", NAN), ("inf", INF), ("negative", -1), ("bool", True),
              ("list of str", ["a"]), ("object", object()), ("too many", (1,) * max(3, dims + 1)),
              ("over INT_MAX", 2 ** 40)]
    values += [("zero", 0)] if minimum == 1 else []
    return values if optional else values + [("None", None)]


def integers(minimum=None, optional=False):
    values = [("str", "1"), ("float", 1.5), ("nan", NAN), ("bool", True), ("list", [1])]
    values += [("below minimum", minimum - 1)] if minimum is not None else [("out of range", 10 ** 6)]
    return values if optional else values + [("None", None)]


def reals(low=None, high=None):
    values = [("None", None), ("str", "0.5"), ("nan", NAN), ("inf", INF), ("-inf", -INF), ("list of str", ["a"]),
              ("object", object())]
    values += [("below", low - 1)] if low is not None else []
    values += [("above", high + 1)] if high is not None else []
    return values


def flags(optional=False):
    values = [("str", "yes"), ("int 2", 2), ("float", 0.5), ("list", [True])]
    return values if optional else values + [("None", None)]


def choices(optional=False):
    values = [("unknown", "bogus"), ("int", 3), ("list", ["mean"])]
    return values if optional else values + [("None", None)]


def dtypes():
    return [("str", "floaty"), ("int", np.int32), ("None", None), ("object", object), ("complex", np.complex64)]


# ------------------------------------------------------------------------------------- arrays
def data(*shape, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def labels(n, classes):
    return np.arange(n) % classes


def array_variants(array, ranks=True, alone=False):
    """Bad replacements of a float32 array argument: non-arrays, other dtypes (float64 too unless the
    array is the call's only float array), one rank more or less."""
    values = list(not_arrays()) + [(name, array.astype(dt)) for name, dt in float_dtypes(alone)]
    if ranks:
        values += [("rank + 1", array[None]), ("rank - 1", array[0])]
    return values


# --------------------------------------------------------------------------------- the table
@dataclass
class Entry:
    """A public callable: ``call(**args)`` with ``args = make()`` is valid; ``bad[name]`` lists bad values
    of argument ``name``; ``watch`` turns the float arrays of ``make()`` into watched tensors."""
    name: str
    call: object
    make: object
    bad: dict
    watch: bool = True


def _pool_args(x, padding=True, dilation=True):
    dims = x.ndim - 2
    bad = dict(input=array_variants(x, alone=True), kernel_size=sizes(1, dims=dims),
               stride=sizes(1, optional=True, dims=dims), ceil_mode=flags(), backend=choices(optional=True))
    bad.update(dict(padding=sizes(0, dims=dims)) if padding else {})
    bad.update(dict(dilation=sizes(1, dims=dims)) if dilation else {})
    return bad


def _functional_entries():
    x1, x2, x3 = data(2, 4, 9), data(2, 4, 7, 6), data(2, 4, 5, 4, 6)
    w1, w2, w3, b = data(6, 2, 3), data(6, 2, 3, 2), data(6, 2, 2, 3, 2), data(6)
    wt1, wt2, wt3 = data(4, 3, 3), data(4, 3, 2, 3), data(4, 3, 2, 2, 3)
    entries = []
    for dims, x, w, wt in ((1, x1, w1, wt1), (2, x2, w2, wt2), (3, x3, w3, wt3)):
        conv = dict(stride=sizes(1, dims=dims), padding=sizes(0, dims=dims) + [("unknown str", "full")],
                    dilation=sizes(1, dims=dims), groups=integers(1) + [("not dividing", 3)],
                    backend=choices(optional=True))
        conv_t = dict(conv, padding=sizes(0, dims=dims) + [("str", "same")], output_padding=sizes(0, dims=dims))
        pooled, idx = (t.numpy() for t in getattr(F, f"max_pool{dims}d")(x, 2, return_indices=True))
        entries += [
            Entry(f"conv{dims}d", getattr(F, f"conv{dims}d"),
                  lambda x=x, w=w: dict(input=x, weight=w, bias=b, groups=2),
                  dict(input=array_variants(x), weight=array_variants(w), bias=not_arrays(optional=True)
                       + [("wrong length", b[:5]), ("rank 2", b[None])], **conv)),
            Entry(f"conv_transpose{dims}d", getattr(F, f"conv_transpose{dims}d"),
                  lambda x=x, wt=wt: dict(input=x, weight=wt, bias=b, groups=2, stride=2, output_padding=1),
                  dict(input=array_variants(x), weight=array_variants(wt), bias=not_arrays(optional=True), **conv_t)),
            Entry(f"max_pool{dims}d", getattr(F, f"max_pool{dims}d"), lambda x=x: dict(input=x, kernel_size=2),
                  dict(return_indices=flags(), **_pool_args(x))),
            Entry(f"avg_pool{dims}d", getattr(F, f"avg_pool{dims}d"),
                  lambda x=x: dict(input=x, kernel_size=3, padding=1),
                  dict(count_include_pad=flags(), **_pool_args(x, dilation=False))),
            Entry(f"lp_pool{dims}d", getattr(F, f"lp_pool{dims}d"),
                  lambda x=x: dict(input=x, norm_type=2, kernel_size=2),
                  dict(norm_type=reals(0) + [("zero", 0)], **_pool_args(x, padding=False, dilation=False))),
            Entry(f"max_unpool{dims}d", getattr(F, f"max_unpool{dims}d"),
                  lambda pooled=pooled, idx=idx: dict(input=pooled, indices=idx, kernel_size=2),
                  dict(input=array_variants(pooled, alone=True),
                       indices=not_arrays() + [("float", idx.astype(np.float32)), ("wrong shape", idx[:1, :1]),
                                               ("out of range", idx + 10 ** 6)],
                       kernel_size=sizes(1, dims=dims), stride=sizes(1, optional=True, dims=dims),
                       padding=sizes(0, dims=dims), output_size=sizes(1, optional=True, dims=dims),
                       backend=choices(optional=True))),
            Entry(f"adaptive_avg_pool{dims}d", getattr(F, f"adaptive_avg_pool{dims}d"),
                  lambda x=x: dict(input=x, output_size=3),
                  dict(input=array_variants(x, alone=True), output_size=sizes(1, dims=dims))),
            Entry(f"interpolate {dims}-D size", F.interpolate, lambda x=x: dict(input=x, size=5, mode="nearest"),
                  dict(input=array_variants(x, ranks=False, alone=True) + [("rank 2", x.reshape(-1, x.shape[-1]))],
                       size=sizes(1, optional=True, dims=dims),
                       mode=choices() + [("other rank's mode", "linear" if dims == 2 else "bilinear")],
                       align_corners=flags(optional=True) + [("with nearest", True)])),
            Entry(f"interpolate {dims}-D scale_factor", F.interpolate,
                  lambda x=x: dict(input=x, scale_factor=1.5, mode=shapes.RESIZE_MODES[x.ndim - 2]),
                  dict(scale_factor=reals(0) + [("zero", 0), ("too many", (2.0,) * max(3, dims + 1)),
                                                ("empty output", 1e-9)],
                       align_corners=flags(optional=True))),
        ]
    entries += _family_entries(x1, x2, conv)
    entries += [
        Entry("linear", F.linear, lambda: dict(input=data(3, 5), weight=data(4, 5), bias=data(4)),
              dict(input=array_variants(data(3, 5), ranks=False) + [("wrong features", data(3, 6))],
                   weight=array_variants(data(4, 5)), bias=not_arrays(optional=True) + [("wrong length", data(3))])),
        Entry("flatten", F.flatten, lambda: dict(input=x2, start_dim=1),
              dict(input=not_arrays(), start_dim=integers() + [("negative out of range", -9)])),
        Entry("reshape", F.reshape, lambda: dict(input=x2, shape=(2, -1)),
              dict(input=not_arrays(), shape=[("str", "ab"), ("None", None), ("float", (2.5, 4)), ("two -1", (-1, -1)),
                                              ("wrong size", (7,)), ("object", object())])),
        Entry("softmax", F.softmax, lambda: dict(input=data(3, 4), dim=1),
              dict(input=array_variants(data(3, 4), ranks=False, alone=True), dim=integers())),
        Entry("log_softmax", F.log_softmax, lambda: dict(input=data(3, 4), dim=-1),
              dict(input=array_variants(data(3, 4), ranks=False, alone=True), dim=integers())),
        Entry("dropout", F.dropout, lambda: dict(input=data(3, 4), p=0.5, training=True),
              dict(input=array_variants(data(3, 4), ranks=False, alone=True), p=reals(0, 1), training=flags())),
        Entry("mse_loss", F.mse_loss, lambda: dict(input=data(3, 4), target=data(3, 4, seed=1)),
              dict(input=array_variants(data(3, 4)), target=array_variants(data(3, 4)), reduction=choices())),
    ]
    for name in ("relu", "tanh", "sigmoid"):
        entries.append(Entry(name, getattr(F, name), lambda: dict(input=data(3, 4)),
                             dict(input=array_variants(data(3, 4), ranks=False, alone=True))))
    for name in ("cross_entropy", "nll_loss"):
        entries.append(Entry(name, getattr(F, name), lambda: dict(input=data(3, 4), target=labels(3, 4)),
                             dict(input=array_variants(data(3, 4), alone=True), reduction=choices(),
                                  target=not_arrays() + [("float", np.zeros(3, np.float32)),
                                                         ("wrong length", labels(4, 4)),
                                                         ("out of range", np.array([0, 4, 1]))])))
    return entries


def _family_entries(x1, x2, conv):
    """Locally-connected, tiled and separable convolutions (groups 2: 4 -> 6 channels)."""
    entries = []
    for dims, x, kernel, out in ((1, x1, (3,), (7,)), (2, x2, (3, 2), (5, 5))):
        for kind, lead in (("local", out), ("tiled", (7,) if dims == 1 else (5, 1))):
            w, bias = data(*lead, 6, 2, *kernel), data(6, *out)
            extra = dict(tiles=sizes(1, optional=True) + [("not the weight's", 2)]) if kind == "tiled" else {}
            entries.append(Entry(
                f"conv{dims}d_{kind}", getattr(F, f"conv{dims}d_{kind}"),
                lambda x=x, w=w, bias=bias: dict(input=x, weight=w, bias=bias, groups=2),
                dict(input=array_variants(x), weight=array_variants(w) + [("tiles not dividing the output", w[:2])],
                     bias=not_arrays(optional=True) + [("wrong shape", bias[:5]), ("rank 4", bias[None])],
                     **conv, **extra)))
    rows, cols, b = data(6, 2, 2), data(6, 2, 3), data(6)
    entries.append(Entry(
        "separable_conv2d", F.separable_conv2d,
        lambda: dict(input=x2, row_kernels=rows, col_kernels=cols, bias=b, groups=2),
        dict(input=array_variants(x2), row_kernels=array_variants(rows) + [("other channels", rows[:, :1])],
             col_kernels=array_variants(cols) + [("other channels", cols[:5])],
             bias=not_arrays(optional=True) + [("wrong length", b[:5])], **conv)))
    return entries


def _layer_entries():
    conv = lambda cls, **over: Entry(  # noqa: E731
        f"nn.{cls.__name__}", cls, lambda: dict(in_channels=4, out_channels=6, kernel_size=3, **over),
        dict(in_channels=integers(1), out_channels=integers(1), kernel_size=sizes(1, dims=cls.dims),
             stride=sizes(1, dims=cls.dims), padding=sizes(0, dims=cls.dims) + [("unknown str", "full")],
             dilation=sizes(1, dims=cls.dims), groups=integers(1) + [("not dividing", 4)],
             bias=flags(), dtype=dtypes()), watch=False)
    entries = [conv(nn.Conv1d), conv(nn.Conv2d), conv(nn.Conv3d), conv(nn.ConvTranspose1d, output_padding=0),
               conv(nn.ConvTranspose2d, output_padding=0), conv(nn.ConvTranspose3d, output_padding=0)]
    for dims in (1, 2):
        local, tiled = conv(getattr(nn, f"LocallyConnected{dims}d"), input_size=9), \
            conv(getattr(nn, f"TiledConv{dims}d"), tiles=2)
        local.bad.update(input_size=sizes(1), position_bias=flags())
        tiled.bad.update(tiles=sizes(1))
        entries += [local, tiled]
    entries += [
        Entry("nn.Linear", nn.Linear, lambda: dict(in_features=3, out_features=4),
              dict(in_features=integers(1), out_features=integers(1), bias=flags(), dtype=dtypes()), watch=False),
        Entry("nn.Dropout", nn.Dropout, lambda: dict(p=0.5), dict(p=reals(0, 1)), watch=False),
        Entry("nn.Flatten", nn.Flatten, lambda: dict(start_dim=1), dict(start_dim=integers()[:5]), watch=False),
        Entry("nn.CrossEntropyLoss", nn.CrossEntropyLoss, lambda: {}, dict(reduction=choices()), watch=False),
        Entry("nn.MSELoss", nn.MSELoss, lambda: {}, dict(reduction=choices()), watch=False),
        Entry("nn.ModuleList", nn.ModuleList, lambda: {}, dict(modules=[("int", 3), ("list of int", [3])]),
              watch=False),
        Entry("nn.Upsample", nn.Upsample, lambda: dict(scale_factor=2),
              dict(mode=choices(), align_corners=flags(optional=True) + [("with nearest", True)]), watch=False),
    ]
    for dims in (1, 2, 3):
        window = dict(kernel_size=sizes(1, dims=dims), stride=sizes(1, optional=True, dims=dims),
                      padding=sizes(0, dims=dims), ceil_mode=flags())
        entries += [
            Entry(f"nn.MaxPool{dims}d", getattr(nn, f"MaxPool{dims}d"), lambda: dict(kernel_size=2),
                  dict(window, dilation=sizes(1, dims=dims), return_indices=flags()), watch=False),
            Entry(f"nn.AvgPool{dims}d", getattr(nn, f"AvgPool{dims}d"), lambda: dict(kernel_size=2),
                  dict(window, count_include_pad=flags()), watch=False),
            Entry(f"nn.AdaptiveAvgPool{dims}d", getattr(nn, f"AdaptiveAvgPool{dims}d"), lambda: dict(output_size=2),
                  dict(output_size=sizes(1, dims=dims)), watch=False),
        ]
    layers = {"nn.Conv1d(...)(x)": (nn.Conv1d(4, 6, 3), data(2, 4, 9)),
              "nn.Conv2d(...)(x)": (nn.Conv2d(4, 6, 3), data(2, 4, 7, 6)),
              "nn.Linear(...)(x)": (nn.Linear(5, 4), data(3, 5)),
              "nn.MaxPool2d(...)(x)": (nn.MaxPool2d(2), data(2, 4, 7, 6))}
    for name, (layer, x) in layers.items():
        entries.append(Entry(name, lambda input, layer=layer: layer(input), lambda x=x: dict(input=x),
                             dict(input=array_variants(x, ranks=x.ndim > 2, alone="Pool" in name))))
    return entries


def _tensor_entries():
    def method(name, fn, bad, **base):
        return Entry(f"Tensor.{name}", fn, lambda: dict(self=data(2, 3), **base), bad)
    others = dict(other=not_arrays() + [("wrong shape", data(4)), ("matrix too wide", data(5, 3))])
    entries = [
        Entry("tensor", fc.tensor, lambda: dict(data=data(2, 3)),
              dict(data=not_arrays(), requires_grad=flags(), dtype=[("str", "floaty"), ("object", object),
                                                                    ("list", [1])],
                   device=[("unknown", "tpu"), ("int", 3), ("list", ["cpu"])]), watch=False),
        method("reshape", lambda self, shape: self.reshape(shape),
               dict(shape=[("str", "ab"), ("float", (2.5, 2)), ("wrong size", (4,)), ("two -1", (-1, -1)),
                           ("None", None)]), shape=(3, 2)),
        method("sum", lambda self, axis: self.sum(axis),
               dict(axis=[("str", "0"), ("float", 1.5), ("nan", NAN), ("bool", True), ("out of range", 2),
                          ("repeated", (0, 0))]), axis=0),
        method("mean", lambda self, axis: self.mean(axis), dict(axis=[("str", "0"), ("out of range", -3)]), axis=0),
        method("transpose", lambda self, axes: self.transpose(axes),
               dict(axes=[("str", "ab"), ("too few", (0,)), ("repeated", (0, 0)), ("out of range", (0, 2))]),
               axes=(1, 0)),
        method("flatten", lambda self, start_dim: self.flatten(start_dim),
               dict(start_dim=[("str", "1"), ("None", None), ("out of range", 5)]), start_dim=1),
        method("astype", lambda self, dtype: self.astype(dtype), dict(dtype=[("str", "floaty"), ("None", None)]),
               dtype=np.float64),
        method("to", lambda self, device: self.to(device), dict(device=[("unknown", "tpu"), ("int", 3)]), device="cpu"),
        method("__add__", lambda self, other: self + other, others, other=data(2, 3)),
        method("__sub__", lambda self, other: self - other, others, other=data(2, 3)),
        method("__mul__", lambda self, other: self * other, others, other=data(2, 3)),
        method("__truediv__", lambda self, other: self / other, others, other=data(2, 3)),
        method("__matmul__", lambda self, other: self @ other, others, other=data(3, 2)),
        method("__pow__", lambda self, exponent: self ** exponent,
               dict(exponent=[("str", "2"), ("None", None), ("list", [2]), ("array", data(2, 3))]), exponent=2),
        method("requires_grad_", lambda self, flag: self.requires_grad_(flag), dict(flag=flags()), flag=True),
    ]
    grad = Entry("Tensor.backward", lambda self, grad: self.backward(grad),
                 lambda: dict(self=fc.tensor(data(2, 3), requires_grad=True) * 2.0, grad=data(2, 3)),
                 dict(grad=not_arrays() + [("wrong shape", data(3, 2))]), watch=False)
    return entries + [grad]


def _optim_entries():
    params = lambda: [Parameter(data(3))]  # noqa: E731
    common = dict(params=[("None", None), ("str", "abc"), ("int", 3), ("object", object()), ("list of int", [3]),
                          ("list of None", [None]), ("dict", {"lr": 0.1}), ("group without params", [{"lr": 0.1}]),
                          ("non-leaf", [Parameter(data(3)) * 2])],
                  lr=reals(0), weight_decay=reals(0), foreach=flags(optional=True))
    entries = [Entry("optim.SGD", optim.SGD, lambda: dict(params=params(), lr=0.1, momentum=0.9),
                     dict(common, momentum=reals(0), dampening=reals(0), nesterov=flags()), watch=False)]
    for cls in (optim.Adam, optim.AdamW):
        entries.append(Entry(f"optim.{cls.__name__}", cls, lambda: dict(params=params()),
                             dict(common, eps=reals(0), betas=[("None", None), ("one", (0.9,)), ("beta 1", (0.9, 1.0)),
                                                               ("nan", (NAN, 0.9)), ("str", "ab"), ("float", 0.9)]),
                             watch=False))
    opt = lambda: optim.SGD(params(), lr=0.1)  # noqa: E731
    bad_opt = [("None", None), ("str", "sgd"), ("object", object())]
    entries += [
        Entry("optim.StepLR", optim.StepLR, lambda: dict(optimizer=opt(), step_size=2),
              dict(optimizer=bad_opt, step_size=integers(1), gamma=reals(0), last_epoch=integers(-1)), watch=False),
        Entry("optim.CosineAnnealingLR", optim.CosineAnnealingLR, lambda: dict(optimizer=opt(), T_max=3),
              dict(optimizer=bad_opt, T_max=integers(1), eta_min=reals(0), last_epoch=integers(-1)), watch=False),
    ]
    return entries


def _helper_entries():
    window = dict(length=integers(0), kernel=integers(1), stride=integers(1), dilation=integers(1))
    return [
        Entry("shapes.conv_output_size", shapes.conv_output_size, lambda: dict(length=9, kernel=3),
              dict(window, padding=[v for v in sizes(0) if v[0] != "over INT_MAX"]), watch=False),
        Entry("shapes.conv_transpose_output_size", shapes.conv_transpose_output_size, lambda: dict(length=9, kernel=3),
              dict(window, padding=integers(0), output_padding=integers(0)), watch=False),
        Entry("shapes.pool_output_size", shapes.pool_output_size, lambda: dict(length=9, kernel=3, stride=2),
              dict(window, padding=integers(0), ceil_mode=flags()), watch=False),
        Entry("shapes.receptive_field", shapes.receptive_field, lambda: dict(layers=[(3, 1), (2, 2)]),
              dict(layers=[("None", None), ("str", "ab"), ("int", 3), ("a layer of one", [(3,)]),
                           ("float kernel", [(2.5, 1)]), ("zero stride", [(3, 0)]), ("None layer", [None])]),
              watch=False),
    ]


def _data_entries():
    images = np.zeros((4, 1, 6, 6), np.float32)
    return [
        Entry("DataLoader", lambda arrays, **kw: DataLoader(*arrays, **kw),
              lambda: dict(arrays=(data(6, 2), labels(6, 3)), batch_size=2),
              dict(arrays=[("None", (None,)), ("str", ("abc",)), ("object", (object(),)), ("ragged", ([[1.0], []],)),
                           ("misaligned", (data(6, 2), labels(5, 3)))],
                   batch_size=integers(1), shuffle=flags(), drop_last=flags(), reuse_buffers=flags(),
                   seed=[("negative", -1), ("str", "abc"), ("float", 1.5), ("empty", []), ("list of float", [1.5])]),
              watch=False),
        Entry("random_shift", random_shift, lambda: dict(images=images, max_shift=1, rng=np.random.default_rng(0)),
              dict(images=not_arrays() + [("rank 3", images[0])], max_shift=integers(0),
                   rng=[("None", None), ("int", 3), ("legacy RandomState", np.random.RandomState(0))],
                   fill=reals(), out=[("wrong shape", images[:2]), ("list", [0.0])]), watch=False),
        Entry("normalize", normalize, lambda: dict(images=np.zeros((2, 28, 28), np.uint8)),
              dict(images=not_arrays() + [("float", np.zeros((2, 28, 28))),
                                          ("rank 4", np.zeros((1, 2, 28, 28), np.uint8))],
                   pad=flags(), dtype=dtypes()), watch=False),
        Entry("MNIST", MNIST, lambda: dict(root="/nonexistent"),
              dict(root=[("int", 3), ("list", ["a"])], train=flags(), download=flags(),
                   mirrors=[("str", "https://example.com/"), ("None", None), ("list of int", [3])]), watch=False),
        Entry("MNIST1D", MNIST1D, lambda: dict(),
              dict(train=flags(), num_samples=integers(2), length=integers(1),
                   seed=integers(0) + [("over 2**32", 2 ** 33)],
                   dtype=dtypes(), cache=flags()), watch=False),
    ]


ENTRIES = _functional_entries() + _layer_entries() + _tensor_entries() + _optim_entries() + _helper_entries() \
    + _data_entries()
CASES = [pytest.param(entry, arg, value, id=f"{entry.name}-{arg}-{label}")
         for entry in ENTRIES for arg, values in entry.bad.items() for label, value in values]


def _args(entry):
    """The entry's valid arguments, float arrays as watched tensors where it asks (validation may read
    their shapes, nothing else)."""
    args = entry.make()
    if entry.watch:
        args = {k: nowork.watched(v) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v
                for k, v in args.items()}
    return args


def _names(message, name):
    return re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", message) is not None


def test_the_sweep_is_large():
    """At least 200 cases, over every op of fastconv.functional (interpolate has two entries)."""
    assert len(CASES) >= 200
    assert {e.name for e in ENTRIES} >= set(F.__all__) - {"interpolate"}


@pytest.mark.parametrize("entry, arg, value", CASES)
def test_bad_argument(entry, arg, value, monkeypatch, pytestconfig):
    """A TypeError or ValueError naming ``arg``, before any work, within the deadline."""
    args = _args(entry)
    args[arg] = value
    with nowork.deadline(DEADLINE_S, pytestconfig), nowork.no_work(monkeypatch) as work:
        with pytest.raises((TypeError, ValueError)) as info:
            entry.call(**args)
    assert _names(str(info.value), arg), f"the message does not name {arg!r}: {info.value}"
    assert work == [], f"work done before the error: {work}"


@pytest.mark.parametrize("entry", ENTRIES, ids=[e.name for e in ENTRIES])
def test_the_valid_call_works(entry, pytestconfig):
    """Each entry's base call is valid, so that its bad cases differ from it in one argument only."""
    args = _args(entry)
    if entry.name in ("MNIST", "MNIST1D"):
        pytest.skip("the base call reads or generates a data set: covered by test_data")
    with nowork.deadline(60, pytestconfig):
        entry.call(**args)


# ---------------------------------------------------------------------------------- absurd sizes
TB = 2 ** 40
X4 = lambda: np.zeros((1, 1, 4, 4), np.float32)  # noqa: E731
ABSURD = {  # id: (call, the argument the message names)
    "conv2d padding": (lambda: F.conv2d(X4(), np.zeros((1, 1, 3, 3), np.float32), padding=10 ** 6), "padding"),
    "conv_transpose2d stride": (lambda: F.conv_transpose2d(X4(), np.zeros((1, 1, 3, 3), np.float32), stride=10 ** 6),
                                "stride"),
    "conv_transpose1d stride": (lambda: F.conv_transpose1d(np.zeros((8, 64, 1000), np.float32),
                                                           np.zeros((64, 64, 3), np.float32), stride=2 ** 31 - 1),
                                "stride"),
    "conv_transpose2d dilation": (lambda: F.conv_transpose2d(X4(), np.zeros((1, 1, 3, 3), np.float32),
                                                             dilation=10 ** 8), "dilation"),
    "max_pool2d kernel and padding": (lambda: F.max_pool2d(X4(), 2 ** 31 - 1, padding=2 ** 30 - 1), "padding"),
    "avg_pool2d kernel and padding": (lambda: F.avg_pool2d(X4(), 2 ** 31 - 1, padding=2 ** 30 - 1), "padding"),
    "max_unpool2d stride": (lambda: F.max_unpool2d(X4(), np.zeros((1, 1, 4, 4), np.int64), 2, stride=10 ** 6),
                            "stride"),
    "max_unpool1d kernel_size": (lambda: F.max_unpool1d(np.zeros((64, 64, 4), np.float32),
                                                        np.zeros((64, 64, 4), np.int64), 2 ** 31 - 1), "kernel_size"),
    "adaptive_avg_pool2d output_size": (lambda: F.adaptive_avg_pool2d(X4(), 10 ** 6), "output_size"),
    "adaptive_avg_pool1d output_size": (lambda: F.adaptive_avg_pool1d(np.zeros((1, 1, 10 ** 4), np.float32),
                                                                      2 ** 31 - 1), "output_size"),
    "interpolate scale_factor 2-D": (lambda: F.interpolate(X4(), scale_factor=1e6), "scale_factor"),
    "interpolate scale_factor 1-D": (lambda: F.interpolate(np.zeros((1, 1, 8), np.float32), scale_factor=1e15),
                                     "scale_factor"),
    "interpolate size": (lambda: F.interpolate(X4(), size=(10 ** 6, 10 ** 6)), "size"),
    "linear": (lambda: F.linear(np.zeros((2 ** 20, 1), np.float32), np.zeros((2 ** 20, 1), np.float32)), "weight"),
    "Tensor @": (lambda: fc.tensor(np.zeros((2 ** 20, 1), np.float32)) @ np.zeros((1, 2 ** 20), np.float32), "other"),
    "Tensor + broadcast": (lambda: fc.tensor(np.zeros((2 ** 20, 1), np.float32)) + np.zeros(2 ** 20, np.float32),
                           "other"),
    "nn.Linear": (lambda: nn.Linear(10 ** 6, 10 ** 6), "in_features"),
    "nn.Conv2d kernel_size": (lambda: nn.Conv2d(1, 1, 10 ** 6), "kernel_size"),
    "nn.ConvTranspose1d channels": (lambda: nn.ConvTranspose1d(10 ** 6, 10 ** 6, 1000), "channels"),
}


@pytest.mark.parametrize("name", list(ABSURD))
def test_absurd_sizes_are_refused_before_any_allocation(name, monkeypatch, pytestconfig):
    """Outputs (or padded inputs, weights, resampling matrices) of more than 1 TiB: a ValueError that
    states the memory rule and names the argument, with nothing allocated."""
    call, arg = ABSURD[name]
    with nowork.deadline(DEADLINE_S, pytestconfig), nowork.no_work(monkeypatch) as work:
        with pytest.raises(ValueError) as info:
            call()
    message = str(info.value)
    assert "more than this machine's memory" in message and _names(message, arg), message
    planned = float(re.search(r"\(([\d.e+]+) bytes\)", message).group(1))
    assert planned > TB, message
    assert work == [], f"work done before the error: {work}"


def test_the_memory_rule_is_this_machines_memory(monkeypatch):
    """The rule is the physical memory: under a 1 MB limit a 2 MB output is refused, a 0.5 MB one is not."""
    monkeypatch.setattr(shapes, "memory_limit", lambda: 2 ** 20)
    x, w = np.zeros((1, 1, 256, 256), np.float32), np.zeros((8, 1, 1, 1), np.float32)
    with pytest.raises(ValueError, match="more than this machine's memory"):
        F.conv2d(x, w)
    assert F.conv2d(x, w[:2]).shape == (1, 2, 256, 256)
    monkeypatch.undo()
    assert 2 ** 28 < shapes.memory_limit() < 2 ** 50


# ------------------------------------------------------------------- non-contiguous and reversed views
def _transposed(a):
    """The same values in a non-contiguous array (the last two axes' storage swapped)."""
    if a.ndim < 2:
        return _strided(a)
    return np.ascontiguousarray(np.swapaxes(a, -1, -2)).swapaxes(-1, -2)


def _reversed(a):
    """The same values in an array with a negative stride along its last axis."""
    return np.ascontiguousarray(a[..., ::-1])[..., ::-1] if a.ndim else a


def _strided(a):
    """The same values as every other element of a larger array."""
    if not a.ndim:
        return a
    big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
    big[..., ::2] = a
    return big[..., ::2]


VIEWS = {"transposed": _transposed, "reversed": _reversed, "strided": _strided}


def _x(*shape):
    return data(*shape, dtype=np.float64, seed=len(shape))


VIEW_OPS = {  # id: (fn of tensors, float64 arrays that get gradients, other arrays)
    "conv1d": (lambda x, w, b: F.conv1d(x, w, b, stride=2, padding=1, groups=2), (_x(2, 4, 9), _x(6, 2, 3), _x(6)), ()),
    "conv2d": (lambda x, w, b: F.conv2d(x, w, b, padding="same", dilation=2),
               (_x(2, 3, 7, 6), _x(4, 3, 3, 2), _x(4)), ()),
    "conv_transpose1d": (lambda x, w, b: F.conv_transpose1d(x, w, b, stride=2, output_padding=1),
                         (_x(2, 4, 5), _x(4, 3, 3), _x(3)), ()),
    "conv_transpose2d": (lambda x, w: F.conv_transpose2d(x, w, stride=(2, 1), padding=1),
                         (_x(2, 4, 5, 4), _x(4, 3, 3, 3)), ()),
    "max_pool1d": (lambda x: F.max_pool1d(x, 3, stride=2, padding=1), (_x(2, 3, 9),), ()),
    "max_pool2d": (lambda x: F.max_pool2d(x, 2, ceil_mode=True), (_x(2, 3, 7, 5),), ()),
    "avg_pool1d": (lambda x: F.avg_pool1d(x, 3, padding=1, count_include_pad=False), (_x(2, 3, 9),), ()),
    "avg_pool2d": (lambda x: F.avg_pool2d(x, (2, 3), stride=1), (_x(2, 3, 5, 6),), ()),
    "lp_pool1d": (lambda x: F.lp_pool1d(x * x + 1.0, 2, 3), (_x(2, 3, 9),), ()),
    "lp_pool2d": (lambda x: F.lp_pool2d(x * x + 1.0, 3, 2), (_x(2, 3, 6, 4),), ()),
    "max_unpool2d": (lambda x, i: F.max_unpool2d(x, i, 2), (_x(2, 3, 3, 2),),
                     (F.max_pool2d(_x(2, 3, 6, 4), 2, return_indices=True)[1].numpy(),)),
    "max_unpool1d": (lambda x, i: F.max_unpool1d(x, i, 2), (_x(2, 3, 4),),
                     (F.max_pool1d(_x(2, 3, 8), 2, return_indices=True)[1].numpy(),)),
    "adaptive_avg_pool1d": (lambda x: F.adaptive_avg_pool1d(x, 4), (_x(2, 3, 9),), ()),
    "adaptive_avg_pool2d": (lambda x: F.adaptive_avg_pool2d(x, (2, 3)), (_x(2, 3, 5, 7),), ()),
    "interpolate nearest": (lambda x: F.interpolate(x, scale_factor=2.5), (_x(2, 3, 4, 3),), ()),
    "interpolate bilinear": (lambda x: F.interpolate(x, size=(5, 7), mode="bilinear", align_corners=True),
                             (_x(2, 3, 4, 3),), ()),
    "interpolate linear": (lambda x: F.interpolate(x, size=7, mode="linear"), (_x(2, 3, 4),), ()),
    "linear": (lambda x, w, b: F.linear(x, w, b), (_x(3, 2, 5), _x(4, 5), _x(4)), ()),
    "relu": (F.relu, (_x(3, 4),), ()),
    "tanh": (F.tanh, (_x(3, 4),), ()),
    "sigmoid": (F.sigmoid, (_x(3, 4),), ()),
    "flatten": (F.flatten, (_x(2, 3, 4),), ()),
    "reshape": (lambda x: F.reshape(x, (4, -1)), (_x(2, 3, 4),), ()),
    "softmax": (lambda x: F.softmax(x, dim=0), (_x(3, 4),), ()),
    "log_softmax": (F.log_softmax, (_x(3, 4),), ()),
    "cross_entropy": (lambda x, t: F.cross_entropy(x, t, reduction="none"), (_x(4, 5),), (np.array([0, 4, 2, 1]),)),
    "nll_loss": (lambda x, t: F.nll_loss(x, t, reduction="sum"), (_x(4, 5),), (np.array([3, 4, 2, 1]),)),
    "mse_loss": (lambda x, y: F.mse_loss(x, y, reduction="none"), (_x(3, 4), _x(4, 4)[:3]), ()),
    "dropout": (lambda x: F.dropout(x, 0.3), (_x(3, 4),), ()),
    "Tensor ops": (lambda a, b: ((a + b) * a - a / (b * b + 1.0)) @ b.T, (_x(3, 4), _x(3, 4)), ()),
}


def _run(fn, arrays, others, view, grad):
    """Forward and gradients of ``fn`` on ``view`` of every array (indices and labels too)."""
    fc.manual_seed(0)  # dropout draws the same mask every run
    tensors = [fc.Tensor(view(a), requires_grad=True) for a in arrays]
    y = fn(*tensors, *[view(o) for o in others])
    y.backward(view(grad(y.shape)))
    return y.numpy(), [t.grad for t in tensors]


@pytest.mark.parametrize("view", list(VIEWS))
@pytest.mark.parametrize("name", list(VIEW_OPS))
def test_views_give_the_contiguous_result(name, view, pytestconfig):
    """Non-contiguous, negative-stride and strided inputs (and output gradients) are valid: the results
    and gradients equal those of contiguous copies."""
    fn, arrays, others = VIEW_OPS[name]
    grad = lambda shape: data(*shape, dtype=np.float64, seed=9)  # noqa: E731
    assert not any(VIEWS[view](a).flags.c_contiguous for a in arrays if a.ndim and a.size > 1)
    with nowork.deadline(60, pytestconfig):
        y, grads = _run(fn, arrays, others, VIEWS[view], grad)
        y_ref, grads_ref = _run(fn, arrays, others, lambda a: np.array(a, order="C"), grad)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    for g, g_ref in zip(grads, grads_ref):
        np.testing.assert_allclose(g, g_ref, rtol=1e-12, atol=1e-12)
