"""The driver's writer: each event of a sweep fanned out to the folder's record, MLflow and the
live view.

The sweep folder is the source of truth; MLflow is a copy of it. ``Recorder`` writes each event
to the folder's history.jsonl first, then to MLflow (from a thread of its own,
sweeps.tracking.writes), then to the live view when one watches the sweep. What MLflow lacks,
``sync`` (sweeps.tracking.sync) copies from the record.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweeps.record.history import RESULT_KEYS, HistoryFile, SweepHistory
from sweeps.record.naming import run_name
from sweeps.record.results import first_error_line
from sweeps.spec.sweep import ALL_CHILD_RUNS
from sweeps.tracking.sync import CHILD_RUNS, sync_trials
from sweeps.tracking.writer import SweepTracker, refit_name, refit_tags
from sweeps.tracking.writes import TrialWrites
from trainers.metrics import REFIT_CURVES, fold_keys

if TYPE_CHECKING:
    from sweeps.record.disk import Watch
    from sweeps.view.live import LiveView


@dataclass
class TrialNews:
    """What one trial did since its last news: one event of a Ray trial, or a fused
    population's report of a member. ``params`` and ``config`` are read when it started."""

    trial_id: str
    params: dict[str, Any]  # its sampled values of the searched keys (the folder's record)
    config: dict[str, Any]  # its full config: the run's params
    started: bool  # it (re)started: a run that had ended is RUNNING again
    results: list[dict[str, Any]]  # its new epochs
    end: dict[str, Any] | None  # {"outcome", "epochs_run", "error"} once it ended
    exploits: list[dict[str, Any]] = field(default_factory=list)  # PBT: {epoch, source, params}


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
        """``fresh``: Ray starts a new experiment, so earlier trials (if any) are void: out of
        the record and MLflow (Ray gives the new ones new ids; a population's reuse theirs)."""
        h = self.history
        void = list(h.trials) if fresh else []
        self._record(
            {"event": "sweep_started", "id": h.id, "experiment": h.experiment}
            | {"params": params, "fresh": fresh}
        )
        self.tracker.start_sweep(params, h.id)
        self.tracker.withdraw(void)

    # A Ray trial's events, one at a time, recorded as a fused population's members' are.
    def trial_started(self, trial_id: str, params: dict[str, Any], config: dict[str, Any]) -> None:
        self.trials_news([TrialNews(trial_id, params, config, started=True, results=[], end=None)])

    def trial_results(self, trial_id: str, epochs: list[dict[str, Any]]) -> None:
        """One report of a trial: its epochs (oldest first)."""
        self.trials_news([TrialNews(trial_id, {}, {}, started=False, results=epochs, end=None)])

    def trial_ended(
        self, trial_id: str, outcome: str, epochs_run: int, error: str | None = None
    ) -> None:
        end = {"outcome": outcome, "epochs_run": epochs_run, "error": error}
        self.trials_news([TrialNews(trial_id, {}, {}, started=False, results=[], end=end)])

    def exploited(self, trial_id: str, source: str, epoch: int, params: dict[str, Any]) -> None:
        """PBT: after ``epoch``, the trial took ``source``'s weights and these values."""
        exploit = {"epoch": epoch, "source": source, "params": params}
        self.trials_news([TrialNews(trial_id, {}, {}, False, [], None, [exploit])])

    def withdraw(self, trial_ids: list[str]) -> None:
        """Trials that a resumed Ray does not know (it restores its last snapshot of the sweep,
        and a kill came after they began): out of the record and MLflow, since Ray asks for
        their places again; a trial never counts twice."""
        self._record({"event": "trials_withdrawn", "trials": trial_ids})
        if self.view is not None:
            self.view.withdrawn(trial_ids)
        self.mlflow.wait()
        self.tracker.withdraw(trial_ids)

    # A refit (sweeps.engine.refit) is recorded as a trial is, as a child run tagged
    # sweep.role=refit, through the same writer: it trains while the trials' last writes drain.
    def refit_started(
        self, refit_id: str, source: str, params: dict[str, Any], config: dict[str, Any]
    ) -> None:
        self._record(
            {"event": "refit_started", "refit": refit_id, "source": source}
            | {"params": params, "config": config}
        )
        name, tags = refit_name(source), refit_tags(source)
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
        if not self.runs_as_trials_train:  # mlflow.child_runs best:N: written now
            sync_trials(self.history, self.tracker)
        self.tracker.end_sweep(status, best, artifact_dir, self.history)

    @property
    def runs_as_trials_train(self) -> bool:
        """Every trial is a child run, written as it trains (mlflow.child_runs all)."""
        return self.history.params.get(CHILD_RUNS, ALL_CHILD_RUNS) == ALL_CHILD_RUNS

    def trials_news(self, news: list[TrialNews]) -> None:
        """Trials' news (one trial's event, or a fused population's report): every event
        recorded in one write to the record, each epoch an event of its own, then queued for
        the MLflow thread as one event per trial (a run made, curves, an end: merged per trial
        there), then shown on the live view."""
        now = int(time.time() * 1000)
        events: list[dict[str, Any]] = []
        kept = []
        for n in news:
            if n.started:
                events.append(
                    {"event": "trial_started", "trial": n.trial_id, "params": n.params}
                    | {"config": n.config}
                )
            results = [_kept(m, now) for m in n.results]
            events += ({"event": "result", "trial": n.trial_id, "metrics": m} for m in results)
            events += ({"event": "exploit", "trial": n.trial_id} | e for e in n.exploits)
            end = n.end
            if end is not None:  # it names every exploit of the trial (PBT)
                known = self.history.trials.get(n.trial_id)
                end = end | lineage([*(known.exploits if known else []), *n.exploits])
                events.append({"event": "trial_ended", "trial": n.trial_id} | end)
            kept.append(replace(n, results=results, end=end))
        self._record(*events)
        for n in kept if self.runs_as_trials_train else []:
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


def lineage(exploits: list[dict[str, Any]]) -> dict[str, str]:
    """A PBT member's exploits in one line, for its end ({} for any other trial)."""
    if not exploits:
        return {}
    return {"exploits": ", ".join(f"epoch {e['epoch']} from {e['source']}" for e in exploits)}


def _kept(metrics: dict[str, Any], now: int) -> dict[str, Any]:
    """What the record keeps of a reported epoch, stamped with its ``time``: when the epoch
    ended (a Ray trial's report says), else ``now``, when it was recorded."""
    keys = (*RESULT_KEYS, *fold_keys(metrics))
    return {k: metrics[k] for k in keys if k in metrics} | {"time": metrics.get("time", now)}
