"""The per-epoch metrics a trial reports: their names, in one place.

The trainer produces them, Ray Tune reports them, MLflow logs them as curves and results.csv
keeps their final values; each of those imports the names from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainers.config import TrainConfig

# Curves logged per epoch (MLflow step = epoch).
CURVES = (
    "train_loss",  # the data loss on the whole training split
    "train_total_loss",  # data loss + lambda * R(W)
    "train_acc",
    "val_loss",
    "val_acc",
    "lr",  # the learning rate the epoch trained with
    "epoch_seconds",  # wall time of the epoch's training and measurement
)
# Final values kept in results.csv as final_<key>.
FINAL = ("val_acc", "val_loss", "train_acc", "train_loss")
# With data.folds k > 1, val_acc is the mean over folds and each fold's is a curve of its own:
# val_acc_fold0 .. val_acc_fold{k-1}. results.csv keeps their spread as final_val_acc_std.
# A PBT member's hyperparameters as it trains them, beside its lr (search.type pbt changes them).
PBT_CURVES = ("lambda", "momentum")


def pbt_curves(train: TrainConfig) -> dict[str, float]:
    """The PBT_CURVES' values of the config an epoch trained with."""
    return {"lambda": train.lambda_, "momentum": train.momentum}


FOLD_PREFIX = "val_acc_fold"
# A refit (train+validation together) has no held-out split: it logs the training curves only.
REFIT_CURVES = tuple(k for k in CURVES if not k.startswith("val_"))


def fold_key(fold: int) -> str:
    """The name of one fold's validation accuracy."""
    return f"{FOLD_PREFIX}{fold}"


def fold_keys(metrics: Mapping[str, Any]) -> list[str]:
    """The per-fold validation accuracies in ``metrics``, in fold order."""
    folds = [k for k in metrics if k.startswith(FOLD_PREFIX) and k[len(FOLD_PREFIX) :].isdigit()]
    return sorted(folds, key=lambda k: int(k[len(FOLD_PREFIX) :]))


def curve_keys(metrics: Mapping[str, Any]) -> list[str]:
    """The curves of one reported epoch: CURVES, the PBT_CURVES and per-fold accuracies it
    has."""
    return [*CURVES, *(k for k in PBT_CURVES if k in metrics), *fold_keys(metrics)]


def curve_points(metrics: Mapping[str, Any]) -> dict[str, float]:
    """One reported epoch's points, as MLflow logs them and the report draws them: each curve
    with a number; none for a diverged epoch (it repeats the last finite values)."""
    if metrics.get("diverged"):
        return {}
    return {
        k: float(metrics[k])
        for k in curve_keys(metrics)
        if isinstance(metrics.get(k), int | float) and not isinstance(metrics[k], bool)
    }
