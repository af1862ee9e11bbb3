"""The sweep folder is the source of truth; MLflow is a copy of it.

``Recorder`` is the driver's writer: each event goes to the folder's history.jsonl first, then
to MLflow. ``sync`` copies a folder's history into any store, writing only what that store
lacks (runs are matched by their tags, epochs by their step), so it can run any number of
times: a resume runs it first (a store deleted, moved or never reached is rebuilt), and
``sweep sync`` runs it on demand, into the sweep's own store or another one.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sweeps.config import load_document
from sweeps.history import RESULT_KEYS, HistoryFile, SweepHistory
from sweeps.layout import DEFAULT_STORAGE, SweepFolder
from sweeps.lock import SweepLock
from sweeps.tracking import SweepTracker, refit_tags, usable_store
from trainers.config import ConfigError
from trainers.metrics import REFIT_CURVES, fold_keys


class Recorder:
    """The driver's writes: each to history.jsonl (kept folded in ``history``), then MLflow."""

    def __init__(self, history: SweepHistory, file: HistoryFile, tracker: SweepTracker) -> None:
        self.history, self.file, self.tracker = history, file, tracker

    def _record(self, event: dict[str, Any]) -> None:
        self.file.append(event)
        self.history.apply(event)

    def start_sweep(self, params: dict[str, Any], fresh: bool) -> None:
        """``fresh``: Ray starts a new experiment, so earlier trials (if any) are void."""
        h = self.history
        self._record(
            {"event": "sweep_started", "id": h.id, "experiment": h.experiment}
            | {"params": params, "fresh": fresh}
        )
        self.tracker.start_sweep(params, h.id)

    def trial_started(self, trial_id: str, params: dict[str, Any], config: dict[str, Any]) -> None:
        self._record(
            {"event": "trial_started", "trial": trial_id, "params": params} | {"config": config}
        )
        self.tracker.trial_started(trial_id, config)

    def trial_result(self, trial_id: str, metrics: dict[str, Any]) -> None:
        keys = (*RESULT_KEYS, *fold_keys(metrics))
        kept = {k: metrics[k] for k in keys if k in metrics} | {"time": int(time.time() * 1000)}
        self._record({"event": "result", "trial": trial_id, "metrics": kept})
        self.tracker.trial_result(trial_id, kept)

    def trial_ended(
        self, trial_id: str, outcome: str, epochs_run: int, error: str | None = None
    ) -> None:
        self._record(
            {"event": "trial_ended", "trial": trial_id, "outcome": outcome}
            | {"epochs_run": epochs_run, "error": error}
        )
        self.tracker.trial_ended(trial_id, outcome, epochs_run, error)

    # A refit (sweeps.refit) is recorded as a trial is, as a child run tagged sweep.role=refit.
    def refit_started(
        self, refit_id: str, source: str, params: dict[str, Any], config: dict[str, Any]
    ) -> None:
        self._record(
            {"event": "refit_started", "refit": refit_id, "source": source}
            | {"params": params, "config": config}
        )
        self.tracker.trial_started(refit_id, config, refit_tags(source))

    def refit_result(self, refit_id: str, metrics: dict[str, Any]) -> None:
        """One epoch of a refit: its training curves only (it has no validation split)."""
        keys = ("epoch", "diverged", *REFIT_CURVES)
        kept = {k: metrics[k] for k in keys if k in metrics} | {"time": int(time.time() * 1000)}
        self._record({"event": "refit_result", "refit": refit_id, "metrics": kept})
        self.tracker.trial_result(refit_id, kept)

    def refit_ended(self, refit_id: str, outcome: str, epochs_run: int) -> None:
        self._record(
            {"event": "refit_ended", "refit": refit_id, "outcome": outcome}
            | {"epochs_run": epochs_run, "error": None}
        )
        self.tracker.trial_ended(refit_id, outcome, epochs_run)

    def end_sweep(
        self, status: str, best: dict[str, Any] | None = None, artifact_dir: Path | None = None
    ) -> None:
        self._record({"event": "sweep_ended", "status": status, "best": best})
        self.tracker.end_sweep(status, best, artifact_dir)


def sync(history: SweepHistory, tracker: SweepTracker, best_dir: Path) -> None:
    """Make the tracker's store hold the sweep as its folder records it, writing only what the
    store lacks. Called by the lock holder, so no driver is running: a sweep whose record has
    no end was interrupted."""
    tracker.open_sweep(history.params, history.id)
    for trial_id, trial in [*history.trials.items(), *history.refits.items()]:
        if trial.end is not None and tracker.ended.get(trial_id) == trial.end["outcome"]:
            continue  # ended in the store as in the folder: its curves were logged before
        tracker.ensure_trial(trial_id, trial.config, refit_tags(trial.source))
        tracker.log_results(trial_id, trial.results)
        if trial.end is not None:
            tracker.trial_ended(trial_id, **trial.end)
    end = history.end or {"status": "interrupted", "best": None}
    model = best_dir if end["best"] is not None and best_dir.is_dir() else None
    tracker.end_sweep(end["status"], end["best"], model)


def load_saved(name: str, storage: str | Path = DEFAULT_STORAGE) -> dict[str, Any]:
    """The config document a sweep was started with, for ``sweep resume NAME``: pointed at the
    folder where it was found, so a moved or renamed sweep goes on where it now lies."""
    files = SweepFolder.of(storage, name)
    if not files.config.exists():
        raise ConfigError(f"no sweep named {name} under {storage}/ ({files.config} is missing)")
    doc = load_document(files.config)
    if not doc:
        raise ConfigError(f"{files.config} is empty; it should hold the sweep's config")
    return {**doc, "name": name, "storage": str(storage)}


def sync_folder(name: str, storage: str | Path, tracking_uri: str | None) -> int:
    """``sweep sync``: copy the sweep in ``storage/name`` into a store (by default its own)."""
    files = SweepFolder.of(storage, name)
    doc = load_saved(name, storage)
    if not files.history.exists():
        raise ConfigError(
            f"{files.history} is missing: sweep {name} was run before sweeps kept a record"
        )
    if tracking_uri:
        key, configured = "--tracking-uri", tracking_uri
    else:
        key, configured = "mlflow.tracking_uri", (doc.get("mlflow") or {}).get("tracking_uri")
    uri = usable_store(configured, Path.cwd(), key)
    lock = SweepLock(files)
    lock.take()
    try:
        history = HistoryFile(files.history).read(name)
        tracker = SweepTracker(uri, history.experiment)
        sync(history, tracker, files.best())
    finally:
        lock.release()
    print(
        f"sweep {name} -> {uri} (experiment {history.experiment}): parent run {tracker.parent} "
        f"and {len(history.trials)} trial runs, {len(history.refits)} refit runs; "
        f"created {tracker.created} runs, "
        f"logged {tracker.logged} epochs"
    )
    return 0
