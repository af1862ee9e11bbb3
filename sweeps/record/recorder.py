"""The sweep folder is the source of truth; MLflow is a copy of it.

``Recorder`` is the driver's writer: each event goes to the folder's history.jsonl first, then
to MLflow. ``sync`` copies a folder's history into any store, writing only what that store
lacks (runs are matched by their tags, epochs by their step), so it can run any number of
times: a resume runs it first (a store deleted, moved or never reached is rebuilt), and
``sweep sync`` runs it on demand, into the sweep's own store or another one.
"""

from __future__ import annotations

import queue
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweeps.record.history import RESULT_KEYS, HistoryFile, SweepHistory
from sweeps.record.layout import DEFAULT_STORAGE, SweepFolder
from sweeps.record.lock import SweepLock
from sweeps.record.results import first_error_line
from sweeps.spec.document import load_document
from sweeps.tracking.store import usable_store
from sweeps.tracking.writer import SweepTracker, refit_tags
from sweeps.view.naming import run_name
from trainers.config import ConfigError
from trainers.metrics import REFIT_CURVES, fold_keys

if TYPE_CHECKING:
    from sweeps.record.disk import Watch
    from sweeps.view.live import LiveView


@dataclass
class TrialNews:
    """What one trial did since its last news (a fused population's report of a member)."""

    trial_id: str
    params: dict[str, Any]  # its sampled values of the searched keys (the folder's record)
    config: dict[str, Any]  # its full config: the run's params
    started: bool  # it (re)started: a run that had ended is RUNNING again
    results: list[dict[str, Any]]  # its new epochs
    end: dict[str, Any] | None  # {"outcome", "epochs_run", "error"} once it ended


class Recorder:
    """The driver's writes: each to history.jsonl (kept folded in ``history``), then MLflow;
    and, when a live view watches the sweep, to it (``view``). ``disks``: the disks it writes
    to, checked by the driver's loop (sweeps.record.disk).

    A trial's events reach MLflow from a thread of their own (``TrialWrites``): the driver's
    loop, which starts trials and answers their reports, never waits for the store (a SQLite
    commit waits for the disk, a server for the network). The record is written first, in
    the driver's thread, so a kill loses nothing that ``sync`` cannot bring into MLflow
    later; ``end_sweep`` waits for the writes queued before it.
    """

    def __init__(
        self,
        history: SweepHistory,
        file: HistoryFile,
        tracker: SweepTracker,
        disks: Watch | None = None,
    ) -> None:
        self.history, self.file, self.tracker = history, file, tracker
        self.mlflow = TrialWrites(tracker)
        self.view: LiveView | None = None
        self.disks = disks

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
        self.mlflow.put(trial_id, config=config, name=run_name(params))
        if self.view is not None:
            self.view.started(trial_id, params)

    def trial_results(self, trial_id: str, epochs: list[dict[str, Any]]) -> None:
        """One report of a trial: its epochs (oldest first), an event each, in one write to
        the record. ``time`` is when the epoch ended, else now."""
        now = int(time.time() * 1000)
        kept = [_kept(m) | {"time": m.get("time", now)} for m in epochs]
        self._record(*({"event": "result", "trial": trial_id, "metrics": k} for k in kept))
        self.mlflow.put(trial_id, results=kept)
        if self.view is not None:
            for m in kept:
                self.view.result(trial_id, m)

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
        if self.view is not None:
            results = self.history.trials[trial_id].results
            why = first_error_line(error) if error else None
            self.view.ended(trial_id, outcome, results[-1] if results else None, why)

    # A refit (sweeps.engine.refit) is recorded as a trial is, as a child run tagged
    # sweep.role=refit, through the same writer: it trains while the trials' last writes drain.
    def refit_started(
        self, refit_id: str, source: str, params: dict[str, Any], config: dict[str, Any]
    ) -> None:
        self._record(
            {"event": "refit_started", "refit": refit_id, "source": source}
            | {"params": params, "config": config}
        )
        name, tags = f"refit of {source}", refit_tags(source)
        self.mlflow.put(refit_id, config=config, name=name, new_tags=tags)

    def refit_result(self, refit_id: str, metrics: dict[str, Any]) -> None:
        """One epoch of a refit: its training curves only (it has no validation split). An
        epoch trained again after a resume from an earlier checkpoint is recorded already."""
        if int(metrics["epoch"]) <= self.history.refits[refit_id].last_epoch:
            return
        keys = ("epoch", "diverged", *REFIT_CURVES)
        kept = {k: metrics[k] for k in keys if k in metrics} | {"time": int(time.time() * 1000)}
        self._record({"event": "refit_result", "refit": refit_id, "metrics": kept})
        self.mlflow.put(refit_id, results=[kept])

    def refit_ended(self, refit_id: str, outcome: str, epochs_run: int) -> None:
        self._record(
            {"event": "refit_ended", "refit": refit_id, "outcome": outcome}
            | {"epochs_run": epochs_run, "error": None}
        )
        self.mlflow.put(refit_id, end={"outcome": outcome, "epochs_run": epochs_run})

    def end_sweep(
        self, status: str, best: dict[str, Any] | None = None, artifact_dir: Path | None = None
    ) -> None:
        self._record({"event": "sweep_ended", "status": status, "best": best})
        self.mlflow.wait()
        self.tracker.end_sweep(status, best, artifact_dir)

    def trials_news(self, news: list[TrialNews]) -> None:
        """Many trials' news at once (a fused population's report): each event recorded as the
        methods above record it, in one write to the record, then queued for the MLflow
        thread as one event per trial (a run made, curves, an end: merged per trial there)."""
        events: list[dict[str, Any]] = []
        kept = []
        for n in news:
            if n.started:
                events.append(
                    {"event": "trial_started", "trial": n.trial_id, "params": n.params}
                    | {"config": n.config}
                )
            results = [_kept(m) for m in n.results]
            events += ({"event": "result", "trial": n.trial_id, "metrics": m} for m in results)
            if n.end is not None:
                events.append({"event": "trial_ended", "trial": n.trial_id} | n.end)
            kept.append(replace(n, results=results))
        self._record(*events)
        for n in kept:
            if n.started:  # its run made at once, its epochs held (TrialWrites)
                self.mlflow.put(n.trial_id, config=n.config, name=run_name(n.params))
            if n.results or n.end is not None:
                end = {} if n.end is None else {"end": n.end}
                self.mlflow.put(n.trial_id, results=n.results, **end)
        if self.view is not None:
            for n in kept:
                self._show(n.trial_id, n.params if n.started else None, n.results, n.end)

    def _show(
        self,
        trial_id: str,
        params: dict[str, Any] | None,
        results: list[dict[str, Any]],
        end: dict[str, Any] | None,
    ) -> None:
        """One trial's news on the live view."""
        if params is not None:
            self.view.started(trial_id, params)
        for m in results:
            self.view.result(trial_id, m)
        if end is not None:
            why = first_error_line(end["error"]) if end.get("error") else None
            last = self.history.trials[trial_id].results
            self.view.ended(trial_id, end["outcome"], last[-1] if last else None, why)


def _kept(metrics: dict[str, Any]) -> dict[str, Any]:
    """What the record keeps of a reported epoch, stamped with the time it was recorded."""
    keys = (*RESULT_KEYS, *fold_keys(metrics))
    return {k: metrics[k] for k in keys if k in metrics} | {"time": int(time.time() * 1000)}


STALE_S = 30.0  # at most this long a running trial's new epochs wait to be written to MLflow


class TrialWrites:
    """Trial events written to MLflow in a thread, in order, in few calls. A start is written
    at once (the run is made) and so is an end; the epochs in between are held until their
    trial ends, or for ``stale_s`` at most, or until ``wait``: a trial then costs three calls
    (make the run; params, curves and tags in one batch; end it) rather than one per report,
    and MLflow's cost grows with the points logged, not with how often trials report. Events
    written together are merged per trial (``merge``). The first error stops the writes: later
    ones are dropped (``sync`` brings them in on resume) and every later ``put`` or ``wait``
    raises it."""

    def __init__(self, tracker: SweepTracker, stale_s: float = STALE_S) -> None:
        self.tracker, self.stale_s = tracker, stale_s
        self.queue: queue.Queue[Any] = queue.Queue()
        self.error: Exception | None = None
        threading.Thread(target=self._run, name="mlflow-writes", daemon=True).start()

    def put(self, trial_id: str, **event: Any) -> None:
        """One of a trial's events: config=... (and its run's name=..., new_tags=...),
        results=[...] or end={...}."""
        self._raise()
        self.queue.put((trial_id, event))

    def wait(self) -> None:
        """Until every event put so far is written."""
        self.queue.put(_FLUSH)
        self.queue.join()
        self._raise()

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        held: list[tuple[str, dict[str, Any], float]] = []  # (trial, event, when it came)
        while True:
            due_at = min((came + self.stale_s for _, _, came in held), default=None)
            got = []
            try:
                got.append(self.queue.get(timeout=None if due_at is None else _left(due_at)))
                while not self.queue.empty():
                    got.append(self.queue.get_nowait())
            except queue.Empty:  # a held event's time is up
                pass
            now = time.monotonic()
            held += [(*item, now) for item in got if item is not _FLUSH]
            written, held = _due(held, _FLUSH in got, now - self.stale_s)
            try:
                for trial_id, write in merge(written):
                    if self.error is None:
                        self.tracker.write_trial(trial_id, **write, save=False)
                self.tracker.save_state()  # once for all the runs made (its size grows)
            except Exception as err:
                self.error = err
            finally:
                for _ in got:
                    self.queue.task_done()


_FLUSH = object()  # TrialWrites.wait's marker: what is held is written before it is done


def _left(due_at: float) -> float:
    return max(0.0, due_at - time.monotonic())


def _due(
    held: list[tuple[str, dict[str, Any], float]], flush: bool, stale_before: float
) -> tuple[list[tuple[str, dict[str, Any]]], list[tuple[str, dict[str, Any], float]]]:
    """The held events to write now, and those still held. A trial's events are written up
    to its last start or end, or all of them once one is stale (or on a flush)."""
    stale = {t for t, _, came in held if flush or came <= stale_before}
    last = {t: i for i, (t, event, _) in enumerate(held) if "config" in event or "end" in event}
    due = [t in stale or i <= last.get(t, -1) for i, (t, _, _) in enumerate(held)]
    written = [(t, e) for (t, e, _), now in zip(held, due, strict=True) if now]
    return written, [h for h, now in zip(held, due, strict=True) if not now]


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
            for key in ("name", "new_tags"):  # the run's readable name and tags, when made
                if key in event:
                    write[key] = event[key]
        write["results"] += event.get("results", [])
        if "end" in event:
            write["end"] = event["end"]
    return writes


def sync(history: SweepHistory, tracker: SweepTracker, best_dir: Path) -> None:
    """Make the tracker's store hold the sweep as its folder records it, writing only what the
    store lacks. Called by the lock holder, so no driver is running: a sweep whose record has
    no end was interrupted."""
    tracker.open_sweep(history.params, history.id)
    for trial_id, trial in [*history.trials.items(), *history.refits.items()]:
        if trial.end is not None and tracker.ended.get(trial_id) == trial.end["outcome"]:
            continue  # ended in the store as in the folder: its curves were logged before
        name = run_name(trial.params) if trial.source is None else f"refit of {trial.source}"
        tracker.ensure_trial(trial_id, trial.config, name, refit_tags(trial.source))
        tracker.log_results(trial_id, trial.results)
        if trial.end is not None:
            tracker.trial_ended(trial_id, **trial.end)
    end = history.end or {"status": "interrupted", "best": None}
    model = best_dir if end["best"] is not None and best_dir.is_dir() else None
    tracker.end_sweep(end["status"], end["best"], model)


def file_report(files: SweepFolder, tracker: SweepTracker, uri: str) -> None:
    """Give a store that lacks it the sweep's report, drawn anew so that its links point at
    this store's runs (the folder's own report keeps pointing at the store it was made for)."""
    if "report" in {a.path for a in tracker.client.list_artifacts(tracker.parent)}:
        return
    from sweeps.view.report import report  # matplotlib: only when a report is drawn

    with tempfile.TemporaryDirectory() as out:
        report(files.root, out=Path(out), tracking_uri=uri)


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
        if files.report.is_dir():
            file_report(files, tracker, uri)
    finally:
        lock.release()
    print(
        f"sweep {name} -> {uri} (experiment {history.experiment}): parent run {tracker.parent} "
        f"and {len(history.trials)} trial runs, {len(history.refits)} refit runs; "
        f"created {tracker.created} runs, "
        f"logged {tracker.logged} epochs"
    )
    return 0
