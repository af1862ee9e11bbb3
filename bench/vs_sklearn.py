"""The chosen model against scikit-learn's tuned peers, on one split, in one run.

    python bench/vs_sklearn.py [--trials 64] [--no-folds] [--engine trial|fused] [--keep DIR]

Digits, 20% stratified test split, the rest split again 80/20 into train and validation (the
split `sweep run` makes with data.val_fraction 0.16, test_fraction 0.2). The project's sweep
(ASHA over loss, lambda, lr, batch size, momentum and schedule, refit on train+validation)
against GridSearchCV (5-fold CV on train+validation, StandardScaler, refit) over
LogisticRegression, LinearSVC (Crammer-Singer) and SGDClassifier (log and hinge loss), each
with n_jobs = the machine's cores. Prints test accuracy, configurations tried and wall time.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.model_selection import GridSearchCV, ParameterGrid, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from trainers.config import DataConfig
from trainers.data import load_dataset

SEED = 0
DATA = {"source": "digits", "val_fraction": 0.16, "test_fraction": 0.2, "seed": SEED}
C_GRID = np.logspace(-4, 2, 13).tolist()
PEERS = {  # name -> (estimator, its grid), every name prefixed by the pipeline's step
    "LogisticRegression": (
        LogisticRegression(max_iter=5000),
        {"logisticregression__C": C_GRID},
    ),
    "LinearSVC (crammer_singer)": (
        LinearSVC(multi_class="crammer_singer", max_iter=20000, random_state=SEED),
        {"linearsvc__C": C_GRID},
    ),
    "SGDClassifier (log_loss)": (
        SGDClassifier(loss="log_loss", random_state=SEED),
        {
            "sgdclassifier__alpha": np.logspace(-6, -1, 6).tolist(),
            "sgdclassifier__learning_rate": ["optimal", "invscaling", "adaptive"],
            "sgdclassifier__eta0": [0.01, 0.1],
        },
    ),
    "SGDClassifier (hinge)": (
        SGDClassifier(loss="hinge", random_state=SEED),
        {
            "sgdclassifier__alpha": np.logspace(-6, -1, 6).tolist(),
            "sgdclassifier__learning_rate": ["optimal", "invscaling", "adaptive"],
            "sgdclassifier__eta0": [0.01, 0.1],
        },
    ),
}
SPACE = {
    "model.loss": {"choice": ["softmax", "hinge"]},
    "train.lambda": {"loguniform": [1.0e-6, 1.0e-1]},
    "train.lr": {"loguniform": [1.0e-3, 0.3]},
    "train.batch_size": {"choice": [32, 64, 128]},
    "train.momentum": {"uniform": [0.7, 0.95]},
    "train.schedule": {"choice": ["step", "cosine"]},
}


def peer(name: str, X: np.ndarray, y: np.ndarray, X_test, y_test) -> dict:
    """GridSearchCV of one scikit-learn estimator: test accuracy of its refit best model, and
    its cross-validation accuracy (mean and std over the 5 folds) that chose it."""
    estimator, grid = PEERS[name]
    search = GridSearchCV(
        make_pipeline(StandardScaler(), estimator),
        grid,
        cv=StratifiedKFold(5, shuffle=True, random_state=SEED),
        n_jobs=os.cpu_count(),
    )
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        search.fit(X, y)
    wall = time.perf_counter() - start
    return {
        "name": name,
        "test_acc": search.score(X_test, y_test),
        "val": (search.best_score_, search.cv_results_["std_test_score"][search.best_index_]),
        "configs": str(len(ParameterGrid(grid))),
        "wall_s": wall,
        "chosen": {k.split("__")[1]: v for k, v in search.best_params_.items()},
    }


def project(trials: int, folds: int, engine: str, workdir: Path) -> tuple[list[dict], str]:
    """One `sweep run` (as a user types it): the tuned softmax and the tuned hinge, read from
    the sweep's folder (results.csv: the chosen rows and their test look) as a user would;
    and where the sweep's wall time went (the record's per-epoch training seconds)."""
    from sweeps.record.history import HistoryFile
    from sweeps.record.layout import SweepFolder

    name = f"vs_sklearn_folds{folds}"
    doc = {
        "name": name,
        "data": {**DATA, "folds": folds},
        "model": {"loss": "softmax"},
        "train": {"epochs": 30, "optimizer": "momentum", "reg": "l2", "schedule": "cosine"},
        "search": {"type": "asha", "num_samples": trials, "grace_period": 3,
                   "reduction_factor": 3, "seed": SEED, "refit": True,
                   **({"engine": engine} if engine != "trial" else {})},
        "space": SPACE,
    }  # fmt: skip
    config = workdir / f"{name}.yaml"
    config.write_text(yaml.safe_dump(doc))
    sweep = str(Path(sys.executable).with_name("sweep"))
    start = time.perf_counter()
    done = subprocess.run([sweep, "run", str(config)], cwd=workdir, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"sweep run exited {done.returncode}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    files = SweepFolder.of(workdir / "runs", name)
    table = pd.read_csv(files.results)
    label = f"sweep, ASHA{', 5-fold' if folds > 1 else ''}, refit"
    rows = []
    for loss in ("softmax", "hinge"):
        row = table[table["chosen"].fillna("").str.split().map(lambda c, loss=loss: loss in c)]
        row = row.iloc[0]
        spread = row["final_val_acc_std"] if folds > 1 else np.nan
        rows.append({
            "name": f"{loss} ({label})",
            "test_acc": row["test_acc"],
            "val": (row["final_val_acc"], spread),
            "configs": f"{(table['model.loss'] == loss).sum()}/{trials}",
            "wall_s": wall,
            "chosen": {k: row[k] for k in ("train.lr", "train.lambda", "train.batch_size")}
            | {"epochs_run": row["epochs_run"]},
        })  # fmt: skip
    history = HistoryFile(files.history).read(name)

    def seconds(runs: dict) -> float:
        return sum(r.get("epoch_seconds", 0.0) for t in runs.values() for r in t.results)

    epochs = sum(len(t.results) for t in history.trials.values())
    train_s, refit_s = seconds(history.trials), seconds(history.refits)
    where = (
        f"{name}: {wall:.1f} s wall; {epochs} trial-epochs trained in {train_s:.1f} s "
        f"(summed over trials), refits {refit_s:.1f} s on the driver, the rest (Ray's start, "
        f"scheduling, recording, data loading) {wall - refit_s - train_s / os.cpu_count():.1f} s "
        f"if the trials filled all {os.cpu_count()} cores"
    )
    return rows, where


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=64, help="ASHA trials per sweep")
    parser.add_argument("--no-folds", action="store_true", help="skip the 5-fold sweep")
    parser.add_argument("--engine", default="trial", choices=["trial", "fused"])
    parser.add_argument("--keep", metavar="DIR", help="run the sweeps in DIR and keep them")
    args = parser.parse_args()

    ds = load_dataset(DataConfig(**DATA))  # the split the sweeps make, not standardized
    X = np.concatenate([ds.train.X, ds.val.X])
    y = np.concatenate([ds.train.y, ds.val.y])
    print(f"digits: train {len(ds.train.y)}, val {len(ds.val.y)}, test {len(ds.test.y)}; "
          f"{os.cpu_count()} cores", flush=True)  # fmt: skip
    rows = [peer(name, X, y, ds.test.X, ds.test.y) for name in PEERS]
    notes = []
    kept = contextlib.nullcontext(args.keep) if args.keep else tempfile.TemporaryDirectory()
    with kept as tmp:
        env_uri = os.environ.pop("MLFLOW_TRACKING_URI", None)
        for folds in (1,) if args.no_folds else (1, 5):
            found, where = project(args.trials, folds, args.engine, Path(tmp))
            rows, notes = rows + found, notes + [where]
        if env_uri:
            os.environ["MLFLOW_TRACKING_URI"] = env_uri

    print(f"\n{'model':<38} {'test acc':>8} {'val/cv acc (std)':>17} {'configs':>7} "
          f"{'wall s':>6}  chosen")  # fmt: skip
    for r in rows:
        chosen = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in r["chosen"].items())  # fmt: skip
        mean, std = r["val"]
        val = f"{mean:.4f}" + (f" ({std:.4f})" if std == std else " (1 split)")
        print(f"{r['name']:<38} {r['test_acc']:>8.4f} {val:>17} {r['configs']:>7} "
              f"{r['wall_s']:>6.1f}  {chosen}")  # fmt: skip
    print("\n" + "\n".join(notes))


if __name__ == "__main__":
    main()
