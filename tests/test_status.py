"""`sweep status`: a real sweep while it runs, after a SIGINT and once resumed to its end; and
the SLURM job's state where the folder holds its log."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from sklearn.datasets import make_classification

from sweeps.layout import SweepFolder
from sweeps.status import show, status_of
from sweeps.tracking import SweepTracker

SWEEP = str(Path(sys.executable).with_name("sweep"))
LRS = [0.01, 0.02, 0.03, 0.04]


def status(cwd: Path, *args: str) -> str:
    done = subprocess.run([SWEEP, "status", *args], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def row_of(table: str, name: str) -> list[str]:
    """The overview's columns for one sweep."""
    line = next(ln for ln in table.splitlines() if ln.split()[0] == name)
    return line.split()


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.3)


@pytest.mark.slow
def test_status_of_a_running_then_interrupted_then_completed_sweep(tmp_path):
    X, y = make_classification(n_samples=40_000, n_features=8, n_informative=6, n_classes=3)
    np.savez(tmp_path / "good.npz", X=X.astype("float32"), y=y)
    doc = {
        "name": "watched",
        "data": {"source": "npz", "path": str(tmp_path / "good.npz")},
        "train": {"epochs": 24, "batch_size": 8, "optimizer": "sgd"},  # seconds per trial
        "search": {"type": "grid", "max_concurrent": 1},  # one trial at a time: slow enough
        "space": {"train.lr": {"grid": LRS}},
    }
    (tmp_path / "watched.yaml").write_text(yaml.safe_dump(doc))
    state = tmp_path / "runs/watched/mlflow_runs.json"
    proc = subprocess.Popen(
        [SWEEP, "run", "watched.yaml"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        # the second trial has started, so the first has ended
        wait_for(lambda: state.exists() and len(json.loads(state.read_text())["trials"]) >= 2, proc)
        folder = SweepFolder.of(tmp_path / "runs", "watched")
        uri = f"sqlite:///{tmp_path}/mlflow.db"
        wait_for(lambda: status_of(folder, uri).ended >= 1, proc)
        detail = ""

        def mid_sweep() -> bool:  # a trial running and one not started (asked again if missed)
            nonlocal detail
            detail = status(tmp_path, "watched")
            return "1 running" in detail and "not started" in detail

        wait_for(mid_sweep, proc)  # first: it holds only until the last trial starts
        assert detail.startswith("sweep watched: running") and "best so far: val_acc" in detail
        overview = status(tmp_path)  # holds until the last trial ends
        name, state_, progress, metric, value, slurm = row_of(overview, "watched")
        assert state_ == "running" and progress.split("/")[1] == "4"
        assert 1 <= int(progress.split("/")[0]) < 4
        assert metric == "val_acc" and 0 <= float(value) <= 1 and slurm == "-"
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the sweep saves its state and stops
        out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 130, out
    name, state_, progress, *_ = row_of(status(tmp_path), "watched")
    assert state_ == "interrupted" and int(progress.split("/")[0]) < 4
    assert "interrupted" in status(tmp_path, "watched").splitlines()[0]

    resumed = subprocess.run(
        [SWEEP, "resume", "watched"], cwd=tmp_path, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    name, state_, progress, metric, value, _ = row_of(status(tmp_path), "watched")
    assert (state_, progress) == ("completed", "4/4")
    detail = status(tmp_path, "watched")
    assert "  trials: 4 completed" in detail.splitlines()
    assert len([ln for ln in detail.splitlines() if ln.startswith("    ")]) == 4  # last trials


def open_sweep(tmp_path: Path, name: str) -> SweepFolder:
    """A sweep folder and a parent run left RUNNING, as a driver killed hard leaves them."""
    folder = SweepFolder.of(tmp_path / "runs", name)
    folder.root.mkdir(parents=True)
    doc = {
        "name": name,
        "data": {"source": "digits"},
        "search": {"type": "random", "num_samples": 3},
        "space": {"train.lr": {"loguniform": [1e-3, 1e-1]}},
    }
    folder.config.write_text(yaml.safe_dump(doc))
    tracker = SweepTracker(f"sqlite:///{tmp_path}/mlflow.db", name, folder.state)
    tracker.start_sweep({"search.type": "random"})
    tracker.trial_started("t1", {"train.lr": 0.01})
    tracker.trial_result("t1", {"epoch": 1, "val_acc": 0.5, "val_loss": 1.0})
    tracker.trial_ended("t1", "completed", 1)
    return folder


def fake_slurm(bin_dir: Path, squeue: str | None, sacct: str | None) -> None:
    """Stand-ins for squeue/sacct that print a job state (SLURM itself is tested elsewhere)."""
    bin_dir.mkdir(exist_ok=True)
    for name, answer in (("squeue", squeue), ("sacct", sacct)):
        if answer is not None:
            (bin_dir / name).write_text(f"#!/bin/sh\necho '{answer}'\n")
            (bin_dir / name).chmod(0o755)


@pytest.mark.parametrize(
    ("squeue", "sacct", "shown", "state"),
    [
        ("RUNNING", None, "job 4242: RUNNING", "running"),
        ("", "CANCELLED by 0", "job 4242: CANCELLED by 0", "interrupted"),
        (None, None, "job 4242: unknown", "running"),
    ],
)
def test_slurm_state_from_the_jobs_log(tmp_path, monkeypatch, squeue, sacct, shown, state):
    folder = open_sweep(tmp_path, "onslurm")
    (folder.root / "slurm-17.out").write_text("an older job\n")
    (folder.root / "slurm-4242.out").write_text("the latest job\n")
    fake_slurm(tmp_path / "bin", squeue, sacct)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    found = status_of(folder, f"sqlite:///{tmp_path}/mlflow.db")
    assert (found.slurm, found.state) == (shown, state)
    assert (found.ended, found.planned) == (1, 3)
    assert found.counts == {"completed": 1, "not started": 2}


def test_no_sweeps_and_a_sweep_without_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert show(None, tmp_path / "runs") == f"no sweeps under {tmp_path / 'runs'}/"
    folder = SweepFolder.of(tmp_path / "runs", "fresh")
    folder.root.mkdir(parents=True)
    folder.config.write_text(yaml.safe_dump({"name": "fresh", "search": {"type": "grid"}}))
    out = show(None, tmp_path / "runs", f"sqlite:///{tmp_path}/mlflow.db")
    assert out.splitlines()[1].split()[:3] == ["fresh", "not", "started"]
