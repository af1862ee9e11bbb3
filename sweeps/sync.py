"""The sweep folder is the source of truth; MLflow is a copy of it.

``Recorder`` is the driver's writer: each event goes to the folder's history.jsonl first, then
to MLflow. ``sync`` copies a folder's history into any store, writing only what that store
lacks (runs are matched by their tags, epochs by their step), so it can run any number of
times: a resume runs it first (a store deleted, moved or never reached is rebuilt), and
``sweep sync`` runs it on demand, into the sweep's own store or another one.
"""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path
from typing import Any

from sweeps.config import load_document
from sweeps.history import RESULT_KEYS, HistoryFile, SweepHistory
from sweeps.layout import DEFAULT_STORAGE, SweepFolder
from sweeps.lock import SweepLock
from sweeps.tracking import SweepTracker, usable_store
from trainers.config import ConfigError


class Recorder:
    """The driver's writes: each to history.jsonl (kept folded in ``history``), then MLflow.

    A trial's events reach MLflow from a thread of their own (``TrialWrites``): the driver's
    loop, which starts trials and answers their reports, never waits for the store (a SQLite
    commit waits for the disk, a server for the network). The record is written first, in
    the driver's thread, so a kill loses nothing that ``sync`` cannot bring into MLflow
    later; ``end_sweep`` waits for the writes queued before it.
    """

    def __init__(self, history: SweepHistory, file: HistoryFile, tracker: SweepTracker) -> None:
        self.history, self.file, self.tracker = history, file, tracker
        self.mlflow = TrialWrites(tracker)

    def _record(self, *events: dict[str, Any]) -> None:
        self.file.append(*events)
        for event in events:
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
        self.mlflow.put(trial_id, config=config)

    def trial_results(self, trial_id: str, epochs: list[dict[str, Any]]) -> None:
        """One report of a trial: its epochs (oldest first), an event each, in one write to
        the record. ``time`` is when the epoch ended, else now."""
        now = int(time.time() * 1000)
        kept = [
            {k: m[k] for k in RESULT_KEYS if k in m} | {"time": m.get("time", now)} for m in epochs
        ]
        self._record(*({"event": "result", "trial": trial_id, "metrics": k} for k in kept))
        self.mlflow.put(trial_id, results=kept)

    def trial_ended(
        self, trial_id: str, outcome: str, epochs_run: int, error: str | None = None
    ) -> None:
        self._record(
            {"event": "trial_ended", "trial": trial_id, "outcome": outcome}
            | {"epochs_run": epochs_run, "error": error}
        )
        self.mlflow.put(
            trial_id, end={"outcome": outcome, "epochs_run": epochs_run, "error": error}
        )

    def end_sweep(
        self, status: str, best: dict[str, Any] | None = None, artifact_dir: Path | None = None
    ) -> None:
        self._record({"event": "sweep_ended", "status": status, "best": best})
        self.mlflow.wait()
        self.tracker.end_sweep(status, best, artifact_dir)


class TrialWrites:
    """Trial events written to MLflow in a thread, in order. When the store falls behind,
    the events queued meanwhile are merged per trial (``merge``), so a trial that started,
    reported and ended costs three calls (make the run; params, curves and tags; end it)
    rather than one or two per event. The first error stops the writes: later ones are
    dropped (``sync`` brings them in on resume) and every later ``put`` or ``wait`` raises it."""

    def __init__(self, tracker: SweepTracker) -> None:
        self.tracker = tracker
        self.queue: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self.error: Exception | None = None
        threading.Thread(target=self._run, name="mlflow-writes", daemon=True).start()

    def put(self, trial_id: str, **event: Any) -> None:
        """One of a trial's events: config=..., results=[...] or end={...}."""
        self._raise()
        self.queue.put((trial_id, event))

    def wait(self) -> None:
        """Until every event put so far is written."""
        self.queue.join()
        self._raise()

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        while True:
            events = [self.queue.get()]
            while not self.queue.empty():
                events.append(self.queue.get())
            try:
                for trial_id, write in merge(events):
                    if self.error is None:
                        self.tracker.write_trial(trial_id, **write, save=False)
                self.tracker.save_state()  # once for all the runs made (its size grows)
            except Exception as err:
                self.error = err
            finally:
                for _ in events:
                    self.queue.task_done()


def merge(events: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """Trial events (in order) as fewer writes, each {config?, results, end?} of one trial:
    a trial's events go into its latest write unless that one has ended, or the event is a
    new start after anything. Writes keep each trial's order of events."""
    writes: list[tuple[str, dict[str, Any]]] = []
    open_write: dict[str, dict[str, Any]] = {}
    for trial_id, event in events:
        write = open_write.get(trial_id)
        if write is None or write.get("end") is not None or "config" in event:
            write = open_write[trial_id] = {"results": []}
            writes.append((trial_id, write))
        if "config" in event:
            write["config"] = event["config"]
        write["results"] += event.get("results", [])
        if "end" in event:
            write["end"] = event["end"]
    return writes


def sync(history: SweepHistory, tracker: SweepTracker, best_dir: Path) -> None:
    """Make the tracker's store hold the sweep as its folder records it, writing only what the
    store lacks. Called by the lock holder, so no driver is running: a sweep whose record has
    no end was interrupted."""
    tracker.open_sweep(history.params, history.id)
    for trial_id, trial in history.trials.items():
        if trial.end is not None and tracker.ended.get(trial_id) == trial.end["outcome"]:
            continue  # ended in the store as in the folder: its curves were logged before
        tracker.ensure_trial(trial_id, trial.config)
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
        f"and {len(history.trials)} trial runs; created {tracker.created} runs, "
        f"logged {tracker.logged} epochs"
    )
    return 0
