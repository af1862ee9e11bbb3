"""sync: a sweep's record copied into a real SQLite store, any number of times, one copy."""

from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient

from sweeps.record.history import HistoryFile
from sweeps.tracking.sync import sync
from sweeps.tracking.writer import SweepTracker
from trainers.config import TrialConfig

CONFIG = TrialConfig().flat()


def epoch(trial: str, n: int) -> dict:
    metrics = {"epoch": n, "val_loss": 1.0 / n, "val_acc": 0.5 + n / 100, "diverged": False}
    return {"event": "result", "trial": trial, "metrics": metrics | {"time": 1000 * n}}


def record(path: Path) -> HistoryFile:
    """A sweep stopped mid-way: t1 ended after 3 epochs, t2 two epochs in, no end."""
    file = HistoryFile(path)
    file.append(
        {"event": "sweep_started", "id": "id1", "experiment": "exp", "params": {"p": 1}}
        | {"fresh": True}
    )
    for trial, epochs in (("t1", 3), ("t2", 2)):
        file.append({"event": "trial_started", "trial": trial, "params": {}, "config": CONFIG})
        for n in range(1, epochs + 1):
            file.append(epoch(trial, n))
    file.append(
        {"event": "trial_ended", "trial": "t1", "outcome": "completed"}
        | {
            "epochs_run": 3,
            "error": None,
        }
    )
    return file


def copy(file: HistoryFile, uri: str, tmp_path: Path) -> SweepTracker:
    tracker = SweepTracker(uri, "exp")
    sync(file.read("exp"), tracker, tmp_path / "no_best_model")
    return tracker


def state(uri: str) -> dict:
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("exp").experiment_id])
    return {
        r.data.tags.get("sweep.trial_id", r.info.run_name): (
            r.info.status,
            r.data.tags.get("sweep.status"),
            [
                (m.step, m.value, m.timestamp)
                for m in client.get_metric_history(r.info.run_id, "val_acc")
            ],
        )
        for r in runs
    }


def test_sync_twice_is_one_copy_and_later_records_add_only_what_is_new(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/copy.db"
    file = record(tmp_path / "history.jsonl")
    first = copy(file, uri, tmp_path)
    assert (first.created, first.logged) == (3, 5)
    after = state(uri)
    assert after == {
        "exp": ("KILLED", "interrupted", []),  # nobody runs it: the record has no end
        "t1": ("FINISHED", "completed", [(n, 0.5 + n / 100, 1000 * n) for n in (1, 2, 3)]),
        "t2": ("KILLED", "interrupted", [(n, 0.5 + n / 100, 1000 * n) for n in (1, 2)]),
    }
    second = copy(file, uri, tmp_path)
    assert (second.created, second.logged) == (0, 0) and state(uri) == after

    file.append(epoch("t2", 3))  # the sweep went on, then ended; t2 a PBT member's end
    file.append(
        {"event": "trial_ended", "trial": "t2", "outcome": "early_stopped"}
        | {"epochs_run": 3, "error": None, "exploits": "epoch 2 from t1"}
    )
    best = {"trial_id": "t1", "config": {"train.lr": 0.05}, "metrics": {"val_acc": 0.53}}
    file.append({"event": "sweep_ended", "status": "completed", "best": best})
    third = copy(file, uri, tmp_path)
    assert (third.created, third.logged) == (0, 1)
    now = state(uri)
    assert now["t2"][:2] == ("KILLED", "early_stopped") and len(now["t2"][2]) == 3
    t2 = MlflowClient(uri).get_run(third.trials["t2"])
    assert t2.data.tags["sweep.exploits"] == "epoch 2 from t1"
    assert now["exp"][:2] == ("FINISHED", "completed")
    copy(file, uri, tmp_path)
    client = MlflowClient(uri)
    parent = client.get_run(third.parent)
    assert len(client.get_metric_history(parent.info.run_id, "best_val_acc")) == 1
    assert parent.data.tags["sweep.id"] == "id1" and parent.data.params == {"p": "1"}


def test_a_withdrawn_trial_leaves_the_record_and_sync_deletes_its_run(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/copy.db"
    file = record(tmp_path / "history.jsonl")
    copy(file, uri, tmp_path)
    file.append({"event": "trials_withdrawn", "trials": ["t2"]})  # a resume: Ray lacked it
    assert list(file.read("exp").trials) == ["t1"]
    tracker = copy(file, uri, tmp_path)
    assert set(state(uri)) == {"exp", "t1"} and list(tracker.trials) == ["t1"]


def test_child_runs_best_n_keeps_the_n_best_and_follows_the_ranking(tmp_path: Path) -> None:
    """mlflow.child_runs best:1: the store holds the run of the best trial by the final metric
    only; when a later record ranks another first, the next sync swaps the runs."""
    uri = f"sqlite:///{tmp_path}/copy.db"
    file = record(tmp_path / "history.jsonl")  # t1: 3 epochs (val_acc 0.53), t2: 2 (0.52)
    params = {"search.metric": "val_acc", "mlflow.child_runs": "best:1"}
    file.append(
        {"event": "sweep_started", "id": "id1", "experiment": "exp", "params": params}
        | {"fresh": False}
    )
    copy(file, uri, tmp_path)
    assert set(state(uri)) == {"exp", "t1"}
    for n in (3, 4):  # t2 goes on and ends ahead
        file.append(epoch("t2", n))
    tracker = copy(file, uri, tmp_path)
    assert set(state(uri)) == {"exp", "t2"} and list(tracker.trials) == ["t2"]
    assert [step for step, _, _ in state(uri)["t2"][2]] == [1, 2, 3, 4]


def test_a_copy_is_read_back_by_its_sweep_id_not_as_the_latest_sweep(tmp_path: Path) -> None:
    """A store that holds a sweep's copy and, started later in the same experiment, another
    sweep: the copy's parent is found by the record's id (its run ids there are not the state
    file's), so the report filed by `sweep sync` links to the copy's runs."""
    from sweeps.tracking.reader import read_sweep

    uri = f"sqlite:///{tmp_path}/copy.db"
    copied = copy(record(tmp_path / "history.jsonl"), uri, tmp_path)
    other = SweepTracker(uri, "exp")
    other.start_sweep({"p": 2}, "id2")  # a later sweep of the same name
    for parent_id in (None, "not-a-run-of-this-store"):
        runs = read_sweep(uri, "exp", parent_id, sweep_id="id1")
        assert runs.parent.run_id == copied.parent and sorted(runs.trials) == ["t1", "t2"]
    assert read_sweep(uri, "exp").parent.run_id == other.parent  # no record: the latest
