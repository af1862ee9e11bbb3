"""Which hyperparameters matter: how much of a metric's variance each one explains.

A random forest predicts the metric from the searched values; scikit-learn's permutation
importance measures how much held-out R² is lost when one key's values are shuffled, over up
to five folds. Below ``MIN_TRIALS`` trials, or when the forest explains nothing, it says so
instead of drawing noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

MIN_TRIALS = 12  # trials with a metric needed before importance is computed
# Trees per forest. A sweep's table is small: a tree's predict costs its Python overhead, not
# its data, and permutation importance predicts 5 repeats x keys x folds times; 100 trees
# made this the slowest part of a 64-trial report (4 s), 30 keep the ranking of the keys.
TREES = 30


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
    forest predicts the metric from the searched values, and scikit-learn's permutation
    importance measures the drop in held-out R² when one key is shuffled, over K folds.
    A string says why it was not computed."""
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.inspection import permutation_importance
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
    drops, predicted = [], np.empty_like(y)
    for train, test in KFold(folds, shuffle=True, random_state=0).split(X):
        forest = RandomForestRegressor(n_estimators=TREES, min_samples_leaf=2, random_state=0)
        forest.fit(X[train], y[train])
        predicted[test] = forest.predict(X[test])
        found = permutation_importance(
            forest, X[test], y[test], scoring="r2", n_repeats=5, random_state=0
        )
        drops.append(found.importances)  # (keys, repeats)
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


def _encode(values: pd.Series, log: bool) -> np.ndarray:
    number = pd.to_numeric(values, errors="coerce")
    if number.notna().all():
        return np.log10(number.to_numpy(float)) if log else number.to_numpy(float)
    return values.astype(str).astype("category").cat.codes.to_numpy(float)
