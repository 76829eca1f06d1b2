"""Optimizers (SGD, Adam, AdamW) and learning-rate schedules (StepLR, CosineAnnealingLR), as in PyTorch.

The formulas are ``torch.optim``'s (same hyperparameters, same bias correction, same order of operations
where it matters), so a model trained here follows the same path as in PyTorch up to float rounding.
Updates happen in place on ``param.data`` under ``no_grad``, written with the parameter's array namespace
(``param.xp``: NumPy on the CPU, fastconv's device-array namespace on the GPU) using only ufuncs with
``out=``. State (momentum, moments) and two scratch arrays per parameter are allocated on the first step
and reused, so a step allocates nothing proportional to the model.

    opt = fastconv.optim.Adam(model.parameters(), lr=1e-3)
    sched = fastconv.optim.CosineAnnealingLR(opt, T_max=steps)
    loss.backward(); opt.step(); opt.zero_grad(); sched.step()
"""
from __future__ import annotations

import math

import numpy as np

from .device import to_device
from .tensor import Tensor, no_grad

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "LRScheduler", "StepLR", "CosineAnnealingLR"]


def _check(name, value, low=0.0, high=None, open_high=False):
    """Hyperparameter ``value`` is a real number in ``[low, high]`` (``[low, high)`` with open_high)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if value < low or (high is not None and (value >= high if open_high else value > high)):
        bound = f"[{low}, {high}{')' if open_high else ']'}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return float(value)


class Optimizer:
    """Base class: parameter groups, per-parameter state, ``zero_grad`` and ``(load_)state_dict``.

    ``params`` is an iterable of Parameters, or of dicts ``{"params": [...], "lr": ...}`` (groups with
    their own hyperparameters, as in PyTorch).
    """

    def __init__(self, params, defaults):
        if isinstance(params, Tensor):
            raise TypeError("params must be an iterable of Parameters (e.g. model.parameters()), got a Tensor")
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        self.defaults = dict(defaults)
        self.param_groups = []
        self.state = {}       # Parameter -> {name: array or number}; saved by state_dict
        self._scratch = {}    # Parameter -> [array, array]; reused temporaries, never saved
        for group in (params if isinstance(params[0], dict) else [{"params": params}]):
            self.add_param_group(group)

    def add_param_group(self, group):
        group = dict(group)
        params = group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        for p in params:
            if not isinstance(p, Tensor) or not p.requires_grad or not p.is_leaf:
                raise TypeError(f"optimizers update leaf tensors that require grad, got {p!r}")
        known = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in known for p in params):
            raise ValueError("a parameter appears in more than one parameter group")
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        group["params"] = params
        self.param_groups.append(group)

    def zero_grad(self):
        """Drop every gradient (``grad = None``), as PyTorch's default ``set_to_none=True``."""
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    def step(self):
        """Update every parameter that has a gradient."""
        with no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        self._update(p, p.grad.data if isinstance(p.grad, Tensor) else p.grad, group)

    def _update(self, p, grad, group):
        raise NotImplementedError

    def _tmp(self, p):
        """Two scratch arrays shaped like ``p``, allocated once."""
        tmp = self._scratch.get(p)
        if tmp is None or tmp[0].shape != p.data.shape or tmp[0].dtype != p.data.dtype \
                or type(tmp[0]) is not type(p.data):
            xp = p.xp
            tmp = self._scratch[p] = [xp.empty_like(p.data), xp.empty_like(p.data)]
        return tmp

    # ------------------------------------------------------------------ state
    def _params(self):
        return [p for group in self.param_groups for p in group["params"]]

    def state_dict(self):
        """``{"state": {index: {...}}, "param_groups": [...]}``, arrays as NumPy copies (PyTorch's layout:
        parameters are numbered across groups in order)."""
        state = {}
        for i, p in enumerate(self._params()):
            if p in self.state:
                state[i] = {k: (np.array(to_device(v, "cpu"), copy=True) if _is_array(v) else v)
                            for k, v in self.state[p].items()}
        groups, start = [], 0
        for group in self.param_groups:
            n = len(group["params"])
            groups.append({**{k: v for k, v in group.items() if k != "params"},
                           "params": list(range(start, start + n))})
            start += n
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Restore hyperparameters and state saved by :meth:`state_dict` (arrays go to each parameter's
        device and dtype); the parameter groups must have the same sizes and shapes."""
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups) or any(
                len(g["params"]) != len(mine["params"]) for g, mine in zip(groups, self.param_groups)):
            raise ValueError("load_state_dict: the saved parameter groups do not match this optimizer's")
        params = self._params()
        saved = {int(k): v for k, v in state_dict["state"].items()}
        for i, values in saved.items():
            p = params[i]
            for k, v in values.items():
                if _is_array(v) and tuple(np.shape(v)) != p.shape:
                    raise ValueError(f"load_state_dict: state {k!r} of parameter {i} has shape "
                                     f"{tuple(np.shape(v))}, the parameter {p.shape}")
        for group, g in zip(self.param_groups, groups):
            group.update({k: v for k, v in g.items() if k != "params"})
        self.state = {}
        for i, values in saved.items():
            p = params[i]
            self.state[p] = {k: (to_device(np.array(v, dtype=p.dtype), p.device) if _is_array(v) else v)
                             for k, v in values.items()}


def _is_array(v):
    return hasattr(v, "shape") and hasattr(v, "dtype") and len(v.shape) > 0


class SGD(Optimizer):
    """Stochastic gradient descent with PyTorch's momentum, dampening, Nesterov and weight decay:

    ``d = g + wd*p``; ``buf = momentum*buf + (1-dampening)*d`` (``buf = d`` on the first step);
    ``d = d + momentum*buf`` (Nesterov) or ``d = buf``; ``p -= lr*d``.
    """

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        defaults = dict(lr=_check("lr", lr), momentum=_check("momentum", momentum),
                        dampening=_check("dampening", dampening),
                        weight_decay=_check("weight_decay", weight_decay), nesterov=bool(nesterov))
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov momentum needs momentum > 0 and dampening = 0")
        super().__init__(params, defaults)

    def _update(self, p, g, group):
        xp, data = p.xp, p.data
        lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
        t, u = self._tmp(p)
        d = g
        if wd:
            xp.multiply(data, wd, out=t)
            xp.add(t, g, out=t)
            d = t
        if momentum:
            state = self.state.setdefault(p, {})
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = xp.empty_like(data)
                xp.copyto(buf, d)
            else:
                xp.multiply(buf, momentum, out=buf)
                if group["dampening"]:
                    xp.multiply(d, 1.0 - group["dampening"], out=u)
                    xp.add(buf, u, out=buf)
                else:
                    xp.add(buf, d, out=buf)
            if group["nesterov"]:
                xp.multiply(buf, momentum, out=u)
                xp.add(d, u, out=u)
                d = u
            else:
                d = buf
        xp.multiply(d, lr, out=t)
        xp.subtract(data, t, out=data)


class Adam(Optimizer):
    """Adam (Kingma & Ba) with PyTorch's bias correction and L2 ``weight_decay`` added to the gradient:

    ``m = b1*m + (1-b1)*g``; ``v = b2*v + (1-b2)*g*g``;
    ``p -= lr/(1-b1**t) * m / (sqrt(v)/sqrt(1-b2**t) + eps)``.
    """
    decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        if len(tuple(betas)) != 2:
            raise ValueError(f"betas must be a pair, got {betas!r}")
        b1, b2 = betas
        defaults = dict(lr=_check("lr", lr), betas=(_check("betas[0]", b1, 0.0, 1.0, True),
                                                    _check("betas[1]", b2, 0.0, 1.0, True)),
                        eps=_check("eps", eps), weight_decay=_check("weight_decay", weight_decay))
        super().__init__(params, defaults)

    def _update(self, p, g, group):
        xp, data = p.xp, p.data
        lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        t, u = self._tmp(p)
        state = self.state.get(p)
        if state is None:
            state = self.state[p] = {"step": 0, "exp_avg": xp.zeros_like(data),
                                     "exp_avg_sq": xp.zeros_like(data)}
        state["step"] += 1
        step, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
        if wd and self.decoupled:
            xp.multiply(data, 1.0 - lr * wd, out=data)
        elif wd:
            xp.multiply(data, wd, out=t)
            xp.add(t, g, out=t)
            g = t
        xp.multiply(m, b1, out=m)
        xp.multiply(g, 1.0 - b1, out=u)
        xp.add(m, u, out=m)
        xp.multiply(v, b2, out=v)
        xp.multiply(g, g, out=u)
        xp.multiply(u, 1.0 - b2, out=u)
        xp.add(v, u, out=v)
        step_size = lr / (1.0 - b1 ** step)
        xp.sqrt(v, out=u)
        xp.divide(u, math.sqrt(1.0 - b2 ** step), out=u)
        xp.add(u, eps, out=u)
        xp.divide(m, u, out=u)
        xp.multiply(u, step_size, out=u)
        xp.subtract(data, u, out=data)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): ``p *= 1 - lr*wd`` before the Adam step."""
    decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(params, lr, betas, eps, weight_decay)


# --------------------------------------------------------------------------------- schedules
class LRScheduler:
    """Sets every group's ``lr`` from its initial lr and a step count; call :meth:`step` after each
    ``optimizer.step()`` (per batch or per epoch: the unit is the caller's)."""

    def __init__(self, optimizer, last_epoch=-1):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a fastconv Optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = last_epoch
        self.step()

    def lr_at(self, base_lr, epoch):
        raise NotImplementedError

    def step(self):
        self.last_epoch += 1
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = self.lr_at(base, self.last_epoch)

    def get_last_lr(self):
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self):
        return {k: v for k, v in vars(self).items() if k != "optimizer"}

    def load_state_dict(self, state):
        vars(self).update({k: v for k, v in state.items() if k != "optimizer"})


class StepLR(LRScheduler):
    """Multiply the lr by ``gamma`` every ``step_size`` steps."""

    def __init__(self, optimizer, step_size, gamma=0.1, last_epoch=-1):
        if not isinstance(step_size, int) or step_size < 1:
            raise ValueError(f"step_size must be a positive int, got {step_size!r}")
        self.step_size, self.gamma = step_size, _check("gamma", gamma)
        super().__init__(optimizer, last_epoch)

    def lr_at(self, base_lr, epoch):
        return base_lr * self.gamma ** (epoch // self.step_size)


class CosineAnnealingLR(LRScheduler):
    """Cosine decay from the initial lr to ``eta_min`` over ``T_max`` steps (SGDR without restarts)."""

    def __init__(self, optimizer, T_max, eta_min=0.0, last_epoch=-1):
        if not isinstance(T_max, int) or T_max < 1:
            raise ValueError(f"T_max must be a positive int, got {T_max!r}")
        self.T_max, self.eta_min = T_max, _check("eta_min", eta_min)
        super().__init__(optimizer, last_epoch)

    def lr_at(self, base_lr, epoch):
        return self.eta_min + (base_lr - self.eta_min) * (1 + math.cos(math.pi * epoch / self.T_max)) / 2
