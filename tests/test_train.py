"""The training loop and the CLI on tiny runs: outputs, reproducibility, exact resume, errors.

Full-accuracy runs (minutes) are not unit tests: they run only with FASTCONV_SLOW=1.
"""
import json
import os
import sys

import numpy as np
import pytest

import fastconv as fc
from fastconv import cli, train
from fastconv.train import TrainConfig

slow = pytest.mark.skipif(os.environ.get("FASTCONV_SLOW") != "1", reason="full training run: set FASTCONV_SLOW=1")

@pytest.fixture(autouse=True, scope="module")
def _private_cache(tmp_path_factory):
    """Generated MNIST-1D goes to a temporary cache, not the user's ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FASTCONV_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


# MNIST-1D on 200 samples, batches of 50: 4 steps per epoch, a fraction of a second per epoch.
TINY = dict(task="mnist1d", subset=200, batch_size=50, progress=False)


def _run(tmp_path, name, **kwargs):
    return train.train(TrainConfig(**{**TINY, "out": str(tmp_path / name), **kwargs}))


def _checkpoint(tmp_path, name):
    with np.load(tmp_path / name / "checkpoint.npz") as f:
        return {k: f[k] for k in f.files}


def _same_checkpoints(a, b):
    assert sorted(a) == sorted(b)
    for key in a:
        if key != "meta":  # meta holds wall-clock times
            assert np.array_equal(a[key], b[key]), key


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


def test_same_seed_same_run_other_seed_differs(tmp_path):
    a = _run(tmp_path, "a", steps=6, optimizer="sgd", schedule="cosine", augment=True)
    b = _run(tmp_path, "b", steps=6, optimizer="sgd", schedule="cosine", augment=True)
    c = _run(tmp_path, "c", steps=6, optimizer="sgd", schedule="cosine", augment=True, seed=1)
    assert a["step_loss"] == b["step_loss"] and a["final"]["test_acc"] == b["final"]["test_acc"]
    _same_checkpoints(_checkpoint(tmp_path, "a"), _checkpoint(tmp_path, "b"))
    assert a["step_loss"] != c["step_loss"]


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


def test_resume_with_other_settings_is_refused(tmp_path):
    _run(tmp_path, "run", epochs=1)
    with pytest.raises(ValueError, match="batch_size"):
        _run(tmp_path, "run", epochs=2, batch_size=25, resume=True)


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


def test_progress_and_plot_without_optional_packages(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    train.train(TrainConfig(**{**TINY, "out": str(tmp_path / "bare"), "steps": 8, "progress": True,
                               "batch_size": 25}), stream=sys.stdout)
    out = capsys.readouterr().out
    assert "step 2/8" in out and "img/s" in out  # plain progress lines
    assert "matplotlib is not installed" in out
    assert not (tmp_path / "bare" / "curves.png").exists() and not (tmp_path / "bare" / "kernels.png").exists()


# ------------------------------------------------------------------------------------- CLI
def test_cli_train_and_info(tmp_path, capsys):
    code = cli.main(["train", "mnist1d", "--steps", "4", "--subset", "100", "--batch-size", "50",
                     "--optimizer", "sgd", "--lr", "0.05", "--out", str(tmp_path / "cli"), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0 and "final test accuracy" in out
    config = json.loads((tmp_path / "cli" / "log.json").read_text())["config"]
    assert config["optimizer"] == "sgd" and config["lr"] == 0.05 and config["steps"] == 4
    assert cli.main(["info"]) == 0 and "numpy" in capsys.readouterr().out


@pytest.mark.skipif(fc.cuda.is_available(), reason="checks the error raised without a GPU")
def test_cli_cuda_without_gpu_is_a_clear_error(tmp_path, capsys):
    code = cli.main(["train", "mnist1d", "--device", "cuda", "--out", str(tmp_path / "gpu")])
    assert code == 2 and "no CUDA GPU is available" in capsys.readouterr().err


def test_cli_bench_and_compare_run_the_scripts(tmp_path, monkeypatch, capsys):
    script = tmp_path / "bench" / "compare_training.py"
    script.parent.mkdir()
    script.write_text("def main(argv):\n    print('called with', argv)\n    return 3\n")
    monkeypatch.setattr(cli, "_bench_script", lambda name: str(tmp_path / "bench" / name)
                        if (tmp_path / "bench" / name).exists() else None)
    assert cli.main(["compare", "--epochs", "1"]) == 3
    assert "called with ['--epochs', '1']" in capsys.readouterr().out
    assert cli.main(["bench", "--tiny"]) == 2
    assert "bench/compare.py not found" in capsys.readouterr().err


# ------------------------------------------------------------------------ full runs (slow)
@slow
def test_mnist1d_paper_recipe_reaches_the_paper(tmp_path):
    log = train.train(TrainConfig(task="mnist1d", out=str(tmp_path / "paper"), progress=False))
    assert log["final"]["test_acc"] >= 0.90


@slow
def test_lenet5_reaches_99_percent(tmp_path, data_root):
    log = train.train(TrainConfig(task="lenet5", data_dir=data_root, out=str(tmp_path / "lenet"), progress=False))
    assert log["final"]["test_acc"] >= 0.99
