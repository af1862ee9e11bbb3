"""Many runs per transaction (sweeps.tracking.bulk) read back by MLflow's own client exactly as
the same writes made through its public API: run by run, every field a reader sees."""

from __future__ import annotations

import math
from pathlib import Path

import mlflow
import pytest
from mlflow.exceptions import MlflowException

from sweeps.tracking import bulk
from sweeps.tracking import tags as tag
from sweeps.tracking.writer import SweepTracker

CONFIG = {"model.loss": "softmax", "train.lr": 0.1, "train.lambda": 1e-4, "train.batch_size": 64}
CURVES = ("train_loss", "train_acc", "val_loss", "val_acc", "lr")


def epoch(e: int, trial: int, **extra) -> dict:
    """One epoch's report, its time fixed (both stores get the same timestamps)."""
    values = {k: (trial + 1) * 0.1 + e / 100 + i for i, k in enumerate(CURVES)}
    return {"epoch": e, "time": 1_700_000_000_000 + 1000 * e + trial, **values, **extra}


def config(i: int) -> dict:
    return CONFIG | {"train.lr": 0.1 * (i + 1)}


def ended(outcome: str, epochs_run: int, error: str | None = None) -> dict:
    return {"end": {"outcome": outcome, "epochs_run": epochs_run, "error": error}}


# A sweep's writes, batch by batch, as sweeps.tracking.writes.merge hands them over: runs made,
# curves (a diverged epoch, a NaN, an infinity, replayed epochs), ends of every outcome, a
# resumed trial, and a trial written twice in one batch (ended, then started again).
BATCHES = [
    [(f"t{i}", {"config": config(i), "name": f"run {i}", "results": []}) for i in range(5)]
    + [("t5", {"config": config(5), "name": "run 5", "new_tags": {"sweep.role": "refit"}})],
    [
        ("t0", {"results": [epoch(e, 0) for e in (1, 2, 3)]} | ended("completed", 3)),
        ("t1", {"results": [epoch(1, 1), epoch(2, 1, val_loss=float("nan"))]}),
        ("t2", {"results": [epoch(1, 2), {"epoch": 2, "diverged": True}]}),
        ("t3", {"results": [epoch(1, 3, train_loss=float("inf"))]} | ended("early_stopped", 1)),
        ("t5", {"results": [{"epoch": 1, "diverged": True}]} | ended("diverged", 1)),
        ("t4", {"results": [epoch(1, 4)]} | ended("error", 1, "ValueError: bad\n  trace")),
        (
            "t6",
            {"config": config(6), "name": "run 6", "results": [epoch(1, 6)]}
            | ended("completed", 1),
        ),  # fmt: skip
    ],
    [
        ("t1", {"results": [epoch(1, 1), epoch(2, 1), epoch(3, 1)]} | ended("completed", 3)),
        ("t2", {"config": config(2), "results": [epoch(e, 2) for e in (1, 2, 3, 4)]}),
        ("t4", {"config": config(4), "results": [epoch(1, 4), epoch(2, 4)]}),
        ("t4", {"results": []} | ended("completed", 2)),
        ("t4", {"config": config(4), "results": [epoch(3, 4)]}),
    ],
    [("t2", {"results": [epoch(5, 2)]} | ended("completed", 5))],
]


def tracker(uri: str, bulk_rows: bool = False) -> SweepTracker:
    t = SweepTracker(uri, "sweep")
    t.rows = None
    if bulk_rows:  # whatever bulk.checked says of the MLflow installed: this test checks it
        location = t.client.get_experiment(t.experiment_id).artifact_location
        t.rows = bulk.RunRows(uri, t.experiment_id, location)
    t.open_sweep({"space": "{}", "search.metric": "val_acc"}, "s1")
    for batch in BATCHES:
        t.write_trials([(i, {"results": [], **w}) for i, w in batch])
    return t


def seen(t: SweepTracker, trial: str) -> dict:
    """Everything MLflow's client shows of a trial's run, its ids made relative."""
    run = t.client.get_run(t.trials[trial])
    info, data = run.info, run.data
    ids = {t.parent: "PARENT", info.run_id: "RUN"}
    return {
        "status": info.status,
        "lifecycle_stage": info.lifecycle_stage,
        "run_name": info.run_name,
        "user_id": info.user_id,
        "ended": info.end_time is not None and info.end_time >= info.start_time,
        "artifact_uri": info.artifact_uri.replace(info.run_id, "RUN").rsplit("/", 3)[1:],
        "params": data.params,
        "tags": {k: ids.get(v, v) for k, v in data.tags.items()},
        "metrics": {k: comparable(v) for k, v in data.metrics.items()},
        "history": {k: history(t, info.run_id, k) for k in sorted(data.metrics)},
    }


def history(t: SweepTracker, run_id: str, key: str) -> list[tuple]:
    return [
        (m.step, m.timestamp, comparable(m.value)) for m in t.client.get_metric_history(run_id, key)
    ]


def comparable(value: float) -> float | str:
    return "nan" if math.isnan(value) else value  # NaN != NaN


def found(t: SweepTracker, query: str, order_by: list[str] | None = None) -> list[str]:
    query = f"{tag.children_of(t.parent)} and {query}"
    runs = t.client.search_runs([t.experiment_id], query, order_by=order_by)
    trials = [r.data.tags[tag.TRIAL_ID] for r in runs]
    return trials if order_by else sorted(trials)  # MLflow's own order breaks ties by run id


QUERIES = [
    ("attributes.status = 'FINISHED'", ["tags.`sweep.trial_id` ASC"]),
    ("attributes.status = 'RUNNING'", None),
    ("attributes.status = 'FAILED'", None),
    ("metrics.val_acc > 3.0", ["metrics.val_acc DESC"]),
    ("metrics.train_loss > 1e300", None),
    ("params.`train.lr` = '0.2'", None),
    ("tags.`sweep.status` = 'completed'", ["metrics.val_loss ASC"]),
    ("tags.`sweep.diverged` = 'true'", None),
    ("attributes.run_name LIKE 'run %'", ["attributes.run_name DESC"]),
]


def test_runs_written_many_per_transaction_read_back_as_mlflow_writes_them(
    tmp_path: Path,
) -> None:
    public = tracker(f"sqlite:///{tmp_path}/public.db", bulk_rows=False)
    rows = tracker(f"sqlite:///{tmp_path}/rows.db", bulk_rows=True)
    assert sorted(public.trials) == sorted(rows.trials) == [f"t{i}" for i in range(7)]
    for trial in public.trials:
        assert seen(rows, trial) == seen(public, trial), (mlflow.__version__, trial)
    for query, order_by in QUERIES:
        expected = found(public, query, order_by)
        assert expected, query  # every query finds runs
        assert found(rows, query, order_by) == expected, (mlflow.__version__, query)
    assert rows.created == public.created and rows.logged == public.logged


def test_a_batch_touching_a_deleted_run_writes_nothing(tmp_path: Path) -> None:
    t = tracker(f"sqlite:///{tmp_path}/rows.db", bulk_rows=True)
    t.client.delete_run(t.trials["t0"])
    before = seen(t, "t1")
    with pytest.raises(MlflowException, match="must be in the 'active' state"):
        t.write_trials([("t1", {"results": [epoch(4, 1)]}), ("t0", {"results": [epoch(4, 0)]})])
    assert seen(t, "t1") == before


def test_the_tracker_writes_rows_only_where_they_were_checked(tmp_path: Path) -> None:
    version = ".".join(mlflow.__version__.split(".")[:2])
    t = SweepTracker(f"sqlite:///{tmp_path}/m.db", "sweep")
    assert (t.rows is not None) == (version in bulk.CHECKED)
    assert not bulk.checked("http://127.0.0.1:5000")
