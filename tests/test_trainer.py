"""The training loop: accuracy, determinism, divergence, exact checkpoint-resume."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainers.config import trial_config
from trainers.loop import Trial, evaluate

SMALL = {"data": {"source": "synthetic", "n_samples": 600, "n_features": 10, "n_classes": 3}}


def config(**train):
    return trial_config({**SMALL, "train": {"epochs": 6, "batch_size": 32, **train}})


def test_digits_default_config_learns():
    trial = Trial(trial_config({"train": {"epochs": 10}}))
    final = trial.run()
    assert final["val_acc"] >= 0.93
    assert final["epochs_run"] == 10 and not final["diverged"]
    assert len(trial.history) == 10
    assert [m["epoch"] for m in trial.history] == list(range(1, 11))


@pytest.mark.parametrize("loss", ["softmax", "hinge", "squared_hinge"])
@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "nesterov", "adam"])
def test_every_loss_and_optimizer_trains(loss, optimizer):
    cfg = trial_config(
        {
            **SMALL,
            "model": {"loss": loss},
            "train": {"epochs": 4, "optimizer": optimizer, "lr": 0.01},
        }
    )
    trial = Trial(cfg)
    before = trial.last_finite["train_total_loss"]
    final = trial.run()
    assert final["train_total_loss"] < before


def test_metrics_reported_each_epoch():
    seen = []
    Trial(config()).run(lambda m, t: seen.append(m))
    assert len(seen) == 6
    keys = {
        "train_loss",
        "train_total_loss",
        "train_acc",
        "val_loss",
        "val_acc",
        "lr",
        "epoch_seconds",
        "epoch",
        "diverged",
    }
    assert keys <= set(seen[0])
    # with lambda > 0 the total loss exceeds the data loss
    assert all(m["train_total_loss"] > m["train_loss"] for m in seen)


def test_same_seed_same_metrics_other_seed_differs():
    a, b, c = (Trial(config(seed=s)).run() for s in (1, 1, 2))
    assert a == {**b, "epoch_seconds": a["epoch_seconds"]}
    assert a["val_loss"] != c["val_loss"]


def test_divergence_stops_cleanly_and_keeps_last_finite_metrics():
    trial = Trial(config(lr=1e30, optimizer="sgd", schedule="constant", epochs=20))
    final = trial.run()
    assert final["diverged"] is True
    assert final["epochs_run"] < 20
    for key in ("train_loss", "val_loss", "val_acc"):
        assert final[key] == final[key] and abs(final[key]) != float("inf")  # finite


def test_resume_from_checkpoint_equals_uninterrupted_run(tmp_path):
    full = Trial(config(epochs=8, schedule="step", step_size=3)).run()

    first = Trial(config(epochs=8, schedule="step", step_size=3))
    for _ in range(3):
        first.step()
    first.save(tmp_path)
    del first
    resumed = Trial.load(tmp_path)
    assert resumed.epoch == 3
    final = resumed.run()
    assert len(resumed.history) == 8
    strip = ("epoch_seconds",)
    assert {k: v for k, v in final.items() if k not in strip} == {
        k: v for k, v in full.items() if k not in strip
    }


def test_evaluate_reads_the_test_split_of_a_checkpoint(tmp_path):
    trial = Trial(config())
    trial.run()
    trial.save(tmp_path)
    scores = evaluate(tmp_path, "test")
    assert set(scores) == {"test_loss", "test_acc"}
    assert scores == trial.evaluate("test")
    assert 0.0 <= scores["test_acc"] <= 1.0


def test_cross_validation_reports_the_mean_over_folds():
    cfg = trial_config({**SMALL, "data": {**SMALL["data"], "folds": 3}, "train": {"epochs": 2}})
    trial = Trial(cfg)
    assert len(trial.trainers) == 3
    trial.run()
    per_fold = [t.metrics(t.X_val, t.y_val)[2].item() for t in trial.trainers]
    assert trial.history[-1]["val_acc"] == pytest.approx(sum(per_fold) / 3)


def test_cuda_refused_in_one_line_where_none_is_visible():
    """With every GPU hidden (as on a CPU node, or a GPU machine with CUDA_VISIBLE_DEVICES
    empty), ``train.device: cuda`` is one error line and exit code 2; runs anywhere."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(root)}
    args = ["train", str(root / "configs/digits.yaml"), "--set", "train.device=cuda"]
    done = subprocess.run(
        [sys.executable, "-m", "sweeps.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr == (
        "error: train.device is cuda but no CUDA GPU is visible here; use auto or cpu\n"
    )
    assert done.stdout == ""
