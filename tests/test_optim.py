"""Optimizers and schedules follow torch.optim step for step."""
import numpy as np
import pytest

import fastconv as fc
from fastconv import optim
from fastconv.nn import Parameter
from helpers import torch

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch (the oracle) is not installed")

SHAPES = [(4, 3, 3, 3), (4,), (10, 7)]


def _params(seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in SHAPES]


def _grads(step, dtype=np.float32):
    rng = np.random.default_rng(100 + step)
    return [rng.standard_normal(s).astype(dtype) for s in SHAPES]


def _run_fastconv(make, steps, dtype=np.float32):
    params = [Parameter(a.copy()) for a in _params(dtype=dtype)]
    opt = make(params)
    for step in range(steps):
        for p, g in zip(params, _grads(step, dtype)):
            p.grad = g
        opt.step()
    return [p.numpy() for p in params], opt


def _run_torch(make, steps, dtype=np.float32):
    params = [torch.tensor(a.copy(), requires_grad=True) for a in _params(dtype=dtype)]
    opt = make(params)
    for step in range(steps):
        for p, g in zip(params, _grads(step, dtype)):
            p.grad = torch.from_numpy(g)
        opt.step()
    return [p.detach().numpy() for p in params]


SGD_CASES = [dict(lr=0.1), dict(lr=0.1, momentum=0.9), dict(lr=0.05, momentum=0.9, dampening=0.3),
             dict(lr=0.1, weight_decay=0.01), dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4),
             dict(lr=0.1, momentum=0.5, nesterov=True)]
ADAM_CASES = [("Adam", dict(lr=1e-2)), ("Adam", dict(lr=1e-2, weight_decay=0.01, betas=(0.8, 0.99))),
              ("AdamW", dict(lr=1e-2)), ("AdamW", dict(lr=3e-3, weight_decay=0.1, eps=1e-6))]


@needs_torch
@pytest.mark.parametrize("foreach", [None, False], ids=["flat", "per-tensor"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kwargs", SGD_CASES, ids=str)
def test_sgd_matches_torch(kwargs, dtype, foreach):
    ours, _ = _run_fastconv(lambda ps: optim.SGD(ps, **kwargs, foreach=foreach), 6, dtype)
    ref = _run_torch(lambda ps: torch.optim.SGD(ps, **kwargs), 6, dtype)
    tol = 2e-6 if dtype == np.float32 else 1e-12
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


@needs_torch
@pytest.mark.parametrize("foreach", [None, False], ids=["flat", "per-tensor"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,kwargs", ADAM_CASES, ids=str)
def test_adam_matches_torch(name, kwargs, dtype, foreach):
    ours, _ = _run_fastconv(lambda ps: getattr(optim, name)(ps, **kwargs, foreach=foreach), 6, dtype)
    ref = _run_torch(lambda ps: getattr(torch.optim, name)(ps, **kwargs), 6, dtype)
    tol = 2e-6 if dtype == np.float32 else 1e-12
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


@needs_torch
@pytest.mark.parametrize("name,kwargs", [("StepLR", dict(step_size=3, gamma=0.5)),
                                         ("CosineAnnealingLR", dict(T_max=7, eta_min=1e-4)),
                                         ("CosineAnnealingLR", dict(T_max=10))])
def test_schedules_match_torch(name, kwargs):
    ours = optim.SGD([Parameter(np.zeros(2, np.float32))], lr=0.1)
    ref = torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=0.1)
    s_ours, s_ref = getattr(optim, name)(ours, **kwargs), getattr(torch.optim.lr_scheduler, name)(ref, **kwargs)
    for _ in range(15):
        assert s_ours.get_last_lr()[0] == pytest.approx(s_ref.get_last_lr()[0], rel=1e-12, abs=1e-15)
        ref.step()
        s_ours.step()
        s_ref.step()


@pytest.mark.parametrize("make", [lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
                                  lambda ps: optim.Adam(ps, lr=1e-2, weight_decay=1e-3),
                                  lambda ps: optim.AdamW(ps, lr=1e-2)])
def test_state_dict_resumes_exactly(make):
    straight, _ = _run_fastconv(make, 5)
    params = [Parameter(a.copy()) for a in _params()]
    first = make(params)
    for step in range(3):
        for p, g in zip(params, _grads(step)):
            p.grad = g
        first.step()
    saved = first.state_dict()
    second = make(params)  # a fresh optimizer, as after a restart
    second.load_state_dict(saved)
    for step in range(3, 5):
        for p, g in zip(params, _grads(step)):
            p.grad = g
        second.step()
    for a, b in zip(straight, params):
        assert np.array_equal(a, b.numpy())


@pytest.mark.parametrize("foreach", [None, False], ids=["flat", "per-tensor"])
def test_updates_in_place_and_reuse_state(foreach):
    params = [Parameter(a) for a in _params()]
    arrays = [p.data for p in params]
    opt = optim.Adam(params, lr=1e-2, foreach=foreach)

    def buffers():
        state = [v for p in params for v in opt.state[p].values() if hasattr(v, "shape")]
        scratch = [a for p in params for a in opt._scratch.get(p, ())]
        flat = [a for _, f in opt._flat.values() if f for a in (f.g, f.w, f.t, f.u, *f.state.values())]
        return {id(a) for a in state + scratch + flat}
    for step in range(3):
        for p, g in zip(params, _grads(step)):
            p.grad = g
        opt.step()
        if step == 0:
            first = buffers()
    assert all(p.data is a for p, a in zip(params, arrays))
    assert buffers() == first
    assert all(opt.state[p]["step"] == 3 for p in params)
    assert any(f for _, f in opt._flat.values()) == (foreach is None)


def test_parameters_joining_late_fall_back_to_per_tensor_updates():
    """A parameter without a gradient at first has fewer steps than the others: the group can no longer
    be updated as one vector, and each tensor keeps its own bias correction (as in torch)."""
    def run(make, lib):
        ps = [lib(a.copy()) for a in _params()]
        opt = make(ps)
        for step in range(4):
            for i, (p, g) in enumerate(zip(ps, _grads(step))):
                p.grad = None if (i == 1 and step < 2) else (g if lib is Parameter else torch.from_numpy(g))
            opt.step()
        return [p.numpy() if lib is Parameter else p.detach().numpy() for p in ps]
    if torch is None:
        pytest.skip("PyTorch (the oracle) is not installed")
    ours = run(lambda ps: optim.Adam(ps, lr=1e-2), Parameter)
    ref = run(lambda ps: torch.optim.Adam(ps, lr=1e-2), lambda a: torch.tensor(a, requires_grad=True))
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=2e-6)


def test_skips_params_without_grad_and_zero_grad():
    p, q = Parameter(np.ones(3, np.float32)), Parameter(np.ones(3, np.float32))
    opt = optim.SGD([p, q], lr=0.5)
    p.grad = np.ones(3, np.float32)
    opt.step()
    assert np.allclose(p.numpy(), 0.5) and np.allclose(q.numpy(), 1.0)
    opt.zero_grad()
    assert p.grad is None and q.grad is None


def test_param_groups_have_their_own_lr():
    p, q = Parameter(np.ones(2, np.float32)), Parameter(np.ones(2, np.float32))
    opt = optim.SGD([{"params": [p]}, {"params": [q], "lr": 0.5}], lr=0.1)
    sched = optim.StepLR(opt, step_size=1, gamma=0.5)
    p.grad = q.grad = np.ones(2, np.float32)
    opt.step()
    assert np.allclose(p.numpy(), 0.9) and np.allclose(q.numpy(), 0.5)
    sched.step()
    assert sched.get_last_lr() == [0.05, 0.25]


@pytest.mark.parametrize("make,match", [
    (lambda ps: optim.SGD(ps, lr=-1), "lr"),
    (lambda ps: optim.SGD(ps, lr=0.1, nesterov=True), "nesterov"),
    (lambda ps: optim.Adam(ps, betas=(0.9, 1.0)), "betas"),
    (lambda ps: optim.Adam(ps, eps=-1e-8), "eps"),
    (lambda ps: optim.SGD([], lr=0.1), "empty"),
    (lambda ps: optim.StepLR(optim.SGD(ps), step_size=0), "step_size"),
    (lambda ps: optim.CosineAnnealingLR(optim.SGD(ps), T_max=0), "T_max"),
])
def test_bad_hyperparameters(make, match):
    with pytest.raises(ValueError, match=match):
        make([Parameter(np.ones(2, np.float32))])


def test_rejects_non_leaf_and_tensor():
    p = Parameter(np.ones(2, np.float32))
    with pytest.raises(TypeError, match="iterable"):
        optim.SGD(p, lr=0.1)
    with pytest.raises(TypeError, match="leaf"):
        optim.SGD([p * 2], lr=0.1)
    with pytest.raises(TypeError, match="leaf"):
        optim.SGD([fc.tensor(np.ones(2, np.float32))], lr=0.1)


def test_load_state_dict_checks_shapes():
    opt = optim.Adam([Parameter(np.ones(3, np.float32))])
    q = Parameter(np.ones(4, np.float32))
    other = optim.Adam([q])
    q.grad = np.ones(4, np.float32)
    other.step()
    with pytest.raises(ValueError, match="shape"):
        opt.load_state_dict(other.state_dict())
