"""What the report shows, section by section, from a ``SweepData``.

Each section is some HTML and the figures that go with it; which trials to draw is chosen here
(the best, a spread of learning rates) and the figures are made by sweeps.view.figures.
"""

from __future__ import annotations

import html
import math
import numbers
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from sweeps.record.naming import format_value, run_name, short_key
from sweeps.record.outcomes import Outcome
from sweeps.search.asha import milestones
from sweeps.spec.sweep import MODELLED, STOPS_EARLY
from sweeps.tracking.reader import trials_page_url, ui_base
from sweeps.view import figures as figs
from sweeps.view.importance import importance

if TYPE_CHECKING:
    from sweeps.view.report import SweepData

TOP = 5  # trials in the top-trials curves
SPREAD = 6  # learning rates shown side by side
TABLE_TOP = 10  # rows of the best-trials table


@dataclass
class Shown:
    stem: str  # file name, without .png
    figure: Figure
    caption: str


@dataclass
class Section:
    title: str
    html: str = ""
    figures: list[Shown] = field(default_factory=list)


def sections(data: SweepData) -> list[Section]:
    """The page, top to bottom; a sweep where no trial finished gets words, not empty axes."""
    if data.ranked.empty:
        return [nothing_finished(data), cost(data)]
    return [
        chosen_config(data),
        loss_curves(data),
        versus(data),
        *([progress(data)] if data.spec.search.type in MODELLED else []),
        *([asha(data)] if data.spec.search.type in STOPS_EARLY else []),
        *([pbt_lineage(data)] if data.spec.search.type == "pbt" else []),
        parallel(data),
        importance_section(data),
        cost(data),
        every_trial(data),
    ]


# ---------------------------------------------------------------- which trials, which keys
def top_trials(data: SweepData) -> list[str]:
    return [str(t) for t in data.ranked["trial_id"].head(TOP)]


def lr_spread(data: SweepData) -> list[str]:
    """Up to SPREAD trials across the learning rates tried, low to high: the nearest to evenly
    spaced rates on a log scale (the lowest and highest included), with the chosen trial and
    the lowest-rate diverged one swapped in for their nearest picks."""
    key, t = "train.lr", data.table
    if key not in data.spec.space or key not in t:
        return []
    lr = pd.to_numeric(t[key], errors="coerce")
    rows = t[(t["status"] != Outcome.ERROR) & (lr > 0)]
    if rows.empty:
        return []
    log_lr = np.log10(rows[key].astype(float))
    picked: list[Any] = []  # index labels of rows
    for target in np.linspace(log_lr.min(), log_lr.max(), SPREAD):
        free = log_lr.drop(picked)
        if free.empty:
            break
        picked.append((free - target).abs().idxmin())
    musts = list(rows.index[rows["trial_id"] == data.chosen])
    diverged = rows[rows["status"] == Outcome.DIVERGED]
    if not diverged.empty:
        musts.append(log_lr[diverged.index].idxmin())
    ends = {log_lr.idxmin(), log_lr.idxmax()}
    for must in musts:
        if must not in picked:
            swappable = [i for i in picked if i not in ends and i not in musts] or picked
            nearest = min(swappable, key=lambda i: abs(log_lr[i] - log_lr[must]))
            picked[picked.index(nearest)] = must
    return [str(x) for x in rows.loc[picked].sort_values(key)["trial_id"]]


def rungs(data: SweepData) -> list[int]:
    """ASHA's rungs, then the last epoch, ascending: the epochs every trial reported at."""
    return sorted(milestones(data.spec))


def searched(data: SweepData) -> list[str]:
    """Searched keys that took more than one value: what can explain a difference."""
    return [k for k in data.spec.space if k in data.table and data.table[k].nunique() > 1]


def log_keys(data: SweepData) -> list[str]:
    space = data.spec.space
    return [k for k in searched(data) if figs.is_log_scale(data.table[k], space[k].is_log)]


def numeric(data: SweepData, key: str) -> bool:
    return bool(pd.to_numeric(data.table[key], errors="coerce").notna().all())


def params(row: pd.Series, data: SweepData) -> dict[str, Any]:
    return {k: row[k] for k in data.spec.space if k in row}


# ---------------------------------------------------------------- (1) the chosen configuration
def chosen_config(data: SweepData) -> Section:
    """The chosen configuration and why, its validation and test results, the train/val gap;
    where the loss was searched, the best of each loss side by side."""
    t, chosen, metric = data.table, data.chosen, data.metric
    row = t[t["trial_id"] == chosen].iloc[0]
    others = data.ranked[data.ranked["trial_id"] != chosen]
    best = "highest" if data.spec.search.mode == "max" else "lowest"
    why = (
        f"Trial {data.link(chosen)} (<b>{html.escape(run_name(params(row, data)))}</b>) has the "
        f"{best} final {data.metric_label} of the {len(data.ranked)} trials that ended with "
        f"one: <b>{row[metric]:.4f}</b>"
    )
    if len(others):
        nxt = others.iloc[0]
        why += f" (next: {nxt[metric]:.4f}, trial {data.link(nxt['trial_id'])})"
    said = [why + "."]
    said += [_range_sentence(data, k) for k in ("train.lr", "train.lambda") if k in searched(data)]
    diverged = t[t["status"] == Outcome.DIVERGED]
    if len(diverged) and "train.lr" in t and numeric(data, "train.lr"):
        said.append(
            f"{len(diverged)} trial(s) diverged, all with a learning rate of "
            f"{format_value(float(diverged['train.lr'].min()))} or more."
        )
    if not data.finished:
        said.append("<b>The sweep has not finished</b>: this is the best so far, never tested.")
    rows = [
        ("configuration", run_name(params(row, data))),
        *[(k, format_value(row[k])) for k in data.spec.space],
        ("epochs trained", int(row["epochs_run"])),
        ("validation accuracy", _f(row["final_val_acc"])),
        ("validation loss", _f(row["final_val_loss"])),
        ("test accuracy (its one look at the test split)", _f(row.get("test_acc", math.nan))),
        ("test loss", _f(row.get("test_loss", math.nan))),
        (
            "train − validation accuracy (the gap)",
            _f(row["final_train_acc"] - row["final_val_acc"]),
        ),
        ("validation − train loss", _f(row["final_val_loss"] - row["final_train_loss"])),
    ]
    body = "".join(f"<p>{s}</p>" for s in said) + kv_table(rows)
    if "model.loss" in data.spec.space:
        body += "<h3>The best of each loss: softmax or hinge?</h3>" + per_loss(data)
    if data.runs is not None:
        page = trials_page_url(
            ui_base(data.runs.tracking_uri),
            data.runs.experiment_id,
            data.runs.parent.run_id,
            data.spec.search.metric,
            data.spec.search.mode == "min",
        )
        body += (
            f"<p>All trials in MLflow: <a href='{html.escape(page)}'>the sweep's trials page</a>"
            " (serve it with <code>sweep ui</code>); each trial id links to its run.</p>"
        )
    return Section("The chosen configuration", body + best_table(data))


def _range_sentence(data: SweepData, key: str) -> str:
    top = data.ranked.head(TOP)[key]
    if not numeric(data, key):
        return f"{short_key(key)} among the best {len(top)}: {', '.join(map(str, top))}."
    tried = data.table[key].astype(float)
    return (
        f"The best {len(top)} trials have {figs.label_of(key)} from "
        f"{format_value(float(top.min()))} to {format_value(float(top.max()))} (tried: "
        f"{format_value(float(tried.min()))} to {format_value(float(tried.max()))})."
    )


def per_loss(data: SweepData) -> str:
    """The best of each loss, with its test look (results.csv's test_acc where it had one)."""
    head = ["loss", "trial", "configuration", "val acc", "val loss", "test acc", "test loss"]
    head.append("train − val acc")
    lines = []
    for loss, group in data.ranked.groupby("model.loss", sort=True):
        r = group.iloc[0]
        lines.append(
            [
                html.escape(str(loss)),
                data.link(r["trial_id"]),
                html.escape(run_name(params(r, data))),
                _f(r["final_val_acc"]),
                _f(r["final_val_loss"]),
                _f(r.get("test_acc", math.nan)),
                _f(r.get("test_loss", math.nan)),
                _f(r["final_train_acc"] - r["final_val_acc"]),
            ]
        )
    return table(head, lines)


def best_table(data: SweepData) -> str:
    shown = data.ranked.head(TABLE_TOP)
    return f"<h3>The best {len(shown)} trials</h3>" + trials_table(data, shown, error=False)


def trials_table(data: SweepData, rows: pd.DataFrame, error: bool) -> str:
    keys = list(data.spec.space)
    head = ["trial", "outcome", "epochs", *map(short_key, keys), data.spec.search.metric]
    lines = []
    for _, r in rows.iterrows():
        line = [data.link(r["trial_id"]), html.escape(str(r["status"])), str(r["epochs_run"])]
        line += [html.escape(format_value(r[k])) for k in keys] + [_f(r[data.metric])]
        lines.append(line + ([html.escape(str(r["error"]))] if error else []))
    return table(head + (["error"] if error else []), lines)


def nothing_finished(data: SweepData) -> Section:
    t = data.table
    counts = ", ".join(f"{n} {s}" for s, n in t["status"].value_counts().items())
    errors = t.loc[t["error"].astype(str) != "", "error"]
    first = (
        f" The first error: <code>{html.escape(str(errors.iloc[0]))}</code>." if len(errors) else ""
    )
    text = (
        f"<p class='alarm'>No trial finished: none of the {len(t)} trials ended with a "
        f"{data.metric_label} ({counts}), so there is no chosen configuration and nothing to "
        f"plot.{first}</p><p>Fix the cause and run the sweep again under a new name.</p>"
    )
    return Section("No trial finished", text + trials_table(data, t, error=True))


# ---------------------------------------------------------------- (2) loss curves
def loss_curves(data: SweepData) -> Section:
    """Loss per epoch of the best trials, and of a spread of learning rates side by side."""
    sec = Section("Loss per epoch")
    c = data.curves
    if "train_loss" not in c or c["train_loss"].dropna().empty:
        sec.html = "<p>No trial of this sweep has a finite loss recorded for any epoch.</p>"
        return sec
    by_id = data.table.set_index("trial_id")
    top = [(t, f"{t}: {run_name(params(by_id.loc[t], data))}") for t in top_trials(data)]
    caption = (
        f"Training and validation loss per epoch of the {len(top)} best trials by final "
        f"{data.metric_label} (log scale). A validation loss that turns up while the training "
        "loss still falls is overfitting."
    )
    fig = figs.loss_curves(c, top, f"The {len(top)} best trials")
    sec.figures.append(Shown("loss_top", fig, caption))
    spread = lr_spread(data)
    if not spread:
        sec.html = "<p>The learning rate was not searched: no comparison of rates.</p>"
        return sec
    labels = [(s, _spread_label(by_id.loc[s], data)) for s in spread]
    diverged = (
        " and the lowest rate that diverged"
        if (data.table["status"] == Outcome.DIVERGED).any()
        else ""
    )
    caption = (
        f"{len(spread)} trials across the learning rates tried, lowest to highest, with the "
        f"chosen one{diverged}: too small a rate barely lowers the loss, "
        "a good one lowers it steadily, too large a rate makes it oscillate, and a diverging one "
        "stops where its loss stopped being finite. Each panel has its own loss scale."
    )
    sec.figures.append(Shown("loss_by_lr", figs.lr_panels(c, labels), caption))
    return sec


def _spread_label(row: pd.Series, data: SweepData) -> str:
    rest = {k: v for k, v in params(row, data).items() if k != "train.lr"}
    mark = " (chosen)" if row.name == data.chosen else ""
    return f"lr={format_value(row['train.lr'])}: {row['status']}{mark}\n{run_name(rest)}"


# ---------------------------------------------------------------- (3) metric against lr, lambda
def versus(data: SweepData) -> Section:
    """The metric against learning rate and lambda; a heatmap for a grid over two keys."""
    sec = Section(f"{data.metric_label.capitalize()} against the hyperparameters")
    keys = [k for k in ("train.lr", "train.lambda") if k in searched(data) and numeric(data, k)]
    keys = keys or [k for k in searched(data) if numeric(data, k)][:2]
    group = "model.loss" if "model.loss" in searched(data) else None
    for key in keys:
        log = key in log_keys(data)
        fig = figs.metric_vs(
            data.table, key, data.metric, data.metric_label, log, group, data.chosen
        )
        caption = (
            f"Every trial's final {data.metric_label} against {figs.label_of(key)}"
            f"{' (log axis)' if log else ''}{'; one marker shape per loss' if group else ''}. "
            "Red crosses: diverged (their last finite value); grey crosses on the bottom edge: "
            "failed, with no metric; star: the chosen trial."
        )
        if data.spec.search.type in STOPS_EARLY:
            caption += " Trials ASHA stopped show their value at the epoch they stopped."
        sec.figures.append(Shown(f"metric_vs_{short_key(key)}", fig, caption))
    grid = [k for k, d in data.spec.space.items() if d.is_grid and k in searched(data)]
    if data.spec.search.type == "grid" and len(grid) >= 2:
        x, y = (
            ("train.lr", "train.lambda") if {"train.lr", "train.lambda"} <= set(grid) else grid[:2]
        )
        rest = [short_key(k) for k in grid if k not in (x, y)]
        fig = figs.heatmap(data.table, x, y, data.metric, data.metric_label, data.spec.search.mode)
        caption = (
            f"The grid over {short_key(x)} and {short_key(y)}: the mean final "
            f"{data.metric_label} per cell, over its repeats"
            f"{' and over ' + ', '.join(rest) if rest else ''}; diverged trials left out."
        )
        sec.figures.append(Shown("heatmap", fig, caption))
    if not sec.figures:
        sec.html = "<p>No numeric hyperparameter was searched.</p>"
    return sec


# ---------------------------------------------------------------- (4) ASHA
def asha(data: SweepData) -> Section:
    """Trials per rung, and every trial's curve ending where it was stopped."""
    sec = Section("What ASHA stopped, and when")
    t, s = data.table, data.spec.search
    milestones = rungs(data)
    fig = figs.rung_counts(t["epochs_run"], t["status"] == Outcome.EARLY_STOPPED, milestones)
    caption = (
        f"Of {len(t)} trials, how many trained to each rung (epochs) and how many ASHA stopped "
        f"there (grace period {s.grace_period}, reduction factor {s.reduction_factor})."
    )
    sec.figures.append(Shown("asha_rungs", fig, caption))
    if s.metric in data.curves and data.curves[s.metric].notna().any():
        status = t.set_index("trial_id")["status"]
        fig = figs.stopped_curves(data.curves, status, s.metric, data.metric_label, milestones)
        n = data.curves["trial_id"].nunique()
        thin = " (thin and translucent: there are many)" if n >= figs.CROWD else ""
        caption = (
            f"Every trial's {data.metric_label} per epoch, one line each for all {n} trials"
            f"{thin}, ending where it stopped; a dot marks each end."
        )
        sec.figures.append(Shown("asha_curves", fig, caption))
    return sec


# ---------------------------------------------------------------- adaptive searches
def progress(data: SweepData) -> Section:
    """tpe, bohb: the best value against configurations tried, in the order they were asked."""
    sec = Section("How the search improved")
    values = data.table.set_index("trial_id")[data.metric]
    ordered = [float(values[i]) for i in data.order if i in values.index]
    fig = figs.best_so_far(ordered, data.spec.search.mode, data.metric_label)
    s = data.spec.search
    stopped = " (a stopped configuration: its value at the rung it stopped at)"
    caption = (
        f"Each configuration's final {data.metric_label}, in the order {s.type} asked for it"
        f"{stopped if s.type == 'bohb' else ''}, and the best so far. Optuna's TPE models every "
        "value told before each ask; its first 10 draws are random."
    )
    sec.figures.append(Shown("search_progress", fig, caption))
    return sec


def pbt_lineage(data: SweepData) -> Section:
    """pbt: the members' curves, and which member took whose weights, when."""
    sec = Section("PBT: who copied whom")
    metric, s = data.spec.search.metric, data.spec.search
    if metric not in data.curves:
        sec.html = "<p>No member reported an epoch.</p>"
        return sec
    fig = figs.lineage(data.curves, data.exploits, metric, data.metric_label)
    caption = (
        f"Each member's {data.metric_label} per epoch. Every {s.perturbation_interval} epochs the "
        f"bottom {s.quantile_fraction:g} of the population takes the weights and optimizer state "
        "of a top member (dashed: from the dot on the member it copied) and explores its "
        "hyperparameters; each member's run shows its lr, lambda and momentum per epoch."
    )
    sec.figures.append(Shown("pbt_lineage", fig, caption))
    return sec


# ---------------------------------------------------------------- (5) parallel coordinates
def parallel(data: SweepData) -> Section:
    sec = Section("All searched hyperparameters at once")
    keys = searched(data)
    if not keys:
        sec.html = "<p>Nothing was searched with more than one value.</p>"
        return sec
    logs = log_keys(data)
    fig = figs.parallel_coordinates(
        data.table, keys, logs, data.metric, data.metric_label, data.spec.search.mode
    )
    caption = (
        f"One line per trial (all {len(data.table)}) through each searched hyperparameter "
        f"(log scale: {', '.join(short_key(k) for k in logs) or 'none'}) to its final "
        f"{data.metric_label}, coloured by that value; grey: no metric; the best drawn on top."
    )
    sec.figures.append(Shown("parallel", fig, caption))
    return sec


# ---------------------------------------------------------------- (6) importance
def importance_section(data: SweepData) -> Section:
    sec = Section("Which hyperparameters matter")
    found = importance(data.table, searched(data), log_keys(data), data.metric)
    if isinstance(found, str):
        sec.html = f"<p>{html.escape(found)}</p>"
        return sec
    fig = figs.importance_bars(found.keys, found.mean, found.std, found.n, found.r2)
    caption = (
        f"Rests on {found.n} trials (those with a final {data.metric_label}; failed ones left "
        f"out). A random forest predicts the metric from the searched values (held-out R² "
        f"{found.r2:.2f} over {found.folds} folds); each bar is the share of the metric's "
        "variance lost when that hyperparameter's values are shuffled (scikit-learn's "
        "permutation importance), with its spread. Few trials or a low R² make them rough."
    )
    sec.figures.append(Shown("importance", fig, caption))
    return sec


# ---------------------------------------------------------------- (7) cost
def cost(data: SweepData) -> Section:
    """Wall time, summed trial time, CPU- and GPU-hours, trials per outcome."""
    sec = Section("What the sweep cost")
    t, res = data.table, data.resources
    c = data.curves
    trial_s = float(c["epoch_seconds"].sum()) if "epoch_seconds" in c else math.nan
    wall = held = math.nan
    if data.runs is not None:
        now = time.time() * 1000
        p = data.runs.parent
        wall = ((p.end_ms or now) - p.start_ms) / 1000
        held = sum(((r.end_ms or now) - r.start_ms) / 1000 for r in data.runs.trials.values())
    counts = {str(k): int(v) for k, v in t["status"].value_counts().items()}
    planned = data.spec.num_trials()
    if planned > len(t):
        counts["not started"] = planned - len(t)
    rows = [
        ("wall time", _duration(wall)),
        ("summed trial time (the epochs' training and measuring)", _duration(trial_s)),
        ("summed trial time, start to end (with loading and checkpoints)", _duration(held)),
        (
            "trials running at once, on average (start to end / wall)",
            _f(held / wall if wall else math.nan, 2),
        ),
        ("resources per Ray trial", f"{res.cpu:g} CPU, {res.gpu:g} GPU"),
        ("CPU-hours (summed trial time × CPUs per trial)", _g(trial_s * res.cpu / 3600)),
        ("GPU-hours (summed trial time × GPUs per trial)", _g(trial_s * res.gpu / 3600)),
        ("trials planned / recorded", f"{planned} / {len(t)}"),
        *[(f"trials {k}", v) for k, v in counts.items()],
    ]
    sec.html = kv_table(rows) + "".join(f"<p class='note'>{html.escape(n)}</p>" for n in data.notes)
    if not data.ranked.empty:
        caption = f"Trials per outcome, of {len(t)} recorded and {planned} planned."
        sec.figures.append(Shown("outcomes", figs.status_counts(counts), caption))
    return sec


def every_trial(data: SweepData) -> Section:
    rest = data.table[~data.table["trial_id"].isin(data.ranked["trial_id"])]
    rows = pd.concat([data.ranked, rest])
    body = f"<details><summary>All {len(rows)} trials, best first</summary>"
    return Section("Every trial", body + trials_table(data, rows, error=True) + "</details>")


# ---------------------------------------------------------------- HTML pieces
def table(head: list[str], lines: list[list[str]]) -> str:
    """An HTML table; cells are HTML already."""
    header = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in line) + "</tr>" for line in lines)
    return f"<table><tr>{header}</tr>{body}</table>"


def kv_table(rows: list[tuple[str, Any]]) -> str:
    cells = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows
    )
    return f"<table>{cells}</table>"


def _f(value: Any, digits: int = 4) -> str:
    if not isinstance(value, numbers.Real) or not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f}"


def _g(value: float) -> str:
    return f"{value:.3g}" if math.isfinite(value) else "n/a"


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "unknown"
    minutes, s = divmod(seconds, 60)
    hours, m = divmod(minutes, 60)
    return f"{int(hours)} h {int(m):02d} min" if hours else f"{int(m)} min {s:.1f} s"
