"""Every fused GPU kernel against the unfused ops on the CPU, values and gradients, on several shapes:
convolution + bias + activation (direct and implicit-GEMM kernels, the weight gradient split over blocks,
the bias gradient from the same launch), linear + bias + activation, activation + pooling, cross-entropy,
and the optimizers' one-launch updates (across slabs and in chunks of tensors)."""
import numpy as np
import pytest

import fastconv as fc
import fastconv.functional as F
import fastconv.gpu.xp  # noqa: F401  (fc.gpu.xp)
from fastconv import optim
from fastconv.gpu import alloc, conv, launch
from fastconv.gpu import optim as gpu_optim

from cuda_helpers import CUDA_TESTS, assert_close, host
from test_cuda_functional import _rand, check_op

pytestmark = CUDA_TESTS + [pytest.mark.usefixtures("poisoned_outputs")]
ACTS = [None, "relu", "tanh", "sigmoid"]


# (x shape, w shape, conv arguments): few output channels run the direct kernel, many the implicit GEMM
CONVS = {
    "direct": ((2, 2, 5, 6), (3, 2, 3, 3), dict(padding=1)),
    "direct_strided_grouped": ((1, 4, 7, 6), (4, 2, 3, 2), dict(stride=(2, 3), groups=2)),
    "gemm": ((2, 1, 4, 5), (18, 1, 2, 3), dict(dilation=(2, 1), padding="same")),
}


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("name", sorted(CONVS))
def test_convolution_bias_activation(name, act):
    xs, ws, kwargs = CONVS[name]
    assert conv.use_direct(fc.shapes.conv_spec(xs, ws, groups=kwargs.get("groups", 1))) == name.startswith("direct")
    x, w, b = _rand(*xs), _rand(*ws, seed=1), _rand(ws[0], seed=2)
    check_op(lambda x, w, b: F.conv2d(x, w, b, activation=act, **kwargs), x, w, b)


@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_convolution_gradients_asked_for_alone(act):
    """Only the bias (a reduction through the activation), only the weight, only the input."""
    arrays = _rand(2, 2, 7), _rand(3, 2, 3, seed=1), _rand(3, seed=2)
    gy = _rand(2, 3, 5, seed=3)
    for which in range(3):
        grads = {}
        for device in ("cpu", "cuda"):
            ts = [fc.tensor(a, requires_grad=i == which, device=device) for i, a in enumerate(arrays)]
            F.conv1d(*ts, activation=act).backward(gy)
            grads[device] = ts[which].grad
        assert_close(grads["cuda"], grads["cpu"], np.float32, f"gradient {which} alone")


@pytest.mark.parametrize("act", ACTS)
def test_linear_bias_activation(act):
    x, w, b = _rand(3, 2, 5), _rand(4, 5, seed=1), _rand(4, seed=2)
    check_op(lambda x, w, b: F.linear(x, w, b, activation=act), x, w, b)
    check_op(lambda x, w: F.linear(x.transpose(1, 0, 2), w, activation=act), x, w)  # strided input


@pytest.mark.parametrize("act", ["relu", "sigmoid"])
def test_activation_then_pooling(act):
    x = _rand(2, 2, 5, 7)
    check_op(lambda x: F.max_pool2d(x, 3, 2, padding=1, ceil_mode=True, activation=act), x)
    check_op(lambda x: F.avg_pool2d(x, (2, 3), 2, padding=1, count_include_pad=False, activation=act), x)
    check_op(lambda x: F.max_pool1d(x.reshape(2, 2, 35), 4, 3, dilation=2, activation=act), x)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy(reduction, dtype):
    x, labels = _rand(6, 5, dtype=dtype), np.array([4, 0, 1, 1, 3, 2])
    check_op(lambda x: F.cross_entropy(x, fc.tensor(labels, device=x.device), reduction) * 2.0, x)


OPTIMIZERS = {
    "adam_l2": lambda ps: optim.Adam(ps, lr=1e-2, weight_decay=1e-2),
    "adamw": lambda ps: optim.AdamW(ps, lr=1e-2, weight_decay=0.1),
    "sgd_nesterov": lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-2, nesterov=True),
    "sgd_dampening": lambda ps: optim.SGD(ps, lr=0.1, momentum=0.5, dampening=0.3),
    "sgd_plain": lambda ps: optim.SGD(ps, lr=0.1),
}


def _optimize(device, make, shapes, steps=3):
    rng = np.random.default_rng(5)
    params = [fc.nn.Parameter(rng.standard_normal(s).astype(np.float32)).to(device) for s in shapes]
    opt = make(params)
    for _ in range(steps):
        for p in params:
            p.grad = fc.tensor(rng.standard_normal(p.shape).astype(np.float32), device=device).data
        opt.step()
    return [host(p) for p in params], opt


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_fused_optimizer_steps_follow_the_cpu(name, monkeypatch):
    """Parameters spread over several slabs (a launch per slab) and in chunks of two tensors per launch."""
    alloc.poison_outputs(False)
    monkeypatch.setattr(alloc, "SLAB", 1024)
    monkeypatch.setattr(gpu_optim, "MAX_TENSORS", 2)
    alloc.empty_cache()
    shapes = [(3, 4), (5,), (7, 2, 3), (1,), (130,)]
    cpu, cpu_opt = _optimize("cpu", OPTIMIZERS[name], shapes)
    with fc.cuda.profile() as prof:
        gpu, gpu_opt = _optimize("cuda", OPTIMIZERS[name], shapes)
    assert 3 < prof.counts()["optimizer"] < 3 * len(shapes)  # several slabs and chunks, fewer than tensors
    for i, (a, b) in enumerate(zip(gpu, cpu)):
        assert_close(a, b, np.float32, f"{name} parameter {i}")
    gpu_state = gpu_opt.state_dict()["state"]
    for i, values in cpu_opt.state_dict()["state"].items():
        for key, value in values.items():
            assert_close(np.asarray(gpu_state[i][key]), np.asarray(value), np.float32, f"{name} {key} {i}")
    alloc.empty_cache()


def test_profile_records_and_counting_mode_runs_nothing():
    alloc.poison_outputs(False)
    a = _rand(2, 3)
    x = fc.tensor(a, device="cuda")
    with fc.cuda.profile() as prof:
        y = (x * 2.0).sum()
    assert [(r.name, r.category) for r in prof.launches] == [("elementwise:multiply", "elementwise"),
                                                             ("reduce:sum", "reduction")]
    assert prof.launches[0].nbytes == 2 * a.nbytes and all(r.host_us > 0 for r in prof.launches)
    assert "2 launches (elementwise 1, reduction 1)" in prof.summary() and "| reduce:sum |" in prof.table()
    assert_close(y, (a * 2).sum())
    out = fc.gpu.xp.zeros(a.shape, np.float32)
    with fc.cuda.profile(count_only=True) as counted:
        fc.gpu.xp.multiply(x.data, 3.0, out=out)
        with fc.cuda.profile() as inner:  # the innermost profile is the one recording
            z = x.data * 3.0
    assert len(counted) == 1 and len(inner) == 1 and counted.launches[0].block == launch.GPU.threads
    assert_close(out, np.zeros_like(a))  # counted, not run
    assert_close(z, a * 3)
