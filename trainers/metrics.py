"""The per-epoch metrics a trial reports: their names, in one place.

The trainer produces them, Ray Tune reports them, MLflow logs them as curves and results.csv
keeps their final values; each of those imports the names from here.
"""

from __future__ import annotations

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
