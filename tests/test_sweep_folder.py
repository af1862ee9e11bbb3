"""The sweep folder as the source of truth, against real processes, a real Ray and real stores:
one driver per sweep (the lock), a store deleted or a folder moved (rebuilt from the folder's
record, nothing trained twice), `sweep sync` (one copy however often it runs), a completed
sweep's resume (changes nothing), and a trial no node can hold (refused, nothing written)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mlflow_server import mlflow_server  # noqa: E402
from sweeping import (  # noqa: E402
    LRS,
    SWEEP,
    Hold,
    check_complete,
    killable_config,
    output,
    reports,
    runs_of,
    start_sweep,
    wait_for,
    went_on_from_checkpoints,
    write_config,
)

pytestmark = pytest.mark.slow
RUNNING = re.compile(r"error: sweep (\S+) is already running \(pid (\d+) on (\S+)\)")


def interrupted_sweep(workdir: Path, name: str) -> Path:
    """A sweep stopped by SIGTERM with two of its four trials started, the first ended, the
    second three epochs in; its config."""
    cfg = killable_config(workdir, name)
    hold = Hold(workdir / f"hold-{name}", "epoch-3")
    proc = start_sweep("run", str(cfg), hold=hold)
    hold.second("epoch-3")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 130, output(proc)
    return cfg


def both(procs: list[subprocess.Popen], hold: Hold, point: str) -> list[tuple[int, str]]:
    """Two drivers of one sweep, held at ``point`` until one of them has exited (refused: the
    other holds the sweep and cannot end meanwhile); their exit codes and output."""
    try:
        wait_for(lambda: any(p.poll() is not None for p in procs), "one driver to exit", 300)
        hold.let_go(point)
        return [(p.wait(timeout=300), output(p)) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)


def check_one_refused(done: list[tuple[int, str]], procs: list, name: str) -> None:
    """One driver finished (0), the other said in one line who runs the sweep (2)."""
    codes = sorted(code for code, _ in done)
    assert codes == [0, 2], done
    winner = next(p for p, (code, _) in zip(procs, done) if code == 0)
    (loser_out,) = [out for code, out in done if code == 2]
    lines = [ln for ln in loser_out.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in loser_out, loser_out
    match = RUNNING.match(lines[0])
    assert match, lines[0]
    assert match.groups() == (name, str(winner.pid), socket.gethostname())


def test_two_runs_of_one_new_name_one_runs_the_other_is_refused(workdir):
    cfg = killable_config(workdir, "race")
    hold = Hold(workdir / "hold", "ray-started", "epoch-1")
    procs = [start_sweep("run", str(cfg), hold=hold) for _ in range(2)]
    hold.reached("ray-started", 2)  # both checked that no such sweep exists: they race now
    hold.let_go("ray-started")
    done = both(procs, hold, "epoch-1")
    check_one_refused(done, procs, "race")
    check_complete(workdir, "race", LRS, 12)
    assert [p.name for p in (workdir / "runs").iterdir()] == ["race"]  # no staging folder left


def ended_trials(folder: Path) -> set[str]:
    record = [json.loads(line) for line in (folder / "history.jsonl").read_text().splitlines()]
    return {e["trial"] for e in record if e["event"] == "trial_ended"}


def check_nothing_trained_twice(folder: Path, ended_before: set[str]) -> None:
    """Trials that had ended were not trained again; the others went on from their last
    checkpoint (a trial checkpoints every few seconds: the epochs since it are trained again,
    exactly)."""
    trained = reports(folder)
    assert len(trained) == 4
    for trial_dir, trial in trained.items():
        epochs = [epoch for carried, _ in trial for epoch in carried]
        assert sorted(set(epochs)) == list(range(1, 13)) and went_on_from_checkpoints(trial), trial
        if any(t in trial_dir for t in ended_before):
            assert epochs == list(range(1, 13)), trained


def test_two_resumes_at_once_one_rebuilds_the_deleted_store_the_other_is_refused(workdir):
    """The lock and the record at once: of two resumes of a sweep whose store was deleted, one
    runs, rebuilds the store from the folder's record and trains nothing twice; the other says
    in one line who runs the sweep."""
    interrupted_sweep(workdir, "lost")
    # (not read through MLflow here: this process would keep the deleted database open)
    ended_before = ended_trials(workdir / "runs/lost")
    assert ended_before  # a trial had ended: the old resume never logged it again
    (workdir / "mlflow.db").unlink()
    shutil.rmtree(workdir / "mlartifacts", ignore_errors=True)

    hold = Hold(workdir / "hold", "epoch-12")  # every trial left to train ends there
    procs = [start_sweep("resume", "lost", hold=hold) for _ in range(2)]
    check_one_refused(both(procs, hold, "epoch-12"), procs, "lost")
    check_complete(workdir, "lost", LRS, 12)  # every child, full curves (each epoch once)
    check_nothing_trained_twice(workdir / "runs/lost", ended_before)
    client, parent, _ = runs_of(workdir, "lost")
    assert "best_model" in [a.path for a in client.list_artifacts(parent.info.run_id)]


def test_moved_folder_resumes_where_it_lies_with_its_runs(workdir):
    interrupted_sweep(workdir, "moved")
    ended_before = ended_trials(workdir / "runs/moved")
    (workdir / "elsewhere").mkdir()
    (workdir / "runs/moved").rename(workdir / "elsewhere/moved2")

    resumed = subprocess.run(
        [SWEEP, "resume", "moved2", "--storage", "elsewhere"], capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert not (workdir / "runs/moved").exists()  # not started again in the old place
    check_complete(workdir, "moved", LRS, 12, folder=workdir / "elsewhere/moved2")  # one parent
    assert MlflowClient(f"sqlite:///{workdir}/mlflow.db").get_experiment_by_name("moved2") is None
    check_nothing_trained_twice(workdir / "elsewhere/moved2", ended_before)


def snapshot(workdir: Path, name: str, uri: str | None = None) -> dict:
    """Everything MLflow holds of a sweep: each run's status, times, params, tags, curves."""
    client, parent, children = runs_of(workdir, name, uri)
    out = {}
    for run in [parent, *children.values()]:
        curves = {
            key: [
                (m.step, m.value, m.timestamp)
                for m in client.get_metric_history(run.info.run_id, key)
            ]
            for key in run.data.metrics
        }
        info = (run.info.status, run.info.start_time, run.info.end_time)
        arts = sorted(a.path for a in client.list_artifacts(run.info.run_id))
        out[run.info.run_name] = (info, run.data.params, run.data.tags, curves, arts)
    return out


def test_completed_sweep_resumed_or_synced_is_unchanged_and_synced_elsewhere_copied_once(
    workdir,
):
    """One completed ASHA sweep: resume, run --resume and sync into its own store change
    nothing; sync, twice, into a new store and into a server makes one copy of it."""
    cfg = write_config(
        workdir,
        "done",
        train={"epochs": 5, "batch_size": 32, "optimizer": "sgd"},
        search={"type": "asha", "num_samples": 4, "grace_period": 1, "reduction_factor": 2},
        space={"train.lr": {"loguniform": [1e-4, 1e-1]}},
    )
    assert subprocess.run([SWEEP, "run", str(cfg)], capture_output=True).returncode == 0
    original = snapshot(workdir, "done")
    record = (workdir / "runs/done/history.jsonl").read_bytes()
    assert set(original["done"][3]) >= {"best_val_acc", "best_test_acc"}

    shutil.rmtree(workdir / "runs/done/report")  # as an interrupt while it was drawn leaves it
    for args in (["resume", "done"], ["run", str(cfg), "--resume"], ["sync", "done"]):
        again = subprocess.run([SWEEP, *args], capture_output=True, text=True)
        assert again.returncode == 0, again.stdout + again.stderr
        assert ("report: " in again.stdout) == (args == ["resume", "done"])  # drawn once
    assert (workdir / "runs/done/report/index.html").exists()
    assert (
        "complete, nothing to run"
        in subprocess.run([SWEEP, "resume", "done"], capture_output=True, text=True).stdout
    )
    assert snapshot(workdir, "done") == original  # no best_* point at step 0 again, no new run
    assert (workdir / "runs/done/history.jsonl").read_bytes() == record

    def same_content(copy: dict) -> None:
        assert copy.keys() == original.keys()
        for run, (info, params, tags, curves, arts) in copy.items():
            o_info, o_params, o_tags, o_curves, o_arts = original[run]
            assert info[0] == o_info[0] and params == o_params and arts == o_arts
            points = {k: sorted(p[:2] for p in v) for k, v in curves.items()}  # best_*: new time
            assert points == {k: sorted(p[:2] for p in v) for k, v in o_curves.items()}
            for key in ("sweep.status", "sweep.epochs_run", "sweep.rung", "best.trial_id"):
                assert tags.get(key) == o_tags.get(key), (run, key)

    with mlflow_server(workdir / "srv") as server:
        for uri in (f"sqlite:///{workdir}/copy.db", server):
            outs = [
                subprocess.run(
                    [SWEEP, "sync", "done", "--tracking-uri", uri], capture_output=True, text=True
                )
                for _ in range(2)
            ]
            assert [o.returncode for o in outs] == [0, 0], outs
            # the parent, 4 trials and the refit of the chosen one (search.refit)
            assert "created 6 runs" in outs[0].stdout, outs[0].stdout
            assert "created 0 runs, logged 0 epochs" in outs[1].stdout, outs[1].stdout
            same_content(snapshot(workdir, "done", uri))  # one parent, one run per trial


def test_a_trial_larger_than_the_machine_is_refused_before_anything_is_written(workdir):
    cfg = write_config(workdir, "huge", search={"type": "grid"})
    done = subprocess.run(
        [SWEEP, "run", str(cfg), "--set", "resources.cpu=1000"], capture_output=True, text=True
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith("error: resources.cpu must be <= the ")
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (workdir / "runs").exists() and not (workdir / "mlflow.db").exists()


def test_results_rank_ties_by_the_trial_drawn_first(tmp_path: Path) -> None:
    from sweeps.record.results import write_csv

    rows = [
        {"trial_id": t, "final_val_acc": acc}
        for t, acc in [("c3", 0.9), ("c1", 0.95), ("c2", math.nan), ("c0", 0.9), ("c4", 0.95)]
    ]
    table = write_csv(rows, "val_acc", "max", tmp_path / "results.csv")
    assert list(table["trial_id"]) == ["c1", "c4", "c0", "c3", "c2"]
    assert list(pd.read_csv(tmp_path / "results.csv")["trial_id"]) == list(table["trial_id"])
    low = write_csv(rows, "val_acc", "min", tmp_path / "results.csv")
    assert list(low["trial_id"]) == ["c0", "c3", "c1", "c4", "c2"]
