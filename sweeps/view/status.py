"""`sweep status [NAME]`: where each sweep stands, from its folder and its MLflow parent run.

The trials come from the folder's record (history.jsonl), which holds every one of them, also
those that ``mlflow.child_runs: best:N`` gives no run, and reads 10,000 trials in about a
second where MLflow's search takes tens; MLflow is asked for the parent run alone. How a
sweep ended is its record's word (completed, failed, else interrupted), whether or not the
store has the sweep or answers (said in one line). A folder without a record is read from its
MLflow runs.

It starts nothing and needs neither Ray nor the data, so it answers from a login node while the
sweep runs elsewhere as a SLURM job; where the folder holds a job's log (``slurm-<id>.out``) it
asks SLURM (squeue, else sacct) for that job's state. An open MLflow run says only that the
sweep has not ended: it runs while a driver holds the folder's lock (sweeps.record.lock, which the
kernel drops however the driver dies) or its SLURM job is queued or running, and is
interrupted otherwise, since its record's last write.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from sweeps.record.history import HistoryFile, SweepHistory
from sweeps.record.layout import DEFAULT_STORAGE, SweepFolder
from sweeps.record.lock import holder
from sweeps.record.naming import run_name
from sweeps.record.outcomes import RUNNING, Outcome
from sweeps.record.results import rank_order
from sweeps.spec.document import saved_document
from sweeps.spec.sweep import METRICS, Search, sweep_spec
from sweeps.tracking import tags as tag
from sweeps.tracking.reader import RunInfo, SweepRuns, param_value, read_runs
from sweeps.tracking.writer import end_tags, read_state
from trainers.config import ConfigError
from trainers.metrics import curve_points
from trainers.rules import expanded

ENDED = tuple(o for o in Outcome if o is not Outcome.INTERRUPTED)  # final: not to be resumed
OUTCOMES = (RUNNING, *Outcome)
SLURM_LOG = re.compile(r"^slurm-(\d+)\.out$")
SLURM_LIVE = (
    "PENDING",
    "RUNNING",
    "CONFIGURING",
    "COMPLETING",
    "REQUEUED",
    "RESIZING",
    "SUSPENDED",
)
LAST = 5  # trials in the detail's "last trials"


@dataclass
class Status:
    """One sweep's standing."""

    name: str
    folder: SweepFolder
    state: str  # running, interrupted, completed, failed, not started, unknown
    planned: int | None
    metric: str
    mode: str
    space: list[str]
    runs: SweepRuns | None = None  # the MLflow parent run (and, without a record, the trials)
    trials: dict[str, RunInfo] = field(default_factory=dict)  # from the record, else MLflow
    slurm: str | None = None  # "job 123: RUNNING"
    driver: str | None = None  # who holds the folder's lock ("pid 12 on node3"), if anyone
    problem: str = ""  # why something could not be read

    @property
    def alive(self) -> bool:
        """A driver holds the folder, or the sweep's SLURM job is queued or running."""
        return self.driver is not None or (
            self.slurm is not None and any(s in self.slurm for s in SLURM_LIVE)
        )

    @property
    def since_ms(self) -> float | None:
        """When the sweep last wrote its record (an interrupted sweep: when it stopped)."""
        if self.folder.history.exists():
            return self.folder.history.stat().st_mtime * 1000
        return self.last_event_ms()

    @property
    def counts(self) -> dict[str, int]:
        """Trials per outcome (running ones included; planned but not started last)."""
        found = {o: sum(_outcome(r) == o for r in self.trials.values()) for o in OUTCOMES}
        if self.planned is not None:
            found["not started"] = max(0, self.planned - len(self.trials))
        return {k: v for k, v in found.items() if v}

    @property
    def ended(self) -> int:
        return sum(n for o, n in self.counts.items() if o in ENDED)

    @property
    def best(self) -> tuple[str, RunInfo] | None:
        """The best trial so far by its latest metric (diverged and failed ones left out), ties
        broken as results.csv breaks them."""
        scored = [
            (t, r)
            for t, r in self.trials.items()
            if _outcome(r) not in (Outcome.DIVERGED, Outcome.ERROR)
            and math.isfinite(r.metrics.get(self.metric, math.nan))
        ]
        if not scored:
            return None
        values = [r.metrics[self.metric] for _, r in scored]
        return scored[rank_order(values, [t for t, _ in scored], self.mode)[0]]

    def last_event_ms(self) -> int | None:
        times = [self.runs.parent.start_ms] if self.runs else []
        times += [r.end_ms or r.start_ms for r in self.trials.values()]
        return max((t for t in times if t), default=None)


def _outcome(run: RunInfo) -> str:
    return RUNNING if run.status == "RUNNING" else run.tags.get(tag.STATUS, "unknown")


# ---------------------------------------------------------------- reading
def sweep_folders(storage: str | Path) -> list[SweepFolder]:
    """Every sweep under ``storage`` (a folder holding a sweep.yaml), by name."""
    root = expanded(storage, "--storage")
    if not root.is_dir():
        return []
    folders = (SweepFolder(p.resolve()) for p in sorted(root.iterdir()))
    return [f for f in folders if f.config.exists()]


def status_of(folder: SweepFolder, tracking_uri: str | None = None) -> Status:
    """A sweep's standing from its folder, its MLflow runs and (if any) its SLURM job. A
    damaged sweep.yaml or state file is a ConfigError naming it."""
    from sweeps.tracking.uri import resolve_tracking_uri

    doc = saved_document(folder)
    state = read_state(folder.state)
    st = Status(
        name=folder.name,
        folder=folder,
        state="unknown",
        planned=None,
        metric=Search.metric,
        mode=METRICS[Search.metric],
        space=[],
        slurm=slurm_state(folder),
    )
    try:
        st.driver = holder(folder)
    except OSError as err:  # no locks here: the record and SLURM say what they can
        st.driver = f"unknown ({err.strerror})"
    try:
        spec = sweep_spec(doc)
    except ConfigError as err:  # the record and MLflow say what they can
        st.problem, configured = f"{folder.config.name}: {err}", None
    else:
        st.planned, st.space, configured = spec.num_trials(), list(spec.space), spec.tracking_uri
        st.metric, st.mode = spec.search.metric, spec.search.mode
    uri = tracking_uri or resolve_tracking_uri(
        configured, Path.cwd(), recorded=state.get("tracking_uri")
    )
    history = HistoryFile(folder.history).read(folder.name) if folder.history.exists() else None
    sweep_id = None if history is None else history.id  # (without a record: its trials too)
    name, parent = doc.get("name", folder.name), state.get("parent")
    silent, st.runs = read_runs(uri, name, parent, children=history is None, sweep_id=sweep_id)
    if silent:
        st.problem = f"{silent}; the state is the folder's"
    st.state = _state(st, folder, history)
    if history is not None:  # (with or without its MLflow runs)
        st.trials = record_trials(history, state.get("trials", {}), st.state == "running")
    elif st.runs is not None:
        st.trials = st.runs.trials
    return st


def record_trials(history: SweepHistory, run_ids: dict[str, str], live: bool) -> dict[str, RunInfo]:
    """The record's trials as their runs would show them (``run_ids``: the state file's):
    status and outcome, the config as params, the last finite epoch's curves as metrics; the
    first and last epochs' times stand for the start and the end. A trial that had not ended
    when its sweep stopped (not ``live``) is interrupted."""
    trials = {}
    for trial_id, t in history.trials.items():
        times = [r["time"] for r in t.results if "time" in r]
        end = t.end
        if end is None and not live:
            end = {"outcome": Outcome.INTERRUPTED, "epochs_run": len(t.results)}
        trials[trial_id] = RunInfo(
            run_ids.get(trial_id, ""),
            Outcome.of(end["outcome"]).run_status if end else "RUNNING",
            times[0] if times else 0,
            times[-1] if end and times else None,
            end_tags(**end) if end else {},
            {k: str(v) for k, v in t.config.items()},
            curve_points(t.last_finite),
        )
    return trials


def _state(st: Status, folder: SweepFolder, history: SweepHistory | None) -> str:
    """The record's word: how the sweep ended (completed, failed, interrupted), else
    interrupted (killed), unless a driver runs it now. A folder without a record (made by an
    older version, or whose sweep has not begun): its MLflow parent run's, else its files'."""
    if history is not None and history.started:
        end = history.end["status"] if history.end else "interrupted"
        return "running" if end == "interrupted" and st.alive else end
    if st.runs is None:  # Ray starting (no MLflow run yet), or a store without the sweep
        if st.alive:
            return "running"
        return "completed" if folder.results.exists() else "not started"
    parent = st.runs.parent
    if parent.status == "RUNNING":  # not ended: killed hard, unless a driver still runs it
        return "running" if st.alive else "interrupted"
    state = parent.tags.get(tag.STATUS, "") or "interrupted"
    return "running" if state == "interrupted" and st.alive else state  # resumed meanwhile


def slurm_state(folder: SweepFolder) -> str | None:
    """``job ID: STATE`` of the sweep's latest SLURM job (from its ``slurm-ID.out`` log), or
    None when it never ran under SLURM; ``unknown`` where squeue and sacct cannot say."""
    ids = [
        int(m.group(1)) for p in folder.root.glob("slurm-*.out") if (m := SLURM_LOG.match(p.name))
    ]
    if not ids:
        return None
    job = str(max(ids))
    for cmd in (
        ["squeue", "-h", "-j", job, "-o", "%T"],
        ["sacct", "-n", "-X", "-j", job, "-o", "State"],
    ):
        if shutil.which(cmd[0]) is None:
            continue
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=15)
        except (OSError, subprocess.TimeoutExpired):
            continue
        found = done.stdout.strip().splitlines()
        if done.returncode == 0 and found and found[0].strip():
            return f"job {job}: {found[0].strip()}"
    return f"job {job}: unknown"


# ---------------------------------------------------------------- printing
def format_overview(statuses: list[Status]) -> str:
    """One line per sweep: state, progress, best metric so far, SLURM job."""
    head = ("SWEEP", "STATE", "PROGRESS", "BEST", "SLURM")
    rows = [head]
    for s in statuses:
        best = s.best
        planned = "?" if s.planned is None else str(s.planned)
        rows.append(
            (
                s.name,
                s.state,
                f"{s.ended}/{planned}",
                f"{s.metric} {best[1].metrics[s.metric]:.4f}" if best else "-",
                s.slurm or "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines += [f"{s.name}: {s.problem}" for s in statuses if s.problem]
    if any(s.state == "interrupted" for s in statuses):
        lines.append("interrupted: no driver; `sweep status NAME` says since when and how to go on")
    return "\n".join(lines)


def format_detail(s: Status) -> str:
    """One sweep: state, counts per outcome, best config so far, the last trials."""
    now_ms = time.time() * 1000
    planned = "?" if s.planned is None else s.planned
    lines = [
        f"sweep {s.name}: {s.state}, {s.ended}/{planned} trials ended",
        f"  folder: {s.folder.root}",
    ]
    if s.slurm:
        lines.append(f"  SLURM: {s.slurm}")
    if s.driver and s.state == "running":
        lines.append(f"  driver: {s.driver}")
    if s.state == "interrupted":
        since = s.since_ms
        if since:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since / 1000))
            lines.append(f"  since: {stamp} ({_ago((now_ms - since) / 1000)} ago), no driver")
        lines.append(f"  continue with: {resume_command(s)}")
    if s.problem:
        lines.append(f"  problem: {s.problem}")
    if s.runs is None and not s.trials:
        return "\n".join(lines)
    last = s.last_event_ms()
    if last:
        lines.append(f"  last trial event: {_ago((now_ms - last) / 1000)} ago")
    lines.append("  trials: " + ", ".join(f"{n} {o}" for o, n in s.counts.items()))
    best = s.best
    if best:
        trial, run = best
        lines.append(
            f"  best so far: {s.metric} {run.metrics[s.metric]:.4f}, trial {trial} "
            f"({run_name(_params(run, s.space))}, {_outcome(run)})"
        )
    recent = sorted(s.trials.items(), key=lambda tr: tr[1].end_ms or now_ms, reverse=True)
    if recent:
        lines.append(f"  last {min(LAST, len(recent))} trials:")
    for trial, run in recent[:LAST]:
        value = run.metrics.get(s.metric, math.nan)
        epochs = run.tags.get(tag.EPOCHS_RUN, "-")
        lines.append(
            f"    {trial}  {_outcome(run):<13} epochs {epochs:>3}  {s.metric} {value:.4f}  "
            f"{run_name(_params(run, s.space))}"
        )
    report = s.folder.report / "index.html"
    if report.exists():
        lines.append(f"  report: {report}")
    return "\n".join(lines)


def resume_command(s: Status) -> str:
    """How to go on with an interrupted sweep: where it ran."""
    if s.slurm:  # a job's: resumed as a job again
        return "the `resume:` command `sweep submit` printed (its options plus --resume)"
    storage = s.folder.root.parent
    if storage == Path(DEFAULT_STORAGE).resolve():
        return f"sweep resume {s.name}"
    return f"sweep resume {s.name} --storage {storage}"


def _params(run: RunInfo, keys: list[str]) -> dict[str, object]:
    return {k: param_value(run.params[k]) for k in keys if k in run.params}


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def listed_status(folder: SweepFolder, tracking_uri: str | None) -> Status:
    """``status_of`` for the overview: a damaged folder is one sweep's problem line there, not
    the end of the list (``sweep status NAME`` refuses it)."""
    try:
        return status_of(folder, tracking_uri)
    except ConfigError as err:
        metric = Search.metric
        return Status(
            folder.name, folder, "unknown", None, metric, METRICS[metric], [], problem=str(err)
        )


def show(
    name: str | None, storage: str | Path = DEFAULT_STORAGE, tracking_uri: str | None = None
) -> str:
    """What `sweep status` prints: every sweep under ``storage``, or one sweep's detail."""
    # A tracking server that is down must not hold the terminal through MLflow's retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    if name is None:
        folders = sweep_folders(storage)
        if not folders:
            return f"no sweeps under {expanded(storage, '--storage')}/"
        return format_overview([listed_status(f, tracking_uri) for f in folders])
    from sweeps.view.report import find_folder

    return format_detail(status_of(find_folder(name, storage), tracking_uri))
