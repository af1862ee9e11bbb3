"""Would the chosen configs of a sweep do better with more epochs? Asked of validation only.

    python bench/cv_epochs.py runs/NAME [--folds 5] [--times 1 2 4]

For the config each label of the sweep chose (results.csv's ``chosen`` column: best, and each
loss's best), k-fold cross-validation accuracy (mean and std over folds, the folds
scikit-learn's StratifiedKFold(k, shuffle=True, random_state=data.seed) makes of
train+validation) with train.epochs multiplied by each factor. The test split is never read,
so what it says can guide a search space without leaking test into the choice.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from sweeps.record.history import HistoryFile
from sweeps.record.layout import SweepFolder
from sweeps.spec.document import trial_config_with
from trainers.loop import Trial
from trainers.metrics import fold_keys


def cross_validated(config: dict, folds: int, epochs: int) -> tuple[float, float]:
    """Mean and std over folds of the final validation accuracy of ``config``."""
    cfg = trial_config_with({}, config | {"data.folds": folds, "train.epochs": epochs})
    final = Trial(cfg).run()
    accs = [final[k] for k in fold_keys(final)]
    return float(np.mean(accs)), float(np.std(accs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a finished sweep's folder, runs/NAME")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--times", type=float, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    torch.set_num_threads(1)
    files = SweepFolder(args.folder.resolve())
    table = pd.read_csv(files.results)
    history = HistoryFile(files.history).read(files.name)
    for _, row in table[table["chosen"].fillna("") != ""].iterrows():
        config = history.trials[row["trial_id"]].config
        base = int(config["train.epochs"])
        cells = []
        for factor in args.times:
            mean, std = cross_validated(config, args.folds, round(base * factor))
            cells.append(f"{round(base * factor)} epochs {mean:.4f} ({std:.4f})")
        print(f"{row['chosen']:<14} {config['model.loss']:<8} " + "   ".join(cells), flush=True)


if __name__ == "__main__":
    main()
