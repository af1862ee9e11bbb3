"""Every Ray Tune call of the project: the search space, the trainable, the tuner, the callback.

Ray's reporting API has been renamed several times across versions; keeping it here means one
module to read when Ray moves. MLflow is written only through ``sweeps.tracking``, from the
driver (this module's callback runs there), so one process writes the store.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local, single-user Ray
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no tables; we print our own
# Keeping few checkpoints forces frequent state snapshots; Ray warns each time. We accept it.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

import pandas as pd  # noqa: E402
import ray  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler  # noqa: E402
from ray.tune.search.basic_variant import BasicVariantGenerator  # noqa: E402

from sweeps.config import apply_sets  # noqa: E402
from sweeps.results import first_error_line, outcome  # noqa: E402
from sweeps.spec import SweepSpec  # noqa: E402
from sweeps.tracking import SweepTracker  # noqa: E402
from trainers.config import trial_config  # noqa: E402
from trainers.data import Dataset, prepare  # noqa: E402
from trainers.loop import Trial  # noqa: E402

SEED_KEY = "train.seed"


def can_resume(spec: SweepSpec) -> bool:
    return spec.files.tuner_state.exists()


# ---------------------------------------------------------------- search space
def search_space(spec: SweepSpec) -> dict[str, Any]:
    """Dotted trainer keys to Ray Tune domains."""
    domains = {
        "grid": tune.grid_search,
        "choice": tune.choice,
        "uniform": lambda a: tune.uniform(*a),
        "loguniform": lambda a: tune.loguniform(*a),
        "randint": lambda a: tune.randint(a[0], a[1] + 1),  # [low, high], both included
        "quniform": lambda a: tune.quniform(*a),
        "qloguniform": lambda a: tune.qloguniform(*a),
    }
    space = {key: domains[kind](args) for key, d in spec.space.items() for kind, args in d.items()}
    if spec.search.type == "grid" and spec.search.num_samples > 1 and SEED_KEY not in space:
        space[SEED_KEY] = tune.randint(0, 2**31 - 1)  # each repeat of the grid, its own seed
    return space


def resolved_config(sections: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """A trial's full config as flat dotted keys: the fixed sections with its sampled params."""
    return trial_config(apply_sets(sections, params)).flat()


# ---------------------------------------------------------------- the trainable (on workers)
@functools.lru_cache(maxsize=4)
def _datasets(data_json: str) -> list[Dataset]:
    """Load once per worker process: actors are reused, so later trials skip the load."""
    return prepare(trial_config({"data": json.loads(data_json)}).data)


def trainable(config: dict[str, Any], sections: dict[str, Any], cpus: float) -> None:
    """One trial: train epoch by epoch, report and checkpoint after each."""
    import torch

    torch.set_num_threads(max(1, int(cpus)))
    cfg = trial_config(apply_sets(sections, config))
    datasets = _datasets(json.dumps(asdict(cfg.data), sort_keys=True))
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        trial = Trial(cfg, datasets)
    else:
        with checkpoint.as_directory() as folder:
            trial = Trial.load(folder, datasets)

    def report(metrics: dict[str, Any], current: Trial) -> None:
        with tempfile.TemporaryDirectory() as folder:
            current.save(folder)
            result = {**metrics, "epochs_run": current.epoch}
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(folder))

    trial.run(report)


# ---------------------------------------------------------------- driver-side callback
class TrackingCallback(tune.Callback):
    """Forwards trial events to MLflow through a SweepTracker and prints a line per trial.

    Pickled with the tuner state: it keeps only how to reopen the tracker, whose run ids live
    in a state file, so a restored sweep continues the same MLflow runs.
    """

    def __init__(self, tracking_uri: str, experiment: str, state_file: Path, spec: SweepSpec):
        self.args = (tracking_uri, experiment, state_file)
        self.sections, self.epochs = spec.sections, spec.trial.train.epochs
        self._tracker: SweepTracker | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_tracker": None}

    @property
    def tracker(self) -> SweepTracker:
        if self._tracker is None:
            self._tracker = SweepTracker(*self.args)
        return self._tracker

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.tracker.trial_started(trial.trial_id, resolved_config(self.sections, trial.config))

    def on_trial_result(self, iteration, trials, trial, result: dict, **info: Any) -> None:
        self.tracker.trial_result(trial.trial_id, result)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        metrics = trial.last_result or {}
        epochs = trial.config.get("train.epochs", self.epochs)
        end = outcome(metrics, epochs, error=None)
        self.tracker.trial_ended(trial.trial_id, end, int(metrics.get("epoch", 0)))
        print(
            f"  trial {trial.trial_id}: {end} after {metrics.get('epoch', 0)} epochs, "
            f"val_acc {metrics.get('val_acc', float('nan')):.4f}",
            flush=True,
        )

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # Ray writes the error to the trial's local folder before calling back.
        error = Path(trial.error_file).read_text() if trial.error_file else "unknown error"
        epochs = int((trial.last_result or {}).get("epoch", 0))
        self.tracker.trial_ended(trial.trial_id, "error", epochs, error=str(error))
        print(f"  trial {trial.trial_id}: FAILED: {first_error_line(error)}", flush=True)


# ---------------------------------------------------------------- driver
@dataclass
class TrialRecord:
    """What the driver needs of one finished (or interrupted) trial, free of Ray types."""

    trial_id: str
    params: dict[str, Any]  # the sampled values of the searched keys
    history: pd.DataFrame | None  # one row per reported epoch
    error: Any
    checkpoint: Path | None  # the latest checkpoint folder


def collect(grid: Any) -> list[TrialRecord]:
    """The trials of a ResultGrid, with the ids and configs that the public Result lacks."""
    trials = grid._experiment_analysis.trials  # same order as the grid's results
    return [
        TrialRecord(
            trial_id=trial.trial_id,
            params=dict(trial.config),
            history=result.metrics_dataframe,
            error=result.error,
            checkpoint=Path(result.checkpoint.path) if result.checkpoint else None,
        )
        for trial, result in zip(trials, grid)
    ]


def connect() -> dict[str, float]:
    """Join the Ray cluster named by RAY_ADDRESS (a SLURM job's), else start a local one."""
    if not ray.is_initialized():
        ray.init(
            address=os.environ.get("RAY_ADDRESS"),
            include_dashboard=False,
            logging_level="WARNING",
            log_to_driver=False,
        )
    return ray.cluster_resources()


def shutdown() -> None:
    ray.shutdown()


def fit(spec: SweepSpec, callback: TrackingCallback, resources: dict[str, float], resume: bool):
    """Run (or resume) the sweep to its end; returns Ray's ResultGrid.

    On resume Ray restores the callback pickled with the tuner, which reopens the same runs.
    """
    wrapped = tune.with_resources(
        tune.with_parameters(trainable, sections=spec.sections, cpus=resources["cpu"]),
        resources,
    )
    if resume:
        tuner = tune.Tuner.restore(
            str(spec.files.ray), trainable=wrapped, resume_unfinished=True, resume_errored=True
        )
        return tuner.fit()
    s = spec.search
    if s.type == "asha":
        scheduler = ASHAScheduler(
            time_attr="epoch",  # our epoch count, kept across checkpoint restores
            max_t=spec.trial.train.epochs,
            grace_period=s.grace_period,
            reduction_factor=s.reduction_factor,
            brackets=s.brackets,
        )
    else:
        scheduler = FIFOScheduler()
    tuner = tune.Tuner(
        wrapped,
        param_space=search_space(spec),
        tune_config=tune.TuneConfig(
            metric=s.metric,
            mode=s.mode,
            num_samples=s.num_samples,
            scheduler=scheduler,
            search_alg=BasicVariantGenerator(random_state=s.seed, max_concurrent=s.max_concurrent),
            reuse_actors=True,  # ~0.2 s per trial instead of ~1 s, and the data stays loaded
        ),
        run_config=tune.RunConfig(
            name=spec.files.ray.name,  # Ray syncs over files it finds beside its folder
            storage_path=str(spec.folder),
            callbacks=[callback],
            failure_config=tune.FailureConfig(max_failures=s.max_failures),
            # Two, not one: Ray deletes the older checkpoint before its state snapshot names
            # the newer, so with one a SIGKILL in between leaves the state pointing at nothing.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            verbose=0,
        ),
    )
    return tuner.fit()
