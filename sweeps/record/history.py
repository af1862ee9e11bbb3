"""The sweep folder's own record of a sweep (``history.jsonl``), from which MLflow is a copy.

The driver appends one JSON line per event, before it writes the same to MLflow: the sweep's
start (its id, MLflow experiment and params), each trial's start (sampled params, full
config), every reported epoch, each trial's end, the trials a resume withdraws, each refit of
a chosen config on train+validation (its start, epochs and end, as a trial's), the sweep's end
(status, best).
Reading folds the lines into the sweep's state now: what ``sweep sync`` copies into a store
and what results.csv is made from. One process appends (the lock holder), a whole line per
write; a last line cut short by a kill is dropped, and cut off before the next append; a write
that fails (a full disk) is taken back whole.

Why our own file rather than Ray's trial folders: Ray's result.json holds what a trial
reported, but not how it ended (Ray marks every trial TERMINATED after a Ctrl-C), not the
config each run was logged with, and not the sweep's end; its layout is Ray's to change.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweeps.spec.space import plain
from trainers.config import ConfigError
from trainers.metrics import CURVES, PBT_CURVES

RESULT_KEYS = ("epoch", "diverged", *CURVES, *PBT_CURVES)  # what the record keeps of an epoch
END_KEYS = ("outcome", "epochs_run", "error")  # a trial's end; a PBT member's adds "exploits"


@dataclass
class TrialHistory:
    params: dict[str, Any]  # the sampled values of the searched keys
    config: dict[str, Any]  # the full config, flat dotted keys
    results: list[dict[str, Any]] = field(default_factory=list)  # epochs ascending, no repeats
    end: dict[str, Any] | None = None  # {"outcome", "epochs_run", "error"}, once it ended
    source: str | None = None  # a refit: the trial whose config it retrains
    exploits: list[dict[str, Any]] = field(default_factory=list)  # PBT: {epoch, source, params}

    @property
    def last_epoch(self) -> int:
        return int(self.results[-1]["epoch"]) if self.results else 0

    def final(self, metric: str) -> float:
        """The metric at the last epoch, as results.csv's final_<metric> (NaN before any)."""
        return self.results[-1].get(metric, math.nan) if self.results else math.nan

    @property
    def last_finite(self) -> dict[str, Any]:
        """The last epoch that was not diverged ({} if none): its curves are the run's latest
        metrics (a diverged epoch logs no point)."""
        return next((r for r in reversed(self.results) if not r.get("diverged")), {})


@dataclass
class SweepHistory:
    id: str  # tags the sweep's MLflow parent run (sweep.id), so any store's copy is found
    experiment: str  # the MLflow experiment: the sweep's name when it started, kept if moved
    params: dict[str, Any] = field(default_factory=dict)
    trials: dict[str, TrialHistory] = field(default_factory=dict)
    refits: dict[str, TrialHistory] = field(default_factory=dict)  # refit id -> its record
    end: dict[str, Any] | None = None  # {"status", "best"}, once it ended

    @classmethod
    def new(cls, experiment: str) -> SweepHistory:
        return cls(id=uuid.uuid4().hex, experiment=experiment)

    @property
    def started(self) -> bool:
        return bool(self.params) or bool(self.trials)

    @property
    def completed(self) -> bool:
        """The sweep ended with a best config: a resume has nothing left to do."""
        return self.end is not None and self.end["status"] == "completed"

    def finished(self, num_trials: int) -> bool:
        """Every trial of the sweep has run and ended."""
        ended = [t for t in self.trials.values() if t.end is not None]
        return len(ended) == len(self.trials) and len(ended) >= num_trials

    def apply(self, event: dict[str, Any]) -> None:
        """Fold one event into the state."""
        kind = event["event"]
        if kind == "sweep_started":
            self.params |= event["params"]
            self.end = None
            if event["fresh"]:  # a new Ray experiment: trials of an aborted first try are void
                self.trials, self.refits = {}, {}
        elif kind == "sweep_ended":
            self.end = {"status": event["status"], "best": event["best"]}
        elif kind == "trial_started":
            trial = self.trials.setdefault(
                event["trial"], TrialHistory(event["params"], event["config"])
            )
            trial.end = None  # a retried trial runs again
        elif kind == "refit_started":
            new = TrialHistory(event["params"], event["config"], source=event["source"])
            refit = self.refits.setdefault(event["refit"], new)
            refit.end = None  # a refit cut short by a kill runs again
        elif kind in ("result", "refit_result"):
            trial = self._run(event)
            if int(event["metrics"]["epoch"]) > trial.last_epoch:  # replays after a restore
                trial.results.append(event["metrics"])
        elif kind in ("trial_ended", "refit_ended"):
            self._run(event).end = {k: event[k] for k in END_KEYS}
            if event.get("exploits"):
                self._run(event).end["exploits"] = event["exploits"]
        elif kind == "trials_withdrawn":  # begun after Ray's last snapshot: asked again
            for trial_id in event["trials"]:
                self.trials.pop(trial_id, None)
        elif kind == "exploit":  # PBT: the trial took another's weights, then explored
            trial = self.trials[event["trial"]]
            trial.exploits = [e for e in trial.exploits if e["epoch"] != event["epoch"]]
            trial.exploits.append({k: event[k] for k in ("epoch", "source", "params")})
        else:
            raise ValueError(f"unknown event {kind!r}")

    def _run(self, event: dict[str, Any]) -> TrialHistory:
        """The trial, or the refit, an event is about."""
        return self.refits[event["refit"]] if "refit" in event else self.trials[event["trial"]]


class HistoryFile:
    """``history.jsonl``: read it whole, append events one line each."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._tail_checked = False

    def read(self, experiment: str) -> SweepHistory:
        """The folded state; a new sweep (a fresh id, ``experiment``) when there is no file."""
        if not self.path.exists():
            return SweepHistory.new(experiment)
        lines = self.path.read_bytes().split(b"\n")
        history = None
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                event = json.loads(line)
                if history is None:
                    history = SweepHistory(id=event["id"], experiment=event["experiment"])
                history.apply(event)
            except (ValueError, KeyError, TypeError):
                if number == len(lines):  # cut short by a kill mid-write: dropped
                    break
                raise ConfigError(
                    f"{self.path}: line {number} is damaged; restore the file from a backup "
                    "or start the sweep again under a new name"
                ) from None
        return history or SweepHistory.new(experiment)

    def append(self, *events: dict[str, Any]) -> None:
        """Events a line each, in one write (a kill cuts at most the last line short)."""
        if not self._tail_checked:
            self._cut_partial_line()
            self._tail_checked = True
        lines = "".join(json.dumps(e, separators=(",", ":"), default=_plain) + "\n" for e in events)
        size = self.path.stat().st_size if self.path.exists() else 0
        try:
            with open(self.path, "ab") as f:
                f.write(lines.encode())
        except OSError:  # a full disk: the events are not recorded, not even in part
            if self.path.exists():
                os.truncate(self.path, size)
            raise

    def _cut_partial_line(self) -> None:
        """Drop a last line left without its newline by a kill, so appends start clean."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        data = self.path.read_bytes()
        if not data.endswith(b"\n"):
            os.truncate(self.path, data.rfind(b"\n") + 1)


def _plain(value: Any) -> Any:
    """json's hook for a value it cannot write: a numpy scalar (Ray samples some) as its Python
    value (``plain``); anything else is refused."""
    if (converted := plain(value)) is value:
        raise TypeError(f"{type(value).__name__} is not JSON serializable")
    return converted
