"""search.refit: the chosen config retrained on train+validation gets the one test look.

The unit tests check the refit's data (standardized with train+validation statistics only)
and that a saved refit model is measured as it was trained. The slow ones run `sweep run` as
a user would (a local Ray, a real SQLite MLflow store) and read back what a user reads: the
terminal, results.csv, the MLflow runs and the sweep folder; one kills the driver with
SIGKILL in the middle of a refit and resumes it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from trainers.config import DataConfig, trial_config
from trainers.data import load_dataset, prepare, refit_dataset
from trainers.loop import CHECKPOINT_FILE, Trial
from trainers.metrics import REFIT_CURVES
from trainers.prepared import key

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweeping import SWEEP, Hold, history_steps, output, runs_of, start_sweep  # noqa: E402

SMALL = {"source": "digits", "val_fraction": 0.16, "test_fraction": 0.2, "seed": 3}


# ---------------------------------------------------------------- the refit's data
@pytest.mark.parametrize("folds", [1, 3])
def test_refit_data_is_train_and_val_standardized_with_their_statistics_only(folds):
    cfg = DataConfig(**SMALL, folds=folds)
    raw = load_dataset(cfg)
    pool = np.concatenate([raw.train.X, raw.val.X]).astype(np.float64)
    mean, std = pool.mean(0), pool.std(0)
    std[std == 0] = 1.0  # StandardScaler keeps constant features' scale

    ds = refit_dataset(cfg)
    assert len(ds.train.y) == len(raw.train.y) + len(raw.val.y)  # every fold's examples, once
    np.testing.assert_array_equal(ds.train.y, np.concatenate([raw.train.y, raw.val.y]))
    np.testing.assert_allclose(ds.train.X, (pool - mean) / std, atol=1e-5)
    np.testing.assert_array_equal(ds.test.y, raw.test.y)  # test untouched but for the scaling
    np.testing.assert_allclose(ds.test.X, (raw.test.X - mean) / std, atol=1e-5)
    test_mean = raw.test.X.astype(np.float64).mean(0)
    assert not np.allclose(mean, test_mean, atol=1e-3)  # test statistics would show

    selection = prepare(DataConfig(**SMALL))[0]  # what the trials saw: train statistics
    assert not np.allclose(selection.test.X, ds.test.X, atol=1e-3)


def test_unstandardized_refit_data_is_the_raw_pool():
    cfg = DataConfig(**SMALL, standardize=False)
    raw, ds = load_dataset(cfg), refit_dataset(cfg)
    np.testing.assert_array_equal(ds.train.X, np.concatenate([raw.train.X, raw.val.X]))
    np.testing.assert_array_equal(ds.test.X, raw.test.X)


def test_a_saved_refit_model_is_measured_with_its_own_scaling(tmp_path):
    cfg = trial_config({"data": SMALL, "train": {"epochs": 2, "batch_size": 64}})
    trial = Trial(cfg, refit=True)
    trial.run()
    trial.save(tmp_path)
    loaded = Trial.load(tmp_path)  # no datasets given: it rebuilds the refit's
    assert loaded.refit and len(loaded.trainers) == 1
    assert loaded.evaluate("test") == trial.evaluate("test")
    state = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)
    assert state["refit"] is True


# ---------------------------------------------------------------- sweeps (slow)
def sweep_config(folder: Path, name: str, data: dict | None = None, **sections) -> Path:
    doc = {
        "name": name,
        "data": data or {"source": "npz", "path": str(folder / "good.npz")},
        "train": {"epochs": 3, "batch_size": 32, "optimizer": "sgd", "schedule": "constant"},
        **sections,
    }
    path = folder / f"{name}.yaml"
    path.write_text(json.dumps(doc))  # JSON is YAML
    return path


def sweep(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run([SWEEP, *args], capture_output=True, text=True, cwd=cwd)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def refit_runs(client: MlflowClient, parent) -> list:
    query = f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and tags.`sweep.role` = 'refit'"
    return client.search_runs([parent.info.experiment_id], query)


@pytest.mark.slow
def test_refit_is_its_own_run_and_gets_the_test_look(workdir):
    """Random search over the loss with 2 folds: the chosen trial and each loss's best are
    refit on all of train+validation, each once; the parent, best_model, results.csv and the
    terminal say which model had the look; `sweep sync` copies the refit runs too."""
    cfg = sweep_config(
        workdir,
        "refit",
        data={"source": "npz", "path": str(workdir / "good.npz"), "folds": 2},
        search={"type": "random", "num_samples": 2, "seed": 2},
        space={"model.loss": {"grid": ["softmax", "hinge"]}, "train.lr": {"choice": [0.01, 0.1]}},
    )
    out = sweep("run", str(cfg), cwd=workdir).stdout
    folder = workdir / "runs/refit"
    data = trial_config({"data": {"source": "npz", "path": str(workdir / "good.npz"), "folds": 2}})
    copies = {p.name for p in (folder / "data").iterdir() if p.is_dir()}
    assert copies == {key(data.data), key(data.data, refit=True)}  # the refit's is mapped too
    table = pd.read_csv(folder / "results.csv")
    chosen = table[table["chosen"].fillna("") != ""]
    by_label = {label: r for _, r in chosen.iterrows() for label in r["chosen"].split()}
    assert set(by_label) == {"best", "softmax", "hinge"}
    pool = 240  # good.npz's 300 rows less the 20% test split: both folds' examples
    assert (chosen["evaluated"] == f"refit on train+validation, {pool} examples, 3 epochs").all()
    assert table[table["chosen"].fillna("") == ""]["test_acc"].isna().all()  # one look each
    assert f"test look on: refit on train+validation, {pool} examples" in out

    client, parent, children = runs_of(workdir, "refit")
    refits = {r.data.tags["sweep.source_trial_id"]: r for r in refit_runs(client, parent)}
    assert sorted(refits) == sorted(set(chosen["trial_id"]))  # one per chosen config
    for trial_id, run in refits.items():
        assert run.info.status == "FINISHED" and run.data.tags["sweep.status"] == "completed"
        assert run.data.params == children[trial_id].data.params  # same config, same seed
        assert history_steps(client, run, "train_loss") == [1, 2, 3]
        assert set(run.data.metrics) == set(REFIT_CURVES)  # no validation curves: none held out
    tags, metrics = parent.data.tags, parent.data.metrics
    for label, row in by_label.items():
        tag = "best" if label == "best" else f"best_{label}"
        prefix = "" if label == "best" else f"{label}_"
        assert tags[f"{tag}.trial_id"] == row["trial_id"]
        assert tags[f"{tag}.evaluated"] == "refit"
        assert tags[f"{tag}.refit_id"] == refits[row["trial_id"]].data.tags["sweep.trial_id"]
        assert metrics[f"best_{prefix}test_acc"] == pytest.approx(row["test_acc"])
        assert metrics[f"best_{prefix}val_acc"] == pytest.approx(row["final_val_acc"])
        model = Trial.load(folder / ("best_model" if label == "best" else f"best_model_{label}"))
        assert model.refit and len(model.trainers) == 1  # not the 2 fold models of the trial
        assert model.evaluate("test")["test_acc"] == pytest.approx(row["test_acc"])

    copy = f"sqlite:///{workdir}/copy.db"  # the record rebuilds the refit runs elsewhere
    sweep("sync", "refit", "--tracking-uri", copy, cwd=workdir)
    client2, parent2, _ = runs_of(workdir, "refit", copy)
    copied = {r.data.tags["sweep.source_trial_id"]: r for r in refit_runs(client2, parent2)}
    assert sorted(copied) == sorted(refits)
    for run in copied.values():
        assert run.info.status == "FINISHED"
        assert history_steps(client2, run, "train_loss") == [1, 2, 3]


@pytest.mark.slow
def test_refit_false_looks_at_the_chosen_checkpoint(workdir):
    cfg = sweep_config(
        workdir,
        "norefit",
        search={"type": "grid", "refit": False},
        space={"train.lr": {"grid": [0.01, 0.1]}},
    )
    out = sweep("run", str(cfg), cwd=workdir).stdout
    folder = workdir / "runs/norefit"
    assert not (folder / "refit").exists()
    table = pd.read_csv(folder / "results.csv")
    best = table.iloc[0]
    assert best["chosen"] == "best" and best["evaluated"].startswith("its checkpoint")
    assert "test look on: its checkpoint (trained on train only, epoch 3)" in out
    client, parent, children = runs_of(workdir, "norefit")
    assert refit_runs(client, parent) == [] and len(children) == 2
    assert parent.data.tags["best.evaluated"] == "checkpoint"
    model = Trial.load(folder / "best_model")
    assert not model.refit
    assert model.evaluate("test")["test_acc"] == pytest.approx(best["test_acc"])
    assert parent.data.metrics["best_test_acc"] == pytest.approx(best["test_acc"])


def refit_epochs(history: Path) -> list[int]:
    """The refit epochs the folder's record holds, in the order recorded."""
    if not history.exists():
        return []
    lines = [json.loads(line) for line in history.read_text().splitlines() if line.strip()]
    return [e["metrics"]["epoch"] for e in lines if e["event"] == "refit_result"]


def refit_held(workdir: Path, epoch: int, *args: str) -> tuple[subprocess.Popen, Hold]:
    """`sweep ARGS` in the background, held once its refit has recorded epoch ``epoch``."""
    hold = Hold(workdir / f"hold-{epoch}", f"refit-epoch-{epoch}")
    proc = start_sweep(*args, hold=hold)
    hold.reached(f"refit-epoch-{epoch}")
    return proc, hold


def stopped_cleanly(proc: subprocess.Popen) -> None:
    """Exit 130, and the line that says how to go on; no traceback."""
    assert proc.wait(timeout=60) == 130, output(proc)
    said = output(proc)
    assert "interrupted; continue with: sweep resume killrefit" in said, said
    assert "Traceback" not in said, said


@pytest.mark.slow
def test_ctrl_c_usr1_and_sigkill_during_the_refit_then_resume_gives_one_refit_run(workdir):
    """A refit held at its epochs (one trial, 30 epochs of small batches on 10,000 examples):
    Ctrl-C once the refit has recorded two epochs; a resume stopped by SIGUSR1 two epochs
    further; a resume killed two epochs further; a resume to the end."""
    epochs = 30
    cfg = sweep_config(
        workdir,
        "killrefit",
        data={"source": "synthetic", "n_samples": 10000, "n_features": 20, "n_classes": 3},
        train={"epochs": epochs, "batch_size": 16, "optimizer": "sgd", "schedule": "constant"},
        search={"type": "grid"},
        space={"train.lr": {"grid": [0.01]}},
    )
    history = workdir / "runs/killrefit/history.jsonl"
    proc, hold = refit_held(workdir, 2, "run", str(cfg))
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the process group
    hold.let_go("refit-epoch-2")
    stopped_cleanly(proc)
    assert refit_epochs(history) == [1, 2]
    proc, hold = refit_held(workdir, 4, "resume", "killrefit")
    proc.send_signal(signal.SIGUSR1)  # SLURM's pre-timeout signal, sent to the driver
    hold.let_go("refit-epoch-4")
    stopped_cleanly(proc)
    assert refit_epochs(history) == [1, 2, 3, 4]
    proc, _ = refit_held(workdir, 6, "resume", "killrefit")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert refit_epochs(history) == list(range(1, 7))
    client, parent, _ = runs_of(workdir, "killrefit")
    (killed,) = refit_runs(client, parent)
    assert killed.info.status == "RUNNING"  # as a SIGKILL leaves it

    done = sweep("resume", "killrefit", cwd=workdir)
    assert "from epoch" in done.stdout  # went on from its checkpoint
    after = refit_epochs(history)
    assert sorted(set(after)) == list(range(1, epochs + 1))
    assert len(after) - len(set(after)) <= 1  # at most the epoch the kill cut short, again
    client, parent, children = runs_of(workdir, "killrefit")
    runs = refit_runs(client, parent)
    assert [r.info.run_id for r in runs] == [killed.info.run_id]  # the same run, once
    running = [r for r in [parent, *children.values(), *runs] if r.info.status == "RUNNING"]
    assert running == []
    assert runs[0].info.status == "FINISHED"
    assert history_steps(client, runs[0], "train_loss") == list(range(1, epochs + 1))
    assert parent.data.tags["best.evaluated"] == "refit"
    model = Trial.load(workdir / "runs/killrefit/best_model")
    assert model.refit and model.epoch == epochs
    assert model.evaluate("test")["test_acc"] == pytest.approx(parent.data.metrics["best_test_acc"])
