"""Watch a call for work: kernels planned, arithmetic on its input arrays, large allocations, hangs.

Bad arguments must be rejected before any of these happens. ``watched(array)`` wraps an array as a Tensor
whose data records every NumPy ufunc or function applied to it (validation reads only shapes and
dtypes); ``no_work()`` also records every kernel planned (the step before a kernel runs) and the peak
memory traced while the call runs, so an array allocated for an absurd output shows up even when the
operating system grants it lazily.
"""
import contextlib
import faulthandler
import signal
import sys
import tracemalloc

import numpy as np

import fastconv as fc
from fastconv.backends import plan  # noqa: F401 (imported now, not during a watched call)
from fastconv.gpu import array  # noqa: F401

ALLOCATION_LIMIT = 64 * 2 ** 20  # bytes a rejected call may allocate: inputs here are tiny

_log = []


class Watched(np.ndarray):
    """An array that logs the NumPy ufuncs and functions applied to it, then runs them."""

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        _log.append(f"np.{ufunc.__name__}.{method}")
        inputs = tuple(a.view(np.ndarray) if isinstance(a, Watched) else a for a in inputs)
        if "out" in kwargs:
            kwargs["out"] = tuple(a.view(np.ndarray) if isinstance(a, Watched) else a for a in kwargs["out"])
        return getattr(ufunc, method)(*inputs, **kwargs)

    def __array_function__(self, func, types, args, kwargs):
        _log.append(f"np.{func.__name__}")
        return super().__array_function__(func, types, args, kwargs)


def watched(array):
    """A Tensor over ``array`` whose arithmetic is logged (ops keep a Tensor's array as it is)."""
    return fc.Tensor(np.asarray(array).view(Watched))


@contextlib.contextmanager
def no_work(monkeypatch):
    """Yield the list of work done inside the block: ``"plan <op>"`` per kernel planned, ``"np.<f>"``
    per NumPy call on a watched array, and ``"allocated <n> bytes"`` when the traced peak passes
    ``ALLOCATION_LIMIT``."""
    real_plan = plan.plan

    def planned(op, *args, **kwargs):
        made = real_plan(op, *args, **kwargs)  # an unknown backend raises here, before a kernel
        _log.append(f"plan {op}")
        return made
    monkeypatch.setattr(plan, "plan", planned)
    _log.clear()
    work = []
    tracemalloc.start()
    try:
        yield work
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        monkeypatch.setattr(plan, "plan", real_plan)
        work.extend(_log)
        _log.clear()
        if peak > ALLOCATION_LIMIT:
            work.append(f"allocated {peak} bytes")


class Hang(Exception):
    """A call ran past its deadline."""


@contextlib.contextmanager
def deadline(seconds, config=None):
    """Raise :class:`Hang` in a call still running after ``seconds`` (a Python-level loop), and end the
    process with a traceback of every thread after ``4 * seconds`` (a loop in compiled code). The
    traceback goes to the terminal: pytest's ``config`` keeps a copy of its stderr."""
    def expire(signum, frame):
        raise Hang(f"still running after {seconds} s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    faulthandler.dump_traceback_later(4 * seconds, exit=True, file=_terminal(config))
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _terminal(config):
    """A file descriptor of the terminal's stderr, which pytest's output capture leaves alone."""
    try:
        from _pytest.faulthandler import fault_handler_stderr_fd_key
        return config.stash[fault_handler_stderr_fd_key]
    except (ImportError, AttributeError, KeyError):
        return sys.__stderr__.fileno()
