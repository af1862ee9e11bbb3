"""Many runs' writes in one SQLite transaction, as MLflow's own store would leave them.

MLflow's client commits once per call: a run made, each part of a ``log_batch`` (params,
metrics and their latest values, tags), a run ended. On SQLite that is about 20 ms a run, so a
fused sweep that ends 2,048 configurations waits 40 s for its store, and no public MLflow API
makes many runs in one transaction. ``RunRows`` writes the rows of MLflow's tables (runs, tags,
params, metrics, latest_metrics) through MLflow's own table definitions, all of a batch in one
transaction: milliseconds a run.

It is used only where it has been checked: a SQLite store (``sqlite:///``) and an MLflow
version in ``CHECKED`` (tests/test_bulk_writes.py reads every run back with MLflow's client and
compares it with the same run written through the public API). Anywhere else the tracker writes
run by run through ``MlflowClient``.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field

import mlflow
import sqlalchemy as sa
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.store.tracking.dbmodels.models import (
    SqlLatestMetric,
    SqlMetric,
    SqlParam,
    SqlRun,
    SqlTag,
)
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME, MLFLOW_USER
from mlflow.utils.uri import append_to_uri_path

# MLflow versions (major.minor) whose reads were compared with this module's writes: every
# minor version the project accepts (pyproject: mlflow>=2.16), by bench/mlflow_versions.sh
CHECKED = tuple(f"2.{m}" for m in range(16, 23)) + tuple(f"3.{m}" for m in range(19))
CHUNK = 500  # rows of one statement's IN (...): SQLite's bound parameters stay far below limits


@dataclass
class RunWrite:
    """What one write adds to one run: a new run when ``new`` (its name, its start time), its
    tags (set, or replaced), params (new keys only, as MLflow requires), curve points, and a
    status (with ``end_time`` when the run ends)."""

    run_id: str
    new: bool = False
    name: str = ""
    start_time: int = 0
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    metrics: list[Metric] = field(default_factory=list)
    status: str | None = None
    end_time: int | None = None


def new_run_id() -> str:
    """A run id as MLflow makes them."""
    return uuid.uuid4().hex


def checked(tracking_uri: str) -> bool:
    """Whether ``RunRows`` may write to this store with the MLflow installed."""
    version = ".".join(mlflow.__version__.split(".")[:2])
    return tracking_uri.startswith("sqlite:///") and version in CHECKED


class RunRows:
    """Writes ``RunWrite``s of one experiment to its SQLite store, a batch per transaction."""

    def __init__(self, tracking_uri: str, experiment_id: str, artifact_location: str) -> None:
        self.engine = sa.create_engine(tracking_uri)
        self.experiment_id, self.artifact_location = experiment_id, artifact_location

    def write(self, writes: list[RunWrite]) -> None:
        """All the writes in one transaction: every row, or none (MlflowException when a run
        written to is not in the store or is deleted, as MLflow's own writes refuse)."""
        if not writes:
            return
        with self.engine.begin() as db:
            self._check_active(db, [w.run_id for w in writes if not w.new])
            self._insert(db, SqlRun, [self._run_row(w) for w in writes if w.new])
            tags = [(w.run_id, k, v) for w in writes for k, v in self._tags(w).items()]
            _delete_keys(db, SqlTag, [(r, k) for r, k, _ in tags])
            self._insert(db, SqlTag, [{"run_uuid": r, "key": k, "value": v} for r, k, v in tags])
            params = [{"run_uuid": w.run_id, "key": k, "value": v} for w in writes
                      for k, v in w.params.items()]  # fmt: skip
            self._insert(db, SqlParam, params)
            points = _metric_rows(writes)
            self._insert(db, SqlMetric, points)
            self._latest(db, points)
            for w in writes:
                if w.status is not None:
                    ended = {} if w.end_time is None else {"end_time": w.end_time}
                    run = SqlRun.__table__
                    db.execute(
                        run.update()
                        .where(run.c.run_uuid == w.run_id)
                        .values(status=w.status, **ended)
                    )

    def _run_row(self, w: RunWrite) -> dict:
        return {
            "run_uuid": w.run_id,
            "name": w.name,
            "artifact_uri": append_to_uri_path(self.artifact_location, w.run_id, "artifacts"),
            "experiment_id": int(self.experiment_id),
            "source_type": "UNKNOWN",
            "source_name": "",
            "entry_point_name": "",
            "user_id": w.tags.get(MLFLOW_USER, "unknown"),
            "status": w.status or "RUNNING",
            "start_time": w.start_time,
            "end_time": w.end_time,
            "deleted_time": None,
            "source_version": "",
            "lifecycle_stage": "active",
        }

    @staticmethod
    def _tags(w: RunWrite) -> dict[str, str]:
        return {MLFLOW_RUN_NAME: w.name, **w.tags} if w.new else w.tags

    @staticmethod
    def _insert(db: sa.Connection, model: type, rows: list[dict]) -> None:
        if rows:
            db.execute(model.__table__.insert(), rows)

    @staticmethod
    def _check_active(db: sa.Connection, run_ids: list[str]) -> None:
        run = SqlRun.__table__
        found = {}
        for chunk in _chunks(sorted(set(run_ids))):
            query = sa.select(run.c.run_uuid, run.c.lifecycle_stage).where(
                run.c.run_uuid.in_(chunk)
            )
            found |= dict(db.execute(query).all())
        for run_id in sorted(set(run_ids)):
            if found.get(run_id) != "active":
                state = found.get(run_id, "missing")
                raise MlflowException(
                    f"The run {run_id} must be in the 'active' state. Current state is {state}."
                )

    def _latest(self, db: sa.Connection, points: list[dict]) -> None:
        """latest_metrics: per run and key, the point with the largest (step, timestamp,
        value), as MLflow keeps it, against what the store holds already."""
        newest: dict[tuple[str, str], dict] = {}
        for p in points:
            key = (p["run_uuid"], p["key"])
            if key not in newest or _order(p) > _order(newest[key]):
                newest[key] = p
        latest = SqlLatestMetric.__table__
        held: dict[tuple[str, str], dict] = {}
        for chunk in _chunks(sorted({r for r, _ in newest})):
            rows = db.execute(sa.select(latest).where(latest.c.run_uuid.in_(chunk))).mappings()
            held |= {(r["run_uuid"], r["key"]): dict(r) for r in rows}
        changed = [p for k, p in newest.items() if k not in held or _order(p) > _order(held[k])]
        _delete_keys(db, SqlLatestMetric, [(p["run_uuid"], p["key"]) for p in changed])
        self._insert(db, SqlLatestMetric, changed)


def _metric_rows(writes: list[RunWrite]) -> list[dict]:
    """The metrics table's rows: NaN stored as 0 with is_nan, infinities as the largest
    floats (MLflow's encoding); a point repeated in one write is stored once."""
    rows, seen = [], set()
    for w in writes:
        for m in w.metrics:
            is_nan = math.isnan(m.value)
            value = 0.0 if is_nan else max(min(m.value, _BIG), -_BIG)
            row = {"run_uuid": w.run_id, "key": m.key, "value": value, "is_nan": is_nan}
            row |= {"timestamp": m.timestamp, "step": m.step}
            identity = tuple(row.values())
            if identity not in seen:
                seen.add(identity)
                rows.append(row)
    return rows


_BIG = 1.7976931348623157e308  # MLflow's stand-in for an infinite value


def _order(p: dict) -> tuple:
    return (p["step"], p["timestamp"], p["value"])


def _delete_keys(db: sa.Connection, model: type, keys: list[tuple[str, str]]) -> None:
    """Delete the rows of these (run, key) pairs, so that an insert replaces them."""
    if keys:
        table = model.__table__
        where = (table.c.run_uuid == sa.bindparam("r")) & (table.c.key == sa.bindparam("k"))
        db.execute(table.delete().where(where), [{"r": r, "k": k} for r, k in keys])


def _chunks(items: list[str]) -> list[list[str]]:
    return [items[i : i + CHUNK] for i in range(0, len(items), CHUNK)]
