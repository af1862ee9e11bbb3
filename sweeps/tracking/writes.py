"""A sweep's trial events written to MLflow from a thread of their own (``TrialWrites``).

The driver's loop, which starts trials and answers their reports, never waits for the store
(a SQLite commit waits for the disk, a server for the network): the Recorder writes each event
to the folder's record first, in the driver's thread, then queues it here.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

from sweeps.tracking.writer import SweepTracker

STALE_S = 30.0  # at most this long a running trial's new epochs wait to be written to MLflow


class TrialWrites:
    """Trial events written to MLflow in a thread, in order, in few calls. A start is written
    at once (the run is made) and so is an end; the epochs in between are held until their
    trial ends, or for ``stale_s`` at most, or until ``wait``: a trial then costs three calls
    (make the run; params, curves and tags in one batch; end it) rather than one per report,
    and MLflow's cost grows with the points logged, not with how often trials report. Events
    written together are merged per trial (``merge``), and all go in one transaction where the
    store takes it (sweeps.tracking.bulk). The first error stops the writes: later ones are
    dropped (``sync`` brings them in on resume) and every later ``put`` or ``wait`` raises
    it."""

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
                if self.error is None:
                    self.tracker.write_trials(merge(written))
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
