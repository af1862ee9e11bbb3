"""Real sweeps: a local Ray, a real SQLite MLflow store (and a real server), real files.

Each test runs `sweep run` as a user would and then reads what a user would read: the exit
code, the terminal, results.csv and the MLflow runs.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from sweeps.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweeping import (  # noqa: E402
    LRS,
    SWEEP,
    Hold,
    check_complete,
    history_steps,
    killable_config,
    output,
    runs_of,
    start_sweep,
    write_config,
)

pytestmark = pytest.mark.slow


def test_grid_sweep_with_a_diverging_and_a_failing_trial(workdir):
    """A trial that fails at run time, after the driver's checks: its data file is gone when it
    starts (deleted while the driver holds at ray-started, once it has read every data corner),
    as on a worker that lost a shared disk. Data mistakes, and train.device cuda for trials
    that get no GPU, are refused before the sweep starts (test_inputs, test_preflight)."""
    (workdir / "gone.npz").write_bytes((workdir / "good.npz").read_bytes())
    cfg = write_config(
        workdir,
        "grid",
        data={"source": "npz", "path": "good.npz"},  # relative: to where the sweep runs
        search={"type": "grid", "max_failures": 1},
        space={
            "train.lr": {"grid": [0.05, 1.0e30]},
            "data.path": {"grid": [str(workdir / "good.npz"), str(workdir / "gone.npz")]},
        },
    )
    hold = Hold(workdir / "hold", "ray-started")
    proc = start_sweep("run", str(cfg), hold=hold)
    hold.reached("ray-started")
    (workdir / "gone.npz").unlink()
    hold.let_go("ray-started")
    assert proc.wait() == 0, output(proc)
    out = output(proc)
    assert "best trial" in out and "test_acc" in out
    assert f"report: {workdir / 'runs/grid/report/index.html'}" in out  # one split: drawn too

    table = pd.read_csv(workdir / "runs/grid/results.csv")
    assert len(table) == 4  # exactly the grid
    by_case = {(r["train.lr"], Path(r["data.path"]).name): r for _, r in table.iterrows()}
    assert by_case[(0.05, "good.npz")]["status"] == "completed"
    assert by_case[(1.0e30, "good.npz")]["status"] == "diverged"
    assert {by_case[(lr, "gone.npz")]["status"] for lr in (0.05, 1.0e30)} == {"error"}
    assert "no such file" in by_case[(0.05, "gone.npz")]["error"]
    assert table.iloc[0]["status"] == "completed"  # the best first

    client, parent, children = runs_of(workdir, "grid")
    assert len(children) == 4
    assert parent.info.status == "FINISHED"
    assert parent.data.params["search.type"] == "grid"
    assert 0.0 < parent.data.metrics["best_test_acc"] <= 1.0
    artifacts = [a.path for a in client.list_artifacts(parent.info.run_id)]
    assert "best_model" in artifacts and "best_config.json" in artifacts
    statuses = {}
    for trial_id, run in children.items():
        row = table[table["trial_id"] == trial_id].iloc[0]
        statuses[row["status"]] = run.info.status
        assert run.data.tags["sweep.status"] == row["status"]
        assert float(run.data.params["train.lr"]) == row["train.lr"]
        assert not any(k.startswith(("time_", "pid", "node_ip")) for k in run.data.metrics)
        if row["status"] == "completed":
            assert history_steps(client, run) == [1, 2, 3, 4]  # one point per epoch
        if row["status"] == "error":
            assert "no such file" in run.data.tags["sweep.error"]
    assert statuses == {"completed": "FINISHED", "diverged": "FAILED", "error": "FAILED"}


def test_sigkill_then_resume_continues_the_same_runs(workdir):
    cfg = killable_config(workdir, "killed")
    hold = Hold(workdir / "hold", "epoch-3")
    proc = start_sweep("run", str(cfg), hold=hold)
    try:
        hold.second("epoch-3")  # the second trial is three epochs in, the first has ended
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (workdir / "runs/killed/results.csv").exists()

    resumed = subprocess.run([SWEEP, "run", str(cfg), "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    check_complete(workdir, "killed", LRS, 12)
    # progress counts each trial once, those run again after Ray's snapshot included
    progress = re.findall(r"^\[ *(\d+)/4\]", resumed.stdout, re.M)
    assert progress and progress[-1] == "4" and max(map(int, progress)) == 4, resumed.stdout


def test_sigterm_interrupts_cleanly_and_sweep_resume_finishes(workdir):
    cfg = killable_config(workdir, "termed")
    hold = Hold(workdir / "hold", "epoch-3")
    proc = start_sweep("run", str(cfg), hold=hold)
    hold.second("epoch-3")  # two trials started, the second one mid-way
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    out = output(proc)
    assert proc.returncode == 130, out
    assert "sweep resume termed" in out
    _, parent, children = runs_of(workdir, "termed")
    running = [r for r in [parent, *children.values()] if r.info.status == "RUNNING"]
    assert running == []  # interrupted, not left RUNNING

    resumed = subprocess.run([SWEEP, "resume", "termed"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    check_complete(workdir, "termed", LRS, 12)


def test_sweep_logs_to_a_real_mlflow_server(workdir):
    from tests.mlflow_server import mlflow_server

    with mlflow_server(workdir) as uri:
        cfg = write_config(
            workdir,
            "served",
            search={"type": "random", "num_samples": 2},
            space={"train.lr": {"loguniform": [1e-3, 1e-1]}},
            mlflow={"tracking_uri": uri},
        )
        assert main(["run", str(cfg)]) == 0
        client, parent, children = runs_of(workdir, "served", uri)
        assert len(children) == 2 and parent.info.status == "FINISHED"
        for run in children.values():
            assert history_steps(client, run) == [1, 2, 3, 4]
        assert "best_model" in [a.path for a in client.list_artifacts(parent.info.run_id)]
    assert not (workdir / "mlflow.db").exists()  # nothing went to the local default


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["train.lrr=0.1"], "unknown key train.lrr; did you mean train.lr?"),
        (["data.path=missing.npz"], "no such file"),
        (["train.batch_size=100000"], "train.batch_size must be <= the training split"),
        (["space.train.lr={choice: [0.1, 0.2]}", "search.type=random"], None),  # valid: control
    ],
)
def test_bad_config_leaves_nothing_behind(workdir, sets, message):
    cfg = write_config(workdir, "bad", search={"type": "grid"})
    args = [SWEEP, "run", str(cfg), *[x for s in sets for x in ("--set", s)]]
    if message is None:
        args.append("--dry-run")
    done = subprocess.run(args, capture_output=True, text=True, cwd=workdir)
    if message is None:
        assert done.returncode == 0
    else:
        assert done.returncode == 2
        assert done.stderr.strip().splitlines() == [f"error: {done.stderr.strip()[7:]}"]
        assert message in done.stderr and "Traceback" not in done.stderr
    assert not (workdir / "runs").exists() and not (workdir / "mlflow.db").exists()


def test_sweep_ui_serves_this_store(workdir):
    """`sweep ui` serves the MLflow UI for ./mlflow.db on 127.0.0.1 and prints the address."""
    from sweeps.tracking.uri import resolve_tracking_uri
    from sweeps.tracking.writer import SweepTracker
    from tests.mlflow_server import free_port, serving

    tracker = SweepTracker(resolve_tracking_uri(None, workdir), "shown", workdir / "state.json")
    tracker.start_sweep({"search.type": "grid"})
    tracker.end_sweep("completed")
    port = free_port()
    with serving([SWEEP, "ui", "--port", str(port)], port, workdir) as url:
        request = urllib.request.Request(
            f"{url}/api/2.0/mlflow/experiments/search",
            data=json.dumps({"max_results": 10}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            names = [e["name"] for e in json.load(resp)["experiments"]]
    assert "shown" in names
    said = (workdir / f"server-{port}.log").read_text()
    assert f"at http://127.0.0.1:{port} (Ctrl-C stops it)\nthe latest sweep's trials" in said
