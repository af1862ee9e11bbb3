"""`sweep status`: a real sweep held mid-way while it runs, after a SIGINT and once resumed to
its end; a sweep killed hard (interrupted, not running: nobody holds its lock); and the SLURM
job's state where the folder holds its log."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml

from sweeps.record.history import HistoryFile
from sweeps.record.layout import SweepFolder
from sweeps.tracking.writer import SweepTracker
from sweeps.view.status import format_detail, show, status_of

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweeping import SWEEP, Hold, make_data, start_sweep, wait_for, write_config  # noqa: E402

LRS = [0.01, 0.02, 0.03, 0.04]
ROOT = Path(__file__).resolve().parents[1]


def status(cwd: Path, *args: str) -> str:
    done = subprocess.run([SWEEP, "status", *args], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def row_of(table: str, name: str) -> list[str]:
    """The overview's columns for one sweep."""
    line = next(ln for ln in table.splitlines() if ln.split()[0] == name)
    return line.split()


def held_sweep(tmp_path: Path, name: str, second: bool) -> tuple[subprocess.Popen, SweepFolder]:
    """`sweep run` of four trials one at a time, held after a trial's epoch 2: the first
    trial's, or (``second``) the second's once the first has ended; its MLflow runs say so."""
    make_data(tmp_path)
    write_config(
        tmp_path,
        name,
        search={"type": "grid", "max_concurrent": 1},
        space={"train.lr": {"grid": LRS}},
    )
    hold = Hold(tmp_path / "hold", "epoch-2")
    proc = start_sweep("run", f"{name}.yaml", hold=hold, cwd=tmp_path)
    if second:
        hold.second("epoch-2")
    else:
        hold.reached("epoch-2")
    folder = SweepFolder.of(tmp_path / "runs", name)
    counts = {"running": 1, "completed": 1, "not started": 2} if second else {"running": 1}
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    wait_for(lambda: status_of(folder, uri).counts.items() >= counts.items(), "MLflow", proc=proc)
    return proc, folder


@pytest.mark.slow
def test_status_of_a_running_then_interrupted_then_completed_sweep(tmp_path):
    proc, _ = held_sweep(tmp_path, "watched", second=True)
    try:
        detail = status(tmp_path, "watched").splitlines()
        assert detail[0] == "sweep watched: running, 1/4 trials ended"
        assert "  trials: 1 running, 1 completed, 2 not started" in detail
        assert f"  driver: pid {proc.pid} on {socket.gethostname()}" in detail
        assert any(ln.startswith("  best so far: val_acc") for ln in detail)
        overview = status(tmp_path)
        name, state_, progress, metric, value, slurm = row_of(overview, "watched")
        assert (state_, progress) == ("running", "1/4")
        assert metric == "val_acc" and 0 <= float(value) <= 1 and slurm == "-"
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the sweep saves its state and stops
        proc.wait(timeout=180)
    assert proc.returncode == 130, proc.log.read_text()
    name, state_, progress, *_ = row_of(status(tmp_path), "watched")
    assert (state_, progress) == ("interrupted", "1/4")
    detail = status(tmp_path, "watched").splitlines()
    assert detail[0] == "sweep watched: interrupted, 1/4 trials ended"
    assert "  continue with: sweep resume watched" in detail

    resumed = subprocess.run(
        [SWEEP, "resume", "watched"], cwd=tmp_path, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    name, state_, progress, metric, value, _ = row_of(status(tmp_path), "watched")
    assert (state_, progress) == ("completed", "4/4")
    detail = status(tmp_path, "watched")
    assert "  trials: 4 completed" in detail.splitlines()
    assert len([ln for ln in detail.splitlines() if ln.startswith("    ")]) == 4  # last trials
    assert "continue with" not in detail and "driver:" not in detail

    # From another directory: the sweep's own store (its state file names it), none made here.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    runs = str(tmp_path / "runs")
    assert row_of(status(elsewhere, "--storage", runs), "watched")[1:3] == ["completed", "4/4"]
    drawn = subprocess.run(
        [SWEEP, "report", "watched", "--storage", runs],
        cwd=elsewhere,
        capture_output=True,
        text=True,
    )
    assert drawn.returncode == 0, drawn.stdout + drawn.stderr
    page = (tmp_path / "runs/watched/report/index.html").read_text()
    test_acc = pd.read_csv(tmp_path / "runs/watched/results.csv")["test_acc"].dropna()
    assert len(test_acc) == 1 and f"<td>{test_acc.iloc[0]:.4f}</td>" in page
    assert list(elsewhere.iterdir()) == []

    (tmp_path / "mlflow.db").unlink()  # the store lost: the folder, its record, says it all
    assert row_of(status(tmp_path), "watched")[1:3] == ["completed", "4/4"]
    assert "  trials: 4 completed" in status(tmp_path, "watched").splitlines()
    assert not (tmp_path / "mlflow.db").exists()  # reading made no store


@pytest.mark.slow
def test_a_sweep_killed_hard_is_interrupted_since_its_last_write_and_resumes(tmp_path):
    """SIGKILL of the whole process group (as the OOM killer or a lost node leaves a sweep):
    MLflow's runs stay RUNNING, but nobody holds the folder's lock any more."""
    proc, folder = held_sweep(tmp_path, "killed", second=False)
    try:
        detail = status(tmp_path, "killed").splitlines()
        assert detail[0] == "sweep killed: running, 0/4 trials ended"
        assert f"  driver: pid {proc.pid} on {socket.gethostname()}" in detail
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed_at = time.time()
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert status_of(folder, uri).runs.parent.status == "RUNNING"  # nothing closed it

    overview = status(tmp_path)
    assert row_of(overview, "killed")[1:3] == ["interrupted", "0/4"]
    assert overview.splitlines()[-1].startswith("interrupted: no driver; `sweep status NAME`")
    detail = status(tmp_path, "killed").splitlines()
    assert detail[0] == "sweep killed: interrupted, 0/4 trials ended"
    assert "  continue with: sweep resume killed" in detail
    assert "  trials: 1 interrupted, 3 not started" in detail  # the held one ended with it
    assert "last 1 trials:" in "\n".join(detail) and "running" not in "\n".join(detail)
    (since,) = [ln for ln in detail if ln.startswith("  since: ")]
    stamp = re.fullmatch(r"  since: (\S+ \S+) \([\d.]+ (s|min|h) ago\), no driver", since)
    assert stamp, since
    written = time.mktime(time.strptime(stamp[1], "%Y-%m-%d %H:%M:%S"))
    assert written == int(folder.history.stat().st_mtime) and written <= killed_at

    resumed = subprocess.run(
        [SWEEP, "resume", "killed"], cwd=tmp_path, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert row_of(status(tmp_path), "killed")[1:3] == ["completed", "4/4"]


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
    tracker.write_trial("t1", config={"train.lr": 0.01})
    tracker.write_trial("t1", results=[{"epoch": 1, "val_acc": 0.5, "val_loss": 1.0}])
    tracker.trial_ended("t1", "completed", 1)
    return folder


def fake_slurm(bin_dir: Path, squeue: str | None, sacct: str | None) -> None:
    """Stand-ins for squeue/sacct that print a job state (SLURM itself is tested elsewhere)."""
    bin_dir.mkdir(exist_ok=True)
    for name, answer in (("squeue", squeue), ("sacct", sacct)):
        if answer is not None:
            (bin_dir / name).write_text(f"#!/bin/sh\necho '{answer}'\n")
            (bin_dir / name).chmod(0o755)


LOCKER = """
import pathlib, sys
from sweeps.record.layout import SweepFolder
from sweeps.record.lock import SweepLock
SweepLock(SweepFolder(pathlib.Path(sys.argv[1]))).take()
print("locked", flush=True)
sys.stdin.read()  # held until the test closes its stdin
"""


@contextlib.contextmanager
def locked_elsewhere(folder: SweepFolder) -> Iterator[int]:
    """The sweep's lock held by another process (its pid) while within."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(folder.root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    ) as locker:
        assert locker.stdout.readline() == b"locked\n"
        yield locker.pid
        locker.stdin.close()


@pytest.mark.parametrize(
    ("squeue", "sacct", "locked", "shown", "state"),
    [
        ("RUNNING", None, False, "job 4242: RUNNING", "running"),
        ("PENDING", None, False, "job 4242: PENDING", "running"),  # requeued
        ("", "CANCELLED by 0", False, "job 4242: CANCELLED by 0", "interrupted"),
        (None, None, False, "job 4242: unknown", "interrupted"),  # nobody holds the lock
        ("", "CANCELLED by 0", True, "job 4242: CANCELLED by 0", "running"),  # resumed by hand
    ],
)
def test_slurm_state_from_the_jobs_log(tmp_path, monkeypatch, squeue, sacct, locked, shown, state):
    folder = open_sweep(tmp_path, "onslurm")
    (folder.root / "slurm-17.out").write_text("an older job\n")
    (folder.root / "slurm-4242.out").write_text("the latest job\n")
    fake_slurm(tmp_path / "bin", squeue, sacct)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    with locked_elsewhere(folder) if locked else contextlib.nullcontext() as pid:
        found = status_of(folder, f"sqlite:///{tmp_path}/mlflow.db")
    assert (found.slurm, found.state) == (shown, state)
    assert found.driver == (f"pid {pid} on {socket.gethostname()}" if locked else None)
    assert (found.ended, found.planned) == (1, 3)
    assert found.counts == {"completed": 1, "not started": 2}
    hint = "continue with: the `resume:` command `sweep submit` printed"
    assert (hint in format_detail(found)) == (state == "interrupted")


def test_no_sweeps_and_a_sweep_without_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert show(None, tmp_path / "runs") == f"no sweeps under {tmp_path / 'runs'}/"
    folder = SweepFolder.of(tmp_path / "runs", "fresh")
    folder.root.mkdir(parents=True)
    folder.config.write_text(yaml.safe_dump({"name": "fresh", "search": {"type": "grid"}}))
    out = show(None, tmp_path / "runs", f"sqlite:///{tmp_path}/mlflow.db")
    assert out.splitlines()[1].split()[:3] == ["fresh", "not", "started"]


@pytest.mark.parametrize(
    ("end", "state"), [(None, "interrupted"), ("failed", "failed"), ("completed", "completed")]
)
def test_how_a_sweep_ended_is_its_records_word_not_its_files(tmp_path, end, state):
    """results.csv is written before the refit and the test look, and by a sweep in which no
    trial finished: the record's end says how the sweep ended (no end: killed), here with a
    store that holds none of its runs."""
    folder = SweepFolder.of(tmp_path / "runs", "ended")
    folder.root.mkdir(parents=True)
    folder.config.write_text(yaml.safe_dump({"name": "ended", "search": {"type": "grid"}}))
    file = HistoryFile(folder.history)
    file.append({"event": "sweep_started", "id": "i", "experiment": "ended", "params": {"p": 1}}
                | {"fresh": True})  # fmt: skip
    file.append({"event": "trial_started", "trial": "t1", "params": {}, "config": {}})
    file.append({"event": "trial_ended", "trial": "t1", "outcome": "error", "epochs_run": 0}
                | {"error": "boom"})  # fmt: skip
    if end is not None:
        file.append({"event": "sweep_ended", "status": end, "best": None})
    folder.results.write_text("trial_id,status\nt1,error\n")
    assert status_of(folder, f"sqlite:///{tmp_path}/none.db").state == state


@pytest.mark.parametrize("mode", ["max", "min"])
def test_a_tie_for_the_best_goes_to_the_trial_results_csv_names(tmp_path, mode):
    """Tied trials: status names the one drawn first, as results.csv and the live view do,
    whatever order the trials are listed in."""
    from sweeps.tracking.reader import RunInfo
    from sweeps.view.status import Status

    def run(value: float) -> RunInfo:
        return RunInfo("r", "FINISHED", 0, 1, {"sweep.status": "completed"}, {}, {"m": value})

    worse = 0.5 if mode == "max" else 0.99
    trials = {"t_00003": run(0.9417), "t_00002": run(worse), "t_00001": run(0.9417)}
    st = Status("s", SweepFolder(tmp_path), "completed", 3, "m", mode, [], trials=trials)
    assert st.best[0] == "t_00001"
