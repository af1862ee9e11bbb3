"""Running a sweep end to end, on the driver.

config -> spec (validated) -> every check that writes nothing: the tracking store answers,
the storage can be written, the data fits, Ray can hold a trial -> the sweep folder, locked
for the driver's life (one driver per sweep) -> the store given what the folder's record has
and it lacks -> Ray Tune trials (each event recorded in the folder, then in MLflow) ->
results.csv -> the chosen config retrained on train+validation (search.refit) -> that model's
one look at the test split -> the parent run closed.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from sweeps.engine import fused, hold, ray_process, ray_tune, stopping
from sweeps.engine.recorder import Recorder
from sweeps.engine.refit import Model, refit
from sweeps.engine.stopping import EXIT_INTERRUPTED
from sweeps.record.disk import DiskFull, Watch, quiet
from sweeps.record.history import HistoryFile, SweepHistory
from sweeps.record.layout import SweepFolder
from sweeps.record.lock import SweepLock
from sweeps.record.outcomes import CHOOSABLE, SweepOutcome
from sweeps.record.results import first_error_line, format_table, mark_chosen, trial_row, write_csv
from sweeps.spec.document import save_document, trial_config_with
from sweeps.spec.sweep import (
    ALL_CHILD_RUNS,
    SweepSpec,
    asks_cuda,
    check_data,
    check_same_sweep,
    check_storage,
    folder_exists,
    folder_taken,
)
from sweeps.tracking.store import usable_store
from sweeps.tracking.sync import CHILD_RUNS, sync
from sweeps.tracking.uri import sqlite_file
from sweeps.tracking.writer import SweepTracker, recorded_store
from sweeps.view.live import LiveView
from trainers.config import ConfigError
from trainers.loop import Trial
from trainers.prepared import shared

EXIT_FAILED = 1


POPULATION_SIZE = "search.population_size"  # fused: kept, so that a resume keeps the populations


def sweep_params(spec: SweepSpec) -> dict[str, Any]:
    """What the parent run records about the sweep itself."""
    return {
        "search.type": spec.search.type,
        "search.metric": spec.search.metric,
        "search.num_samples": spec.search.num_samples,
        "data.source": spec.trial.data.source,
        "data.path": spec.trial.data.path or "",
        "data.folds": spec.trial.data.folds,
        "search.refit": spec.search.refit,
        "space": json.dumps(spec.space.doc()),
    } | (
        ({POPULATION_SIZE: spec.search.population_size} if spec.search.engine == "fused" else {})
        | ({CHILD_RUNS: spec.child_runs} if spec.child_runs != ALL_CHILD_RUNS else {})
    )


def run(spec: SweepSpec, doc: dict[str, Any], resume: bool = False, exiting: bool = False) -> int:
    """Run or resume a sweep; returns the exit code. With ``resume``, a sweep whose folder
    holds no Ray state yet starts, so a requeued SLURM job can always pass ``--resume``.
    ``exiting``: the caller ends the process right after (the ``sweep`` executable): Ray's
    local processes are then killed rather than stopped (``ray_process.kill_local``); a cluster
    drops a dead driver's trials. A stop signal at any moment ends it with EXIT_INTERRUPTED, the
    sweep's state saved (sweeps/engine/stopping.py)."""
    stopping.install()
    files = spec.files
    recorded = recorded_store(files.state)  # where its runs are, if it ran (damaged: refused)
    tracking_uri = usable_store(spec.tracking_uri, Path.cwd(), recorded=recorded)
    disks = Watch(files.root, sqlite_file(tracking_uri))
    lock = SweepLock(files)
    code = None
    try:
        with stopping.deferred():
            history = None
            if folder_exists(spec):
                if resume:  # before the lock: a refusal leaves the folder as it was
                    check_same_sweep(spec)
                claim(spec, lock, resume)
                history = HistoryFile(files.history).read(spec.name)  # damaged: refused now
            else:
                check_storage(spec)
            disks.check()  # before the sweep writes anything (its lock aside)
            quiet()
            resources = None
            if history is None or not history.completed:  # a completed sweep needs no Ray
                data = check_data(spec)  # every corner of the searched data keys
                with stopping.ray_starting():
                    cluster = ray_process.connect()
                stopping.check()  # a stop that came while Ray started (and maybe cut it short)
                local = "RAY_ADDRESS" not in os.environ
                resources = trial_resources(spec, cluster, local=local)
                kept = history.params.get(POPULATION_SIZE) if history is not None else None
                spec = fused.sized(spec, data, resources, cluster.get("CPU", 1.0), kept)
                hold.point("ray-started")
            stopping.check()  # before the folder is made
            if not lock.held and not lock.create():
                claim(spec, lock, resume)  # another driver made the folder since we looked
        code = drive(spec, doc, files, tracking_uri, resources, disks)
        return code
    except Exception as err:
        if (full := disks.error(err)) is None:
            raise
        code = out_of_space(files, full)
        return code
    except KeyboardInterrupt:  # before the sweep (re)started, or a second signal
        code = EXIT_INTERRUPTED
        if lock.held:
            print(f"interrupted; continue with: sweep resume {spec.name}", flush=True)
        else:
            print(f"interrupted before sweep {spec.name} started; nothing written", flush=True)
        return code
    finally:
        if exiting:
            ray_process.kill_local()
        else:
            ray_process.shutdown()
        lock.release()


def claim(spec: SweepSpec, lock: SweepLock, resume: bool) -> None:
    """Lock an existing sweep folder to resume it; anything else is refused."""
    if resume:
        lock.take()
        return
    if spec.files.lock.exists():  # say "already running" rather than "already exists" if so
        lock.take()
        lock.release()
    raise folder_taken(spec)


def drive(
    spec: SweepSpec,
    doc: dict[str, Any],
    files: SweepFolder,
    tracking_uri: str,
    resources: dict[str, float] | None,
    disks: Watch,
) -> int:
    """The locked part: records brought into MLflow, Ray's trials, the end of the sweep. A
    stop waits for the writes around Ray Tune; while Tune runs, Tune stops it."""
    with stopping.deferred():
        if not files.config.exists():
            save_document(files, {**doc, "name": spec.name})
        record = HistoryFile(files.history)
        history = record.read(spec.name)
        tracker = SweepTracker(tracking_uri, history.experiment, files.state)
        if history.started:
            sync(history, tracker, files.best())  # a store deleted, moved or new gets the sweep
    if history.completed:
        print(f"sweep {spec.name} is complete, nothing to run; results in {files.results}")
        if not (files.report / "index.html").exists():  # interrupted while it was drawn
            return write_report(files, tracking_uri)
        return 0
    ray_tune.check_draws(spec, files, history.trials)
    recorder = Recorder(history, record, tracker, disks)
    fresh = not ray_tune.can_resume(files)
    try:
        with stopping.deferred():
            granted = {f"resources.{k}": v for k, v in (resources or {}).items()}
            recorder.start_sweep(sweep_params(spec) | granted, fresh=fresh)
            print(f"sweep {spec.name}: {spec.num_trials()} trials, results in {files.root}")
            print(f"MLflow: {tracking_uri} (experiment {history.experiment})", flush=True)
            recorder.view = live_view(spec, history)
            stopping.check()
            with recorder.view:
                checkpoints = ray_tune.fit(spec, files, recorder, resources, resume=not fresh)
            stopping.check()  # Tune stopped by a signal (even if every trial ended meanwhile)
            if recorder.history.finished(spec.num_trials()):  # (so not stopped by Tune)
                ray_process.stop_in_background()
            code = finish(spec, files, recorder, checkpoints)
        return write_report(files, tracking_uri) if code == 0 else code
    except KeyboardInterrupt:  # before or in Ray Tune, in the refit, or before the test look
        return interrupted(spec, recorder)


def out_of_space(files: SweepFolder, full: DiskFull) -> int:
    """The one line of a sweep stopped by a full disk; its exit code (failed: a SLURM job
    requeued at once would find the disk as full)."""
    then = f"continue with: sweep resume {files.name}" if files.config.exists() else "run it again"
    print(f"error: {full}; free space there, then {then}", file=sys.stderr, flush=True)
    return EXIT_FAILED


def live_view(spec: SweepSpec, history: SweepHistory) -> LiveView:
    """The terminal's view of the sweep (plain lines when output is not a terminal); on a
    resume it counts the trials that ended before, and ranks them for the best so far."""
    s = spec.search
    prior = {
        i: (t.end["outcome"], t.final(s.metric), t.params)
        for i, t in history.trials.items()
        if t.end is not None
    }
    return LiveView(spec.num_trials(), s.metric, s.mode, spec.name, prior=prior)


def write_report(files: SweepFolder, tracking_uri: str) -> int:
    """The HTML report of a completed sweep (sweep report); the exit code. A failure to draw it
    is said, but does not undo a finished sweep; an interrupt while drawing it exits 130."""
    from sweeps.view.report import report

    retry = f"draw it with: sweep resume {files.name}"
    try:
        hold.point("report")
        stopping.check()  # asked while the sweep's end was recorded
        page = report(files.root, tracking_uri=tracking_uri)
    except KeyboardInterrupt:
        print(f"interrupted: the sweep is complete, its report not written; {retry}")
        return EXIT_INTERRUPTED
    except Exception as err:  # noqa: BLE001 - the sweep's results are complete either way
        print(f"report not written ({first_error_line(err)}); {retry}")
        return 0
    print(f"report: {page}", flush=True)
    return 0


def trial_resources(spec: SweepSpec, cluster: dict[str, float], local: bool) -> dict[str, float]:
    """Per-trial resources. A local Ray is one node: a trial it cannot hold is refused (it
    would wait forever), except GPU trials without a GPU, which fall back to the CPU (unless
    told train.device cuda: refused, as they would fail). On a cluster (RAY_ADDRESS set) nodes
    may join later (a SLURM workers-mode head has none), so the request stands."""
    cpu, gpu = spec.resources.cpu, spec.resources.gpu
    if local and gpu > 0 and cluster.get("GPU", 0) == 0:
        if cuda := asks_cuda(spec.trial, spec.space):  # (resources.gpu 0: sweep_spec refused)
            said, fix = cuda
            raise ConfigError(
                f"{said} but this machine's Ray has no GPU, so no trial gets one; {fix}"
            )
        print("no GPU in this Ray cluster: trials run on the CPU", flush=True)
        gpu = 0.0
    for key, want in (("cpu", cpu), ("gpu", gpu)):
        have = cluster.get(key.upper(), 0)
        if local and want > have:
            raise ConfigError(
                f"resources.{key} must be <= the {have:g} {key.upper()}s of this machine's Ray "
                f"(no trial could start); got {want:g}"
            )
    return {"cpu": cpu, "gpu": gpu}


# ---------------------------------------------------------------- the end of a sweep
def finish(
    spec: SweepSpec, files: SweepFolder, recorder: Recorder, checkpoints: dict[str, Path]
) -> int:
    """After Ray returns: interrupted, failed (no trial finished), or completed with a best."""
    history = recorder.history
    # Ray marks every trial TERMINATED after a Ctrl-C, SIGTERM or SIGUSR1, so ask the record:
    # a trial never started, or started and never ended, means the sweep did not finish.
    if not history.finished(spec.num_trials()):
        return interrupted(spec, recorder)
    if recorder.disks is not None:  # the results, refit and test look write to the folder
        recorder.disks.check(len(history.trials))
    table = write_results(spec, files, history)
    eligible = table[table["status"].isin(CHOOSABLE)]
    if eligible.empty:
        return failed(recorder, history)
    chosen = choose(spec, eligible)
    models = chosen_models(spec, files, recorder, chosen, checkpoints)
    hold.point("test-look")
    stopping.check()  # the last point to stop at: the test look is recorded at once
    best = look_at_test(files, chosen, history, models)
    mark_chosen(table, best["looks"], files.results)
    recorder.end_sweep(SweepOutcome.COMPLETED, best=best, artifact_dir=files.best())
    print(f"results: {files.results}; compare runs with: sweep ui", flush=True)
    return 0


def interrupted(spec: SweepSpec, recorder: Recorder) -> int:
    recorder.end_sweep(SweepOutcome.INTERRUPTED)
    print(f"interrupted; continue with: sweep resume {spec.name}", flush=True)
    return EXIT_INTERRUPTED


def failed(recorder: Recorder, history: SweepHistory) -> int:
    first = next((t.end["error"] for t in history.trials.values() if t.end["error"]), None)
    why = first_error_line(first) if first is not None else "every trial diverged"
    recorder.end_sweep(SweepOutcome.FAILED)
    print(f"error: no trial finished; first error: {why}", flush=True)
    return EXIT_FAILED


def write_results(spec: SweepSpec, files: SweepFolder, history: SweepHistory) -> pd.DataFrame:
    """results.csv from the folder's record, best first; the top of it printed."""
    rows = [
        trial_row(trial_id, t.params, pd.DataFrame(t.results), t.end["outcome"], t.end["error"])
        for trial_id, t in history.trials.items()
    ]
    table = write_csv(rows, spec.search.metric, spec.search.mode, files.results)
    print(format_table(table, list(spec.space)), flush=True)
    return table


def choose(spec: SweepSpec, eligible: pd.DataFrame) -> dict[str, pd.Series]:
    """The chosen config, and where the loss is searched the best of each loss, so the
    course's question (softmax or hinge?) is answered too: one look at test for each."""
    chosen = {"best": eligible.iloc[0]}
    if "model.loss" in spec.space:
        chosen |= {loss: group.iloc[0] for loss, group in eligible.groupby("model.loss")}
    return chosen


def chosen_models(
    spec: SweepSpec,
    files: SweepFolder,
    recorder: Recorder,
    chosen: dict[str, pd.Series],
    checkpoints: dict[str, Path],
) -> dict[str, Model]:
    """The model each chosen trial's test look is taken on, by trial id: its refit on
    train+validation (search.refit), else (or if the refit diverged) its own checkpoint."""
    models = {}
    hold.point("refit")
    for trial_id in dict.fromkeys(row["trial_id"] for row in chosen.values()):
        # a pbt member's result is its learnt schedule and inherited weights, which a retrain
        # of the values it started with would not repeat: its own checkpoint has the look
        refits = spec.search.refit and spec.search.type != "pbt"
        model = refit(files, recorder, trial_id, spec.resources.cpu) if refits else None
        if model is None:
            epochs = recorder.history.trials[trial_id].last_epoch
            note = f"its checkpoint (trained on train only, epoch {epochs})"
            model = Model(checkpoints[trial_id], "checkpoint", note)
        models[trial_id] = model
    return models


def look_at_test(
    files: SweepFolder,
    chosen: dict[str, pd.Series],
    history: SweepHistory,
    models: dict[str, Model],
) -> dict[str, Any]:
    """Each chosen trial's model (``chosen_models``) measured once on the test split
    (``measure_on_test``); the best config with every label's validation and test metrics, the
    tags saying which model had the look, and each look (``looks``, for results.csv)."""
    metrics: dict[str, float] = {}
    best: dict[str, Any] = {}
    tags: dict[str, str] = {}
    looks: dict[str, dict[str, Any]] = {}
    for label, row in chosen.items():
        trial_id, model = row["trial_id"], models[row["trial_id"]]
        test = measure_on_test(files, label, model, history.trials[trial_id].config)
        prefix = "" if label == "best" else f"{label}_"
        metrics |= {
            f"{prefix}val_acc": float(row["final_val_acc"]),
            f"{prefix}val_loss": float(row["final_val_loss"]),
        }
        metrics |= {f"{prefix}{k}": v for k, v in test.items()}
        tag = "best" if label == "best" else f"best_{label}"
        params = history.trials[trial_id].params
        tags |= {f"{tag}.trial_id": trial_id, f"{tag}.evaluated": model.evaluated}
        tags |= {f"{tag}.refit_id": model.refit_id} if model.refit_id else {}
        tags |= {f"{tag}.{k}": v for k, v in params.items()} if label != "best" else {}
        look = looks.setdefault(trial_id, {"labels": [], "evaluated": model.note})
        look["labels"].append(label)
        look |= test
        shown = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
        )
        print(f"{label} trial {trial_id}: {shown or 'the base config'}")
        print(
            f"  val_acc {row['final_val_acc']:.4f}  test_acc {test['test_acc']:.4f}  "
            f"test_loss {test['test_loss']:.4f}"
        )
        print(f"  test look on: {model.note}")
        if label == "best":
            best = {"trial_id": trial_id, "config": history.trials[trial_id].config}
    return best | {"metrics": metrics, "tags": tags, "looks": looks}


def measure_on_test(
    files: SweepFolder, label: str, model: Model, config: dict[str, Any]
) -> dict[str, float]:
    """The test metrics of ``model``, copied first into the folder's best model for ``label``.
    Its data is the one it trained on (a refit: train+validation, their scaling), mapped from
    the trials' prepared copy; a GPU trial's model is looked at on the CPU where the driver has
    no GPU, as trainers.loop.evaluate does."""
    target = files.best(label)
    shutil.rmtree(target, ignore_errors=True)  # a resume's earlier copy may be another model
    shutil.copytree(model.folder, target)
    data = trial_config_with({}, config).data
    datasets = shared(data, files.prepared, refit=model.evaluated == "refit")
    return Trial.load(target, datasets, device="auto").evaluate("test")
