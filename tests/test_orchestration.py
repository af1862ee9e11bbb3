"""The cheap orchestration: when trials report and checkpoint (sweeps.engine.cadence), the driver's
MLflow writes merged in a thread (sweeps.tracking.writes), the store made ready while Ray starts
(sweeps.tracking.writer), and a real sweep whose reports carry the epochs between them."""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient
from ray.tune.schedulers import ASHAScheduler

from sweeps.engine.cadence import Cadence
from sweeps.engine.recorder import Recorder
from sweeps.record.history import HistoryFile
from sweeps.search.asha import Asha
from sweeps.tracking import writes
from sweeps.tracking.store import usable_store
from sweeps.tracking.sync import sync
from sweeps.tracking.writer import SweepTracker
from sweeps.tracking.writes import TrialWrites, _due, merge
from trainers.config import TrialConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweeping import (  # noqa: E402
    history_steps,
    make_data,
    reports,
    runs_of,
    wait_for,
    write_config,
)

CONFIG = TrialConfig().flat()


# ---------------------------------------------------------------- cadence
def run_cadence(cadence: Cadence, epochs: int, seconds: float, done_at: int | None = None):
    """(epoch, report, checkpoint) after each epoch of ``seconds`` each."""
    last = done_at or epochs
    return [
        (e, *cadence.due(e, e == last, cadence.start + e * seconds)) for e in range(1, last + 1)
    ]


def test_fast_epochs_report_and_checkpoint_at_milestones_and_the_end_only() -> None:
    steps = run_cadence(Cadence(frozenset({3, 9, 27, 30}), start=0.0), 30, seconds=0.001)
    assert [e for e, report, _ in steps if report] == [3, 9, 27, 30]
    assert all(report == checkpoint for _, report, checkpoint in steps)


def test_a_diverged_trial_reports_and_checkpoints_where_it_stops() -> None:
    steps = run_cadence(Cadence(frozenset({10}), start=0.0), 10, seconds=0.001, done_at=4)
    assert steps[-1] == (4, True, True) and not any(r for _, r, _ in steps[:-1])


def test_slow_epochs_report_every_second_and_checkpoint_every_few() -> None:
    cadence = Cadence(frozenset({100}), start=0.0, report_s=1.0, checkpoint_s=5.0)
    steps = run_cadence(cadence, 100, seconds=0.5)  # two epochs a second
    reported = [e for e, report, _ in steps if report]
    saved = [e for e, _, checkpoint in steps if checkpoint]
    assert reported == list(range(2, 101, 2))
    assert saved == [*range(10, 100, 10), 100]  # each 5 s of training, and the end


def test_tiny_epochs_report_at_most_report_epochs_at_a_time() -> None:
    cadence = Cadence(frozenset({1000}), start=0.0, report_epochs=100)
    steps = run_cadence(cadence, 1000, seconds=1e-6)
    assert [e for e, report, _ in steps if report] == list(range(100, 1001, 100))
    assert [e for e, _, checkpoint in steps if checkpoint] == [1000]


@pytest.mark.parametrize(
    ("grace", "max_t", "rf", "brackets"),
    [(3, 30, 3, 1), (1, 9, 3, 1), (2, 100, 2, 3), (1, 1, 3, 1), (5, 81, 3, 2), (1, 1000, 4, 1)],
)
def test_asha_rungs_are_those_of_rays_scheduler(grace, max_t, rf, brackets) -> None:
    """Ray keeps them in private bookkeeping (_Bracket._rungs): a release that moves them
    fails here, not in a sweep whose trials would skip the epochs ASHA decides at."""
    scheduler = ASHAScheduler(
        time_attr="epoch", max_t=max_t, grace_period=grace, reduction_factor=rf, brackets=brackets
    )
    ray_rungs = {int(m) for b in scheduler._brackets for m, _ in b._rungs}
    assert Asha(grace, rf, brackets, max_t, "val_acc", "max").rungs() == ray_rungs


# ---------------------------------------------------------------- the driver's MLflow writes
def test_merge_keeps_each_trials_order_and_starts_a_new_write_after_an_end() -> None:
    end = {"outcome": "completed", "epochs_run": 2, "error": None}
    events = [
        ("t1", {"config": {"a": 1}}),
        ("t2", {"config": {"a": 2}}),
        ("t1", {"results": [{"epoch": 1}]}),
        ("t1", {"results": [{"epoch": 2}]}),
        ("t1", {"end": end}),
        ("t1", {"config": {"a": 1}}),  # retried: a new start
        ("t2", {"results": [{"epoch": 1}]}),
    ]
    assert merge(events) == [
        ("t1", {"config": {"a": 1}, "results": [{"epoch": 1}, {"epoch": 2}], "end": end}),
        ("t2", {"config": {"a": 2}, "results": [{"epoch": 1}]}),
        ("t1", {"config": {"a": 1}, "results": []}),
    ]


def epoch(n: int, **more) -> dict:
    return {"epoch": n, "val_loss": 1.0 / n, "val_acc": 0.5 + n / 100, "time": 1000 * n} | more


def test_reports_carrying_epochs_reach_the_record_and_mlflow_once_each(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    file = HistoryFile(tmp_path / "history.jsonl")
    history = file.read("exp")
    recorder = Recorder(history, file, SweepTracker(uri, "exp", tmp_path / "state.json"))
    recorder.start_sweep({"p": 1}, fresh=True)
    recorder.trial_started("t1", {}, CONFIG)
    recorder.trial_results("t1", [epoch(1), epoch(2), epoch(3)])  # one report, three epochs
    recorder.trial_results("t1", [epoch(2), epoch(3), epoch(4)])  # restored from epoch 1
    recorder.trial_ended("t1", "early_stopped", 4)
    recorder.end_sweep("completed")

    lines = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [e["metrics"]["epoch"] for e in lines if e["event"] == "result"] == [1, 2, 3, 2, 3, 4]
    assert [m["epoch"] for m in HistoryFile(file.path).read("exp").trials["t1"].results] == [
        1,
        2,
        3,
        4,
    ]
    client = MlflowClient(uri)
    (run,) = client.search_runs(
        [client.get_experiment_by_name("exp").experiment_id], "tags.`sweep.trial_id` = 't1'"
    )
    points = client.get_metric_history(run.info.run_id, "val_acc")
    assert [(m.step, m.timestamp) for m in points] == [(n, 1000 * n) for n in (1, 2, 3, 4)]
    assert run.info.status == "KILLED" and run.data.tags["sweep.rung"] == "4"
    assert run.data.params["train.lr"] == str(CONFIG["train.lr"])


def test_a_fresh_start_after_a_kill_voids_the_earlier_trials_runs(tmp_path: Path) -> None:
    """Killed before Ray saved any state: the resume starts Ray afresh, so the trials begun
    before are void in the record and their runs leave the store (a population would reuse
    their ids, and the UI would show them)."""
    uri, state = f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "state.json"
    file = HistoryFile(tmp_path / "history.jsonl")
    first = Recorder(file.read("exp"), file, SweepTracker(uri, "exp", state))
    first.start_sweep({}, fresh=True)
    first.trial_started("t1", {}, CONFIG)
    first.trial_results("t1", [epoch(1), epoch(2)])
    first.mlflow.wait()  # then killed: no end
    history = file.read("exp")
    tracker = SweepTracker(uri, "exp", state)
    sync(history, tracker, tmp_path / "no_best_model")  # as the driver's resume does
    again = Recorder(history, file, tracker)
    again.start_sweep({}, fresh=True)
    again.trial_started("t1", {}, CONFIG)  # a population's member: the same id
    again.trial_results("t1", [epoch(1)])
    again.end_sweep("interrupted")
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("exp").experiment_id])
    (child,) = [r for r in runs if "sweep.trial_id" in r.data.tags]
    assert history_steps(client, child) == [1] and list(file.read("exp").trials) == ["t1"]


def test_held_epochs_are_written_at_their_trials_start_end_staleness_or_a_flush() -> None:
    start, result, end = {"config": CONFIG}, {"results": [epoch(1)]}, {"end": {"outcome": "x"}}
    held = [("a", start, 5.0), ("a", result, 5.0), ("b", result, 1.0), ("c", result, 5.0)]
    held += [("c", end, 5.0), ("c", result, 5.0)]
    written, kept = _due(held, flush=False, stale_before=2.0)
    # a: its start now, its epoch held; b: stale; c: up to its end, its next epoch held
    assert written == [("a", start), ("b", result), ("c", result), ("c", end)]
    assert kept == [("a", result, 5.0), ("c", result, 5.0)]
    assert _due(kept, flush=True, stale_before=0.0) == ([(t, e) for t, e, _ in kept], [])


def test_a_running_trials_epochs_reach_mlflow_when_stale_and_its_run_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]  # the writer's monotonic clock, moved by the test: no race with the machine
    monkeypatch.setattr(writes, "time", SimpleNamespace(monotonic=lambda: clock[0], time=time.time))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    file = HistoryFile(tmp_path / "history.jsonl")
    tracker = SweepTracker(uri, "exp", tmp_path / "state.json")
    recorder = Recorder(file.read("exp"), file, tracker)
    recorder.mlflow = TrialWrites(tracker, stale_s=1.5)
    recorder.start_sweep({}, fresh=True)
    recorder.trial_started("t1", {}, CONFIG)
    recorder.trial_results("t1", [epoch(1), epoch(2)])
    client = MlflowClient(uri)

    def steps() -> list[int] | None:
        run_id = tracker.trials.get("t1")
        return None if run_id is None else history_steps(client, client.get_run(run_id))

    # the run is there, without points: its epochs are held (not stale while the clock stands)
    assert wait_for(lambda: steps() is not None, "the run", 30) and steps() == []
    clock[0] += 2.0  # the held epochs are stale now: the writer wakes within stale_s
    wait_for(lambda: steps() == [1, 2], "the stale epochs", 30)  # without an end or a wait
    assert client.get_run(tracker.trials["t1"]).info.status == "RUNNING"
    recorder.end_sweep("interrupted")


def test_a_failed_mlflow_write_is_raised_in_the_driver(tmp_path: Path) -> None:
    file = HistoryFile(tmp_path / "history.jsonl")
    tracker = SweepTracker(f"sqlite:///{tmp_path}/mlflow.db", "exp")
    recorder = Recorder(file.read("exp"), file, tracker)
    recorder.start_sweep({}, fresh=True)
    recorder.mlflow.put("ghost", results=[epoch(1)])  # MLflow has no run for it
    with pytest.raises(KeyError, match="ghost"):
        recorder.mlflow.wait()
    with pytest.raises(KeyError, match="ghost"):
        recorder.trial_started("t2", {}, CONFIG)


# ---------------------------------------------------------------- the store, made early
def test_a_new_sqlite_store_is_made_aside_and_linked_in_when_the_tracker_opens(
    tmp_path: Path,
) -> None:
    db = tmp_path / "new.db"
    uri = usable_store(str(db), tmp_path)
    assert not db.exists()  # nothing where the store goes before the sweep passed its checks
    tracker = SweepTracker(uri, "exp")
    assert db.exists() and tracker.client.get_experiment_by_name("exp") is not None
    assert [p.name for p in tmp_path.iterdir()] == ["new.db"]  # no staging file left


def test_a_store_made_meanwhile_is_kept(tmp_path: Path) -> None:
    db = tmp_path / "raced.db"
    uri = usable_store(str(db), tmp_path)
    MlflowClient(uri).create_experiment("theirs")  # another process made the store meanwhile
    SweepTracker(uri, "ours")
    names = {e.name for e in MlflowClient(uri).search_experiments()}
    assert {"theirs", "ours"} <= names


def _schema(db: Path) -> list:
    """Tables, indexes and their clauses; the order of a table's constraints is left out:
    MLflow's migrations vary it from one store to the next."""
    with contextlib.closing(sqlite3.connect(db)) as con:
        rows = con.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
    return [
        (kind, name, sorted(line.strip(" ,") for line in (sql or "").splitlines()))
        for kind, name, sql in rows
    ]


def test_new_stores_are_copies_of_one_cached_empty_store_that_mlflow_completes(
    tmp_path: Path, monkeypatch
) -> None:
    cache = tmp_path / "cache"
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.chdir(work)
    SweepTracker(usable_store("first.db", work), "exp")
    (empty,) = (cache / "sweeps").iterdir()
    made_at = empty.stat().st_mtime_ns
    SweepTracker(usable_store("second.db", work), "exp")
    assert empty.stat().st_mtime_ns == made_at  # made once, copied for the second store
    with contextlib.closing(sqlite3.connect(empty)) as con:
        assert con.execute("SELECT COUNT(*) FROM experiments").fetchone() == (0,)
    MlflowClient(f"sqlite:///{work / 'plain.db'}").search_experiments()  # made by MLflow alone
    for name in ("first.db", "second.db"):
        assert _schema(work / name) == _schema(work / "plain.db")
        default = MlflowClient(f"sqlite:///{work / name}").get_experiment("0")
        assert default.name == "Default"
        assert default.artifact_location == str(work / "mlruns" / "0")  # as MLflow makes it here


@pytest.mark.parametrize("cached", ["not a database", "unwritable"])
def test_a_damaged_or_unwritable_cache_still_gives_a_store(
    tmp_path: Path, monkeypatch, cached: str
) -> None:
    cache = tmp_path / "cache"
    if cached == "unwritable":
        cache.write_text("a file where the cache folder goes")
    else:
        (cache / "sweeps").mkdir(parents=True)
        import mlflow

        (cache / "sweeps" / f"mlflow-{mlflow.__version__}-empty.db").write_text(cached)
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    tracker = SweepTracker(usable_store(str(tmp_path / "new.db"), tmp_path), "exp")
    assert tracker.client.get_experiment_by_name("exp") is not None
    if cached != "unwritable":  # the damaged one was made again
        assert _schema(tmp_path / "new.db") == _schema(next((cache / "sweeps").iterdir()))


# ---------------------------------------------------------------- a real sweep
@pytest.mark.slow
def test_asha_sweep_reports_at_rungs_and_logs_every_epoch(tmp_path, monkeypatch) -> None:
    from sweeps.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    make_data(tmp_path)
    cfg = write_config(
        tmp_path,
        "rungs",
        train={"epochs": 9, "batch_size": 32, "optimizer": "sgd"},
        search={"type": "asha", "num_samples": 6, "grace_period": 1, "reduction_factor": 3},
        space={"train.lr": {"loguniform": [1e-5, 1e-1]}},
    )
    assert main(["run", str(cfg)]) == 0
    client, _, children = runs_of(tmp_path, "rungs")
    for trial in reports(tmp_path / "runs/rungs").values():
        reported = [carried[-1] for carried, _ in trial]
        assert set(reported) <= {1, 3, 9}  # the rungs and the end; epochs take milliseconds
        assert all(checkpointed for _, checkpointed in trial)  # every rung is a checkpoint
        trained = [e for carried, _ in trial for e in carried]
        assert trained == list(range(1, reported[-1] + 1))
    for run in children.values():
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
        assert steps == list(range(1, int(run.data.tags["sweep.epochs_run"]) + 1))


@pytest.mark.slow
def test_the_floor_benchmark_prints_what_ray_and_mlflow_cost_alone() -> None:
    bench = Path(__file__).resolve().parents[1] / "bench" / "sweep_overhead.py"
    done = subprocess.run(
        [sys.executable, str(bench), "--floor"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    ray = re.search(r"Ray Tune alone, 2 trials that report once: ([\d.]+) s", done.stdout)
    phases = re.search(r"import ([\d.]+), ray.init ([\d.]+), fit ([\d.]+), shutdown", done.stdout)
    mlflow = re.search(
        r"a trial's run written: ([\d.]+) ms\n  \(2,048 runs: ([\d.]+) s", done.stdout
    )
    assert ray and phases and mlflow, done.stdout
    assert sum(map(float, phases.groups())) < float(ray.group(1))  # phases within the wall time
    # both figures are rounded to one decimal: 2.048 x 0.05 ms plus 0.05 s apart at most
    assert float(mlflow.group(2)) == pytest.approx(2.048 * float(mlflow.group(1)), abs=0.16)
