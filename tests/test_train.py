"""The training loop and the CLI on tiny runs: outputs, reproducibility, exact resume, errors.

Full-accuracy runs (minutes) are not unit tests: they run only with FASTCONV_SLOW=1.
"""
import dataclasses
import io
import json
import os
import shutil
import stat
import sys

import numpy as np
import pytest

import fastconv as fc
from fastconv import checkpoint, cli, train
from fastconv.train import TrainConfig

slow = pytest.mark.skipif(os.environ.get("FASTCONV_SLOW") != "1", reason="full training run: set FASTCONV_SLOW=1")
needs_mnist1d = pytest.mark.usefixtures("mnist1d_package")

@pytest.fixture(autouse=True, scope="module")
def _private_cache(tmp_path_factory):
    """Generated MNIST-1D goes to a temporary cache, not the user's ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FASTCONV_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


# MNIST-1D on 200 samples, batches of 50: 4 steps per epoch, a fraction of a second per epoch.
TINY = dict(task="mnist1d", subset=200, batch_size=50, progress=False)


def _run(tmp_path, name, stream=None, **kwargs):
    return train.train(TrainConfig(**{**TINY, "out": str(tmp_path / name), **kwargs}), stream=stream)


def _checkpoint(tmp_path, name):
    with np.load(tmp_path / name / "checkpoint.npz") as f:
        return {k: f[k] for k in f.files}


def _same_checkpoints(a, b):
    assert sorted(a) == sorted(b)
    for key in a:
        if key != "meta":  # meta holds wall-clock times
            assert np.array_equal(a[key], b[key]), key


@needs_mnist1d
def test_outputs(tmp_path, capsys):
    log = _run(tmp_path, "run", epochs=3, eval_every=2)
    out = tmp_path / "run"
    assert {"checkpoint.npz", "log.json", "curves.png", "kernels.png"} <= set(os.listdir(out))
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]
    saved = json.loads((out / "log.json").read_text())
    assert saved["config"]["model"] == "paper" and saved["config"]["lr"] == 1e-2  # the paper's recipe
    assert len(saved["step_loss"]) == 12 and [e["epoch"] for e in saved["epochs"]] == [1, 2, 3]
    assert "test_acc" not in saved["epochs"][0] and "test_acc" in saved["epochs"][1]  # eval_every=2, and last
    assert saved["final"]["test_acc"] == log["epochs"][-1]["test_acc"]
    assert all(np.isfinite(saved["step_loss"]))
    lines = capsys.readouterr().out
    assert "epoch   2/3" in lines and "test loss" in lines and "acc" in lines


@needs_mnist1d
def test_same_seed_same_run_other_seed_differs(tmp_path):
    a = _run(tmp_path, "a", steps=6, optimizer="sgd", schedule="cosine", augment=True)
    b = _run(tmp_path, "b", steps=6, optimizer="sgd", schedule="cosine", augment=True)
    c = _run(tmp_path, "c", steps=6, optimizer="sgd", schedule="cosine", augment=True, seed=1)
    assert a["step_loss"] == b["step_loss"] and a["final"]["test_acc"] == b["final"]["test_acc"]
    _same_checkpoints(_checkpoint(tmp_path, "a"), _checkpoint(tmp_path, "b"))
    assert a["step_loss"] != c["step_loss"]


@needs_mnist1d
@pytest.mark.parametrize("kwargs", [dict(optimizer="adam", schedule="step", step_size=1),
                                    dict(optimizer="sgd", schedule="none", augment=True)])
def test_resume_equals_straight_run(tmp_path, kwargs):
    """2 epochs straight == 1 epoch, a new process-like restart with --resume, 1 more epoch."""
    straight = _run(tmp_path, "straight", epochs=2, **kwargs)
    _run(tmp_path, "split", epochs=1, **kwargs)
    fc.manual_seed(12345)  # a restart does not share the first run's generator state
    resumed = _run(tmp_path, "split", epochs=2, resume=True, **kwargs)
    assert resumed["step_loss"] == straight["step_loss"]
    _same_checkpoints(_checkpoint(tmp_path, "straight"), _checkpoint(tmp_path, "split"))


@needs_mnist1d
def test_resume_after_interruption_with_cosine_schedule(tmp_path):
    """A run stopped (as by Ctrl-C) after epoch 1 of 3 and resumed ends where the uninterrupted run ends."""
    kwargs = dict(epochs=3, optimizer="adamw", schedule="cosine", weight_decay=0.01)
    straight = _run(tmp_path, "straight", **kwargs)

    def stop(epoch, metrics):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train.train(TrainConfig(**{**TINY, "out": str(tmp_path / "split"), **kwargs}), callback=stop)
    resumed = _run(tmp_path, "split", resume=True, **kwargs)
    assert resumed["step_loss"] == straight["step_loss"]
    assert [e.get("test_acc") for e in resumed["epochs"]] == [e.get("test_acc") for e in straight["epochs"]]
    _same_checkpoints(_checkpoint(tmp_path, "straight"), _checkpoint(tmp_path, "split"))


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory, mnist1d_package):
    """The output folder of a finished 1-epoch TINY run (copy it before resuming it)."""
    out = tmp_path_factory.mktemp("one_epoch") / "run"
    train.train(TrainConfig(**TINY, out=str(out), epochs=1))
    return out


def _copy(folder, tmp_path):
    shutil.copytree(folder, tmp_path / "run")
    return tmp_path / "run"


def test_every_setting_has_a_resume_rule():
    groups = (train.RESUME_FIXED, train.RESUME_CHANGEABLE, train.RESUME_FREE)
    names = [name for group in groups for name in group]
    assert sorted(names) == sorted(f.name for f in dataclasses.fields(TrainConfig))  # each once


# A value other than the one_epoch run's (paper recipe on TINY) for each setting that --resume must keep.
OTHER_FIXED = dict(task="lenet5", model="book", batch_size=25, lr=0.001, optimizer="sgd", schedule="cosine",
                   step_size=2, gamma=0.5, momentum=0.5, weight_decay=0.1, augment=True, seed=1, subset=100)


def test_every_fixed_setting_is_tested():
    assert sorted(OTHER_FIXED) == sorted(train.RESUME_FIXED)


@pytest.mark.parametrize("name", sorted(OTHER_FIXED))
def test_resume_refuses_a_changed_setting(one_epoch, tmp_path, name):
    """A new lr (or any setting that changes what is computed) is refused, never silently ignored, before
    any work; the message lists the setting with its old and new values."""
    out = _copy(one_epoch, tmp_path)
    before = (out / "checkpoint.npz").read_bytes()
    old = json.loads((out / "log.json").read_text())["config"][name]
    with pytest.raises(ValueError, match=f"{name}: {old} -> {OTHER_FIXED[name]}"):
        train.train(TrainConfig(task=OTHER_FIXED["task"] if name == "task" else "mnist1d", out=str(out),
                                resume=True, progress=False, **({} if name == "task" else {name: OTHER_FIXED[name]})))
    assert (out / "checkpoint.npz").read_bytes() == before


def test_resume_lists_every_refused_setting_in_one_message(one_epoch, tmp_path):
    out = _copy(one_epoch, tmp_path)
    with pytest.raises(ValueError) as err:
        _run(tmp_path, "run", resume=True, lr=0.5, seed=2, batch_size=20, epochs=3)
    text = str(err.value)
    assert "lr: 0.01 -> 0.5" in text and "seed: 0 -> 2" in text and "batch_size: 50 -> 20" in text
    assert "epochs" not in text and "\n" not in text and str(out / "checkpoint.npz") in text


# A value other than the one_epoch run's for each setting that --resume applies and reports.
OTHER_CHANGEABLE = dict(epochs=2, steps=6, device="cuda", backend="numpy", threads=1, eval_every=2,
                        eval_batch_size=7, workers=2, dask_scheduler="tcp://127.0.0.1:8786")


def test_every_changeable_setting_is_tested():
    assert sorted(OTHER_CHANGEABLE) == sorted(train.RESUME_CHANGEABLE)


@pytest.mark.parametrize("name", sorted(OTHER_CHANGEABLE))
def test_resume_applies_and_reports_a_changeable_setting(one_epoch, tmp_path, capsys, name):
    out = _copy(one_epoch, tmp_path)
    saved = json.loads((out / "log.json").read_text())["config"]
    new = OTHER_CHANGEABLE[name]
    config, changes = train._resumed_config(TrainConfig(out=str(out), resume=True, **{name: new}), saved, "ckpt")
    assert getattr(config, name) == new and changes[name] == (saved[name], new)
    assert all(getattr(config, other) == saved[other] for other in train.RESUME_FIXED)
    if name in ("device", "workers", "dask_scheduler"):
        return  # running needs a GPU or a cluster (the CLI test without a GPU, tests/test_dask.py run them)
    extra = {} if name in ("epochs", "steps") else {"epochs": 2}
    threads = fc.get_num_threads()
    log = _run(tmp_path, "run", resume=True, **{name: new}, **extra)
    assert fc.get_num_threads() == threads  # a run's thread count is its own
    assert f"{name}: {saved[name]} -> {new}" in capsys.readouterr().out
    assert log["config"][name] == new and log["resumed"][-1]["changes"][name] == [saved[name], new]
    assert len(log["epochs"]) == 2 and log["epochs"][-1]["step"] == (6 if name == "steps" else 8)


@needs_mnist1d
def test_resume_takes_left_out_settings_from_the_checkpoint(tmp_path):
    """Resumed with nothing but a longer run: the same run as one made at that length."""
    settings = dict(seed=3, lr=0.05, optimizer="sgd", momentum=0.5, schedule="step", step_size=1, gamma=0.5,
                    batch_size=40, augment=True)
    straight = _run(tmp_path, "straight", epochs=2, **settings)
    _run(tmp_path, "split", epochs=1, **settings)
    fc.manual_seed(12345)
    resumed = train.train(TrainConfig(out=str(tmp_path / "split"), epochs=2, resume=True, progress=False))
    assert resumed["step_loss"] == straight["step_loss"]
    assert {k: v for k, v in resumed["config"].items() if k not in ("out", "resume")} == \
        {k: v for k, v in straight["config"].items() if k not in ("out", "resume")}


@needs_mnist1d
def test_a_longer_run_follows_the_schedule_of_its_new_length(tmp_path, capsys):
    """1 epoch of cosine decay, resumed for 3: from then on the lr is the 3-epoch schedule's."""
    straight = _run(tmp_path, "straight", epochs=3, schedule="cosine")
    _run(tmp_path, "split", epochs=1, schedule="cosine")
    capsys.readouterr()
    resumed = _run(tmp_path, "split", epochs=3, resume=True)
    assert [e["lr"] for e in resumed["epochs"][1:]] == [e["lr"] for e in straight["epochs"][1:]]
    out = capsys.readouterr().out
    assert "epochs: 1 -> 3" in out and "the cosine schedule now spans 12 steps" in out
    with pytest.raises(ValueError, match="has run 12 steps"):
        _run(tmp_path, "split", epochs=2, resume=True)


# ------------------------------------------------------------------------------ checkpoints
@needs_mnist1d
def test_checkpoints_reach_the_disk_before_they_replace_the_old_ones(tmp_path, monkeypatch):
    """Every file the run writes is fsynced, then renamed into place, then its folder fsynced."""
    events = []
    fsync, replace = os.fsync, os.replace

    def recording_fsync(fd):
        events.append("fsync folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        fsync(fd)

    def recording_replace(src, dst):
        events.append(f"replace {os.path.basename(dst)}")
        replace(src, dst)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    checkpoint.atomic_write(str(tmp_path / "file"), lambda f: f.write(b"data"))
    assert events == ["fsync file", "replace file", "fsync folder"]
    assert (tmp_path / "file").read_bytes() == b"data"
    events.clear()
    _run(tmp_path, "run", epochs=1)
    written = [i for i, e in enumerate(events) if e in ("replace checkpoint.npz", "replace log.json")]
    assert {events[i] for i in written} == {"replace checkpoint.npz", "replace log.json"}
    assert all(events[i - 1] == "fsync file" and events[i + 1] == "fsync folder" for i in written)


def _damaged_copies(good):
    """An empty file, truncations, and single bit flips at random places and all over the zip directory."""
    yield "empty", b""
    for n in (1, 22, 100, len(good) // 2, len(good) - 22, len(good) - 1):
        yield f"truncated to {n} bytes", good[:n]
    rng = np.random.default_rng(0)
    places = [*rng.integers(0, len(good), 150), *range(0, 200, 3), *range(len(good) - 1500, len(good), 5)]
    for i in places:
        data = bytearray(good)
        data[i] ^= 1 << int(rng.integers(8))
        yield f"a bit flipped at byte {i}", bytes(data)
    shapes = [i + len(b"'shape': (") for i in range(len(good)) if good.startswith(b"'shape': (", i)]
    for i in shapes:  # a smaller shape in an array's header: NumPy alone would read less and not notice
        data = bytearray(good)
        data[i] ^= 1
        yield f"the shape at byte {i}", bytes(data)


def test_a_damaged_checkpoint_is_one_clear_error(one_epoch, tmp_path):
    """Whatever the damage, reading a checkpoint gives its exact content or a CheckpointError naming the file
    and what to do: never the zip reader's own exceptions."""
    meta, arrays = train.read_checkpoint(str(one_epoch / "checkpoint.npz"))
    path = tmp_path / "checkpoint.npz"
    caught = 0
    for label, data in _damaged_copies((one_epoch / "checkpoint.npz").read_bytes()):
        path.write_bytes(data)
        try:
            got_meta, got_arrays = train.read_checkpoint(str(path))
        except train.CheckpointError as err:
            text = str(err)
            assert str(path) in text and "delete it" in text and "\n" not in text, label
            caught += 1
        else:  # bytes nothing reads (a timestamp of the zip directory): the content is intact
            assert got_meta == meta and sorted(got_arrays) == sorted(arrays), label
            assert all(np.array_equal(got_arrays[k], arrays[k]) for k in arrays), label
    assert caught > 200


def test_cli_resume_from_a_damaged_or_missing_checkpoint(one_epoch, tmp_path, capsys):
    out = _copy(one_epoch, tmp_path)
    path = out / "checkpoint.npz"
    path.write_bytes(path.read_bytes()[:1000])
    assert cli.main(["train", "mnist1d", "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and "truncated" in err and "Traceback" not in err
    path.unlink()
    assert cli.main(["train", "mnist1d", "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"there is no checkpoint {path}" in err and "without --resume" in err


# -------------------------------------------------------------------------------- Ctrl-C
def _cli(tmp_path, *args):
    return cli.main(["train", "mnist1d", "--subset", "200", "--batch-size", "50", "--eval-every", "1",
                     "--no-progress", "--out", str(tmp_path / "run"), *args])


def _ctrl_c_in_evaluation(monkeypatch, number):
    """Ctrl-C during evaluation ``number`` (1: at the end of epoch 1, before its checkpoint)."""
    evaluate, calls = train.evaluate, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == number:
            raise KeyboardInterrupt
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(train, "evaluate", interrupted)


@needs_mnist1d
def test_ctrl_c_before_the_first_epoch_ends_says_nothing_is_saved(tmp_path, monkeypatch, capsys):
    _ctrl_c_in_evaluation(monkeypatch, 1)
    assert _cli(tmp_path, "--epochs", "3") == 130
    err = capsys.readouterr().err
    assert "no epoch was completed" in err and "was not created" in err and "--resume" not in err
    assert not (tmp_path / "run").exists()
    monkeypatch.undo()
    assert _cli(tmp_path, "--epochs", "1") == 0  # an earlier run; then a new one interrupted
    _ctrl_c_in_evaluation(monkeypatch, 1)
    assert _cli(tmp_path, "--epochs", "3", "--seed", "1") == 130
    assert "is from an earlier run, left as it was" in capsys.readouterr().err


@needs_mnist1d
def test_ctrl_c_later_says_which_epoch_the_checkpoint_holds(tmp_path, monkeypatch, capsys):
    _ctrl_c_in_evaluation(monkeypatch, 3)
    assert _cli(tmp_path, "--epochs", "4") == 130
    path = tmp_path / "run" / "checkpoint.npz"
    assert f"interrupted: epoch 2 is in {path}; continue with --resume" in capsys.readouterr().err
    monkeypatch.undo()
    assert _cli(tmp_path, "--resume") == 0
    assert [e["epoch"] for e in json.loads((tmp_path / "run" / "log.json").read_text())["epochs"]] == [1, 2, 3, 4]


def test_lenet5_on_mnist_subset(tmp_path, data_root):
    log = train.train(TrainConfig(task="lenet5", data_dir=data_root, subset=128, batch_size=64, steps=2,
                                  out=str(tmp_path / "lenet"), progress=False))
    assert log["config"]["augment"] is True and log["parameters"] == 61706
    assert len(log["step_loss"]) == 2 and 0 <= log["final"]["test_acc"] <= 1


def test_evaluate_matches_a_direct_computation():
    fc.manual_seed(0)
    model = fc.models.create("paper")
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((25, 1, 40)).astype(np.float32), rng.integers(0, 10, 25)
    loss, acc = train.evaluate(model, x, y, batch_size=7)
    logits = model(x)
    assert loss == pytest.approx(fc.functional.cross_entropy(logits, y).item(), rel=1e-5)
    assert acc == np.mean(logits.numpy().argmax(1) == y)
    assert model.training


def test_augment_shifts_signals_and_images():
    rng = np.random.default_rng(0)
    signals = rng.standard_normal((30, 1, 40)).astype(np.float32)
    shifted = train.Augment("mnist1d", seed=0)(signals)
    for a, b in zip(signals[:, 0], shifted[:, 0]):  # each row is a circular shift by at most 3
        assert any(np.array_equal(np.roll(a, k), b) for k in range(-3, 4))
    images = rng.standard_normal((8, 1, 32, 32)).astype(np.float32)
    moved = train.Augment("lenet5", seed=0)(images)
    assert moved.shape == images.shape and not np.array_equal(moved, images)


@pytest.mark.parametrize("field,value,match", [("task", "cifar", "task"), ("model", "wide", "model"),
                                               ("optimizer", "lbfgs", "optimizer"),
                                               ("schedule", "linear", "schedule"), ("epochs", 0, "epochs"),
                                               ("lr", -1.0, "lr"), ("backend", "magic", "backend"),
                                               ("threads", 0, "threads")])
def test_bad_configs(field, value, match):
    config = TrainConfig(task="lenet5") if field == "model" else TrainConfig()
    with pytest.raises(ValueError, match=match):
        train.resolve(TrainConfig(**{**vars(config), field: value}))


class Terminal(io.StringIO):
    def isatty(self):
        return True


@needs_mnist1d
def test_progress_and_plot_without_optional_packages(tmp_path, monkeypatch, capsys):
    fc.data.MNIST1D()  # generated first: mnist1d itself imports matplotlib
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    terminal = Terminal()
    train.train(TrainConfig(**{**TINY, "out": str(tmp_path / "bare"), "steps": 8, "progress": True,
                               "batch_size": 25}), stream=terminal)
    assert "step 2/8" in terminal.getvalue() and "img/s" in terminal.getvalue()  # plain progress lines
    assert "matplotlib is not installed" in capsys.readouterr().out
    assert not (tmp_path / "bare" / "curves.png").exists() and not (tmp_path / "bare" / "kernels.png").exists()


@needs_mnist1d
def test_a_log_gets_one_line_per_epoch_and_a_terminal_a_bar(tmp_path, monkeypatch, capsys):
    """Not a terminal (a log file, CI): no progress-bar redraws, one line per epoch, evaluated or not."""
    pytest.importorskip("tqdm")
    log = io.StringIO()
    _run(tmp_path, "log", epochs=3, progress=True, stream=log)
    lines = capsys.readouterr().out.splitlines()
    assert log.getvalue() == ""
    assert [line.split()[1] for line in lines if line.startswith("epoch")] == ["1/3", "2/3", "3/3"]
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    terminal = Terminal()
    _run(tmp_path, "terminal", epochs=3, progress=True, stream=terminal)
    lines = capsys.readouterr().out.splitlines()
    assert "epoch 1/3" in terminal.getvalue() and "\r" in terminal.getvalue()  # a redrawn bar
    assert [line.split()[1] for line in lines if line.startswith("epoch")] == ["3/3"]  # evaluations only


# ------------------------------------------------------------------------------------- CLI
@needs_mnist1d
def test_cli_train_and_info(tmp_path, capsys):
    code = cli.main(["train", "mnist1d", "--steps", "4", "--subset", "100", "--batch-size", "50",
                     "--optimizer", "sgd", "--lr", "0.05", "--out", str(tmp_path / "cli"), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0 and "final test accuracy" in out
    config = json.loads((tmp_path / "cli" / "log.json").read_text())["config"]
    assert config["optimizer"] == "sgd" and config["lr"] == 0.05 and config["steps"] == 4
    assert cli.main(["info"]) == 0 and "numpy" in capsys.readouterr().out


def test_cli_missing_mnist_names_the_cli_options(tmp_path, capsys):
    """The CLI user is told about --download, --data-dir and $FASTCONV_DATA, not download=True."""
    assert cli.main(["train", "lenet5", "--data-dir", str(tmp_path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"train-images-idx3-ubyte.gz not found in {tmp_path / 'mnist'}" in err
    assert "--download" in err and "--data-dir" in err and "$FASTCONV_DATA" in err and "download=True" not in err


@pytest.mark.skipif(fc.cuda.is_available(), reason="checks the error raised without a GPU")
def test_cli_cuda_without_gpu_is_a_clear_error(tmp_path, capsys):
    code = cli.main(["train", "mnist1d", "--device", "cuda", "--out", str(tmp_path / "gpu")])
    assert code == 2 and "no CUDA GPU is available" in capsys.readouterr().err


def test_cli_bench_and_compare_run_the_tools(monkeypatch, capsys):
    """``fastconv bench`` / ``fastconv compare`` hand everything after them to the tools of fastconv.bench."""
    from fastconv.bench import compare, compare_training
    monkeypatch.setattr(compare_training, "main", lambda argv: print("compare_training", argv) or 3)
    monkeypatch.setattr(compare, "main", lambda argv: print("compare", argv))
    assert cli.main(["compare", "--epochs", "1"]) == 3
    assert cli.main(["bench", "--tiny"]) == 0
    out = capsys.readouterr().out
    assert "compare_training ['--epochs', '1']" in out and "compare ['--tiny']" in out


# ------------------------------------------------------------------------- accuracy (CI)
@needs_mnist1d
def test_mnist1d_paper_recipe_reaches_92_percent(tmp_path):
    """The MNIST-1D paper's recipe (Adam 1e-2, batch 100, no decay) for 2800 steps (70 epochs): >= 92% test
    accuracy. One thread: the same numbers however busy the machine. Seeds 0-7 measured once on one
    thread: 93.3, 93.9, 92.3, 93.3, 92.0, 92.1, 92.3, 93.9% (seeds 0-5 on two: 92.7-94.2%); at 50 epochs
    91.9-93.1%, too early; beyond 80 the net overfits (8000 steps: 92.1%)."""
    log = train.train(TrainConfig(task="mnist1d", steps=2800, eval_every=1000, threads=1, out=str(tmp_path / "run"),
                                  progress=False))
    assert log["final"]["test_acc"] >= 0.92


# ------------------------------------------------------------------------ full runs (slow)
def _rss_mib():
    with open("/proc/self/statm") as f:  # Linux: resident pages are the second field
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@slow
@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads the resident set size from /proc")
@pytest.mark.parametrize("task, settings", [("mnist1d", dict(batch_size=40)),
                                            ("lenet5", dict(subset=12800, batch_size=128))])
def test_memory_stays_flat_over_1000_steps(tmp_path, request, capsys, task, settings):
    """Epochs of 100 steps, each evaluated: the resident memory after step 1000 is that after step 100
    (within 4 MiB; measured: 232.3 and 612.2 MiB after both for MNIST-1D and LeNet-5 on 12,800 images)."""
    request.getfixturevalue("data_root" if task == "lenet5" else "mnist1d_package")
    if task == "lenet5":
        settings = dict(settings, data_dir=request.getfixturevalue("data_root"))
    rss = {}
    train.train(TrainConfig(task=task, steps=1000, eval_every=1, out=str(tmp_path / task), progress=False, **settings),
                callback=lambda epoch, metrics: rss.__setitem__(metrics["step"], _rss_mib()))
    with capsys.disabled():
        print(f"\n{task}: RSS after step 100 {rss[100]:.1f} MiB, after step 1000 {rss[1000]:.1f} MiB "
              f"(every 100: {', '.join(f'{v:.1f}' for v in rss.values())})")
    assert rss[1000] - rss[100] < 4.0


@needs_mnist1d
@slow
def test_mnist1d_paper_recipe_reaches_the_paper(tmp_path):
    """The whole recipe, 8000 steps (seed 0: 92.1%; the paper's PyTorch CNN: 92.4%)."""
    log = train.train(TrainConfig(task="mnist1d", out=str(tmp_path / "paper"), progress=False))
    assert log["final"]["test_acc"] >= 0.92


@slow
def test_lenet5_reaches_99_percent(tmp_path, data_root):
    log = train.train(TrainConfig(task="lenet5", data_dir=data_root, out=str(tmp_path / "lenet"), progress=False))
    assert log["final"]["test_acc"] >= 0.99


def test_training_runs_with_the_heap_frozen_and_leaves_it_as_it_was(tmp_path, monkeypatch):
    """Objects alive when a run starts stay out of the collector's full passes during it, and are back in
    afterwards, also when the run fails."""
    import gc
    seen = []

    def spy(*args):
        seen.append(gc.get_freeze_count())
        raise RuntimeError("stop here")
    monkeypatch.setattr(train, "_run", spy)
    with pytest.raises(RuntimeError, match="stop here"):
        train.train(task="mnist1d", steps=1, out=str(tmp_path))
    assert seen and seen[0] > 0
    assert gc.get_freeze_count() == 0
