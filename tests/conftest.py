"""Shared fixtures, and what the suite does where optional pieces are missing.

- Optional packages (torch, hypothesis, mnist1d, ...) that are not installed make the tests needing them
  skip with the reason; they never fail or break collection. Without hypothesis, its ``@given`` tests skip
  and every other test of their modules runs (see ``_without_hypothesis``).
- ``FASTCONV_REQUIRE_BACKENDS=numba,cython`` (CI sets it) turns "backend unavailable" skips of those
  backends into failures (``helpers.backend_or_skip``): a build that should have produced them fails.
- ``FASTCONV_HIDE=torch,hypothesis,mnist1d`` imports those packages (or modules: ``fastconv._cy``) as if
  they were not installed, to show the above on a machine that has them (``test_optional_dependencies.py``).
"""
import importlib.abc
import os
import sys
import tempfile
import types

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # tests import cases/helpers as plain modules
# The planner uses the kernels measured on this machine (autotune.json): the tests must not depend on
# what a user measured, so they get an empty cache of their own (subprocesses inherit it).
os.environ["FASTCONV_CACHE_DIR"] = tempfile.mkdtemp(prefix="fastconv-tests-")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(REPO), "shared", "data")


class _Hidden(importlib.abc.MetaPathFinder):
    """Makes ``import name`` (and its submodules) fail as if the package were not installed."""

    def __init__(self, names):
        self.names = set(names)

    def find_spec(self, fullname, path=None, target=None):
        if any(fullname == name or fullname.startswith(name + ".") for name in self.names):
            raise ModuleNotFoundError(f"No module named {fullname!r} (hidden by FASTCONV_HIDE)", name=fullname)
        return None


HIDDEN = [name for name in os.environ.get("FASTCONV_HIDE", "").split(",") if name]
if HIDDEN:
    sys.meta_path.insert(0, _Hidden(HIDDEN))


def _without_hypothesis():
    """Stand-in ``hypothesis`` modules, so that test modules written for it are collected without it:
    each ``@given`` test skips with the reason, ``settings`` leaves tests as they are, and strategies
    (never drawn from) are inert values."""
    class Inert:
        """Any attribute, call, union or iteration of it gives an inert value: ``st.integers(0, 3)``,
        ``@st.composite``, ``a | b``, ``HealthCheck.too_slow``."""

        def __getattr__(self, name):
            return self

        def __call__(self, *args, **kwargs):
            return self

        def __or__(self, other):
            return self

        __ror__ = __or__

        def __iter__(self):
            return iter(())

    def given(*args, **kwargs):
        return pytest.mark.skip(reason="needs hypothesis (pip install hypothesis)")

    class settings:  # noqa: N801 - hypothesis's name
        def __init__(self, *args, **kwargs):
            pass

        def __call__(self, test):
            return test

        register_profile = load_profile = staticmethod(lambda *args, **kwargs: None)

    def module(name, **attributes):
        mod = types.ModuleType(name)
        mod.__dict__.update(attributes)
        mod.__getattr__ = lambda attribute: Inert()
        sys.modules[name] = mod
        return mod

    strategies, numpy = module("hypothesis.strategies"), module("hypothesis.extra.numpy")
    extra = module("hypothesis.extra", numpy=numpy)
    module("hypothesis", given=given, settings=settings, example=settings, strategies=strategies, extra=extra)


try:
    import hypothesis  # noqa: F401
except ImportError:
    _without_hypothesis()


@pytest.fixture(scope="session")
def data_root():
    """Where the test data lives: $FASTCONV_DATA, else ../shared/data beside the repository."""
    root = os.environ.get("FASTCONV_DATA", SHARED_DATA)
    if not os.path.isdir(os.path.join(root, "mnist")):
        pytest.skip(f"MNIST not found under {root} (set FASTCONV_DATA)")
    return root


@pytest.fixture(scope="session")
def mnist1d_package():
    """Skip where the optional ``mnist1d`` package, which generates MNIST-1D, is not installed."""
    pytest.importorskip("mnist1d", reason="MNIST-1D needs the mnist1d package (pip install 'fastconv[datasets]')")
