"""Cross-validated selection: data.folds k through every search type.

A trial trains its k folds in lockstep and reports their mean as val_acc (what ASHA's rungs
and the ranking use); each fold's accuracy is a curve of its own on the trial's run
(val_acc_fold0..k-1) and results.csv keeps their spread (final_val_acc_std), so two configs
within noise of each other show it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sweeps.results import trial_row
from trainers.config import trial_config
from trainers.loop import Trial
from trainers.metrics import CURVES, fold_key, fold_keys

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweeping import SWEEP, make_data, runs_of  # noqa: E402

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


SEARCHES = {
    "grid": ({"type": "grid"}, {"train.lr": {"grid": [0.01, 0.1]}}, 3),
    "random": ({"type": "random", "num_samples": 2}, {"train.lr": {"choice": [0.01, 0.1]}}, 3),
    "asha": (
        {"type": "asha", "num_samples": 6, "grace_period": 1, "reduction_factor": 3, "seed": 1},
        {"train.lr": {"loguniform": [1e-4, 0.3]}},
        6,
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("search", list(SEARCHES))
def test_folds_through_every_search_type(tmp_path, monkeypatch, search):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    make_data(tmp_path)
    search_doc, space, epochs = SEARCHES[search]
    doc = {
        "name": search,
        "data": {"source": "npz", "path": str(tmp_path / "good.npz"), "folds": FOLDS},
        "train": {"epochs": epochs, "batch_size": 32, "optimizer": "sgd"},
        "search": search_doc,
        "space": space,
    }
    (tmp_path / "s.yaml").write_text(json.dumps(doc))
    done = subprocess.run([SWEEP, "run", "s.yaml"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "final_val_acc_std" in done.stdout  # the terminal's table shows the spread

    table = pd.read_csv(tmp_path / f"runs/{search}/results.csv")
    finals = table[[f"final_{fold_key(i)}" for i in range(FOLDS)]].to_numpy()
    np.testing.assert_allclose(table["final_val_acc"], finals.mean(axis=1), atol=1e-6)
    np.testing.assert_allclose(table["final_val_acc_std"], finals.std(axis=1), atol=1e-9)
    client, _, children = runs_of(tmp_path, search)
    assert len(children) == len(table)
    for trial_id, run in children.items():
        ran = int(table[table["trial_id"] == trial_id]["epochs_run"].iloc[0])
        per_fold = [
            {m.step: m.value for m in client.get_metric_history(run.info.run_id, fold_key(i))}
            for i in range(FOLDS)
        ]
        mean = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_acc")}
        assert all(sorted(fold) == list(range(1, ran + 1)) for fold in per_fold)
        for step, value in mean.items():  # what ranked the trial and decided its rungs
            assert value == pytest.approx(np.mean([fold[step] for fold in per_fold]), abs=1e-6)
    if search == "asha":
        stopped = table[table["status"] == "early_stopped"]
        assert len(stopped) >= 1 and (stopped["epochs_run"] < epochs).all()
