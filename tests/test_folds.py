"""Cross-validated selection: data.folds k, on one trial and in results.csv (the sweeps of
every search type with folds are tests/test_report.py's).

A trial trains its k folds in lockstep and reports their mean as val_acc (what ASHA's rungs
and the ranking use); each fold's accuracy is a curve of its own on the trial's run
(val_acc_fold0..k-1) and results.csv keeps their spread (final_val_acc_std), so two configs
within noise of each other show it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sweeps.record.results import trial_row
from trainers.config import trial_config
from trainers.loop import Trial
from trainers.metrics import CURVES, fold_key, fold_keys

FOLDS = 3


def test_a_trial_reports_each_fold_and_their_mean():
    cfg = trial_config(
        {"data": {"source": "digits", "folds": FOLDS}, "train": {"epochs": 1, "batch_size": 64}}
    )
    trial = Trial(cfg)
    metrics = trial.step()
    assert fold_keys(metrics) == [fold_key(i) for i in range(FOLDS)]
    accs = [metrics[fold_key(i)] for i in range(FOLDS)]
    assert metrics["val_acc"] == pytest.approx(np.mean(accs), abs=1e-6)
    for i, trainer in enumerate(trial.trainers):  # each fold's own validation split
        acc = trainer.metrics(trainer.X_val, trainer.y_val)[2].item()
        assert metrics[fold_key(i)] == pytest.approx(acc)
    assert len(set(accs)) > 1  # the folds differ: there is a spread to see
    one = Trial(trial_config({"train": {"epochs": 1}})).step()
    assert fold_keys(one) == [] and set(CURVES) <= set(one)  # one split: the keys as before


def test_results_row_keeps_the_spread_over_folds():
    epochs = pd.DataFrame(
        [
            {"epoch": 1, "val_acc": 0.5, "val_loss": 1.0, "train_acc": 0.5, "train_loss": 1.0}
            | {fold_key(0): 0.4, fold_key(1): 0.6},
            {"epoch": 2, "val_acc": 0.7, "val_loss": 0.8, "train_acc": 0.8, "train_loss": 0.7}
            | {fold_key(0): 0.6, fold_key(1): 0.8},
        ]
    )
    row = trial_row("t", {}, epochs, "completed", None)
    assert row["final_val_acc_std"] == pytest.approx(0.1)  # the last epoch's, ddof 0
    assert (row[f"final_{fold_key(0)}"], row[f"final_{fold_key(1)}"]) == (0.6, 0.8)
    one_split = epochs.drop(columns=[fold_key(0), fold_key(1)])
    assert "final_val_acc_std" not in trial_row("t", {}, one_split, "completed", None)
