"""A finished sweep's results: each trial's outcome, results.csv, and the terminal table.

With data.folds k > 1 a row also holds each fold's final validation accuracy and their
standard deviation (``final_val_acc_std``, over folds, ddof 0 as scikit-learn's
``std_test_score``): two configs whose means differ by less than that are within noise. Once
the test look is taken, the chosen rows say which model had it (``chosen``, ``evaluated``,
``test_acc``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sweeps.record.outcomes import Outcome
from trainers.metrics import FINAL, fold_keys

SHOWN = 10  # trials in the terminal table


def outcome(metrics: dict[str, Any] | None, epochs: int, error: Any) -> Outcome:
    """How a trial ended: error, diverged, early_stopped (by ASHA) or completed."""
    if error is not None:
        return Outcome.ERROR
    metrics = metrics or {}
    if metrics.get("diverged"):
        return Outcome.DIVERGED
    if int(metrics.get("epoch", 0)) < epochs:
        return Outcome.EARLY_STOPPED
    return Outcome.COMPLETED


def first_error_line(error: Any) -> str:
    """The line of a (Ray-wrapped) exception that names the cause, without the traceback."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    return lines[-1] if lines else type(error).__name__


def trial_row(
    trial_id: str,
    params: dict[str, Any],
    history: pd.DataFrame | None,
    status: str,
    error: Any,
) -> dict[str, Any]:
    """One row of results.csv: searched params, status, final and best metrics."""
    row: dict[str, Any] = {"trial_id": trial_id, "status": status, **params}
    has_history = history is not None and not history.empty and "val_acc" in history
    last = history.iloc[-1] if has_history else {}
    row["epochs_run"] = int(last["epoch"]) if has_history else 0
    for key in FINAL:  # final_* columns
        row[f"final_{key}"] = float(last[key]) if has_history else math.nan
    folds = fold_keys(history.columns) if has_history else []
    if folds:
        row["final_val_acc_std"] = float(np.std([last[k] for k in folds]))
        row |= {f"final_{k}": float(last[k]) for k in folds}
    row["best_val_acc"] = float(history["val_acc"].max()) if has_history else math.nan
    row["best_val_loss"] = float(history["val_loss"].min()) if has_history else math.nan
    row["error"] = first_error_line(error) if error is not None else ""
    return row


def rank_order(values: Sequence[Any], trial_ids: Sequence[str], mode: str) -> np.ndarray:
    """The positions of trials best first by their ``values`` of the sweep's metric (``mode``
    min or max), missing (NaN) values last. Ties go to the trial drawn first (the smaller id),
    as GridSearchCV's do: the choice does not depend on the order trials happened to end in,
    nor on the engine (trial or fused). results.csv (``best_first``, so the chosen trial) and
    the live view's best so far (sweeps.view.live) both rank by it."""
    value = np.asarray(values, dtype=float)
    missing = np.isnan(value)
    score = np.where(missing, 0.0, -value if mode == "max" else value)
    return np.lexsort((np.asarray(trial_ids, dtype=str), score, missing))  # last key first


def best_first(table: pd.DataFrame, column: str, mode: str) -> pd.DataFrame:
    """Trials best first by ``column`` (``mode`` min or max), as ``rank_order`` ranks them."""
    return table.iloc[rank_order(table[column], table["trial_id"], mode)]


def write_csv(rows: list[dict[str, Any]], metric: str, mode: str, path: Path) -> pd.DataFrame:
    """results.csv, best trial first (by the final value of the sweep's metric; ``best_first``)."""
    table = best_first(pd.DataFrame(rows), f"final_{metric}", mode)
    _write(table, path)
    return table


def mark_chosen(table: pd.DataFrame, looks: dict[str, dict[str, Any]], path: Path) -> None:
    """results.csv again, its chosen rows saying what they were chosen as (``best``, a loss),
    which model had the test look (``evaluated``: the refit, or the trial's checkpoint) and
    what it scored there (``test_acc``, ``test_loss``)."""
    table = table.copy()
    ids = table["trial_id"]
    table["chosen"] = ids.map(lambda t: " ".join(looks[t]["labels"]) if t in looks else "")
    table["evaluated"] = ids.map(lambda t: looks[t]["evaluated"] if t in looks else "")
    for key in ("test_acc", "test_loss"):
        table[key] = ids.map(lambda t, key=key: looks[t][key] if t in looks else math.nan)
    _write(table, path)


def _write(table: pd.DataFrame, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    table.to_csv(tmp, index=False)
    tmp.replace(path)  # atomic: a reader never sees half a file


def format_table(table: pd.DataFrame, params: list[str]) -> str:
    """The ``SHOWN`` best trials, for the terminal."""
    cols = ["trial_id", "status", "epochs_run", *params, "final_val_acc", "final_val_acc_std"]
    cols.append("final_val_loss")
    shown = table[[c for c in cols if c in table]].head(SHOWN)
    return shown.to_string(index=False, float_format=lambda v: f"{v:.4g}")
