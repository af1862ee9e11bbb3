"""The sweep folder is the source of truth; MLflow is a copy of it, which ``sync`` rebuilds.

``sync`` copies a folder's history into any store, writing only what that store lacks (runs
are matched by their tags, epochs by their step), so it can run any number of times: a resume
runs it first (a store deleted, moved or never reached is rebuilt), and ``sweep sync`` runs it
on demand (``sync_folder``), into the sweep's own store or another one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from sweeps.record.history import HistoryFile, SweepHistory
from sweeps.record.layout import SweepFolder
from sweeps.record.lock import SweepLock
from sweeps.record.naming import run_name
from sweeps.record.results import best_first
from sweeps.spec.document import load_saved
from sweeps.spec.sweep import ALL_CHILD_RUNS, METRICS
from sweeps.tracking.store import usable_store
from sweeps.tracking.writer import SweepTracker, recorded_store, refit_name, refit_tags
from trainers.config import ConfigError

CHILD_RUNS = "mlflow.child_runs"  # a sweep param where not "all" (sweeps.engine.driver)


def sync(history: SweepHistory, tracker: SweepTracker, best_dir: Path) -> None:
    """Make the tracker's store hold the sweep as its folder records it (``sync_trials``), its
    parent run ended as the record says. Called by the lock holder, so no driver is running:
    a sweep whose record has no end was interrupted."""
    tracker.open_sweep(history.params, history.id)
    sync_trials(history, tracker)
    end = history.end or {"status": "interrupted", "best": None}
    model = best_dir if end["best"] is not None and best_dir.is_dir() else None
    tracker.end_sweep(end["status"], end["best"], model, history)


def tracked(history: SweepHistory) -> list[str]:
    """The trials that have a child run: every one, or with ``mlflow.child_runs: best:N`` the
    N best by the sweep's metric as results.csv ranks them, and the chosen one."""
    setting = history.params.get(CHILD_RUNS, ALL_CHILD_RUNS)
    if setting == ALL_CHILD_RUNS:
        return list(history.trials)
    metric = history.params["search.metric"]
    final = [  # results.csv's final_<metric>: the value at the last epoch
        {"trial_id": i, "final": t.final(metric)} for i, t in history.trials.items()
    ]
    ranked = best_first(pd.DataFrame(final), "final", METRICS[metric]) if final else None
    kept = [] if ranked is None else list(ranked["trial_id"][: int(setting.removeprefix("best:"))])
    chosen = ((history.end or {}).get("best") or {}).get("trial_id")
    if chosen is not None and chosen not in kept:
        kept.append(chosen)
    return kept


def sync_trials(history: SweepHistory, tracker: SweepTracker) -> None:
    """Give the store the runs of the tracked trials and the refits, writing only what it
    lacks, and delete the runs of the trials it should not hold: withdrawn by a resume, voided
    by a fresh start, or out of mlflow.child_runs' best N."""
    ids = tracked(history)
    tracker.withdraw(set(tracker.trials) - set(ids) - set(history.refits))
    new = []  # the runs the store lacks: written whole, together (sweeps.tracking.bulk)
    for trial_id, trial in [*((i, history.trials[i]) for i in ids), *history.refits.items()]:
        if trial.end is not None and tracker.ended.get(trial_id) == trial.end["outcome"]:
            continue  # ended in the store as in the folder: its curves were logged before
        name = run_name(trial.params) if trial.source is None else refit_name(trial.source)
        if trial_id not in tracker.trials:
            write = {"config": trial.config, "name": name, "new_tags": refit_tags(trial.source)}
            new.append((trial_id, write | {"results": trial.results, "end": trial.end}))
            continue
        tracker.ensure_trial(trial_id, trial.config, name, refit_tags(trial.source))
        tracker.write_trial(trial_id, results=trial.results, end=trial.end)
    tracker.write_trials(new)
    tracker.save_state()


@dataclass(frozen=True)
class Synced:
    """What ``sweep sync`` did: the store it copied the sweep into, its runs there, and how
    many runs and epochs that store lacked."""

    uri: str
    experiment: str
    parent: str  # its parent run's id
    trials: int
    refits: int
    created: int
    logged: int


def sync_folder(name: str, storage: str | Path, tracking_uri: str | None) -> Synced:
    """``sweep sync``: copy the sweep in ``storage/name`` into a store (by default its own)."""
    files = SweepFolder.of(storage, name)
    doc = load_saved(name, storage)
    if not files.history.exists():
        raise ConfigError(
            f"{files.history} is missing: sweep sync copies a sweep's record, and sweep {name} "
            "has none"
        )
    if tracking_uri:
        key, configured = "--tracking-uri", tracking_uri
    else:
        key, configured = "mlflow.tracking_uri", (doc.get("mlflow") or {}).get("tracking_uri")
    uri = usable_store(configured, Path.cwd(), key, recorded_store(files.state))
    lock = SweepLock(files)
    lock.take()
    try:
        history = HistoryFile(files.history).read(name)
        tracker = SweepTracker(uri, history.experiment)
        sync(history, tracker, files.best())
    finally:
        lock.release()
    trials, refits = len(history.trials), len(history.refits)
    return Synced(
        uri, history.experiment, tracker.parent, trials, refits, tracker.created, tracker.logged
    )
