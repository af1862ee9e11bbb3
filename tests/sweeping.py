"""Helpers for tests that run real sweeps (a helper, not a test module): data, configs, the
`sweep` command as a process, held where a test needs it (``Hold``: sweeps/engine/hold.py's points),
waiting for a state the system writes (``wait_for``, never a sleep that guesses), and reading
a sweep back from MLflow and from its folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import pandas as pd
import yaml
from sklearn.datasets import make_classification

from sweeps.engine.cadence import EARLIER
from sweeps.engine.hold import ENV

if TYPE_CHECKING:  # MLflow is imported where it is used: the GPU machine has none
    from mlflow.tracking import MlflowClient

SWEEP = str(Path(sys.executable).with_name("sweep"))
LRS = [0.01, 0.02, 0.03, 0.04]
T = TypeVar("T")


def make_data(folder: Path) -> None:
    """good.npz (3 classes, 300 rows) and bad.npz (labels that are not integers)."""
    X, y = make_classification(
        n_samples=300, n_features=8, n_informative=6, n_classes=3, random_state=0
    )
    np.savez(folder / "good.npz", X=X.astype("float32"), y=y)
    np.savez(folder / "bad.npz", X=X.astype("float32"), y=y + 0.5)


def write_config(folder: Path, name: str, **sections) -> Path:
    doc = {
        "name": name,
        "data": {"source": "npz", "path": str(folder / "good.npz")},
        "train": {"epochs": 4, "batch_size": 32, "optimizer": "sgd", "schedule": "constant"},
        **sections,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def killable_config(workdir: Path, name: str, epochs: int = 12) -> Path:
    """Four trials one at a time, of twelve epochs: a test stops one in the middle by holding
    it at an epoch (sweeps/engine/hold.py), whatever the machine's speed."""
    return write_config(
        workdir,
        name,
        train={"epochs": epochs, "batch_size": 8, "optimizer": "sgd"},
        search={"type": "grid", "max_concurrent": 1},
        space={"train.lr": {"grid": LRS}},
    )


def runs_of(folder: Path, name: str, uri: str | None = None):
    """(client, parent run, {trial_id: child run}) of a sweep, read back from MLflow."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri or f"sqlite:///{folder}/mlflow.db")
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, "exactly one parent run per sweep"
    refits = [r for r in runs if r.data.tags.get("sweep.role") == "refit"]  # tests/test_refit.py
    children = {r.data.tags["sweep.trial_id"]: r for r in runs if r not in parents + refits}
    assert len(children) == len(runs) - 1 - len(refits), "one child run per trial"
    assert all(
        r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in children.values()
    )
    return client, parents[0], children


def history_steps(client: MlflowClient, run, key: str = "val_acc") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run.info.run_id, key))


def start_sweep(*args: str, hold: Hold | None = None, cwd: Path | None = None) -> subprocess.Popen:
    """`sweep ARGS...` as its own process group (Ray's processes die with it). Its output goes
    to a file (``output(proc)``), not a pipe that could fill and block it while nobody reads.
    With ``hold``, the sweep stops at that Hold's points (only this process and its children
    see SWEEPS_HOLD)."""
    log = Path(tempfile.mkstemp(prefix="sweep-", suffix=".log", dir=cwd or Path.cwd())[1])
    env = {**os.environ, **({ENV: str(hold.folder)} if hold else {})}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [SWEEP, *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=cwd,
            env=env,
        )
    proc.log = log
    if hold:
        hold.proc = proc
    return proc


def output(proc: subprocess.Popen) -> str:
    return proc.log.read_text()


def wait_for(
    predicate: Callable[[], T],
    what: str,
    timeout: float = 180,
    proc: subprocess.Popen | None = None,
    poll: float = 0.1,
) -> T:
    """Until ``predicate`` returns something true (returned): a state the system under test
    writes when it gets there, never a guess that it has had time enough. ``proc``: a process
    whose exit ends the wait (its output in the failure)."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if proc is not None and proc.poll() is not None:
            said = output(proc) if hasattr(proc, "log") else ""
            raise AssertionError(f"exited with {proc.returncode} before {what}:\n{said[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll)
    return value


class Hold:
    """Points where a sweep started with this hold stops (sweeps/engine/hold.py), in a folder of
    their own: ``reached`` waits for arrivals, ``let_go`` lets one of them (or all) go on."""

    def __init__(self, folder: Path, *points: str) -> None:
        self.folder = folder
        self.proc: subprocess.Popen | None = None  # set by start_sweep: its exit ends a wait
        folder.mkdir(parents=True, exist_ok=True)
        for point in points:
            (folder / f"{point}.hold").touch()

    def reached(self, point: str, count: int = 1, timeout: float = 300) -> list[Path]:
        """Until ``count`` processes have arrived at ``point`` (since the start); their marks,
        first come first."""

        def arrivals() -> list[Path]:
            marks = sorted(self.folder.glob(f"{point}.*.reached"), key=lambda p: p.stat().st_mtime)
            return marks if len(marks) >= count else []

        return wait_for(arrivals, f"{count} at {point}", timeout, self.proc)

    def let_go(self, arrival: Path | str) -> None:
        """Let one arrival (its mark) go on, or every arrival at a point (its name), now and
        later."""
        name = arrival.name.removesuffix(".reached") if isinstance(arrival, Path) else arrival
        (self.folder / f"{name}.go").touch()

    def second(self, point: str) -> Path:
        """Let the first arrival at ``point`` go on and wait for the second (held): with one
        trial at a time, the second trial is then at ``point`` and the first has ended."""
        first, *_ = self.reached(point)
        self.let_go(first)
        return self.reached(point, 2)[1]


def check_complete(
    workdir: Path, name: str, lrs: list[float], epochs: int, folder: Path | None = None
) -> None:
    """Same trials as an uninterrupted sweep, one MLflow run each, none RUNNING, no dupes."""
    table = pd.read_csv((folder or workdir / "runs" / name) / "results.csv")
    assert sorted(table["train.lr"]) == sorted(lrs)
    assert set(table["status"]) == {"completed"}, table[["status", "error"]].to_string()
    client, parent, children = runs_of(workdir, name)
    assert parent.info.status == "FINISHED"
    assert len(children) == len(lrs)
    for run in children.values():
        assert run.info.status == "FINISHED"
        assert history_steps(client, run) == list(range(1, epochs + 1))


def reports(folder: Path) -> dict[str, list[tuple[list[int], bool]]]:
    """Per trial folder of Ray, its reports in order (result.json): the epochs each carried
    (the epochs since the report before it, then its own) and whether a checkpoint came
    with it. An epoch trained twice shows twice."""
    found = {}
    for d in sorted((folder / "ray").iterdir()):
        if (d / "result.json").exists():
            lines = [json.loads(line) for line in (d / "result.json").read_text().splitlines()]
            found[d.name] = [
                ([m["epoch"] for m in [*r.get(EARLIER, []), r]], bool(r.get("checkpoint_dir_name")))
                for r in lines
            ]
    return found


def went_on_from_checkpoints(trial: list[tuple[list[int], bool]]) -> bool:
    """Whether each restart of a trial (an epoch not after the one before it) trained on
    from the last epoch checkpointed before it, or from the start if none was."""
    last, saved = 0, 0
    for epochs, checkpointed in trial:
        for epoch in epochs:
            if epoch != last + 1 and not (epoch <= last and epoch == saved + 1):
                return False
            last = epoch
        saved = last if checkpointed else saved
    return True


def one_error_line(capsys, argv: list[str], work: Path) -> str:
    """``sweep ARGV`` in this process: exit 2, one error line, nothing on stdout, nothing in
    ``work`` (no runs/, no mlflow.db); the line."""
    from sweeps.cli import main

    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert captured.err.endswith("\n") and captured.out == ""
    assert list(work.iterdir()) == []
    return lines[0]
