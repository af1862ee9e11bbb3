"""The report's figures: pure functions from tables to matplotlib Figures.

Each takes plain data (results-table rows, per-epoch curves) and returns a ``Figure`` built
without pyplot (no global state, no display needed), so tests can count the lines and points
drawn per trial. Every figure stays readable with 1,000 trials: lines are drawn as one
collection, thin and translucent past ``CROWD`` trials, and the best drawn last (on top).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from sweeps.record.naming import format_value, short_key
from sweeps.record.outcomes import CHOOSABLE, RUNNING, Outcome

CROWD = 200  # from this many trials on, lines and markers get thin and translucent
MARKERS = ("o", "s", "^", "D", "v", "P")  # one per loss (or other group)
STATUS_COLOURS = {
    Outcome.COMPLETED: "tab:green",
    Outcome.EARLY_STOPPED: "tab:blue",
    Outcome.DIVERGED: "tab:red",
    Outcome.ERROR: "tab:gray",
    Outcome.INTERRUPTED: "tab:orange",
    RUNNING: "tab:purple",
}
CMAP = "viridis"


def label_of(key: str) -> str:
    """Axis text for a searched key: ``learning rate (lr)``."""
    names = {
        "train.lr": "learning rate",
        "train.lambda": "regularisation strength λ",
        "train.batch_size": "batch size (examples)",
        "train.momentum": "momentum ρ",
        "model.loss": "loss",
        "train.schedule": "lr schedule",
    }
    return f"{names[key]} ({short_key(key)})" if key in names else key


def _crowded(n: int) -> dict[str, float]:
    return {"linewidth": 0.7, "alpha": 0.35} if n >= CROWD else {"linewidth": 1.4, "alpha": 0.9}


# ---------------------------------------------------------------- curves
def loss_curves(curves: pd.DataFrame, trials: Sequence[tuple[str, str]], title: str) -> Figure:
    """Training and validation loss per epoch, one line per trial in each panel (log scale)."""
    fig = Figure(figsize=(11, 4.2 + 0.22 * len(trials)), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, key, name in zip(axes, ("train_loss", "val_loss"), ("training", "validation")):
        for trial_id, label in trials:
            c = curves[curves["trial_id"] == trial_id].sort_values("epoch")
            ax.plot(c["epoch"], c[key], marker=".", label=label, gid=trial_id)
        ax.set(title=f"{name} loss", xlabel="epoch", ylabel=f"{name} loss (log scale)")
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", fontsize=8)
    fig.suptitle(title)
    return fig


def lr_panels(curves: pd.DataFrame, trials: Sequence[tuple[str, str]]) -> Figure:
    """Side by side, one panel per trial (ordered by learning rate): its training and
    validation loss per epoch, so too small, good, oscillating and diverging rates compare."""
    cols = min(3, len(trials))
    rows = math.ceil(len(trials) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.3 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, (trial_id, label) in zip(axes, trials):
        c = curves[curves["trial_id"] == trial_id].sort_values("epoch")
        ax.plot(c["epoch"], c["train_loss"], marker=".", label="training", gid=trial_id)
        ax.plot(c["epoch"], c["val_loss"], marker=".", ls="--", label="validation", gid=trial_id)
        if c["val_loss"].dropna().empty:
            ax.text(0.5, 0.5, "no finite loss logged", ha="center", transform=ax.transAxes)
        ax.set_title(label, fontsize=9)
        ax.set(xlabel="epoch", ylabel="loss")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in axes[len(trials) :]:
        ax.set_visible(False)
    axes[0].legend(fontsize=8)
    fig.suptitle("Loss per epoch across the learning rates tried (low to high)")
    return fig


def stopped_curves(
    curves: pd.DataFrame, status: pd.Series, metric: str, metric_label: str, rungs: Sequence[int]
) -> Figure:
    """ASHA: every trial's validation curve, ending where it stopped; rungs as dashed lines.

    ``status`` maps trial id -> outcome; one line (segment) per trial, grouped by outcome.
    """
    fig = Figure(figsize=(9, 4.8), layout="constrained")
    ax = fig.subplots()
    style = _crowded(curves["trial_id"].nunique())
    points = curves[["trial_id", "epoch", metric]].dropna().sort_values(["trial_id", "epoch"])
    ids = points["trial_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])  # each trial's first row
    xy = np.split(points[["epoch", metric]].to_numpy(float), starts[1:])
    by_trial = dict(zip(ids[starts], xy))
    outcome_of = status.to_dict()
    for outcome, colour in STATUS_COLOURS.items():
        segments = [s for t, s in by_trial.items() if outcome_of.get(t) == outcome]
        if not segments:
            continue
        ax.add_collection(
            LineCollection(segments, colors=colour, label=f"{outcome} ({len(segments)})", **style)
        )
        ends = np.array([s[-1] for s in segments])
        ax.scatter(ends[:, 0], ends[:, 1], s=10, color=colour, zorder=3)
    for rung in rungs:
        ax.axvline(rung, color="black", ls=":", lw=0.8)
    ax.autoscale()
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(
        title="ASHA: each trial's validation curve, ending where it was stopped",
        xlabel="epoch (dotted: rungs)",
        ylabel=metric_label,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def rung_counts(epochs_run: pd.Series, stopped: pd.Series, rungs: Sequence[int]) -> Figure:
    """ASHA: how many trials reached each rung, and how many of them were stopped there."""
    fig = Figure(figsize=(7, 3.8), layout="constrained")
    ax = fig.subplots()
    reached = [int((epochs_run >= r).sum()) for r in rungs]
    ended = [int(((epochs_run == r) & stopped).sum()) for r in rungs]
    x = [str(r) for r in rungs]
    ax.bar(x, reached, color="tab:blue", label="reached the rung")
    ax.bar(x, ended, color="tab:orange", label="stopped at the rung", width=0.5)
    for i, n in enumerate(reached):
        ax.annotate(str(n), (i, n), ha="center", va="bottom", fontsize=9)
    ax.set(
        title="ASHA: trials per rung",
        xlabel="rung (epochs trained)",
        ylabel="trials (count)",
    )
    ax.legend(fontsize=8)
    return fig


# ---------------------------------------------------------------- adaptive searches
def best_so_far(values: Sequence[float], mode: str, metric_label: str) -> Figure:
    """tpe, bohb: each configuration's value in the order it was asked for, and the best so
    far: how fast the search found what it found."""
    fig = Figure(figsize=(7, 3.8), layout="constrained")
    ax = fig.subplots()
    v = pd.Series(values, dtype=float)
    best = v.cummax() if mode == "max" else v.cummin()
    x = np.arange(1, len(v) + 1)
    ax.scatter(x, v, s=10, color="tab:gray", alpha=0.6, label="each configuration")
    ax.step(x, best.ffill(), where="post", color="tab:blue", linewidth=2, label="best so far")
    ax.set(
        title="The search's progress",
        xlabel="configurations tried (in the order asked)",
        ylabel=metric_label,
    )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def lineage(
    curves: pd.DataFrame, exploits: dict[str, list[dict]], metric: str, metric_label: str
) -> Figure:
    """pbt: each member's metric per epoch, and each exploit as a dashed step from the member
    whose weights it took (at the epoch it took them) to the member that took them."""
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.subplots()
    by_trial = {t: c.sort_values("epoch") for t, c in curves.groupby("trial_id")}
    colours = dict(zip(by_trial, _colours(len(by_trial))))
    for trial_id, c in by_trial.items():
        ax.plot(c["epoch"], c[metric], color=colours[trial_id], linewidth=1.2, alpha=0.9)
    for trial_id, taken in exploits.items():
        for e in taken:
            source = by_trial.get(e["source"])
            target = by_trial.get(trial_id)
            if source is None or target is None:
                continue
            at = source[source["epoch"] == e["epoch"]][metric]
            after = target[target["epoch"] == e["epoch"] + 1][metric]
            if at.empty or after.empty:
                continue
            x, y = [e["epoch"], e["epoch"] + 1], [at.iloc[0], after.iloc[0]]
            ax.plot(x, y, linestyle="--", color=colours[trial_id], linewidth=1)
            ax.scatter([e["epoch"]], [at.iloc[0]], s=12, color=colours[e["source"]], zorder=3)
    n = sum(len(v) for v in exploits.values())
    ax.set(
        title=f"PBT: {len(by_trial)} members, {n} exploits",
        xlabel="epoch",
        ylabel=metric_label,
    )
    ax.grid(alpha=0.3)
    return fig


def _colours(n: int) -> list:
    from matplotlib import colormaps

    return [colormaps["tab20"](i % 20) for i in range(n)]


# ---------------------------------------------------------------- metric against a hyperparameter
def metric_vs(
    table: pd.DataFrame,
    key: str,
    metric: str,
    metric_label: str,
    log: bool,
    group: str | None = None,
    chosen: str | None = None,
) -> Figure:
    """The metric of every trial against one hyperparameter: one marker shape per ``group``
    value (the loss), diverged trials as red crosses, failed ones as grey crosses on the
    bottom edge (they have no metric), the chosen trial as a star."""
    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.subplots()
    n = len(table)
    size, alpha = (12, 0.5) if n >= CROWD else (36, 0.85)
    y = table[metric].astype(float)
    finite = y[np.isfinite(y)]
    bottom = finite.min() - 0.05 * (np.ptp(finite) or 1.0) if len(finite) else 0.0
    ok = table["status"].isin([*CHOOSABLE, Outcome.INTERRUPTED, RUNNING])  # not failed
    groups = table[group] if group in table else pd.Series("trials", index=table.index)
    for marker, value in zip(MARKERS * 10, sorted(groups[ok].unique(), key=str)):
        rows = ok & (groups == value)
        ax.scatter(table[key][rows], y[rows], s=size, alpha=alpha, marker=marker, label=str(value))
    diverged = table["status"] == Outcome.DIVERGED
    if diverged.any():
        ax.scatter(
            table[key][diverged],
            y[diverged].fillna(bottom),
            s=size * 1.3,
            marker="x",
            color="tab:red",
            label=f"diverged ({int(diverged.sum())})",
        )
    failed = ~ok & ~diverged
    if failed.any():
        ax.scatter(
            table[key][failed],
            np.full(int(failed.sum()), bottom),
            s=size * 1.3,
            marker="x",
            color="tab:gray",
            label=f"failed, no metric ({int(failed.sum())})",
        )
    if chosen is not None and (table["trial_id"] == chosen).any():
        row = table[table["trial_id"] == chosen].iloc[0]
        ax.scatter(
            [row[key]],
            [row[metric]],
            s=220,
            marker="*",
            color="gold",
            edgecolor="black",
            zorder=5,
            label="chosen",
            gid="chosen",
        )
    if log:
        ax.set_xscale("log")
    ax.set(
        title=f"{metric_label} against {label_of(key)}",
        xlabel=label_of(key) + (" (log scale)" if log else ""),
        ylabel=metric_label,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title=short_key(group) if group in table else None)
    return fig


def heatmap(
    table: pd.DataFrame, xkey: str, ykey: str, metric: str, metric_label: str, mode: str
) -> Figure:
    """A grid over two hyperparameters: the metric's mean per cell (over repeats and any other
    searched key); cells with no finite value say why (diverged, failed)."""
    finite = table[np.isfinite(table[metric].astype(float))]
    ok = finite[finite["status"] != Outcome.DIVERGED]
    xs, ys = sorted(table[xkey].unique()), sorted(table[ykey].unique())
    grid = ok.pivot_table(index=ykey, columns=xkey, values=metric, aggfunc="mean")
    grid = grid.reindex(index=ys, columns=xs)
    fig = Figure(figsize=(1.3 * len(xs) + 3, 0.8 * len(ys) + 2.2), layout="constrained")
    ax = fig.subplots()
    cmap = CMAP if mode == "max" else CMAP + "_r"
    image = ax.imshow(grid.to_numpy(dtype=float), cmap=cmap, aspect="auto", origin="lower")
    for i, yv in enumerate(ys):
        for j, xv in enumerate(xs):
            value = grid.iat[i, j]
            cell = table[(table[xkey] == xv) & (table[ykey] == yv)]
            text = f"{value:.3f}" if np.isfinite(value) else _why_empty(cell["status"])
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                fontsize=9,
                color="black",
                bbox={"facecolor": "white", "alpha": 0.6, "lw": 0},
            )
    ax.set_xticks(range(len(xs)), [format_value(v) for v in xs])
    ax.set_yticks(range(len(ys)), [format_value(v) for v in ys])
    ax.set(
        title=f"{metric_label}: mean per grid cell", xlabel=label_of(xkey), ylabel=label_of(ykey)
    )
    fig.colorbar(image, ax=ax, label=metric_label)
    return fig


def _why_empty(statuses: pd.Series) -> str:
    return "diverged" if (statuses == Outcome.DIVERGED).any() else "failed"


# ---------------------------------------------------------------- all hyperparameters at once
def parallel_coordinates(
    table: pd.DataFrame,
    keys: Sequence[str],
    log_keys: Sequence[str],
    metric: str,
    metric_label: str,
    mode: str,
) -> Figure:
    """One polyline per trial through an axis per searched hyperparameter and the metric,
    coloured by the metric (grey: no metric); the best trials drawn last."""
    columns = [*keys, metric]
    scaled = pd.DataFrame(index=table.index)
    ticks: dict[str, tuple[list[float], list[str]]] = {}
    for key in columns:
        scaled[key], ticks[key] = _unit_scale(table[key], key in log_keys)
    fig = Figure(figsize=(max(7.0, 1.9 * len(columns)), 4.8), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(columns), dtype=float)
    value = table[metric].astype(float)
    order = value.sort_values(ascending=mode == "max", na_position="first").index  # best last
    has = np.isfinite(value.loc[order]).to_numpy()
    lines = np.stack([np.column_stack([x, scaled.loc[i].to_numpy(float)]) for i in order])
    style = _crowded(len(table))
    if (~has).any():
        ax.add_collection(
            LineCollection(lines[~has], colors="lightgray", label="no metric", **style)
        )
    norm = Normalize(*(np.nanmin(value), np.nanmax(value))) if has.any() else Normalize(0, 1)
    coloured = LineCollection(lines[has], cmap=CMAP, norm=norm, **style)
    coloured.set_array(value.loc[order].to_numpy()[has])
    ax.add_collection(coloured)
    for xi, key in zip(x, columns):
        ax.axvline(xi, color="black", lw=0.8)
        for pos, text in zip(*ticks[key]):
            ax.annotate(
                text, (xi, pos), xytext=(3, 0), textcoords="offset points", fontsize=7, va="center"
            )
    ax.set_xticks(x, [short_key(k) if k != metric else metric_label for k in columns])
    ax.set_yticks([])
    ax.set_xlim(-0.1, len(columns) - 0.6)
    ax.set_ylim(-0.05, 1.05)
    fig.suptitle(f"Searched hyperparameters of every trial ({len(table)}), coloured by the metric")
    fig.colorbar(coloured, ax=ax, label=metric_label)
    return fig


def _unit_scale(values: pd.Series, log: bool) -> tuple[pd.Series, tuple[list[float], list[str]]]:
    """Values mapped to [0, 1] for a parallel axis, with tick positions and labels."""
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.notna().any() and numeric.notna().sum() == values.notna().sum():
        v = np.log10(numeric) if log else numeric.astype(float)
        v = v.where(np.isfinite(v))
        low, high = v.min(), v.max()
        span = (high - low) or 1.0
        scaled = ((v - low) / span).fillna(0.0)
        if not np.isfinite(low):
            return scaled, ([], [])
        real = [10**low, 10**high] if log else [low, high]
        return scaled, ([0.0, 1.0] if span else [0.0], [format_value(r) for r in real])
    text = values.map(str)
    levels = sorted(text.unique())
    pos = {lv: (i / (len(levels) - 1) if len(levels) > 1 else 0.5) for i, lv in enumerate(levels)}
    return text.map(pos), (list(pos.values()), levels)


def importance_bars(
    keys: Sequence[str], mean: Sequence[float], std: Sequence[float], n: int, r2: float
) -> Figure:
    """Permutation importance: how much of the metric's explained variance (R²) is lost when
    one hyperparameter's values are shuffled, with its spread over folds and repeats."""
    fig = Figure(figsize=(7, 0.5 * len(keys) + 2.0), layout="constrained")
    ax = fig.subplots()
    order = np.argsort(mean)
    ax.barh(
        [label_of(keys[i]) for i in order],
        [mean[i] for i in order],
        xerr=[std[i] for i in order],
        color="tab:blue",
    )
    ax.set(
        title=f"Hyperparameter importance ({n} trials; forest R² {r2:.2f})",
        xlabel="drop in R² when shuffled (share of the metric's variance)",
    )
    ax.axvline(0, color="black", lw=0.8)
    ax.grid(alpha=0.3, axis="x")
    return fig


def status_counts(counts: dict[str, int]) -> Figure:
    """Trials per outcome."""
    fig = Figure(figsize=(6.5, 3.2), layout="constrained")
    ax = fig.subplots()
    names = list(counts)
    bars = ax.bar(
        names, [counts[k] for k in names], color=[STATUS_COLOURS.get(k, "tab:olive") for k in names]
    )
    ax.bar_label(bars)
    ax.set(title="Trials per outcome", xlabel="outcome", ylabel="trials (count)")
    ax.margins(y=0.15)
    return fig


def is_log_scale(values: pd.Series, log_sampled: bool) -> bool:
    """Log axes for log-sampled keys, and for positive values spanning 100x or more."""
    if log_sampled:
        return True
    v = pd.to_numeric(values, errors="coerce").dropna()
    return bool(len(v)) and v.min() > 0 and v.max() / v.min() >= 100 and math.isfinite(v.max())
