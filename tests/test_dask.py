"""fastconv on Dask: networks applied to chunked arrays equal the in-memory networks, and data-parallel
training on a two-worker cluster equals single-process training.

Graphs are checked on dask's synchronous scheduler (the graph, not the scheduler, decides the result), then
once on the cluster; training runs on a LocalCluster of two worker processes, one thread each.
"""
import json
import os
import signal
import sys

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")
from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import fastconv as fc  # noqa: E402
import fastconv.functional as F  # noqa: E402
from fastconv import cli, nn, optim, shapes  # noqa: E402
from fastconv.data import DataLoader  # noqa: E402
from fastconv.dask import DataParallel, Program, apply, auto_chunks, fit, set_worker_threads  # noqa: E402
from fastconv.dask.geometry import Window  # noqa: E402

from helpers import assert_close  # noqa: E402

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                      HealthCheck.too_slow])


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Blocks are small: one kernel thread each (as on the workers), and no waiting for a second thread on
    a busy machine."""
    threads = fc.get_num_threads()
    fc.set_num_threads(1)
    yield
    fc.set_num_threads(threads)


@pytest.fixture(scope="module")
def client():
    """Two worker processes, one thread each, fastconv on one thread in each; they inherit this process's
    environment (NUMBA_CACHE_DIR: the compiled kernels' cache)."""
    import cloudpickle
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this module
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=":0")
    with distributed.Client(cluster) as c:
        set_worker_threads(c, 1)
        yield c
    cluster.close()


def in_memory(model, x):
    with fc.no_grad():
        return model(fc.tensor(x)).numpy()


def computed(model, x, chunks):
    y = apply(model, da.from_array(x, chunks=chunks))
    out = y.compute(scheduler="sync")
    assert y.dtype == out.dtype and tuple(map(sum, y.chunks)) == out.shape
    return y, out


# ------------------------------------------------------------------------------- strategies
def chunking(length):
    """Random chunks of an axis: uneven, down to one element."""
    return st.lists(st.integers(1, length - 1), max_size=4, unique=True).map(
        lambda cuts: tuple(np.diff([0] + sorted(cuts) + [length]).tolist()))


@st.composite
def stacks(draw, dims):
    """A random conv -> activation -> pooling network, an input it accepts and a chunking of it."""
    n, c, cout = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    k, s, d = draw(st.integers(1, 5)), draw(st.integers(1, 3)), draw(st.integers(1, 2))
    p = draw(st.integers(0, k + 1))  # padding beyond the kernel's reach: outputs that read only zeros
    pk, ps = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    pp, ceil, include = draw(st.integers(0, pk // 2)), draw(st.booleans()), draw(st.booleans())
    conv = (nn.Conv1d if dims == 1 else nn.Conv2d)(c, cout, k, s, p, d, dtype=np.float64)
    pool = draw(st.sampled_from(["max", "avg"]))
    pool = (getattr(nn, f"MaxPool{dims}d")(pk, ps, pp, ceil_mode=ceil) if pool == "max" else
            getattr(nn, f"AvgPool{dims}d")(pk, ps, pp, ceil_mode=ceil, count_include_pad=include))
    model = nn.Sequential(conv, draw(st.sampled_from([nn.ReLU, nn.Tanh]))(), pool)
    size = tuple(draw(st.integers(4, 20)) for _ in range(dims))
    x = np.random.default_rng(draw(st.integers(0, 99))).standard_normal((n, c) + size)
    try:
        in_memory(model, x)
    except ValueError:
        assume(False)  # the layers do not fit this input
    chunks = (draw(chunking(n)) if n > 1 else (1,), draw(chunking(c)) if c > 1 else (1,))
    return model, x, chunks + tuple(draw(chunking(length)) for length in size)


# ------------------------------------------------------------------------------ apply: results
@pytest.mark.parametrize("dims", [1, 2])
@settings(max_examples=20, **SETTINGS)
@given(data=st.data())
def test_conv_pool_network_matches_memory(dims, data):
    model, x, chunks = data.draw(stacks(dims))
    y, out = computed(model, x, chunks)
    assert_close(out, in_memory(model, x), np.float64, f"chunks {chunks}")


@settings(max_examples=15, **SETTINGS)
@given(st.data())
def test_max_pooling_is_bit_for_bit_and_keeps_channel_chunks(data):
    k, s = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    p, ceil = data.draw(st.integers(0, k // 2)), data.draw(st.booleans())
    model = nn.Sequential(nn.MaxPool2d(k, s, p, ceil_mode=ceil), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True))
    x = np.random.default_rng(0).standard_normal((2, 4, 17, 13)).astype(np.float32)
    assume(shapes.pool_output_size(shapes.pool_output_size(17, k, s, p, 1, ceil), 2, 2, 0, 1, True) >= 1)
    chunks = (1, (1, 3), data.draw(chunking(17)), data.draw(chunking(13)))
    y, out = computed(model, x, chunks)
    assert np.array_equal(out, in_memory(model, x))
    assert y.chunks[1] == (1, 3)  # pooling does not mix channels: their chunks stay


def test_same_arithmetic_is_bit_for_bit():
    """With the kernel fixed (backend), each output is the same sum in a block as in the whole array."""
    if "cython" not in fc.available_backends():
        pytest.skip("the Cython kernels are not built")
    direct = "cython:direct"  # one output's sum in a fixed order (vectorised kernels round tails differently)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=2, dilation=2, backend=direct), nn.ReLU(),
                          nn.MaxPool2d(3, 2, 1, ceil_mode=True), nn.Conv2d(4, 2, 3, padding="same", backend=direct))
    x = np.random.default_rng(1).standard_normal((2, 3, 45, 38)).astype(np.float32)
    expected = in_memory(model, x)
    for chunks in ((1, 2, (5, 17, 23), (9, 9, 9, 11)), (2, 3, (1, 44), (20, 18))):
        y, out = computed(model, x, chunks)
        assert y.chunks[1] == (2,)  # a convolution mixes channels: their chunks were merged
        assert np.array_equal(out, expected)


def test_big_kernel_larger_than_chunks():
    """A 15x15 filter bank on 6x9 chunks: each block reads from chunks two away (runs as one FFT)."""
    w = np.random.default_rng(2).standard_normal((3, 1, 15, 15))
    x = np.random.default_rng(3).standard_normal((1, 1, 40, 50))
    for padding in ("same", 0):
        def bank(t):
            return F.conv2d(t, w, padding=padding)
        y, out = computed(bank, x, (1, 1, 6, 9))
        with fc.no_grad():
            assert_close(out, bank(fc.tensor(x)).numpy(), np.float64, f"padding {padding}")


def test_lenet5_on_a_chunked_batch():
    model = fc.models.LeNet5()
    x = np.random.default_rng(4).standard_normal((10, 1, 32, 32)).astype(np.float32)
    expected = in_memory(model, x)
    for chunks in ((3, 1, 32, 32), (4, 1, 13, 20)):  # spatial chunks are merged: the classifier needs all
        y, out = computed(model, x, chunks)
        assert y.shape == (10, 10) and y.chunks[0] == ((3, 3, 3, 1) if chunks[0] == 3 else (4, 4, 2))
        assert_close(out, expected, np.float32, f"LeNet-5, chunks {chunks}")
    features = nn.Sequential(*list(model.features)[:-1])  # the convolutional part, block by block
    y, out = computed(features, x, (4, 1, 7, 9))
    assert y.shape == (10, 120, 1, 1) and len(y.dask.layers[y.name]) > 3
    assert_close(out.reshape(10, 120), in_memory(model.features, x), np.float32, "LeNet-5 features")


def test_on_the_cluster(client):
    model = nn.Sequential(nn.Conv2d(2, 3, 5, padding=2), nn.ReLU(), nn.AvgPool2d(3, 2, 1, ceil_mode=True,
                                                                                   count_include_pad=False))
    x = np.random.default_rng(5).standard_normal((2, 2, 33, 29)).astype(np.float32)
    y = apply(model, da.from_array(x, chunks=(1, 1, 8, 10)))
    assert_close(client.compute(y).result(), in_memory(model, x), np.float32, "on the cluster")


# ------------------------------------------------------------------------------- apply: graphs
def test_batch_only_chunking_is_one_task_per_chunk():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2))
    x = da.zeros((6, 1, 16, 16), chunks=(2, 1, 16, 16), dtype=np.float32)
    y = apply(model, x)
    layer = y.dask.layers[y.name]
    assert len(layer) == 3 + 1  # three blocks and the model they share
    assert y.chunks == ((2, 2, 2), (2,), (7,), (7,)) and y.dtype == np.float32


def test_halo_is_the_receptive_field():
    model = nn.Sequential(nn.Conv2d(1, 2, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(2, 2, 3, stride=2, dilation=2, padding=1), nn.AvgPool2d(3, 2, 1))
    program = Program.trace(model, np.zeros((1, 1, 64, 64), np.float32))
    field, jump = shapes.receptive_field([(5, 1), (2, 2), (3, 2, 2), (3, 2)])
    assert program.jumps(2)[program.output] == (jump, jump)
    for before, after in program.halo(2):
        assert before + jump + after == field  # exactly the positions the outputs read


def test_window_grid_and_padding():
    w = Window(kernel=3, stride=2, dilation=1, pad_lo=1, pad_hi=1)
    assert w.reads(0, 1) == (-1, 2) and w.out_size(10) == 5
    run = w.run(0, 2, 10)  # outputs 0, 1 read -1..3: one padding element before the array
    assert (run.a, run.b, run.before, run.after, run.first) == (0, 4, 1, 0, 0)
    counted = Window(3, 2, 1, 1, 1, pad_value=None)  # no value stands for this padding: aligned start
    run = counted.run(3, 5, 20)
    assert run.a % 2 == 0 and run.a <= 5 and run.first == run.a // 2 and run.before == 0


def test_auto_chunks():
    program = Program.trace(nn.Sequential(nn.Conv2d(1, 16, 5, padding=2), nn.MaxPool2d(2)),
                            np.zeros((1, 1, 64, 64), np.float32))
    per_position = (16 + 16 / 4) * 4  # the widest step: pooling's 16 channels in, 16 at a quarter out
    assert program.bytes_per_position(2, 4) == per_position
    # small samples: whole samples, batch chunks of the budget
    assert auto_chunks((1000, 1, 28, 28), np.float32, program, limit="1MiB") == (
        int(2 ** 20 // (28 * 28 * per_position)), 1, 28, 28)
    # a big image: one sample per chunk, square chunks in the budget, a multiple of the stride
    chunks = auto_chunks((1, 1, 20000, 20000), np.float32, program, limit="64MiB")
    side = chunks[2]
    assert chunks == (1, 1, side, side) and side % 2 == 0
    assert side ** 2 * program.bytes_per_position(2, 4) <= 64 * 2 ** 20
    y = apply(nn.Sequential(nn.MaxPool2d(2)), np.zeros((4, 2, 8, 8), np.float32))
    assert y.chunks[0] == (4,)  # a NumPy input is chunked by auto_chunks


def test_bad_input():
    model = nn.Sequential(nn.Conv2d(1, 1, 3))
    with pytest.raises(TypeError, match="module_or_fn"):
        apply(42, np.zeros((1, 1, 8, 8), np.float32))
    with pytest.raises(ValueError, match="3-D .* or 4-D"):
        apply(model, np.zeros((8, 8), np.float32))
    with pytest.raises(TypeError, match="float32 or float64"):
        apply(model, da.zeros((1, 1, 8, 8), dtype=np.int32))
    with pytest.raises(TypeError, match="has dtype float32"):  # the weights' dtype is not the input's
        apply(model, da.zeros((1, 1, 8, 8), dtype=np.float64))


# ---------------------------------------------------------------------------------- training
def small_net(dtype=np.float64):
    fc.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, dtype=dtype), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(4 * 6 * 6, 5, dtype=dtype))


def data(dtype=np.float64, n=60):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 1, 12, 12)).astype(dtype), rng.integers(0, 5, n)


def single_process(model, optimizer, loader, steps):
    losses = []
    for _ in range(steps):
        for xb, yb in loader:
            loss = F.cross_entropy(model(fc.tensor(xb)), fc.tensor(yb))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if len(losses) == steps:
                return losses


@pytest.mark.parametrize("dtype, opt, rtol", [(np.float64, "sgd", 1e-12), (np.float32, "adam", 1e-5)])
def test_two_workers_train_as_one_process(client, dtype, opt, rtol):
    x, y = data(dtype)
    make = {"sgd": lambda p: optim.SGD(p, lr=0.05, momentum=0.9), "adam": lambda p: optim.Adam(p, lr=1e-2)}[opt]
    one = small_net(dtype)
    expected = single_process(one, make(one.parameters()), DataLoader(x, y, batch_size=13, shuffle=True, seed=1), 20)
    model = small_net(dtype)
    losses = fit(model, make(model.parameters()), DataLoader(x, y, batch_size=13, shuffle=True, seed=1), client,
                 steps=20)  # batches of 13 (shards of 7 and 6) and a last batch of 8: shards weigh by size
    np.testing.assert_allclose(losses, expected, rtol=rtol)
    for (name, a), b in zip(model.state_dict().items(), one.state_dict().values()):
        np.testing.assert_allclose(a, b, rtol=100 * rtol, atol=100 * rtol, err_msg=name)


def test_a_failing_shard_is_named(client):
    x, y = data()
    y = y[:7].copy()
    y[5] = 7  # not a class of this 5-class net: the loss of the second shard raises
    with pytest.raises(RuntimeError, match=r"shard 1 \(samples 4\.\.6 of the batch\) raised ValueError: target"):
        DataParallel(small_net(), client).step(x[:7], y)


def test_fit_checkpoints_and_resumes(client, tmp_path):
    from fastconv.train import load_checkpoint
    x, y = data(n=40)

    def run(epochs, resume):
        model = small_net()
        opt = optim.Adam(model.parameters(), lr=1e-2)
        sched = optim.StepLR(opt, step_size=3)
        losses = fit(model, opt, DataLoader(x, y, batch_size=10, shuffle=True, seed=2), client, epochs=epochs,
                     scheduler=sched, checkpoint=str(tmp_path / "ckpt.npz"), resume=resume)
        return model, losses
    straight, losses = run(2, False)
    os.remove(tmp_path / "ckpt.npz")
    run(1, False)
    resumed, resumed_losses = run(2, True)
    assert resumed_losses == losses and not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert np.array_equal(a, b)
    meta = load_checkpoint(str(tmp_path / "ckpt.npz"), small_net(), optim.Adam(small_net().parameters()), None)
    assert meta["epoch"] == 2 and len(meta["log"]["step_loss"]) == 8


def test_cli_trains_on_the_cluster(client, tmp_path, monkeypatch):
    """``fastconv train --dask-scheduler`` gives the single-process run's losses (on stand-in data)."""
    from fastconv import train
    rng = np.random.default_rng(0)
    signals = rng.standard_normal((140, 40)).astype(np.float32), rng.integers(0, 10, 140)
    monkeypatch.setattr(train, "load_data", lambda cfg: signals + signals)
    tiny = dict(task="mnist1d", batch_size=35, epochs=1, progress=False)
    here = train.train(train.TrainConfig(**tiny, out=str(tmp_path / "here")))
    argv = ["train", "mnist1d", "--batch-size", "35", "--epochs", "1", "--no-progress", "--out",
            str(tmp_path / "there"), "--dask-scheduler", client.scheduler.address]
    assert cli.main(argv) == 0
    there = json.loads((tmp_path / "there" / "log.json").read_text())
    np.testing.assert_allclose(there["step_loss"], here["step_loss"], rtol=1e-5)
    assert there["epochs"][0]["train_acc"] == here["epochs"][0]["train_acc"]
    with pytest.raises(ValueError, match="workers must be a positive int"):
        train.train(train.TrainConfig(**tiny, workers=0))
    with pytest.raises(ValueError, match="not both"):
        train.train(train.TrainConfig(**tiny, out=str(tmp_path / "both"), workers=2,
                                      dask_scheduler=client.scheduler.address))


def test_a_local_cluster_of_its_own():
    """``fastconv train --workers N``: a LocalCluster started for the run, and closed with it."""
    from fastconv.dask.parallel import from_config
    x, y = data(n=8)
    model = small_net()
    parallel = from_config(model, workers=1)
    try:
        loss, out = parallel.step(x, y)
        with fc.no_grad():
            expected = F.cross_entropy(small_net()(fc.tensor(x)), fc.tensor(y)).item()
        assert out.shape == (8, 5) and abs(loss - expected) < 1e-12
    finally:
        parallel.close()
    assert parallel.client.status == "closed"
    assert from_config(model) is None


def test_workers_inherit_the_environment(client):
    assert set(client.run(os.environ.get, "NUMBA_CACHE_DIR").values()) == {os.environ.get("NUMBA_CACHE_DIR")}
    assert set(client.run(lambda: fc.get_num_threads()).values()) == {1}


# Last: killing workers costs restarts (a new process imports fastconv).
def kill_once(marker):
    """A loss that kills its worker process the first time it runs (SIGKILL: no clean-up, no goodbye)."""
    def loss(out, target):
        if not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return F.cross_entropy(out, target)
    return loss


def test_a_worker_killed_mid_step_is_retried(client, tmp_path):
    x, y = data()
    one = small_net()
    expected = single_process(one, optim.SGD(one.parameters(), lr=0.1), DataLoader(x, y, batch_size=20), 3)
    model = small_net()
    parallel = DataParallel(model, client, loss=kill_once(str(tmp_path / "killed")))
    opt = optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for xb, yb in DataLoader(x, y, batch_size=20):
        opt.zero_grad()
        losses.append(parallel.step(xb, yb)[0])
        opt.step()
    assert os.path.exists(tmp_path / "killed")  # a worker did die, in the first step
    np.testing.assert_allclose(losses, expected, rtol=1e-12)
    client.wait_for_workers(2, timeout=60)


def test_a_worker_that_keeps_dying_is_reported(client, tmp_path):
    scheduler = client.cluster.scheduler
    allowed, scheduler.allowed_failures = scheduler.allowed_failures, 0
    model = small_net()
    before = [p.numpy().copy() for p in model.parameters()]
    try:
        x, y = data()
        with pytest.raises(RuntimeError, match="worker died.*No gradient was set"):
            DataParallel(model, client, loss=kill_once(str(tmp_path / "killed"))).step(x[:8], y[:8])
    finally:
        scheduler.allowed_failures = allowed
        client.wait_for_workers(2, timeout=60)
    assert all(p.grad is None for p in model.parameters())
    assert all(np.array_equal(a, p.numpy()) for a, p in zip(before, model.parameters()))


def test_filter_benchmark_pieces(client, tmp_path):
    """bench/dask_filter.py's cases on a tiny image, on the shared cluster: they run and report."""
    import importlib.util
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "dask_filter.py")
    spec = importlib.util.spec_from_file_location("_bench_dask_filter", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    image = str(tmp_path / "image.npy")
    bench.write_image(image, 96)
    row = bench.run_dask(client, "k5", image, (1, 1, 40, 40))
    assert row["blocks"] == 9 and len(row["worker_peak_mib"]) == 2 and row["seconds"] > 0
    with fc.no_grad():
        full = F.conv2d(np.load(image)[None, None], bench.kernels("k5"), padding="same").numpy()
    np.testing.assert_allclose(row["means"], full.mean(axis=(0, 2, 3)), rtol=1e-4, atol=1e-6)
    rows = bench.overhead(client, image, 64, [32])
    assert [r["graph"] for r in rows] == ["fastconv.dask.apply", "map_overlap", "map_blocks (no halo)"]
