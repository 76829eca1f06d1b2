"""Optimizers (SGD, Adam, AdamW) and learning-rate schedules (StepLR, CosineAnnealingLR), as in PyTorch.

The formulas are ``torch.optim``'s (same hyperparameters, same bias correction, same order of operations
where it matters), so a model trained here follows the same path as in PyTorch up to float rounding.
Updates happen in place on ``param.data`` under ``no_grad``, written with the parameter's array namespace
(``param.xp``: NumPy on the CPU, fastconv's device-array namespace on the GPU) using only ufuncs with
``out=``. State (momentum, moments) and scratch arrays are allocated on the first step and reused, so a
step allocates nothing proportional to the model.

Each update rule is written once, as a function of whole arrays. By default (``foreach``) a group's
parameters are updated together, with its states in flat vectors whose slices are each parameter's state.
On the CPU their gradients are gathered into one flat vector, the rule runs once on the flat vectors, and
each parameter subtracts its slice of the result: small models have many small tensors, and this turns
~13 NumPy calls per tensor into ~13 per group plus one per tensor. On the GPU one fused kernel
(``fastconv.gpu.optim``) runs the same arithmetic over every parameter of the group in one launch.

    opt = fastconv.optim.Adam(model.parameters(), lr=1e-3)
    sched = fastconv.optim.CosineAnnealingLR(opt, T_max=steps)
    loss.backward(); opt.step(); opt.zero_grad(); sched.step()
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from . import shapes
from .device import device_of, to_device
from .tensor import Tensor, no_grad

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "LRScheduler", "StepLR", "CosineAnnealingLR"]


def _check(name, value, low=0.0, high=None, open_high=False):
    """Hyperparameter ``value`` is a finite real number in ``[low, high]`` (``[low, high)`` with open_high)."""
    return shapes.real(name, value, low, high, high_open=open_high)


def _mapping(name, value, keys):
    """``value`` is a mapping holding ``keys`` (a saved state); TypeError naming ``name`` otherwise."""
    if not isinstance(value, Mapping) or any(k not in value for k in keys):
        raise TypeError(f"{name} must be a dict with keys {list(keys)} (from state_dict()), "
                        f"got {type(value).__name__}")


class Optimizer:
    """Base class: parameter groups, per-parameter state, ``zero_grad`` and ``(load_)state_dict``.

    ``params`` is an iterable of Parameters, or of dicts ``{"params": [...], "lr": ...}`` (groups with
    their own hyperparameters, as in PyTorch).
    """

    def __init__(self, params, defaults, foreach=None):
        if isinstance(params, (Tensor, str, Mapping)) or not hasattr(params, "__iter__"):
            raise TypeError(f"params must be an iterable of Parameters (e.g. model.parameters()), "
                            f"got {type(params).__name__}")
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        if len({isinstance(p, Mapping) for p in params}) > 1:
            raise TypeError("params must hold either Parameters or parameter groups (dicts), not both")
        if foreach is not None:
            foreach = shapes.flag("foreach", foreach)
        self.defaults = dict(defaults)
        self.foreach = foreach  # None: flat updates wherever possible (NumPy arrays); False: per tensor
        self.param_groups = []
        self.state = {}       # Parameter -> {name: array or number}; saved by state_dict
        self._scratch = {}    # Parameter -> [array, array]; reused temporaries, never saved
        self._flat = {}       # group index -> (key, _Flat or None); redone when the parameters change
        for group in (params if isinstance(params[0], dict) else [{"params": params}]):
            self.add_param_group(group)

    def add_param_group(self, group):
        """Add a group ``{"params": [...], **hyperparameters}``; its hyperparameters are checked as the
        constructor's are."""
        if not isinstance(group, Mapping) or "params" not in group:
            raise TypeError(f"a parameter group must be a dict with a 'params' entry, got {type(group).__name__}")
        group = dict(group)
        params = group["params"]
        if not isinstance(params, Tensor) and (isinstance(params, (str, Mapping)) or not hasattr(params, "__iter__")):
            raise TypeError(f"params must be an iterable of Parameters, got {type(params).__name__}")
        params = [params] if isinstance(params, Tensor) else list(params)
        for p in params:
            if not isinstance(p, Tensor) or not p.requires_grad or not p.is_leaf:
                raise TypeError(f"params: optimizers update leaf tensors that require grad, got {p!r}")
        known = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in known for p in params):
            raise ValueError("a parameter appears in more than one parameter group")
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        group.update(self.check_hyperparameters(**{key: group[key] for key in self.defaults}))
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
            for index, group in enumerate(self.param_groups):
                params = [p for p in group["params"] if p.grad is not None]
                grads = [p.grad.data if isinstance(p.grad, Tensor) else p.grad for p in params]
                flat = self._flat_for(index, params, grads) if params else None
                if flat is not None:
                    self._step_flat(flat, grads, group)
                else:
                    for p, g in zip(params, grads):
                        self._step_one(p, g, group)

    # Subclasses: the state names they keep per parameter, their hyperparameters' check, and one step on
    # whole arrays.
    state_names = ()

    @staticmethod
    def check_hyperparameters(**hyper):
        """The hyperparameters, checked and normalised (TypeError/ValueError naming a bad one)."""
        return hyper

    def _step_one(self, p, grad, group):
        raise NotImplementedError

    def _step_flat(self, flat, grads, group):
        raise NotImplementedError

    def _tmp(self, p):
        """Two scratch arrays shaped like ``p``, allocated once."""
        tmp = self._scratch.get(p)
        if tmp is None or tmp[0].shape != p.data.shape or tmp[0].dtype != p.data.dtype \
                or type(tmp[0]) is not type(p.data):
            xp = p.xp
            tmp = self._scratch[p] = [xp.empty_like(p.data), xp.empty_like(p.data)]
        return tmp

    def _flat_for(self, index, params, grads):
        """The group's flat buffers for these parameters, or None where they cannot be flattened (mixed
        devices or dtypes, strided parameters on the GPU, or parameters whose states are at different
        steps). The answer is cached until the parameters with gradients (or their arrays) change."""
        if self.foreach is False:
            return None
        key = tuple((id(p), id(p.data), type(p.data), p.data.dtype, p.data.shape, type(g), g.dtype)
                    for p, g in zip(params, grads))
        cached = self._flat.get(index)
        if cached is not None and cached[0] == key:
            return cached[1]
        dtype = params[0].data.dtype
        flat = None
        if all(k[3] == dtype and k[6] == dtype for k in key) and self._states_agree(params):
            if all(k[2] is np.ndarray and k[5] is np.ndarray for k in key):
                flat = _Flat(params, dtype, fused=False)
            elif all(device_of(p.data) == "cuda" and p.data.flags.c_contiguous and device_of(g) == "cuda"
                     for p, g in zip(params, grads)):
                flat = _Flat(params, dtype, fused=True)
        if flat is not None:
            self._adopt(flat)
        self._flat[index] = (key, flat)
        return flat

    def _states_agree(self, params):
        """True when the parameters' states have the same step counts and the same arrays."""
        states = [self.state.get(p, {}) for p in params]
        scalars = {tuple((k, v) for k, v in st.items() if not _is_array(v)) for st in states}
        present = {tuple(name in st for name in self.state_names) for st in states}
        return len(scalars) == 1 and len(present) == 1

    def _adopt(self, flat):
        """Move the parameters' existing state into flat vectors whose slices become their state."""
        states = [self.state.get(p, {}) for p in flat.params]
        for name in self.state_names:
            if name in states[0]:
                flat.state[name] = vec = flat.empty()
                for view, st in zip(flat.views(vec), states):
                    view[...] = st[name]
        views = {name: flat.views(vec) for name, vec in flat.state.items()}
        for i, (p, st) in enumerate(zip(flat.params, states)):
            if st or views:
                self.state[p] = dict(st, **{name: v[i] for name, v in views.items()})

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
        _mapping("state_dict", state_dict, ("state", "param_groups"))
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
        self.state, self._flat = {}, {}
        for i, values in saved.items():
            p = params[i]
            self.state[p] = {k: (to_device(np.array(v, dtype=p.dtype), p.device) if _is_array(v) else v)
                             for k, v in values.items()}


def _is_array(v):
    return hasattr(v, "shape") and hasattr(v, "dtype") and len(v.shape) > 0


class _Flat:
    """Flat vectors for a group's parameters: named state vectors, and per-parameter views. The
    parameters' state arrays are these views (``load_state_dict`` replaces the state and drops the
    vectors; the next step rebuilds them from the new state).

    ``fused`` (the GPU): one kernel updates every parameter from the state vectors. Otherwise (NumPy),
    ``gather`` copies per-parameter arrays into one scratch vector; ``apply`` subtracts each parameter's
    slice of an update vector from it.
    """

    def __init__(self, params, dtype, fused):
        self.params, self.dtype, self.fused = list(params), dtype, fused
        self.xp = params[0].xp
        self.bounds = np.cumsum([0] + [p.data.size for p in params]).tolist()
        self.state = {}
        if not fused:
            self.g, self.w, self.t, self.u = (self.empty() for _ in range(4))

    def empty(self):
        return self.xp.empty(self.bounds[-1], self.dtype)

    def zeros(self):
        return self.xp.asarray(np.zeros(self.bounds[-1], self.dtype))  # copied to a GPU: no fill kernel

    def views(self, vec):
        return [vec[a:b].reshape(p.data.shape) for p, a, b in zip(self.params, self.bounds, self.bounds[1:])]

    def gather(self, arrays, out):
        np.concatenate([a.reshape(-1) for a in arrays], out=out)
        return out

    def apply(self, update):
        for p, a, b in zip(self.params, self.bounds, self.bounds[1:]):
            np.subtract(p.data, update[a:b].reshape(p.data.shape), out=p.data)


# ------------------------------------------------------------------------------------ SGD
def _sgd_rule(xp, w, g, buf, first, t, u, lr, momentum, dampening, weight_decay, nesterov):
    """The step to subtract from the weights ``w`` (written into ``t``): PyTorch's SGD. ``buf`` is the
    momentum buffer (set to ``d`` when ``first``); ``t``, ``u`` are scratch."""
    d = g
    if weight_decay:
        xp.multiply(w, weight_decay, out=t)
        xp.add(t, g, out=t)
        d = t
    if momentum:
        if first:
            xp.copyto(buf, d)
        else:
            xp.multiply(buf, momentum, out=buf)
            if dampening:
                xp.multiply(d, 1.0 - dampening, out=u)
                xp.add(buf, u, out=buf)
            else:
                xp.add(buf, d, out=buf)
        if nesterov:
            xp.multiply(buf, momentum, out=u)
            xp.add(d, u, out=u)
            d = u
        else:
            d = buf
    xp.multiply(d, lr, out=t)
    return t


class SGD(Optimizer):
    """Stochastic gradient descent with PyTorch's momentum, dampening, Nesterov and weight decay:

    ``d = g + wd*p``; ``buf = momentum*buf + (1-dampening)*d`` (``buf = d`` on the first step);
    ``d = d + momentum*buf`` (Nesterov) or ``d = buf``; ``p -= lr*d``.
    """
    state_names = ("momentum_buffer",)

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
                 foreach=None):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov)
        super().__init__(params, self.check_hyperparameters(**defaults), foreach)

    @staticmethod
    def check_hyperparameters(lr, momentum, dampening, weight_decay, nesterov):
        hyper = dict(lr=_check("lr", lr), momentum=_check("momentum", momentum),
                     dampening=_check("dampening", dampening), weight_decay=_check("weight_decay", weight_decay),
                     nesterov=shapes.flag("nesterov", nesterov))
        if hyper["nesterov"] and (hyper["momentum"] <= 0 or hyper["dampening"] != 0):
            raise ValueError("nesterov momentum needs momentum > 0 and dampening = 0")
        return hyper

    @staticmethod
    def _hyper(group):
        return (group["lr"], group["momentum"], group["dampening"], group["weight_decay"], group["nesterov"])

    def _step_one(self, p, g, group):
        buf, first = None, False
        if group["momentum"]:
            state = self.state.setdefault(p, {})
            buf = state.get("momentum_buffer")
            if buf is None:
                buf, first = p.xp.empty_like(p.data), True
                state["momentum_buffer"] = buf
        t, u = self._tmp(p)
        step = _sgd_rule(p.xp, p.data, g, buf, first, t, u, *self._hyper(group))
        p.xp.subtract(p.data, step, out=p.data)

    def _step_flat(self, flat, grads, group):
        buf, first = None, False
        if group["momentum"]:
            buf = flat.state.get("momentum_buffer")
            if buf is None:
                buf, first = flat.empty(), True
                flat.state["momentum_buffer"] = buf
                for p, view in zip(flat.params, flat.views(buf)):
                    self.state.setdefault(p, {})["momentum_buffer"] = view
        if flat.fused:
            flat.xp.sgd_update([p.data for p in flat.params], grads, buf, flat.bounds, first, *self._hyper(group))
            return
        w = flat.gather([p.data for p in flat.params], flat.w) if group["weight_decay"] else None
        flat.apply(_sgd_rule(np, w, flat.gather(grads, flat.g), buf, first, flat.t, flat.u,
                             *self._hyper(group)))


# ----------------------------------------------------------------------------------- Adam
def _adam_rule(xp, w, g, m, v, step, t, u, lr, betas, eps, weight_decay):
    """The step to subtract from ``w`` (written into ``u``): PyTorch's Adam at step ``step`` (1-based),
    with L2 ``weight_decay`` added to the gradient; updates the moments ``m`` and ``v`` in place."""
    b1, b2 = betas
    if weight_decay:
        xp.multiply(w, weight_decay, out=t)
        xp.add(t, g, out=t)
        g = t
    xp.multiply(m, b1, out=m)
    xp.multiply(g, 1.0 - b1, out=u)
    xp.add(m, u, out=m)
    xp.multiply(v, b2, out=v)
    xp.multiply(g, g, out=u)
    xp.multiply(u, 1.0 - b2, out=u)
    xp.add(v, u, out=v)
    xp.sqrt(v, out=u)
    xp.divide(u, math.sqrt(1.0 - b2 ** step), out=u)
    xp.add(u, eps, out=u)
    xp.divide(m, u, out=u)
    xp.multiply(u, lr / (1.0 - b1 ** step), out=u)
    return u


class Adam(Optimizer):
    """Adam (Kingma & Ba) with PyTorch's bias correction and L2 ``weight_decay`` added to the gradient:

    ``m = b1*m + (1-b1)*g``; ``v = b2*v + (1-b2)*g*g``;
    ``p -= lr/(1-b1**t) * m / (sqrt(v)/sqrt(1-b2**t) + eps)``.
    """
    decoupled = False
    state_names = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, foreach=None):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        super().__init__(params, self.check_hyperparameters(**defaults), foreach)

    @staticmethod
    def check_hyperparameters(lr, betas, eps, weight_decay):
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair of numbers in [0, 1), got {betas!r}")
        return dict(lr=_check("lr", lr), betas=(_check("betas[0]", betas[0], 0.0, 1.0, True),
                                                _check("betas[1]", betas[1], 0.0, 1.0, True)),
                    eps=_check("eps", eps), weight_decay=_check("weight_decay", weight_decay))

    def _decay(self, xp, data, group):
        """AdamW's decoupled decay, ``p *= 1 - lr*wd``, applied before the Adam step."""
        if self.decoupled and group["weight_decay"]:
            xp.multiply(data, 1.0 - group["lr"] * group["weight_decay"], out=data)

    def _hyper(self, group):
        return group["lr"], group["betas"], group["eps"], 0.0 if self.decoupled else group["weight_decay"]

    def _step_one(self, p, g, group):
        xp = p.xp
        state = self.state.get(p)
        if state is None:
            state = self.state[p] = {"step": 0, "exp_avg": xp.zeros_like(p.data),
                                     "exp_avg_sq": xp.zeros_like(p.data)}
        state["step"] += 1
        self._decay(xp, p.data, group)
        t, u = self._tmp(p)
        step = _adam_rule(xp, p.data, g, state["exp_avg"], state["exp_avg_sq"], state["step"], t, u,
                          *self._hyper(group))
        xp.subtract(p.data, step, out=p.data)

    def _step_flat(self, flat, grads, group):
        if "exp_avg" not in flat.state:
            for name in self.state_names:
                flat.state[name] = vec = flat.zeros()
                for p, view in zip(flat.params, flat.views(vec)):
                    self.state.setdefault(p, {"step": 0})[name] = view
        for p in flat.params:
            self.state[p]["step"] += 1
        if flat.fused:
            flat.xp.adam_update([p.data for p in flat.params], grads, flat.state["exp_avg"],
                                flat.state["exp_avg_sq"], flat.bounds, self.state[flat.params[0]]["step"],
                                group["lr"], group["betas"], group["eps"], group["weight_decay"], self.decoupled)
            return
        for p in flat.params:
            self._decay(np, p.data, group)
        w = flat.gather([p.data for p in flat.params], flat.w) if self._hyper(group)[3] else None
        flat.apply(_adam_rule(np, w, flat.gather(grads, flat.g), flat.state["exp_avg"], flat.state["exp_avg_sq"],
                              self.state[flat.params[0]]["step"], flat.t, flat.u, *self._hyper(group)))


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): ``p *= 1 - lr*wd`` before the Adam step."""
    decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, foreach=None):
        super().__init__(params, lr, betas, eps, weight_decay, foreach)


# --------------------------------------------------------------------------------- schedules
class LRScheduler:
    """Sets every group's ``lr`` from its initial lr and a step count; call :meth:`step` after each
    ``optimizer.step()`` (per batch or per epoch: the unit is the caller's)."""

    def __init__(self, optimizer, last_epoch=-1):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a fastconv Optimizer, got {type(optimizer).__name__}")
        last_epoch = shapes.integer("last_epoch", last_epoch, -1, None)
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
        _mapping("state", state, ("last_epoch", "base_lrs"))
        vars(self).update({k: v for k, v in state.items() if k != "optimizer"})


class StepLR(LRScheduler):
    """Multiply the lr by ``gamma`` every ``step_size`` steps."""

    def __init__(self, optimizer, step_size, gamma=0.1, last_epoch=-1):
        self.step_size, self.gamma = shapes.integer("step_size", step_size, 1, None), _check("gamma", gamma)
        super().__init__(optimizer, last_epoch)

    def lr_at(self, base_lr, epoch):
        return base_lr * self.gamma ** (epoch // self.step_size)


class CosineAnnealingLR(LRScheduler):
    """Cosine decay from the initial lr to ``eta_min`` over ``T_max`` steps (SGDR without restarts)."""

    def __init__(self, optimizer, T_max, eta_min=0.0, last_epoch=-1):
        self.T_max, self.eta_min = shapes.integer("T_max", T_max, 1, None), _check("eta_min", eta_min)
        super().__init__(optimizer, last_epoch)

    def lr_at(self, base_lr, epoch):
        return self.eta_min + (base_lr - self.eta_min) * (1 + math.cos(math.pi * epoch / self.T_max)) / 2
