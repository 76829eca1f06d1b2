"""Bad input gives a ValueError or TypeError whose message names the offending argument, before any work."""
import sys

import numpy as np
import pytest

import fastconv as fc
import fastconv.functional as F
import nowork
from fastconv.backends import registry

MAKE = np.asarray  # how the cases' float arrays are made: plain, or watched by the before-any-work test


def _x(*shape, dtype=np.float32):
    return MAKE(np.zeros(shape, dtype))


def X2():
    return _x(1, 4, 6, 6)


def W2():
    return _x(2, 4, 3, 3)


def X1():
    return _x(1, 4, 8)


def W1():
    return _x(2, 4, 3)


IDX = np.zeros((1, 2, 3, 3), np.int64)

CASES = {  # id: (call, exception, regex on the message)
    # ---- missing arrays
    "conv2d weight None": (lambda: F.conv2d(X2(), None), TypeError, "weight must be an array"),
    "conv2d input None": (lambda: F.conv2d(None, W2()), TypeError, "input must be an array"),
    "conv1d weight None": (lambda: F.conv1d(X1(), None), TypeError, "weight must be an array"),
    "conv_t weight None": (lambda: F.conv_transpose1d(X1(), None), TypeError, "weight must be an array"),
    "linear weight None": (lambda: F.linear(_x(2, 3), None), TypeError, "weight must be an array"),
    "unpool indices None": (lambda: F.max_unpool2d(_x(1, 2, 3, 3), None, 2), TypeError, "indices"),
    "mse target None": (lambda: F.mse_loss(_x(3), None), TypeError, "target"),
    "ce target None": (lambda: F.cross_entropy(_x(3, 4), None), TypeError, "target"),
    "relu str": (lambda: F.relu("abc"), TypeError, "input must be an array"),
    # ---- convolution: ranks, channels, groups
    "conv2d input rank": (lambda: F.conv2d(_x(4, 6, 6), W2()), ValueError, "input must be 4-D"),
    "conv1d input rank": (lambda: F.conv1d(X2(), W1()), ValueError, "input must be 3-D"),
    "conv2d weight rank": (lambda: F.conv2d(X2(), _x(2, 4, 3)), ValueError, "weight must be 4-D"),
    "conv_t weight rank": (lambda: F.conv_transpose2d(X2(), _x(4, 2, 3)), ValueError, "weight must be 4-D"),
    "conv C_in mismatch": (lambda: F.conv2d(X2(), _x(2, 3, 3, 3)), ValueError, r"weight\.shape\[1\] \* groups"),
    "conv C_in mismatch groups": (lambda: F.conv2d(X2(), _x(2, 4, 3, 3), groups=2), ValueError,
                                  r"weight\.shape\[1\] \* groups"),
    "conv groups not dividing C_in": (lambda: F.conv2d(_x(1, 3, 6, 6), _x(2, 1, 3, 3), groups=2), ValueError,
                                      "groups"),
    "conv groups not dividing C_out": (lambda: F.conv2d(X2(), _x(3, 2, 3, 3), groups=2), ValueError,
                                       r"weight\.shape\[0\].*groups"),
    "conv groups zero": (lambda: F.conv2d(X2(), W2(), groups=0), ValueError, "groups"),
    "conv groups float": (lambda: F.conv2d(X2(), W2(), groups=1.0), TypeError, "groups"),
    "conv_t channels": (lambda: F.conv_transpose2d(X2(), _x(3, 2, 3, 3)), ValueError, r"weight\.shape\[0\]"),
    "conv_t groups": (lambda: F.conv_transpose1d(_x(1, 3, 5), _x(3, 1, 3), groups=2), ValueError, "groups"),
    # ---- convolution: geometry
    "conv stride zero": (lambda: F.conv2d(X2(), W2(), stride=0), ValueError, "stride must be positive"),
    "conv stride negative": (lambda: F.conv1d(X1(), W1(), stride=-1), ValueError, "stride must be positive"),
    "conv stride wrong length": (lambda: F.conv2d(X2(), W2(), stride=(1, 1, 1)), TypeError, "stride"),
    "conv stride float": (lambda: F.conv2d(X2(), W2(), stride=1.5), TypeError, "stride"),
    "conv stride bool": (lambda: F.conv2d(X2(), W2(), stride=(True, 1)), TypeError, "stride"),
    "conv dilation zero": (lambda: F.conv2d(X2(), W2(), dilation=(1, 0)), ValueError, "dilation must be positive"),
    "conv_t dilation zero": (lambda: F.conv_transpose1d(X1(), _x(4, 2, 3), dilation=0), ValueError, "dilation"),
    "conv_t stride zero": (lambda: F.conv_transpose2d(X2(), _x(4, 2, 3, 3), stride=0), ValueError, "stride"),
    "conv kernel zero": (lambda: F.conv2d(X2(), _x(2, 4, 0, 3)), ValueError, "kernel"),
    "conv_t kernel zero": (lambda: F.conv_transpose1d(X1(), _x(4, 2, 0)), ValueError, "kernel"),
    "conv padding negative": (lambda: F.conv2d(X2(), W2(), padding=-1), ValueError, "padding must be non-negative"),
    "conv padding negative tuple": (lambda: F.conv1d(X1(), W1(), padding=(-2,)), ValueError, "padding"),
    "conv_t padding negative": (lambda: F.conv_transpose2d(X2(), _x(4, 2, 3, 3), padding=(0, -1)), ValueError,
                                "padding"),
    "conv_t padding string": (lambda: F.conv_transpose1d(X1(), _x(4, 2, 3), padding="same"), ValueError, "padding"),
    "conv_t output_padding": (lambda: F.conv_transpose1d(X1(), _x(4, 2, 3), stride=2, output_padding=2), ValueError,
                              "output_padding"),
    "conv_t output_padding negative": (lambda: F.conv_transpose1d(X1(), _x(4, 2, 3), output_padding=-1), ValueError,
                                       "output_padding"),
    "conv_t empty output": (lambda: F.conv_transpose1d(_x(1, 4, 1), _x(4, 2, 1), padding=1), ValueError, "padding"),
    "conv same with stride": (lambda: F.conv2d(X2(), W2(), padding="same", stride=2), ValueError, "padding='same'"),
    "conv unknown padding": (lambda: F.conv2d(X2(), W2(), padding="full"), ValueError, "padding"),
    "conv kernel > input": (lambda: F.conv2d(X2(), _x(2, 4, 7, 3)), ValueError, "kernel size 7"),
    "conv dilated kernel > input": (lambda: F.conv1d(X1(), W1(), dilation=5, padding=1), ValueError, "dilation 5"),
    # ---- dtypes
    "conv int input": (lambda: F.conv2d(X2().astype(np.int64), W2()), TypeError, "input must be float"),
    "conv int weight": (lambda: F.conv2d(X2(), W2().astype(np.int32)), TypeError, "weight must be float"),
    "conv complex": (lambda: F.conv1d(X1().astype(np.complex64), W1()), TypeError, "input"),
    "conv float16": (lambda: F.conv1d(X1().astype(np.float16), W1()), TypeError, "input"),
    "conv mixed": (lambda: F.conv2d(X2(), W2().astype(np.float64)), TypeError, "weight has dtype float64"),
    "conv mixed bias": (lambda: F.conv2d(X2(), W2(), np.zeros(2)), TypeError, "bias"),
    "conv_t mixed": (lambda: F.conv_transpose1d(X1().astype(np.float64), _x(4, 2, 3)), TypeError, "weight"),
    "pool int": (lambda: F.max_pool2d(X2().astype(np.int64), 2), TypeError, "input"),
    "avg pool int": (lambda: F.avg_pool1d(X1().astype(np.int8), 2), TypeError, "input"),
    "linear mixed": (lambda: F.linear(_x(2, 3), _x(4, 3, dtype=np.float64)), TypeError, "weight"),
    "interpolate int": (lambda: F.interpolate(X2().astype(np.int64), size=3), TypeError, "input"),
    "mse mixed": (lambda: F.mse_loss(_x(3), _x(3, dtype=np.float64)), TypeError, "target"),
    "requires_grad int": (lambda: fc.tensor(np.arange(3), requires_grad=True), TypeError, "float"),
    # ---- bias
    "conv bias length": (lambda: F.conv2d(X2(), W2(), _x(3)), ValueError, r"bias must have shape \(2,\)"),
    "conv bias rank": (lambda: F.conv1d(X1(), W1(), _x(2, 1)), ValueError, "bias"),
    "conv_t bias length": (lambda: F.conv_transpose2d(X2(), _x(4, 2, 3, 3), _x(4)), ValueError, "bias"),
    "linear bias": (lambda: F.linear(_x(2, 3), _x(4, 3), _x(3)), ValueError, "bias"),
    "linear shapes": (lambda: F.linear(_x(2, 3), _x(4, 5)), ValueError, "weight.shape"),
    # ---- pooling
    "pool input rank": (lambda: F.max_pool2d(_x(6, 6), 2), ValueError, "input must be 4-D"),
    "pool1d input rank": (lambda: F.avg_pool1d(X2(), 2), ValueError, "input must be 3-D"),
    "pool kernel zero": (lambda: F.max_pool2d(X2(), 0), ValueError, "kernel_size must be positive"),
    "pool kernel tuple": (lambda: F.avg_pool2d(X2(), (2, 2, 2)), TypeError, "kernel_size"),
    "pool stride zero": (lambda: F.max_pool1d(X1(), 2, stride=0), ValueError, "stride"),
    "pool dilation zero": (lambda: F.max_pool1d(X1(), 2, dilation=0), ValueError, "dilation"),
    "pool padding negative": (lambda: F.max_pool2d(X2(), 2, padding=-1), ValueError, "padding"),
    "pool padding > half kernel": (lambda: F.max_pool2d(X2(), 3, padding=2), ValueError, "padding"),
    "avg pool padding > half kernel": (lambda: F.avg_pool1d(X1(), 2, padding=(2,)), ValueError, "padding"),
    "pool kernel > input": (lambda: F.max_pool2d(X2(), 7), ValueError, "kernel_size 7"),
    "lp pool norm": (lambda: F.lp_pool2d(X2(), 0, 2), ValueError, "norm_type"),
    "lp pool norm type": (lambda: F.lp_pool1d(X1(), "2", 2), TypeError, "norm_type"),
    "lp pool stride before any work": (lambda: F.lp_pool2d(X2(), 2, 2, stride=0), ValueError, "stride"),
    "lp pool kernel": (lambda: F.lp_pool2d(X2(), 2, 0), ValueError, "kernel_size"),
    "adaptive output_size": (lambda: F.adaptive_avg_pool2d(X2(), 0), ValueError, "output_size"),
    "adaptive rank": (lambda: F.adaptive_avg_pool1d(X2(), 2), ValueError, "input must be 3-D"),
    # ---- unpooling
    "unpool indices shape": (lambda: F.max_unpool2d(_x(1, 2, 3, 3), IDX[:, :1], 2), ValueError, "indices"),
    "unpool indices float": (lambda: F.max_unpool2d(_x(1, 2, 3, 3), IDX.astype(np.float32), 2), TypeError,
                             "indices"),
    "unpool indices negative": (lambda: F.max_unpool2d(_x(1, 2, 3, 3), IDX - 1, 2), ValueError, "indices"),
    "unpool indices too large": (lambda: F.max_unpool2d(_x(1, 2, 3, 3), IDX + 36, 2), ValueError, "indices"),
    "unpool1d indices too large": (lambda: F.max_unpool1d(_x(1, 2, 3), np.full((1, 2, 3), 7), 2, output_size=(7,)),
                                   ValueError, "indices"),
    "unpool output_size small": (lambda: F.max_unpool2d(_x(1, 2, 3, 3), IDX, 2, output_size=(4, 6)), ValueError,
                                 "output_size"),
    "unpool output_size large": (lambda: F.max_unpool1d(_x(1, 2, 3), np.zeros((1, 2, 3), np.int64), 2,
                                                        output_size=(8,)), ValueError, "output_size"),
    "unpool output_size length": (lambda: F.max_unpool2d(_x(1, 2, 3, 3), IDX, 2, output_size=(6,)), TypeError,
                                  "output_size"),
    "unpool output_size zero": (lambda: F.max_unpool2d(_x(1, 2, 3, 3), IDX, 2, output_size=(0, 6)), ValueError,
                                "output_size"),
    "unpool rank": (lambda: F.max_unpool2d(_x(2, 3, 3), IDX[0], 2), ValueError, "input"),
    "unpool kernel": (lambda: F.max_unpool2d(_x(1, 2, 3, 3), IDX, 0), ValueError, "kernel_size"),
    "unpool stride": (lambda: F.max_unpool2d(_x(1, 2, 3, 3), IDX, 2, stride=0), ValueError, "stride"),
    "unpool padding": (lambda: F.max_unpool2d(_x(1, 2, 3, 3), IDX, 2, padding=-1), ValueError, "padding"),
    # ---- backends
    "unknown backend": (lambda: F.conv2d(X2(), W2(), backend="turbo"), ValueError, "backend"),
    "unknown backend pool": (lambda: F.max_pool2d(X2(), 2, backend="turbo"), ValueError, "backend"),
    "set unknown backend": (lambda: fc.set_backend("turbo"), ValueError, "backend"),
    "cuda backend, CPU tensors": (lambda: F.conv2d(X2(), W2(), backend="cuda"), ValueError, "backend='cuda'"),
    # ---- interpolate
    "interpolate rank": (lambda: F.interpolate(_x(2, 3), size=4), ValueError, "input"),
    "interpolate mode": (lambda: F.interpolate(X2(), size=4, mode="bicubic"), ValueError, "mode"),
    "interpolate linear on 2-D": (lambda: F.interpolate(X2(), size=4, mode="linear"), ValueError, "mode"),
    "interpolate bilinear on 1-D": (lambda: F.interpolate(X1(), size=4, mode="bilinear"), ValueError, "mode"),
    "interpolate align_corners nearest": (lambda: F.interpolate(X1(), size=4, align_corners=True), ValueError,
                                          "align_corners"),
    "interpolate neither": (lambda: F.interpolate(X2()), ValueError, "size and scale_factor"),
    "interpolate both": (lambda: F.interpolate(X2(), size=3, scale_factor=2), ValueError, "size and scale_factor"),
    "interpolate size zero": (lambda: F.interpolate(X2(), size=0), ValueError, "size"),
    "interpolate size length": (lambda: F.interpolate(X2(), size=(2, 3, 4)), TypeError, "size"),
    "interpolate scale negative": (lambda: F.interpolate(X2(), scale_factor=-2.0), ValueError, "scale_factor"),
    "interpolate scale length": (lambda: F.interpolate(X1(), scale_factor=(2.0, 2.0)), ValueError, "scale_factor"),
    "interpolate scale to empty": (lambda: F.interpolate(X1(), scale_factor=0.1), ValueError, "scale_factor"),
    # ---- losses and glue
    "ce reduction": (lambda: F.cross_entropy(_x(3, 4), np.zeros(3, np.int64), reduction="avg"), ValueError,
                     "reduction"),
    "nll reduction": (lambda: F.nll_loss(_x(3, 4), np.zeros(3, np.int64), reduction=None), ValueError, "reduction"),
    "mse reduction": (lambda: F.mse_loss(_x(3), _x(3), reduction="max"), ValueError, "reduction"),
    "ce float target": (lambda: F.cross_entropy(_x(3, 4), np.zeros(3, np.float32)), TypeError, "target"),
    "nll float target": (lambda: F.nll_loss(_x(3, 4), np.zeros(3)), TypeError, "target"),
    "ce target shape": (lambda: F.cross_entropy(_x(3, 4), np.zeros(4, np.int64)), ValueError, "target"),
    "ce target range": (lambda: F.cross_entropy(_x(3, 4), np.array([0, 4, 1])), ValueError, "target"),
    "ce target negative": (lambda: F.cross_entropy(_x(3, 4), np.array([0, -1, 1])), ValueError, "target"),
    "ce input rank": (lambda: F.cross_entropy(_x(3, 4, 2), np.zeros(3, np.int64)), ValueError, "input"),
    "nll int input": (lambda: F.nll_loss(np.zeros((3, 4), np.int64), np.zeros(3, np.int64)), TypeError, "input"),
    "mse shapes": (lambda: F.mse_loss(_x(3), _x(4)), ValueError, "target"),
    "dropout p": (lambda: F.dropout(_x(3), p=1.5), ValueError, "p"),
    "device": (lambda: fc.tensor(_x(3), device="tpu"), ValueError, "device"),
}


@pytest.mark.parametrize("call, error, match", list(CASES.values()), ids=list(CASES))
def test_bad_input_raises_naming_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_unavailable_backend(monkeypatch):
    """A known backend that cannot run here is a BackendUnavailable (a RuntimeError) naming it."""
    monkeypatch.setitem(registry.MODULES, "ghost", "fastconv.backends._no_such_module")
    monkeypatch.delitem(registry._loaded, "ghost", raising=False)
    with pytest.raises(registry.BackendUnavailable, match="'ghost'"):
        F.conv2d(X2(), W2(), backend="ghost")
    with pytest.raises(registry.BackendUnavailable, match="'ghost'"):
        fc.set_backend("ghost")
    assert fc.get_backend() != "ghost"
    assert "ghost" not in fc.available_backends()


def test_unavailable_cuda_backend():
    from fastconv import cuda
    if cuda.is_available():
        pytest.skip("a GPU (or the simulator) is available here")
    with pytest.raises(registry.BackendUnavailable, match="cuda"):
        registry.load("cuda")
    with pytest.raises((ValueError, RuntimeError), match="cuda"):
        fc.tensor(_x(3), device="cuda")


@pytest.mark.parametrize("name", list(CASES))
def test_errors_come_before_any_work(name, monkeypatch):
    """The same error comes out before any work: no kernel planned, no arithmetic on the inputs (they are
    watched arrays here), no large allocation."""
    monkeypatch.setattr(sys.modules[__name__], "MAKE", nowork.watched)
    call, error, match = CASES[name]
    with nowork.no_work(monkeypatch) as work, pytest.raises(error, match=match):
        call()
    assert work == [], f"work done before the error: {work}"


def test_the_work_watch_sees_work(monkeypatch):
    """The watch above can fail: it sees a kernel, arithmetic on a watched input and a large allocation."""
    monkeypatch.setattr(sys.modules[__name__], "MAKE", nowork.watched)
    with nowork.no_work(monkeypatch) as kernel:
        F.conv2d(X2(), W2())
    with nowork.no_work(monkeypatch) as arithmetic:
        F.linear(_x(2, 3), _x(4, 3))
    with nowork.no_work(monkeypatch) as allocation:
        np.ones(nowork.ALLOCATION_LIMIT // 4 + 1, np.float32)
    assert kernel[0] == "plan conv2d"
    assert "np.matmul.__call__" in arithmetic
    assert allocation and allocation[-1].startswith("allocated")
