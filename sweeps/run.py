"""Running a sweep end to end, on the driver.

config -> spec (validated, nothing written yet) -> output folder and MLflow parent run ->
Ray Tune trials (each reported to MLflow by the callback) -> results.csv -> the best
config's one look at the test split -> the parent run closed with the best config.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import yaml

from sweeps import tune
from sweeps.layout import DEFAULT_STORAGE, SweepFolder
from sweeps.results import first_error_line, format_table, outcome, trial_row, write_csv
from sweeps.spec import SweepSpec
from sweeps.tracking import SweepTracker, resolve_tracking_uri
from trainers.config import ConfigError
from trainers.data import prepare
from trainers.loop import Trial

EXIT_FAILED, EXIT_INTERRUPTED = 1, 130


def preflight(spec: SweepSpec, resume: bool) -> bool:
    """Every check that needs the disk or the data, before anything is written.

    Returns whether there is a Ray state to resume: ``--resume`` on a sweep that never got
    that far starts it, so a requeued SLURM job can always pass ``--resume``.
    """
    folder = spec.folder
    can_resume = tune.can_resume(spec)
    if not resume and folder.exists():
        raise ConfigError(
            f"{folder} already exists; continue it with --resume, or pick another --name"
        )
    sizes = spec.space.get("train.batch_size", {}).values()
    largest = max([spec.trial.train.batch_size, *(v for args in sizes for v in args)])
    smallest_train = min(len(ds.train.y) for ds in prepare(spec.trial.data))
    if largest > smallest_train:
        raise ConfigError(
            f"train.batch_size must be <= the training split ({smallest_train} examples); "
            f"got {largest}"
        )
    return can_resume


def sweep_params(spec: SweepSpec) -> dict[str, Any]:
    """What the parent run records about the sweep itself."""
    return {
        "search.type": spec.search.type,
        "search.metric": spec.search.metric,
        "search.num_samples": spec.search.num_samples,
        "data.source": spec.trial.data.source,
        "data.path": spec.trial.data.path or "",
        "space": json.dumps(spec.space),
    }


def run(spec: SweepSpec, doc: dict[str, Any], resume: bool = False) -> int:
    """Run or resume a sweep; returns the exit code."""
    # A driver started in the background by a job script inherits SIGINT ignored: restore it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    resume = preflight(spec, resume)
    tracking_uri = resolve_tracking_uri(spec.tracking_uri, Path.cwd())
    folder, files = spec.folder, spec.files
    folder.mkdir(parents=True, exist_ok=True)
    if not files.config.exists():
        files.config.write_text(yaml.safe_dump({**doc, "name": spec.name}))
    tracker = SweepTracker(tracking_uri, spec.name, files.state)
    tracker.start_sweep(sweep_params(spec))
    print(f"sweep {spec.name}: {spec.num_trials()} trials, results in {folder}", flush=True)
    print(f"MLflow: {tracking_uri} (experiment {spec.name})", flush=True)

    try:
        resources = trial_resources(spec, tune.connect(), local="RAY_ADDRESS" not in os.environ)
        # SIGTERM (a scheduler's kill, `kill`) ends the sweep the way Ctrl-C does: state saved.
        # Installed after ray.init, which puts in a handler of its own that just exits.
        signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
        callback = tune.TrackingCallback(tracking_uri, spec.name, files.state, spec)
        records = tune.collect(tune.fit(spec, callback, resources, resume))
    except KeyboardInterrupt:
        tracker.end_sweep("interrupted")
        print(f"interrupted; continue with: sweep resume {spec.name}", flush=True)
        return EXIT_INTERRUPTED
    finally:
        tune.shutdown()
    # The callback's tracker recorded every trial's end; a fresh one reads what it wrote.
    tracker = SweepTracker(tracking_uri, spec.name, files.state)
    return finish(spec, tracker, records)


def trial_resources(spec: SweepSpec, cluster: dict[str, float], local: bool) -> dict[str, float]:
    """Per-trial resources; on a local Ray without GPUs, GPU trials fall back to the CPU.

    On a cluster (RAY_ADDRESS set) GPU workers may join later, so the request stands.
    """
    gpu = spec.resources.gpu
    if local and gpu > 0 and cluster.get("GPU", 0) == 0:
        print("no GPU in this Ray cluster: trials run on the CPU", flush=True)
        gpu = 0.0
    return {"cpu": spec.resources.cpu, "gpu": gpu}


def finish(spec: SweepSpec, tracker: SweepTracker, records: list[tune.TrialRecord]) -> int:
    """results.csv, the test split for the best config, the parent run closed."""
    files, search = spec.files, spec.search
    # Ray marks every trial TERMINATED after a Ctrl-C, SIGTERM or SIGUSR1, so ask MLflow:
    # a trial never started, or whose run is still open, means the sweep did not finish.
    still_open = set(tracker.open_runs()) - {tracker.parent}
    if still_open or len(tracker.trials) < spec.num_trials():
        tracker.end_sweep("interrupted")
        print(f"interrupted; continue with: sweep resume {spec.name}", flush=True)
        return EXIT_INTERRUPTED
    epochs = spec.trial.train.epochs
    rows = []
    for r in records:
        last = r.history.iloc[-1].to_dict() if r.history is not None and len(r.history) else {}
        status = outcome(last, int(r.params.get("train.epochs", epochs)), r.error)
        rows.append(trial_row(r.trial_id, r.params, r.history, status, r.error))
    table = write_csv(rows, search.metric, search.mode, files.results)
    print(format_table(table, list(spec.space)), flush=True)

    eligible = table[table["status"].isin(["completed", "early_stopped"])]
    if eligible.empty:
        first = next((r.error for r in records if r.error is not None), None)
        why = first_error_line(first) if first is not None else "every trial diverged"
        tracker.end_sweep("failed")
        print(f"error: no trial finished; first error: {why}", flush=True)
        return EXIT_FAILED

    # The chosen config, and where the loss is searched the best of each loss, so the
    # course's question (softmax or hinge?) is answered too: one look at test for each.
    chosen = {"best": eligible.iloc[0]}
    if "model.loss" in spec.space:
        chosen |= {loss: group.iloc[0] for loss, group in eligible.groupby("model.loss")}
    metrics, best_trial = {}, None
    for label, row in chosen.items():
        record = next(r for r in records if r.trial_id == row["trial_id"])
        target = files.best(label)
        shutil.copytree(record.checkpoint, target, dirs_exist_ok=True)
        trained = Trial.load(target)
        test = trained.evaluate("test")
        prefix = "" if label == "best" else f"{label}_"
        metrics |= {
            f"{prefix}val_acc": float(row["final_val_acc"]),
            f"{prefix}val_loss": float(row["final_val_loss"]),
        }
        metrics |= {f"{prefix}{k}": v for k, v in test.items()}
        params = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.params.items()
        )
        print(f"{label} trial {record.trial_id}: {params or 'the base config'}")
        print(
            f"  val_acc {row['final_val_acc']:.4f}  test_acc {test['test_acc']:.4f}  "
            f"test_loss {test['test_loss']:.4f}"
        )
        if label == "best":
            best_trial = (record, trained)
    record, trained = best_trial
    tracker.end_sweep(
        "completed",
        best={"trial_id": record.trial_id, "config": trained.cfg.flat(), "metrics": metrics},
        artifact_dir=files.best(),
    )
    print(f"results: {files.results}; compare runs with: sweep ui", flush=True)
    return 0


def load_saved(name: str, storage: str = DEFAULT_STORAGE) -> dict[str, Any]:
    """The config document a sweep was started with, for ``sweep resume NAME``."""
    path = SweepFolder.of(storage, name).config
    if not path.exists():
        raise ConfigError(f"no sweep named {name} under {storage}/ ({path} is missing)")
    return yaml.safe_load(path.read_text())
