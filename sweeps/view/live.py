"""The live view of a running sweep: what runs, what ended and how, the best so far, time left.

Fed by the sweep driver's trial events (``started``, ``result``, ``ended``). On a terminal it
redraws one panel in place (rich); elsewhere (CI, a SLURM log) it writes plain lines: one per
trial that ends, and a summary every ``summary_every`` seconds, so a log stays short and greppable.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from sweeps.record.naming import run_name
from sweeps.record.outcomes import Outcome
from sweeps.record.results import rank_order

WORDS = {  # outcome -> how the view says it
    Outcome.COMPLETED: "completed",
    Outcome.EARLY_STOPPED: "stopped early",
    Outcome.DIVERGED: "diverged",
    Outcome.ERROR: "failed",
    Outcome.INTERRUPTED: "interrupted",
}
STYLES = {
    Outcome.COMPLETED: "green",
    Outcome.EARLY_STOPPED: "cyan",
    Outcome.DIVERGED: "red",
    Outcome.ERROR: "bold red",
    Outcome.INTERRUPTED: "yellow",
}
SHOWN_RUNNING = 12  # running trials listed; more are counted
SHOWN_ENDED = 5  # latest ended trials listed


class LiveView:
    """Progress of one sweep, from its trial events; a context manager that starts and stops
    the display. Safe to feed from one thread while rich redraws from another."""

    def __init__(
        self,
        planned: int,
        metric: str = "val_acc",
        mode: str = "max",
        name: str = "",
        stream: TextIO | None = None,
        interactive: bool | None = None,
        summary_every: float = 30.0,
        prior: dict[str, tuple[str, float, dict[str, Any]]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``prior``: the trials that ended before a resume, by id: outcome, final value of
        the metric, searched values (they count as ended and may be the best)."""
        self.planned, self.metric, self.mode, self.name = planned, metric, mode, name
        self.stream = stream if stream is not None else sys.stdout
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self.summary_every, self.clock = summary_every, clock
        self.counts = dict.fromkeys(Outcome, 0)  # ended since this driver started (the ETA's rate)
        self.prior = {i: p[0] for i, p in (prior or {}).items()}  # id -> outcome: progress
        self.running: dict[str, dict[str, Any]] = {}  # trial id -> params, epoch, value
        self.recent: list[str] = []  # lines about the latest ended trials
        self.choosable = {  # trial id -> value, params: the ended trials that may be chosen
            i: (value, params)
            for i, (outcome, value, params) in (prior or {}).items()
            if Outcome.of(outcome).choosable
        }
        self.t0 = clock()
        self.last_summary = self.t0
        self.lock = threading.Lock()
        self.live: Live | None = None

    # ---------------------------------------------------------------- events
    def started(self, trial_id: str, params: dict[str, Any]) -> None:
        """A trial started (or resumed), with its searched values."""
        with self.lock:
            self.running[trial_id] = {"params": dict(params), "epoch": 0, "value": math.nan}
        self._tick()

    def result(self, trial_id: str, metrics: dict[str, Any]) -> None:
        """A trial reported an epoch."""
        with self.lock:
            trial = self.running.setdefault(trial_id, {"params": {}, "epoch": 0, "value": math.nan})
            trial["epoch"] = int(metrics.get("epoch", trial["epoch"]))
            trial["value"] = _number(metrics.get(self.metric))
        self._tick()

    def ended(
        self,
        trial_id: str,
        outcome: str,
        metrics: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        """A trial ended: completed, early_stopped, diverged, error (``error``: its one line)
        or interrupted."""
        outcome = Outcome.of(outcome)
        metrics = metrics or {}
        with self.lock:
            trial = self.running.pop(trial_id, {"params": {}, "epoch": 0, "value": math.nan})
            self.prior.pop(trial_id, None)  # restored by Ray from before its end: ends again
            self.counts[outcome] += 1
            value = _number(metrics.get(self.metric, trial["value"]))
            epochs = int(metrics.get("epoch", trial["epoch"]))
            if outcome.choosable:
                self.choosable[trial_id] = (value, trial["params"])
            else:  # (it may have ended otherwise before a resume)
                self.choosable.pop(trial_id, None)
            score = "" if math.isnan(value) else f", {self.metric} {value:.4f}"
            line = (
                f"{trial_id} {WORDS[outcome]} after {epochs} epoch{'s' * (epochs != 1)}"
                f"{score}  {run_name(trial['params'])}{f': {error}' if error else ''}"
            )
            self.recent = [*self.recent, line][-SHOWN_ENDED:]
            done = self.done
        if not self.interactive:
            self._write(f"[{done:>{len(str(self.planned))}}/{self.planned}] {line}")
        self._tick()

    def withdrawn(self, trial_ids: list[str]) -> None:
        """Trials that a resumed Ray runs again (sweeps.engine.recorder.withdraw): those that
        had ended no longer count as ended."""
        with self.lock:
            for trial_id in trial_ids:
                self.prior.pop(trial_id, None)
                self.choosable.pop(trial_id, None)
        self._tick()

    # ---------------------------------------------------------------- display
    def start(self) -> LiveView:
        if self.interactive and self.live is None:
            console = Console(file=self.stream, force_terminal=True)
            self.live = Live(console=console, get_renderable=self.render, refresh_per_second=4)
            self.live.start()
        return self

    def stop(self) -> None:
        """Stop redrawing (the last panel stays); plain output ends with a summary line."""
        if self.live is not None:
            self.live.refresh()
            self.live.stop()
            self.live = None
        elif not self.interactive:
            self._write(self.summary())

    def __enter__(self) -> LiveView:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def done(self) -> int:
        return sum(self.counts.values()) + len(self.prior)

    def eta(self) -> float | None:
        """Seconds left at the rate trials ended since this driver started; None before the
        first ends."""
        ended_now = sum(self.counts.values())
        if ended_now == 0:
            return None
        rate = ended_now / max(self.clock() - self.t0, 1e-9)
        return max(0, self.planned - self.done) / rate

    def _counts(self) -> dict[Outcome, int]:
        """Trials ended per outcome, before a resume and since."""
        counts = {**self.counts}
        for outcome in self.prior.values():
            counts[Outcome.of(outcome)] += 1
        return counts

    def summary(self) -> str:
        """One line: progress, outcomes, best so far, elapsed and left."""
        with self.lock:
            counts = self._counts()
            parts = [f"{self.done}/{self.planned} ended", f"{len(self.running)} running"]
            parts += [f"{n} {WORDS[o]}" for o, n in counts.items() if n]
            best = self._best_text()
        head = f"sweep {self.name}: " if self.name else ""
        return f"{head}{', '.join(parts)}; {best}; {self._times()}"

    def render(self) -> Group:
        """The panel rich redraws: header, outcomes, best, running trials, latest ended."""
        with self.lock:
            counted = self._counts()
            header = Text.assemble(
                (f"sweep {self.name}  " if self.name else "sweep  ", "bold"),
                f"{self.done}/{self.planned} trials ended  ",
                self._times(),
            )
            counts = Text.assemble(
                (f"{len(self.running)} running", "magenta"),
                *[(f"  {counted[o]} {WORDS[o]}", STYLES[o]) for o in Outcome],
            )
            best = Text(self._best_text(), style="bold")
            table = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
            for column in ("running trial", "config", "epoch", self.metric):
                table.add_column(column)
            for trial_id, t in list(self.running.items())[:SHOWN_RUNNING]:
                value = "" if math.isnan(t["value"]) else f"{t['value']:.4f}"
                table.add_row(trial_id, run_name(t["params"]), str(t["epoch"]), value)
            tables = [table] if self.running else []
            more = len(self.running) - SHOWN_RUNNING
            extra = [Text(f"... and {more} more running")] if more > 0 else []
            recent = [Text("latest ended:", style="bold")] if self.recent else []
            recent += [Text("  " + line) for line in self.recent]
        return Group(header, counts, best, *tables, *extra, *recent)

    # ---------------------------------------------------------------- helpers
    def _tick(self) -> None:
        """Plain output: a summary line when ``summary_every`` seconds have passed."""
        if self.interactive:
            return
        now = self.clock()
        if now - self.last_summary >= self.summary_every:
            self.last_summary = now
            self._write(self.summary())

    @property
    def best(self) -> tuple[float, str, dict[str, Any]] | None:
        """(value, trial, params) of the best ended trial so far, ranked as results.csv ranks
        them (ties: the trial drawn first), so the best shown is the one chosen at the end."""
        ids = [i for i, (value, _) in self.choosable.items() if not math.isnan(value)]
        if not ids:
            return None
        first = ids[rank_order([self.choosable[i][0] for i in ids], ids, self.mode)[0]]
        return (self.choosable[first][0], first, self.choosable[first][1])

    def _best_text(self) -> str:
        if (best := self.best) is None:  # (ranked once)
            return f"best {self.metric}: none yet"
        value, trial_id, params = best
        return f"best {self.metric} {value:.4f}: {trial_id} ({run_name(params)})"

    def _times(self) -> str:
        elapsed = self.clock() - self.t0
        eta = self.eta()
        left = (
            "left: estimated after the first trial ends" if eta is None else f"~{_clock(eta)} left"
        )
        return f"elapsed {_clock(elapsed)}, {left}"

    def _write(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _clock(seconds: float) -> str:
    """``1:02:03`` or ``2:03``."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
