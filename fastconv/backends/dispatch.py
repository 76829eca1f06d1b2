"""Choosing the backend that runs an op: the user's choice, or ``"auto"``'s per shape and device.

Backends are loaded lazily by name. A backend forced by the user runs every op it implements; ops it does
not implement (say, pooling under ``"fft"``) go to the ``"auto"`` choice. An unknown backend name, or one
that cannot run here (extension not built, no GPU), is a clear error.
"""
import importlib

MODULES = {
    "numpy": "fastconv.backends.reference",
    "numba": "fastconv.backends.numba_cpu",
    "cython": "fastconv.backends.cython_cpu",
    "fft": "fastconv.backends.fft",
    "winograd": "fastconv.backends.winograd",
    "cuda": "fastconv.backends.cuda",
}
CPU_BACKENDS = ("numpy", "numba", "cython", "fft")
_loaded = {}
_default = "auto"


class BackendUnavailable(RuntimeError):
    """A backend that exists but cannot run here."""


def load(name):
    """The module of backend ``name``; ValueError for unknown names, BackendUnavailable if it can't run."""
    module = _loaded.get(name)
    if module is not None:
        return module
    if name not in MODULES:
        raise ValueError(f"backend must be 'auto' or one of {sorted(MODULES)}, got {name!r}")
    try:
        module = importlib.import_module(MODULES[name])
    except ImportError as err:
        raise BackendUnavailable(f"backend {name!r} is not available here: {err}") from err
    check = getattr(module, "check_available", None)
    if check is not None:
        check()
    _loaded[name] = module
    return module


def available():
    """Names of the backends that can run on this machine."""
    names = []
    for name in MODULES:
        try:
            load(name)
            names.append(name)
        except Exception:
            pass
    return names


def set_backend(name):
    """Make ``name`` the default backend of every op (``"auto"`` restores the automatic choice)."""
    global _default
    if name != "auto":
        load(name)
    _default = name


def get_backend():
    return _default


def select(op, backend, spec, device, dtype=None):
    """The backend module that runs ``op`` (a kernel name such as ``"conv2d"``) for this spec and device
    (and ``dtype``, which the automatic choice may weigh)."""
    if backend is None or backend == "auto":
        backend = _default
    if device == "cuda":
        if backend not in ("auto", "cuda"):
            raise ValueError(f"backend {backend!r} runs on the CPU but the tensors are on the GPU; "
                             f"use backend='cuda' or 'auto', or move the tensors with .to('cpu')")
        return load("cuda")
    if backend == "cuda":
        raise ValueError("backend='cuda' needs tensors on the GPU: create them with device='cuda' "
                         "or move them with .to('cuda')")
    if backend != "auto":
        module = load(backend)
        if hasattr(module, op):
            return module
    return _auto(op, spec, dtype)


def _auto(op, spec, dtype=None):
    """Automatic CPU choice (cost model in ``choose``), falling back to the reference."""
    try:
        from . import choose
    except ImportError:
        return load("numpy")
    return choose.best(op, spec, dtype)
