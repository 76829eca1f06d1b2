"""``Module`` and ``Parameter``: layers that own their weights, as in ``torch.nn``.

A module's parameters and sub-modules are simply its attributes: ``named_parameters()`` walks them in the
order they were first assigned (Python keeps attribute order), so there is no registration step and no
``__getattr__`` magic. Names are dotted paths (``"features.0.weight"``), as in PyTorch, so state dicts of
equivalent models line up key for key.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np

from .. import shapes
from ..device import check_device, device_of, to_device
from ..tensor import Tensor


class Parameter(Tensor):
    """A Tensor that a module trains: a leaf that requires grad (float arrays only)."""

    def __init__(self, data, requires_grad=True):
        if isinstance(data, Tensor):
            data = data.data
        if device_of(data) == "cpu":
            data = np.ascontiguousarray(shapes.as_array("data", data))
        if np.dtype(data.dtype).kind != "f":
            raise TypeError(f"a Parameter must hold floats, got dtype {data.dtype}")
        super().__init__(data, requires_grad=shapes.flag("requires_grad", requires_grad))

    def __repr__(self):
        return f"Parameter(shape={self.shape}, dtype={self.dtype}, device={self.device!r})"


class Module:
    """Base class of layers and models: override ``forward``; call the module to run it."""

    training = True

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # ------------------------------------------------------------------ traversal
    def named_children(self):
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value

    def children(self):
        return (module for _, module in self.named_children())

    def named_modules(self, prefix=""):
        """This module and every descendant, depth first, with dotted names ("" for the root)."""
        yield prefix, self
        for name, child in self.named_children():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self):
        return (module for _, module in self.named_modules())

    def named_parameters(self, prefix=""):
        """Every parameter with its dotted name; a parameter shared by two modules is listed once."""
        seen = set()
        for path, module in self.named_modules(prefix):
            for name, value in vars(module).items():
                if isinstance(value, Parameter) and id(value) not in seen:
                    seen.add(id(value))
                    yield (f"{path}.{name}" if path else name), value

    def parameters(self):
        return (p for _, p in self.named_parameters())

    def num_parameters(self):
        return sum(p.size for p in self.parameters())

    # ------------------------------------------------------------------ modes and gradients
    def train(self, mode=True):
        """Training mode (dropout active) or, with ``mode=False``, evaluation mode; returns self."""
        mode = shapes.flag("mode", mode)
        for module in self.modules():
            module.training = mode
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        """Forget the parameters' gradients (``grad = None``: the next backward writes fresh ones)."""
        for p in self.parameters():
            p.grad = None

    def to(self, device):
        """Move every parameter to ``device`` in place (the Parameter objects stay the same, so an
        optimizer built before the move keeps working); returns self."""
        device = check_device(device)
        for p in self.parameters():
            p.data = to_device(p.data, device)
            if p.grad is not None:
                p.grad = p.grad.to(device)
        return self

    def set_backend(self, backend):
        """Use ``backend`` in every layer that runs a convolution or pooling kernel; returns self."""
        for module in self.modules():
            if "backend" in vars(module):
                module.backend = backend
        return self

    # ------------------------------------------------------------------ state
    def state_dict(self):
        """Name -> NumPy copy of every parameter (host arrays, whatever the device)."""
        return OrderedDict((name, np.array(p.numpy(), copy=True)) for name, p in self.named_parameters())

    def load_state_dict(self, state, strict=True):
        """Copy arrays into the parameters in place, after checking names and shapes.

        ``state``: a mapping of name -> array (NumPy, Tensor, or anything ``np.asarray`` reads, such as a
        PyTorch CPU tensor), or the path of a ``.safetensors`` file (as :meth:`save` writes, or PyTorch's
        ``safetensors.torch.save_file``: names are PyTorch's dotted paths). ``strict``: every parameter must
        be in ``state`` and every key of ``state`` must be a parameter. Values are cast to each parameter's
        dtype and stay on its device. Returns ``(missing, unexpected)``.
        """
        if isinstance(state, (str, os.PathLike)):
            from ..safetensors import load_file
            state = load_file(state)
        if not isinstance(state, Mapping):
            raise TypeError(f"state must be a mapping of names to arrays or a .safetensors path, "
                            f"got {type(state).__name__}")
        strict = shapes.flag("strict", strict)
        params = dict(self.named_parameters())
        missing = [name for name in params if name not in state]
        unexpected = [name for name in state if name not in params]
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict: missing keys {missing}, unexpected keys {unexpected} "
                           f"(this model's keys: {list(params)})")
        wrong = [f"{name}: expected {p.shape}, got {tuple(np.shape(state[name]))}"
                 for name, p in params.items() if name in state and tuple(np.shape(state[name])) != p.shape]
        if wrong:
            raise ValueError("load_state_dict: shape mismatch for " + "; ".join(wrong))
        for name, p in params.items():
            if name not in state:
                continue
            value = state[name]
            value = value.numpy() if isinstance(value, Tensor) else np.asarray(value)
            value = np.ascontiguousarray(value, dtype=p.dtype)
            if p.device == "cpu":
                p.data[...] = value
            else:
                p.data.copy_to_device(value)
        return missing, unexpected

    def save(self, path, metadata=None):
        """Write the parameters to ``path`` in the safetensors format, under PyTorch's names: the file
        loads back with ``load_state_dict(path)``, and into the equivalent PyTorch model with
        ``model.load_state_dict(safetensors.torch.load_file(path))``. ``metadata``: extra str -> str."""
        from ..safetensors import save_file
        save_file(self.state_dict(), path, {"format": "pt", **(metadata or {})})

    # ------------------------------------------------------------------ display
    def extra_repr(self):
        return ""

    def __repr__(self):
        children = list(self.named_children())
        if not children:
            return f"{type(self).__name__}({self.extra_repr()})"
        lines = [f"{type(self).__name__}("]
        for name, child in children:
            body = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {body}")
        return "\n".join(lines) + "\n)"
