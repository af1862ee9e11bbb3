"""`sweep report`: one self-contained HTML page (and its PNG figures) that shows a sweep.

It answers, without reading a table: which configuration was chosen and why, how the learning
rate and lambda trade fit for validation accuracy, what ASHA stopped and when, which
hyperparameters matter, and what the sweep cost. It reads the sweep's folder (sweep.yaml,
results.csv, the per-epoch curves of its record) and its MLflow runs (links, the parent's
tags and times), writes ``report/index.html`` (figures embedded: it opens from disk, with no
server and no network) beside ``report/*.png``, and files them on the sweep's MLflow parent
run under ``report/``. A store that does not answer is asked once, within seconds: the page is
drawn from the folder alone (it says so, without links) and not filed, said in one line. What
the page shows: sweeps.view.sections.
"""

from __future__ import annotations

import base64
import html
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException

from sweeps.record.history import HistoryFile, SweepHistory
from sweeps.record.layout import DEFAULT_STORAGE, SweepFolder
from sweeps.record.lock import holder
from sweeps.record.outcomes import CHOOSABLE, RUNNING
from sweeps.record.results import best_first
from sweeps.spec.document import saved_document
from sweeps.spec.sweep import Resources, SweepSpec, saved_spec
from sweeps.tracking import tags as tag
from sweeps.tracking.reader import (
    RunInfo,
    SweepRuns,
    has_report,
    log_report,
    param_value,
    read_runs,
    run_url,
    ui_base,
)
from sweeps.tracking.store import why_failed
from sweeps.tracking.writer import read_state
from sweeps.view import sections
from sweeps.view.status import record_trials
from trainers.config import ConfigError
from trainers.metrics import CURVES, FINAL, curve_points
from trainers.rules import expanded

METRIC_LABELS = {"val_acc": "validation accuracy (fraction)", "val_loss": "validation loss"}


@dataclass
class SweepData:
    """Everything the report shows, read from the folder and MLflow (or built by a test)."""

    spec: SweepSpec
    table: pd.DataFrame  # results.csv's columns: one row per trial
    curves: pd.DataFrame  # trial_id, epoch, and per-epoch metrics (trainers.metrics.CURVES)
    runs: SweepRuns | None = None  # the MLflow runs: links, test results, wall time
    finished: bool = True  # results.csv exists: the sweep ran to its end
    notes: list[str] = field(default_factory=list)  # what could not be read, said on the page
    order: list[str] = field(default_factory=list)  # trial ids in the order they started
    exploits: dict[str, list[dict]] = field(default_factory=dict)  # pbt: each member's
    granted: Resources | None = None  # what each Ray trial got, where the record says
    silent: str | None = None  # why the MLflow store did not answer (then no runs)

    @property
    def resources(self) -> Resources:
        """Each Ray trial's resources: what it got (a local Ray without a GPU runs GPU trials on
        the CPU), else what sweep.yaml asked for."""
        return self.granted or self.spec.resources

    @property
    def metric(self) -> str:
        """The results column the sweep ranks by."""
        return f"final_{self.spec.search.metric}"

    @property
    def metric_label(self) -> str:
        return METRIC_LABELS.get(self.spec.search.metric, self.spec.search.metric)

    @property
    def ranked(self) -> pd.DataFrame:
        """Trials that can be chosen, best first; ties as results.csv ranks them."""
        t = self.table
        ok = t[t["status"].isin(CHOOSABLE) & np.isfinite(t[self.metric].astype(float))]
        return best_first(ok, self.metric, self.spec.search.mode)

    @property
    def chosen(self) -> str | None:
        """The chosen trial: the one results.csv marks ``best``, else the best ranked."""
        if "chosen" in self.table:
            marked = self.table[
                self.table["chosen"].fillna("").str.split().map(lambda c: "best" in c)
            ]
            if len(marked):
                return str(marked.iloc[0]["trial_id"])
        return None if self.ranked.empty else str(self.ranked.iloc[0]["trial_id"])

    def link(self, trial_id: str) -> str:
        """The trial id as HTML, linked to its MLflow run page where the run is known."""
        text = html.escape(trial_id)
        run = self.runs.trials.get(trial_id) if self.runs else None
        if run is None:
            return text
        url = run_url(ui_base(self.runs.tracking_uri), self.runs.experiment_id, run.run_id)
        return f'<a href="{html.escape(url)}">{text}</a>'


# ---------------------------------------------------------------- entry points
def report(
    target: str | Path,
    out: Path | None = None,
    storage: str | Path = DEFAULT_STORAGE,
    tracking_uri: str | None = None,
    log: bool = True,
) -> Path:
    """Read the sweep ``target`` (its folder, or its name under ``storage``), write its report
    into ``out`` (default ``<folder>/report``) and file it on the MLflow parent run; returns the
    page's path. ``tracking_uri`` defaults to the sweep's, resolved as ``sweep run`` does."""
    folder = find_folder(str(target), storage)
    data = load(folder, tracking_uri)
    out = Path(out) if out is not None else folder.report
    page = write_report(data, out)
    if log and data.silent:
        print(
            f"report not filed on the sweep's MLflow run: {data.silent}; file it with "
            f"`sweep report {folder.name}` once the store answers"
        )
    elif log and data.runs is not None:
        try:
            log_report(data.runs.tracking_uri, data.runs.parent.run_id, out)
        except MlflowException as err:
            print(
                f"report not filed on the sweep's MLflow run: {why_failed(err)}; "
                f"`sweep report {folder.name}` tries again"
            )
    return page


def file_report(folder: SweepFolder, tracking_uri: str, parent_id: str) -> None:
    """Give the store ``tracking_uri``, where its parent run ``parent_id`` lacks one, the
    sweep's report (``sweep sync``), drawn anew so that its links point at that store's runs:
    the folder's own report keeps pointing at the store it was made for."""
    if has_report(tracking_uri, parent_id):
        return
    with tempfile.TemporaryDirectory() as out:
        report(folder.root, out=Path(out), tracking_uri=tracking_uri)


def find_folder(target: str, storage: str | Path = DEFAULT_STORAGE) -> SweepFolder:
    """A sweep folder from a path to it, or from its name under ``storage``."""
    as_path = SweepFolder(expanded(target, "sweep").resolve())
    if as_path.config.exists():
        return as_path
    by_name = SweepFolder.of(storage, target)
    if by_name.config.exists():
        return by_name
    raise ConfigError(
        f"no sweep {target}: neither {as_path.config} nor {by_name.config} exists; "
        "pass the sweep's folder, or its name and --storage"
    )


def load(folder: SweepFolder, tracking_uri: str | None = None) -> SweepData:
    """The sweep's config, results (results.csv, else the record's trials so far) and curves."""
    from sweeps.tracking.uri import resolve_tracking_uri

    spec = saved_spec(saved_document(folder), folder.config)
    state = read_state(folder.state)
    recorded = state.get("tracking_uri")
    uri = tracking_uri or resolve_tracking_uri(spec.tracking_uri, Path.cwd(), recorded=recorded)
    history = HistoryFile(folder.history).read(spec.name)
    sweep_id = history.id if folder.history.exists() else None
    silent, runs = read_runs(uri, spec.name, state.get("parent"), sweep_id=sweep_id)
    if silent:
        notes = [f"{silent[0].upper()}{silent[1:]}: drawn from the sweep's folder, no links."]
    elif runs is None:
        notes = [f"The MLflow store {uri} holds no runs of this sweep: no links."]
    else:
        notes = []
    finished = folder.results.exists()
    if finished:
        table = pd.read_csv(folder.results)
        table["error"] = table["error"].fillna("")
    elif history.trials:  # running or interrupted: the record holds every trial so far
        trials = record_trials(history, state.get("trials", {}), live=_held(folder))
        table = table_from_runs(trials, list(spec.space))
    elif runs is not None:  # a folder without a record: MLflow's runs
        table = table_from_runs(runs.trials, list(spec.space))
    else:
        raise ConfigError(
            f"sweep {spec.name} has no {folder.results.name} and no trial in its record yet"
            + (f" ({silent})" if silent else "")
        )
    data = SweepData(spec, table, record_curves(history), runs, finished, notes, silent=silent)
    data.order = list(history.trials)
    data.exploits = {i: t.exploits for i, t in history.trials.items() if t.exploits}
    if "resources.cpu" in history.params:
        got = history.params
        data.granted = Resources(cpu=got["resources.cpu"], gpu=got["resources.gpu"])
    return data


def _held(folder: SweepFolder) -> bool:
    """A driver holds the sweep's lock: its trials that have not ended are running."""
    try:
        return holder(folder) is not None
    except OSError:  # no locks here: they read as interrupted
        return False


def table_from_runs(trials: dict[str, RunInfo], keys: list[str]) -> pd.DataFrame:
    """results.csv's columns from the trials as runs (the record's, or MLflow's child runs),
    for a sweep still running or interrupted."""
    rows = []
    for trial_id, run in trials.items():
        status = RUNNING if run.status == "RUNNING" else run.tags.get(tag.STATUS, "")
        row: dict[str, Any] = {"trial_id": trial_id, "status": status}
        row |= {k: param_value(run.params.get(k)) for k in keys}
        row["epochs_run"] = int(run.tags.get(tag.EPOCHS_RUN, 0) or 0)
        row |= {f"final_{k}": run.metrics.get(k, math.nan) for k in FINAL}
        row["error"] = run.tags.get(tag.ERROR, "").split("\n")[0]
        rows.append(row)
    columns = ["trial_id", "status", *keys, "epochs_run", *(f"final_{k}" for k in FINAL), "error"]
    return pd.DataFrame(rows, columns=columns)


def record_curves(history: SweepHistory) -> pd.DataFrame:
    """Every trial's per-epoch curves from the sweep folder's record: the points MLflow gets
    (trainers.metrics.curve_points). The record has every epoch as soon as it is reported
    (MLflow's copy of a running trial trails it by up to 30 s), and it is read in one pass,
    where MLflow answers a request per run and key (seconds for a thousand trials)."""
    rows = [
        {"trial_id": trial_id, "epoch": int(m["epoch"]), **points}
        for trial_id, trial in history.trials.items()
        for m in trial.results
        if (points := curve_points(m))
    ]
    frame = pd.DataFrame(rows)
    return frame.reindex(columns=list(dict.fromkeys(["trial_id", "epoch", *CURVES, *frame])))


# ---------------------------------------------------------------- the page
def write_report(data: SweepData, out: Path) -> Path:
    """Write the figures (PNG) and the page (figures embedded) into ``out``; returns the page."""
    out.mkdir(parents=True, exist_ok=True)
    if (out / "index.html").exists():  # an earlier report: drop figures this one may not draw
        for old in out.glob("*.png"):
            old.unlink()
    parts = []
    for sec in sections.sections(data):
        parts.append(f"<section><h2>{html.escape(sec.title)}</h2>{sec.html}")
        for shown in sec.figures:
            path = out / f"{shown.stem}.png"
            shown.figure.savefig(path, dpi=100)
            encoded = base64.b64encode(path.read_bytes()).decode()
            caption = html.escape(shown.caption)
            parts.append(
                f"<figure><img src='data:image/png;base64,{encoded}' alt='{caption}' "
                f"data-file='{path.name}'><figcaption>{caption}</figcaption></figure>"
            )
        parts.append("</section>")
    spec = data.spec
    state = "finished" if data.finished else "<b>not finished</b>: the best so far"
    header = (
        f"<h1>Sweep {html.escape(spec.name)}</h1><p class='meta'>{spec.search.type} search, "
        f"{len(data.table)} of {spec.num_trials()} trials recorded, {state}; ranked by "
        f"{html.escape(data.metric_label)} ({spec.search.mode}); written "
        f"{time.strftime('%Y-%m-%d %H:%M')}</p>"
    )
    page = out / "index.html"
    title = html.escape(f"Sweep {spec.name}")
    page.write_text(PAGE.format(title=title, body=header + "".join(parts)))
    return page


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1250px; margin: 2em auto;
       padding: 0 1em; color: #222; }}
h1 {{ margin-bottom: 0.2em; }} .meta, .note, figcaption {{ color: #555; font-size: 0.92em; }}
section {{ border-top: 1px solid #ddd; margin-top: 2em; }}
figure {{ margin: 1.2em 0; }} img {{ max-width: 100%; height: auto; }}
table {{ border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }}
td, th {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }}
th {{ background: #f3f3f3; }} .alarm {{ color: #a00; font-weight: bold; }}
</style></head>
<body>{body}</body></html>
"""
