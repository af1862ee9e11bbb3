"""Which hyperparameters matter: how much of a metric's variance each one explains.

A random forest predicts the metric from the searched values; permutation importance (as
scikit-learn's ``permutation_importance`` defines it) measures how much held-out R² is lost
when one key's values are shuffled, over up to five folds. Below ``MIN_TRIALS`` trials, or when
the forest explains nothing, it says so instead of drawing noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

MIN_TRIALS = 12  # trials with a metric needed before importance is computed
# Trees per forest: 30 rank the keys as 100 do, and a forest's fit and predict cost its
# trees' Python overhead more than a sweep's small table.
TREES = 30
REPEATS = 5  # shuffles of each key per fold


@dataclass
class Importance:
    keys: list[str]
    mean: list[float]  # drop in held-out R² when the key is shuffled, over folds and repeats
    std: list[float]
    n: int  # trials it rests on
    r2: float  # the forest's held-out R²
    folds: int


def importance(
    table: pd.DataFrame, keys: list[str], log_keys: list[str], metric: str
) -> Importance | str:
    """How much of the metric's variance each searched hyperparameter explains: a random
    forest predicts the metric from the searched values, and permutation importance
    measures the drop in held-out R² when one key is shuffled, over K folds.
    A string says why it was not computed."""
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.metrics import r2_score
    from sklearn.model_selection import KFold

    rows = table[(table["status"] != "error") & np.isfinite(table[metric].astype(float))]
    if not keys:
        return "Importance needs a hyperparameter searched with more than one value."
    if len(rows) < MIN_TRIALS:
        return (
            f"Importance is not computed: it needs at least {MIN_TRIALS} trials with a "
            f"metric, and this sweep has {len(rows)}; from so few, a forest's importances "
            "are noise."
        )
    X = np.column_stack([_encode(rows[k], k in log_keys) for k in keys])
    y = rows[metric].to_numpy(float)
    folds = min(5, len(rows) // 4)
    drops, predicted, rng = [], np.empty_like(y), np.random.default_rng(0)
    for train, test in KFold(folds, shuffle=True, random_state=0).split(X):
        forest = RandomForestRegressor(n_estimators=TREES, min_samples_leaf=2, random_state=0)
        forest.fit(X[train], y[train])
        predicted[test], drop = _permutation_drops(forest, X[test], y[test], rng)
        drops.append(drop)  # (keys, repeats)
    every = np.concatenate(drops, axis=1)
    r2 = float(r2_score(y, predicted))
    if r2 <= 0:
        return (
            f"Importance is not shown: on {len(rows)} trials a random forest predicts the "
            f"metric no better than its mean (held-out R² {r2:.2f}), so no hyperparameter's "
            "share of the variance can be told."
        )
    mean, std = list(every.mean(axis=1)), list(every.std(axis=1))
    return Importance(keys, mean, std, len(rows), r2, folds)


def _permutation_drops(
    forest: Any, X: np.ndarray, y: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The forest's predictions of ``X``, and the drop in R² when each column is shuffled
    (REPEATS times): scikit-learn's ``permutation_importance``, with one ``predict`` for all
    the shuffled copies. A forest's predict costs milliseconds of overhead whatever its rows,
    and the library's one call per key and repeat would be half of a 64-trial report."""
    from sklearn.metrics import r2_score

    n, keys = X.shape
    copies = np.repeat(X[None], 1 + keys * REPEATS, axis=0)  # copy 0 unshuffled
    for key in range(keys):
        for r in range(REPEATS):
            copies[1 + key * REPEATS + r, :, key] = rng.permutation(X[:, key])
    predicted = forest.predict(copies.reshape(-1, keys)).reshape(len(copies), n)
    scores = np.array([r2_score(y, p) for p in predicted])
    return predicted[0], (scores[0] - scores[1:]).reshape(keys, REPEATS)


def _encode(values: pd.Series, log: bool) -> np.ndarray:
    number = pd.to_numeric(values, errors="coerce")
    if number.notna().all():
        return np.log10(number.to_numpy(float)) if log else number.to_numpy(float)
    return values.astype(str).astype("category").cat.codes.to_numpy(float)
