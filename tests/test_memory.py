"""Kernels' results on recycled memory (``workspaces.result``, ``fastconv._cy._memory``)."""
import gc

import numpy as np
import pytest

import fastconv as fc
import fastconv.functional as F
from fastconv.backends import workspaces as ws

pytestmark = pytest.mark.skipif(ws._memory() is None, reason="the compiled extension is not built")
BIG = (4, 16, 64, 64)  # 1 MB of float32: recycled


@pytest.fixture
def reuse():
    limit, _ = ws.get_memory_reuse()
    ws.clear_workspaces()
    yield
    ws.set_memory_reuse(limit)
    ws.clear_workspaces()


def test_freed_result_is_reused_for_the_next_of_its_size(reuse):
    a = ws.result(BIG, np.float32)
    address = a.ctypes.data
    assert address % 4096 == 0 and a.flags.writeable and a.flags.c_contiguous
    del a
    assert ws.get_memory_reuse()[1] == 4 * np.prod(BIG)
    b = ws.result(BIG, np.float32)
    assert b.ctypes.data == address and ws.get_memory_reuse()[1] == 0
    c = ws.result(BIG, np.float32)  # b still lives: new memory
    assert c.ctypes.data != address


def test_memory_stays_while_a_view_lives(reuse):
    a = ws.result(BIG, np.float32)
    a[...] = 7
    view = a[1:, ::2]
    del a
    gc.collect()
    assert ws.get_memory_reuse()[1] == 0
    b = ws.result(BIG, np.float32)  # must not take the memory under ``view``
    b[...] = -1
    assert np.all(view == 7)
    del view
    assert ws.get_memory_reuse()[1] == 4 * np.prod(BIG)


def test_limit_and_release(reuse):
    ws.set_memory_reuse(0)
    del_now = ws.result(BIG, np.float32)
    del del_now
    assert ws.get_memory_reuse() == (0, 0)
    ws.set_memory_reuse(4 * np.prod(BIG))
    a, b = ws.result(BIG, np.float32), ws.result(BIG, np.float32)
    del a, b  # room for one
    assert ws.get_memory_reuse()[1] == 4 * np.prod(BIG)
    ws.clear_workspaces()
    assert ws.get_memory_reuse()[1] == 0
    with pytest.raises(ValueError, match="nbytes"):
        fc.set_memory_reuse(-1)
    with pytest.raises(TypeError, match="nbytes"):
        fc.set_memory_reuse(1.5e8)


def test_small_results_come_from_numpy():
    small = ws.result((3, 5), np.float64)
    assert small.flags.owndata and small.shape == (3, 5)


def test_training_steps_reuse_memory_and_stay_exact(reuse):
    """A conv layer's forward + backward twice: the second pass runs on the first one's freed memory
    (stale values in it), and gives the same numbers."""
    rng = np.random.default_rng(0)
    x = fc.tensor(rng.standard_normal(BIG, dtype=np.float32), requires_grad=True)
    w = fc.tensor(rng.standard_normal((16, 16, 3, 3), dtype=np.float32), requires_grad=True)
    grads = []
    for _ in range(2):
        x.grad = w.grad = None
        y = F.conv2d(x, w, padding=1)
        y.backward(np.ones(y.shape, np.float32))
        grads.append([np.array(t.numpy()) for t in (y, x.grad, w.grad)])
        del y
    assert ws.get_memory_reuse()[1] > 0
    for first, second in zip(*grads):
        np.testing.assert_array_equal(first, second)
