"""Every MLflow write of a sweep: one parent run per sweep, one nested child run per trial.

Used from one process at a time per sweep (the driver, or ``sweep sync``, holding the sweep's
lock), so a SQLite store is safe. It speaks to MLflow through ``MlflowClient`` with explicit
run ids, never the fluent global-state API. Runs are found again by their tags (``sweep.id`` on
the parent, ``sweep.trial_id`` on each child), so every write is "log what is missing": a
resumed sweep continues the same runs, and a sweep copied twice into a store is there once.
The ids are also kept in a JSON state file, a cache of the sweep's own store.

Which store, and whether it can take the sweep, is sweeps/tracking/store.py's; the reads of the
report and ``sweep status`` are sweeps/tracking/reader.py's.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pandas as pd
from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.tracking import MlflowClient

from sweeps.record.history import SweepHistory
from sweeps.record.outcomes import RUNNING, Outcome, SweepOutcome
from sweeps.spec.space import Space
from sweeps.tracking import bulk, ui
from sweeps.tracking import tags as tag
from sweeps.tracking.bulk import RunWrite, new_run_id
from sweeps.tracking.reader import OLDEST_FIRST, get_run, runs_where, sweep_parent
from sweeps.tracking.store import PreparedStore, sqlite_without_fsync
from sweeps.tracking.uri import sqlite_file
from trainers.config import ConfigError
from trainers.metrics import curve_points

BATCH = 100  # MLflow: at most 100 params or tags per log_batch
METRIC_BATCH = 1000  # MLflow: at most 1000 metrics, params and tags together per log_batch
PARAM_MAX = 6000  # MLflow: param values up to 6000 characters
TAG_MAX = 8000  # MLflow: tag values up to 8000 characters
ERROR_MAX = 5000  # characters of an error's full text kept in the sweep.error tag
NOTHING = -1  # "no epoch logged yet"
WRITERS = 8  # runs written at once to a store that serves writers side by side
SERVED = ("http", "https", "postgresql", "mysql", "mssql")  # a tracking or database server


def read_state(path: Path) -> dict[str, Any]:
    """The state file's run ids ({} when there is none); a damaged one is a ConfigError."""
    if not path.exists():
        return {}
    try:
        state = json.loads(path.read_text())
        if not (isinstance(state, dict) and isinstance(state.get("trials", {}), dict)):
            raise ValueError(path)
    except (ValueError, UnicodeDecodeError):
        raise ConfigError(
            f"{path} is damaged (not the JSON of the sweep's MLflow run ids); delete it and "
            "try again: the runs are found again by their tags"
        ) from None
    return state


def recorded_store(path: Path) -> str | None:
    """The store the sweep's runs are in, as its state file names it; None before it has any."""
    return read_state(path).get("tracking_uri")


def refit_tags(source: str | None) -> dict[str, str]:
    """The tags that mark a child run as the refit of trial ``source`` (none for a trial)."""
    return {tag.ROLE: tag.REFIT, tag.SOURCE_TRIAL_ID: source} if source else {}


def refit_name(source: str) -> str:
    """The run name of the refit of trial ``source``."""
    return f"refit of {source}"


class SweepTracker:
    """All MLflow writes of one sweep in one store: a parent run, a nested child run per trial.

    The parent is found by the state file's id, else by its ``sweep.id`` tag, else made; the
    children by their parent and ``sweep.trial_id`` tag. With ``state_file`` the ids are kept
    there (JSON ``{"tracking_uri", "experiment_id", "parent", "trials": {trial_id: run_id}}``,
    written atomically; the store's URI lets a command run from another directory find it);
    ``sweep sync`` into another store passes none.
    """

    def __init__(self, tracking_uri: str, experiment: str, state_file: Path | None = None) -> None:
        # over HTTP, set_terminated prints two "View run" lines per run to stdout
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        PreparedStore.adopt(tracking_uri)
        if tracking_uri.startswith("sqlite:"):
            sqlite_without_fsync()
        self.client = MlflowClient(tracking_uri)
        self.tracking_uri, self.experiment = tracking_uri, experiment
        self.state_file = Path(state_file) if state_file else None
        state = read_state(self.state_file) if self.state_file else {}
        self.experiment_id = self._experiment_id(tracking_uri)
        self.rows = None  # many runs per transaction, where checked (sweeps.tracking.bulk)
        if bulk.checked(tracking_uri):
            location = self.client.get_experiment(self.experiment_id).artifact_location
            self.rows = bulk.RunRows(tracking_uri, self.experiment_id, location)
        self.writers = ThreadPoolExecutor(writers(tracking_uri), thread_name_prefix="mlflow-run")
        self.parent: str | None = state.get("parent")
        self.trials: dict[str, str] = dict(state.get("trials", {}))  # trial id -> run id
        self.ended: dict[str, str] = {}  # trial id -> outcome, for runs no longer RUNNING
        self.last_epoch: dict[str, int] = {}  # run id -> last epoch logged
        self.created = 0  # runs this tracker made
        self.unsaved = False  # runs made since the state file was written
        self.logged = 0  # epochs (all their curves) this tracker logged

    def _experiment_id(self, tracking_uri: str) -> str:
        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        location = None  # a local SQLite store keeps artifacts beside its database, not the cwd
        if (db := sqlite_file(tracking_uri)) is not None:
            db_dir = db.resolve().parent
            name = re.sub(r"[^\w.-]", "_", self.experiment)
            location = (db_dir / "mlartifacts" / name).as_uri()
        # The MLflow 3 UI opens an experiment on its GenAI pages unless told otherwise.
        kind = {tag.KIND: ui.TRAINING_KIND}
        return self.client.create_experiment(self.experiment, location, tags=kind)

    # ------------------------------------------------------------------ the sweep
    def open_sweep(self, params: dict[str, Any], sweep_id: str = "") -> str:
        """Find the sweep's parent run in this store, or create it; log params it lacks.
        Its status is left as it is (a new one is RUNNING)."""
        run = self._active(self.parent) if self.parent else None
        if run is not None and sweep_id and run.data.tags.get(tag.SWEEP_ID, sweep_id) != sweep_id:
            run = None  # the state names another sweep's run
        if run is None and sweep_id:
            run = sweep_parent(self.client, self.experiment_id, sweep_id)
        if run is None:
            tags = {tag.ROLE: tag.PARENT, tag.STATUS: RUNNING, tag.SWEEP_ID: sweep_id}
            run = self.client.create_run(
                self.experiment_id,
                tags={k: v for k, v in tags.items() if v},
                run_name=self.experiment,
            )
            self.created += 1
        elif sweep_id:
            self._set_tags(run, {tag.SWEEP_ID: sweep_id})
        self.parent = run.info.run_id
        self._read_children()
        self._save()
        self._log_batch(
            self.parent, params={k: v for k, v in params.items() if k not in run.data.params}
        )
        if tag.VIEW + ui.view_key(self.parent) not in self._experiment_tags():
            self.write_view()  # its charts' axis is chosen again when the sweep ends
        return self.parent

    def start_sweep(self, params: dict[str, Any], sweep_id: str = "") -> str:
        """``open_sweep``, then mark it RUNNING: a driver works on it."""
        parent = self.open_sweep(params, sweep_id)
        self.client.update_run(parent, status="RUNNING")
        self._log_tags(parent, {tag.STATUS: RUNNING})
        return parent

    def end_sweep(
        self,
        status: str,
        best: dict[str, Any] | None = None,
        artifact_dir: Path | None = None,
        history: SweepHistory | None = None,
    ) -> None:
        """Record the best trial on the parent, end every child still RUNNING (KILLED,
        sweep.status=interrupted), then end the parent: completed -> FINISHED,
        failed -> FAILED, interrupted -> KILLED. Writes only what the store lacks. The view's
        trials come from ``history`` where given (else from the runs: seconds per thousand)."""
        parent = self._parent()
        run = self.client.get_run(parent)
        if best is not None:
            self._record_best(run, best, artifact_dir)
        by_run = {run_id: trial for trial, run_id in self.trials.items()}
        for run_id in self.open_runs():
            if run_id != parent:
                trial = by_run.get(run_id)
                if trial is None:  # a child made by another process since we looked
                    trial = self.client.get_run(run_id).data.tags.get(tag.TRIAL_ID, run_id)
                    self.trials[trial] = run_id
                self.trial_ended(trial, Outcome.INTERRUPTED, max(self._last(run_id), 0))
        self.write_view(history)
        run = self.client.get_run(parent)
        self._set_tags(run, {tag.STATUS: status})
        run_status = SweepOutcome.of(status).run_status
        if run.info.status != run_status or run.info.end_time is None:
            self.client.set_terminated(parent, run_status)

    def _record_best(self, run: Run, best: dict[str, Any], artifact_dir: Path | None) -> None:
        parent = run.info.run_id
        stored = {a.path for a in self.client.list_artifacts(parent)}
        if "best_config.json" not in stored:
            self.client.log_dict(parent, best, "best_config.json")
        tags = {tag.BEST_TRIAL_ID: best.get("trial_id", "")}
        self._set_tags(run, tags | {tag.BEST + k: v for k, v in best.get("config", {}).items()})

        now = _now()
        metrics = [
            Metric(f"best_{k}", float(v), now, 0)
            for k, v in best.get("metrics", {}).items()
            if isinstance(v, int | float)
            and not isinstance(v, bool)
            and f"best_{k}" not in run.data.metrics
        ]
        self._log_batch(parent, metrics)
        self._set_tags(run, best.get("tags", {}))  # e.g. which model had the test look
        if artifact_dir is not None and "best_model" not in stored:
            self.client.log_artifacts(parent, str(artifact_dir), "best_model")

    def open_runs(self) -> list[str]:
        """Ids of this sweep's runs (parent and children) whose status is RUNNING."""
        if not self.parent:
            return []
        found = [self.parent] if self.client.get_run(self.parent).info.status == "RUNNING" else []
        running = "attributes.status = 'RUNNING'"
        return found + [r.info.run_id for r in self._children(running)]

    # ------------------------------------------------------------------ the UI's view
    def write_view(self, history: SweepHistory | None = None) -> None:
        """The sweep's view in the MLflow UI (sweeps.tracking.ui) as an experiment tag, from
        the parent's params (the space, the metric) and its trials (``history``'s, else their
        runs'); and on the parent, a description linking to it. Writes only what changed."""
        parent = self.client.get_run(self._parent())
        params = parent.data.params
        if "space" not in params or "search.metric" not in params:
            return  # not a sweep's parent run
        space, metric = Space.read(json.loads(params["space"])), params["search.metric"]
        keys = list(space)
        x_key = None
        if keys:
            if history is not None:
                table = trials_table(history, keys, metric)
            else:
                table = self._trials_table(keys, metric)
            x_key = ui.chart_key(table, keys, space, metric)
        key = ui.view_key(parent.info.run_id)
        value = ui.encode(ui.view_state(parent.info.run_id, keys, metric, x_key))
        if self._experiment_tags().get(tag.VIEW + key) != value:
            self.client.set_experiment_tag(self.experiment_id, tag.VIEW + key, value)
        if tag.NOTE not in parent.data.tags:  # a description the user wrote stays
            table, charts = (ui.view_link(self.experiment_id, key, c) for c in (False, True))
            note = f"This sweep's [trials, best first]({table}) and [charts]({charts})."
            self._log_tags(parent.info.run_id, {tag.NOTE: note})

    def _experiment_tags(self) -> dict[str, str]:
        return self.client.get_experiment(self.experiment_id).tags

    def _trials_table(self, keys: list[str], metric: str) -> pd.DataFrame:
        """One row per trial's run, in trial id order (what importance's folds draw from
        stays the same however the trials' runs were made): its searched values, outcome and
        latest metric."""
        runs = [r for r in self._children() if r.data.tags.get(tag.ROLE) != tag.REFIT]
        rows = [
            {k: run.data.params.get(k) for k in keys}
            | {"status": run.data.tags.get(tag.STATUS, "")}
            | {metric: run.data.metrics.get(metric, math.nan)}
            for run in sorted(runs, key=lambda r: r.data.tags.get(tag.TRIAL_ID, ""))
        ]
        return pd.DataFrame(rows, columns=[*keys, "status", metric])

    # ------------------------------------------------------------------ the trials
    def ensure_trial(
        self,
        trial_id: str,
        config: dict[str, Any],
        name: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> str:
        """The trial's child run, created (RUNNING, with ``tags``) if this store lacks it;
        params it lacks (its status stays). ``name``: the run's readable name
        (sweeps.record.naming.run_name); the id stays a tag."""
        run_id = self.trials.get(trial_id)
        if run_id is None:
            self.write_trials([(trial_id, {"config": config, "name": name, "new_tags": tags})])
        else:
            have = self.client.get_run(run_id).data.params
            self._log_batch(run_id, params={k: v for k, v in config.items() if k not in have})
        self.save_state()
        return self.trials[trial_id]

    def write_trial(
        self,
        trial_id: str,
        config: dict[str, Any] | None = None,
        results: list[dict[str, Any]] | None = None,
        end: dict[str, Any] | None = None,
        name: str | None = None,
        new_tags: dict[str, str] | None = None,
    ) -> None:
        """A trial's events in the fewest writes: with ``config`` it started (its run made
        with the config as params, named ``name``, tagged ``new_tags``, or reopened on
        resume); ``results`` are epochs it reported (the curves of those the run lacks are
        logged, step = epoch; a diverged result repeats the last finite values: no point, a
        sweep.diverged tag); ``end`` is {"outcome", "epochs_run", "error"}: the outcome
        tagged and the run ended with the outcome's MLflow status (sweeps.record.outcomes).
        Nothing the run has already is written again; the state file is saved if a run was
        made."""
        write = {"config": config, "results": results, "end": end, "name": name}
        self.write_trials([(trial_id, write | {"new_tags": new_tags})])
        self.save_state()

    def write_trials(self, writes: list[tuple[str, dict[str, Any]]]) -> None:
        """Trials' writes (``write_trial``'s arguments, as sweeps.tracking.writes.merge makes
        them) in order, in batches of distinct trials (a trial written twice starts a second
        batch). A batch goes in one transaction where sweeps.tracking.bulk may write to the
        store, else run by run through MLflow's client (a run made with its tags; params,
        curves and tags in one log_batch; ended), ``writers(uri)`` runs at once."""
        batch: list[_Planned] = []
        in_batch: set[str] = set()
        for trial_id, write in writes:
            if trial_id in in_batch:
                self._flush(batch)
                in_batch.clear()
            batch.append(self._plan(trial_id, write))
            in_batch.add(trial_id)
        self._flush(batch)

    def _plan(self, trial_id: str, write_args: dict[str, Any]) -> _Planned:
        """What one write (``write_trial``'s arguments) adds to the trial's run, reading what
        a reopened run has."""
        config, results, end = (write_args.get(k) for k in ("config", "results", "end"))
        name, new_tags = write_args.get("name"), write_args.get("new_tags")
        outcome = Outcome.of(end["outcome"]) if end is not None else None
        run_id = self.trials.get(trial_id)
        write = RunWrite(run_id or new_run_id(), new=run_id is None)
        if config is not None and run_id is None:
            write.name, write.start_time = name or trial_id, _now()
            write.tags = {tag.PARENT_RUN_ID: self._parent(), tag.TRIAL_ID: trial_id}
            write.tags |= (new_tags or {}) | {tag.STATUS: RUNNING}
            write.params = config
        elif config is not None:  # a resumed trial: running again, from the epochs its run has
            have = self.client.get_run(run_id).data.params
            write.params = {k: v for k, v in config.items() if k not in have}
            if end is None:
                write.status, write.tags[tag.STATUS] = "RUNNING", RUNNING
            self.last_epoch[run_id] = self._read_last_epoch(run_id)
        elif run_id is None:
            raise KeyError(f"trial {trial_id} has no run: write its config first")
        last = NOTHING if write.new else self._last(write.run_id)
        write.metrics, diverged, last = _new_points(last, results or [])
        if diverged:
            write.tags[tag.DIVERGED] = "true"
        if end is not None:
            write.tags |= end_tags(**end)
            write.status, write.end_time = outcome.run_status, _now()
        write.params = {k: str(v)[:PARAM_MAX] for k, v in write.params.items()}
        write.tags = {k: str(v)[:TAG_MAX] for k, v in write.tags.items()}
        return _Planned(trial_id, write, last, outcome, started=config is not None)

    def _flush(self, batch: list[_Planned]) -> None:
        """Write the planned writes (and empty ``batch``), then note what the runs now hold;
        a write that failed is raised once those that did not are noted."""
        try:
            if self.rows is not None:
                self.rows.write([p.write for p in batch])
                done, error = list(batch), None
            else:
                done, error = self._apply_all(batch)
            for p in done:
                if p.write.new:
                    self.created += 1
                    self.unsaved = True
                self.trials[p.trial_id] = p.write.run_id
                self.last_epoch[p.write.run_id] = p.last
                self.logged += len({m.step for m in p.write.metrics})
                if p.started:
                    self.ended.pop(p.trial_id, None)
                if p.outcome is not None:
                    self.ended[p.trial_id] = p.outcome
        finally:
            batch.clear()
        if error is not None:
            raise error

    def _apply_all(self, batch: list[_Planned]) -> tuple[list[_Planned], BaseException | None]:
        """``_apply`` each write on the writer threads: those written, and the first error (the
        writes not started by then are not made)."""
        futures = [self.writers.submit(self._apply, p.write) for p in batch]
        error = None
        for future in futures:
            if not future.cancelled() and (err := future.exception()) is not None:
                error = error or err
                for later in futures:
                    later.cancel()
        ok = [not f.cancelled() and f.exception() is None for f in futures]
        return [p for p, written in zip(batch, ok, strict=True) if written], error

    def _apply(self, write: RunWrite) -> None:
        """One write through MLflow's client (a new run gets MLflow's id)."""
        tags = write.tags
        if write.new:
            run = self.client.create_run(
                self.experiment_id, write.start_time, tags, run_name=write.name
            )
            write.run_id, tags = run.info.run_id, {}
        self._log_batch(write.run_id, write.metrics, write.params, tags)
        if write.end_time is not None:
            self.client.set_terminated(write.run_id, write.status, write.end_time)
        elif write.status is not None:
            self.client.update_run(write.run_id, status=write.status)

    def withdraw(self, trial_ids: Iterable[str]) -> None:
        """Delete the runs of trials the sweep's record no longer holds."""
        for trial_id in trial_ids:
            if (run_id := self.trials.pop(trial_id, None)) is not None:
                self.client.delete_run(run_id)
                self.ended.pop(trial_id, None)
                self.unsaved = True
        self.save_state()

    def trial_ended(
        self, trial_id: str, outcome: str, epochs_run: int, error: str | None = None
    ) -> None:
        """Tag the outcome and end the child run with the outcome's MLflow status (idempotent)."""
        self.write_trial(
            trial_id, end={"outcome": outcome, "epochs_run": epochs_run, "error": error}
        )

    # ------------------------------------------------------------------ helpers
    def _parent(self) -> str:
        if not self.parent:
            raise RuntimeError("open_sweep() must be called before logging trials")
        return self.parent

    def _active(self, run_id: str) -> Run | None:
        """The run, unless this store lacks it or it was deleted (a server outage raises: it
        must not fork runs)."""
        run = get_run(self.client, run_id)
        return run if run is not None and run.info.lifecycle_stage == "active" else None

    def _children(self, extra: str = "") -> Iterator[Run]:
        """The parent's child runs (oldest first), page by page."""
        query = tag.children_of(self._parent()) + (f" and {extra}" if extra else "")
        return runs_where(self.client, [self.experiment_id], query, OLDEST_FIRST)

    def _read_children(self) -> None:
        self.trials, self.ended = {}, {}
        for run in self._children():
            trial = run.data.tags.get(tag.TRIAL_ID)
            if trial is None or trial in self.trials:  # the oldest of a trial's runs is its own
                continue
            self.trials[trial] = run.info.run_id
            if run.info.status != "RUNNING":
                self.ended[trial] = run.data.tags.get(tag.STATUS, "")

    def _last(self, run_id: str) -> int:
        if run_id not in self.last_epoch:
            self.last_epoch[run_id] = self._read_last_epoch(run_id)
        return self.last_epoch[run_id]

    def _read_last_epoch(self, run_id: str) -> int:
        for key in ("val_loss", "train_loss"):  # a refit has no validation split
            history = self.client.get_metric_history(run_id, key)
            if history:
                return max(m.step for m in history)
        return NOTHING

    def _set_tags(self, run: Run, tags: dict[str, Any]) -> None:
        """Log the tags whose value the run does not have already."""
        have = run.data.tags
        self._log_tags(
            run.info.run_id, {k: v for k, v in tags.items() if have.get(k) != str(v)[:TAG_MAX]}
        )

    def _log_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        self._log_batch(run_id, tags=tags)

    def _log_batch(
        self,
        run_id: str,
        metrics: list | None = None,
        params: dict[str, Any] | None = None,
        tags: dict[str, Any] | None = None,
    ) -> None:
        """Metrics, params and tags in as few log_batch calls as MLflow's limits allow."""
        metrics = list(metrics or [])
        params_ = [Param(k, str(v)[:PARAM_MAX]) for k, v in (params or {}).items()]
        tags_ = [RunTag(k, str(v)[:TAG_MAX]) for k, v in (tags or {}).items()]
        while metrics or params_ or tags_:
            p, t = params_[:BATCH], tags_[:BATCH]
            m = metrics[: METRIC_BATCH - len(p) - len(t)]
            self.client.log_batch(run_id, metrics=m, params=p, tags=t)
            metrics, params_, tags_ = metrics[len(m) :], params_[len(p) :], tags_[len(t) :]

    def save_state(self) -> None:
        """The state file, if runs were made since it was last written."""
        if self.unsaved:
            self._save()

    def _save(self) -> None:
        self.unsaved = False
        if self.state_file is None:
            return
        state = {"tracking_uri": self.tracking_uri, "experiment_id": self.experiment_id}
        state |= {"parent": self.parent, "trials": self.trials}
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_name(self.state_file.name + ".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, self.state_file)


def writers(tracking_uri: str) -> int:
    """How many runs to write at once: WRITERS to a server (a tracking server, or a database
    server behind MLflow's SQLAlchemy store), which serves requests side by side; one to a
    SQLite file (one writer at a time)."""
    scheme = urlparse(tracking_uri).scheme.split("+")[0]  # postgresql+psycopg: postgresql
    return WRITERS if scheme in SERVED else 1


def trials_table(history: SweepHistory, keys: list[str], metric: str) -> pd.DataFrame:
    """``SweepTracker._trials_table`` from the record: the trials' runs as MLflow would give
    them back (params as text, the outcome, the metric's last finite value)."""
    rows = []
    for trial_id in sorted(history.trials):
        t = history.trials[trial_id]
        status = t.end["outcome"] if t.end else RUNNING
        rows.append(
            {k: str(t.config[k])[:PARAM_MAX] if k in t.config else None for k in keys}
            | {"status": status, metric: curve_points(t.last_finite).get(metric, math.nan)}
        )
    return pd.DataFrame(rows, columns=[*keys, "status", metric])


def end_tags(
    outcome: str, epochs_run: int, error: str | None = None, exploits: str | None = None
) -> dict[str, str]:
    """A trial's end as tags: its outcome and epochs, ASHA's rung, the error's text."""
    outcome = Outcome.of(outcome)
    tags = {tag.STATUS: outcome.value, tag.EPOCHS_RUN: str(epochs_run)}
    if outcome is Outcome.EARLY_STOPPED:
        tags[tag.RUNG] = str(epochs_run)
    if exploits:
        tags[tag.EXPLOITS] = exploits
    if error:
        first = error.strip().splitlines()[0] if error.strip() else error
        full = error if len(error) <= ERROR_MAX else "..." + error[-ERROR_MAX:]
        tags[tag.ERROR] = first if full.strip() == first else f"{first}\n\n{full}"
    return tags


def _now() -> int:
    return int(time.time() * 1000)


@dataclass
class _Planned:
    """One write planned for a trial's run, and what the tracker notes once it is written."""

    trial_id: str
    write: RunWrite
    last: int  # the last epoch the run will hold
    outcome: Outcome | None
    started: bool


def _new_points(last: int, results: list[dict[str, Any]]) -> tuple[list[Metric], bool, int]:
    """The curve points of the epochs after ``last``; whether any result was a diverged one
    (those log no point); the last epoch then."""
    points, diverged = [], False
    for m in results:
        if m.get("diverged"):
            diverged = True
            continue
        epoch = int(m["epoch"])
        if epoch <= last:
            continue
        at = int(m.get("time") or _now())
        points += [Metric(k, v, at, epoch) for k, v in curve_points(m).items()]
        last = epoch
    return points, diverged, last
