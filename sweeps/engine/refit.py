"""The chosen config retrained on train+validation, as scikit-learn's ``refit``, on the driver.

Selection needs a validation split (or k folds), but once a config is chosen those examples
are only held back from the model that will be used: GridSearchCV retrains its best estimator
on all of them, and so does this. The refit repeats the chosen trial's config exactly (its
hyperparameters, train.seed and train.epochs) on ``trainers.data.refit_dataset``: train and
validation together (with folds: all of train+validation, once), standardized with their own
statistics, prepared once into the sweep folder and memory-mapped (trainers.prepared) as the
trials' data is. Its one output is the model that gets the look at the test split.

Epochs: always the config's ``train.epochs``, also for a trial ASHA stopped early. ASHA's stop
is a decision about where to spend compute, not a hyperparameter, and the lr schedule is a
function of train.epochs: a trial stopped at epoch 3 of 30 was trained at a cosine lr that had
not decayed yet, and was chosen for what it showed by then; its config, run as configured, is
the full 30 epochs (a completed trial's epochs_run is the same number).

It runs in the driver's process, one refit after the other, with no Ray: a linear model trains
in seconds to minutes. Each epoch is recorded like a trial's (sweeps.engine.recorder.Recorder: the
folder's history.jsonl, then an MLflow child run tagged ``sweep.role=refit``). It checkpoints
as a trial does: once CHECKPOINT_S seconds of training are unsaved, when a stop is asked for,
and at its end (a checkpoint an epoch cost more than a digits epoch's training). A refit
killed mid-way goes on from its last checkpoint on resume, exactly, and its run is the same
one: the epochs trained again are in the record already, which keeps them once.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from sweeps.engine import hold, stopping
from sweeps.engine.cadence import CHECKPOINT_S
from sweeps.engine.recorder import Recorder
from sweeps.record.layout import SweepFolder
from sweeps.record.outcomes import Outcome
from sweeps.spec.document import trial_config_with
from trainers.loop import CHECKPOINT_FILE, Trial
from trainers.prepared import shared


@dataclass
class Model:
    """The model a chosen trial's test look is taken on."""

    folder: Path  # a folder holding trial.pt
    evaluated: str  # "refit" or "checkpoint" (the trial's own, as trained in the sweep)
    note: str  # for the terminal and results.csv: what was trained on what
    refit_id: str | None = None  # the refit's id in the record and MLflow (sweep.trial_id)


def refit_id(trial_id: str) -> str:
    return f"refit_{trial_id}"


def refit(files: SweepFolder, recorder: Recorder, trial_id: str, cpus: float) -> Model | None:
    """Retrain trial ``trial_id``'s config on train+validation, or go on with a refit cut
    short; a refit already complete in the record is not trained again. None if it diverged
    (the caller falls back to the trial's checkpoint). ``cpus``: a trial's threads, as Ray
    gave it (more threads than cores slow these small products down many times)."""
    history = recorder.history
    source, rid, folder = history.trials[trial_id], refit_id(trial_id), files.refit(trial_id)
    record = history.refits.get(rid)
    if record is None:  # a checkpoint the record does not know of is from a voided try
        shutil.rmtree(folder, ignore_errors=True)
    config = source.config
    if config["train.device"] == "cuda" and not torch.cuda.is_available():
        config = config | {"train.device": "cpu"}  # GPU trials ran on workers; this driver has none
    cfg = trial_config_with({}, config)
    datasets = shared(cfg.data, files.prepared, refit=True)  # mapped: no copy of its own
    note = (
        f"refit on train+validation, {len(datasets[0].train.y)} examples, {cfg.train.epochs} epochs"
    )
    if source.last_epoch < cfg.train.epochs:
        note += f" (the trial was stopped at epoch {source.last_epoch})"
    if record is not None and record.end is not None:  # ended before a kill: not again
        if record.end["outcome"] == Outcome.DIVERGED:
            return None
        if (folder / CHECKPOINT_FILE).exists():
            return Model(folder, "refit", note, rid)
    resumed = (folder / CHECKPOINT_FILE).exists()
    torch.set_num_threads(max(1, int(cpus)))
    trial = Trial.load(folder, datasets) if resumed else Trial(cfg, datasets, refit=True)
    recorder.refit_started(rid, trial_id, source.params, source.config)
    since = f", from epoch {trial.epoch}" if resumed else ""
    print(f"trial {trial_id}: {note}{since}", flush=True)
    folder.mkdir(parents=True, exist_ok=True)

    saved = time.monotonic()

    def on_epoch(metrics: dict, current: Trial) -> None:
        nonlocal saved
        recorder.refit_result(rid, metrics)  # before the save: a kill between replays it
        hold.point(f"refit-epoch-{current.epoch}")
        if stopping.asked() or time.monotonic() - saved >= CHECKPOINT_S:
            current.save(folder)
            saved = time.monotonic()
        stopping.check()  # Ctrl-C: stop here, the epoch recorded and saved

    trial.run(on_epoch)
    trial.save(folder)  # the model the test look loads; before its end is recorded
    recorder.refit_ended(
        rid, Outcome.DIVERGED if trial.diverged else Outcome.COMPLETED, trial.epoch
    )
    if trial.diverged:
        print(f"trial {trial_id}: the refit diverged; its checkpoint gets the test look")
        return None
    return Model(folder, "refit", note, rid)
