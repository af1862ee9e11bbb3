"""Orchestration overhead of a sweep: its wall time against the training time of its trials.

    python bench/sweep_overhead.py [--config configs/digits_asha.yaml] [--set key=value ...]
    python bench/sweep_overhead.py --long          # 64 trials that each train about 2 s
    python bench/sweep_overhead.py --scaling [--sizes 32,128,512,2048]
    python bench/sweep_overhead.py --floor         # what Ray Tune and MLflow cost by themselves

Each sweep runs as `sweep run` would for a user: its own process in a temporary folder, timed
from the process's start to its exit (imports, Ray's start and stop, the MLflow store made,
results and the best model's test included). The summed training time is every trial's
per-epoch training time from the sweep folder's record, and the MLflow store is checked to
hold one run per trial with one point per epoch.

- parallel efficiency = summed training time / (wall time x concurrent trial slots), the
  slots being the trials the machine runs at once (cores / resources.cpu, or
  search.max_concurrent); 100% is every core training all the time. Given end to end, and
  while trials train (from the first epoch's start to the last one's end: the fixed cost of
  starting and stopping left out).
- In the same run (default; --no-bare skips it): the same config's workload under Ray Tune
  used bare, its own process too: a plain function trainable that builds the project's
  trainers.loop.Trial and reports every epoch with tune.report, reused actors, the same search
  space, seed and ASHA, default ray.init, no checkpoints, no MLflow. Its data is loaded once
  per worker, as the sweep's trainable does, so the two differ in orchestration only.
- --scaling: random search over 2-epoch digits trials, one sweep per size; wall time against
  trials fitted by least squares: the intercept is the fixed cost, the slope the marginal
  cost per trial; per size, the marginal cost (wall - fixed) / trials and the start-up and
  wind-down measured directly (process start to the first epoch's start, last epoch's end to
  the process's exit).
- --floor: the least any sweep built on these parts can cost here. Ray Tune alone: two trials
  of a function that reports once, in a process of its own (import, ray.init as the sweep
  calls it, fit with reused actors, shutdown). MLflow alone: runs as a trial's are written
  (create_run; one log_batch of 70 points, 6 params and 3 tags; set_terminated) into a new
  SQLite store without fsync, as the sweep's writer thread writes them; the time per run, and
  what 2,048 runs take at that rate.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SWEEP = str(Path(sys.executable).with_name("sweep"))
LONG = [  # trials of about 2 s of training each on a 2-core machine
    "search.type=random",
    "search.num_samples=64",
    "train.epochs=400",
    "train.batch_size=64",
]
SCALING_SIZES = [32, 128, 512, 2048]
SCALING = {  # the --scaling sweeps: digits, 2 epochs, random search
    "data": {"source": "digits", "seed": 0},
    "train": {"epochs": 2, "batch_size": 64, "optimizer": "momentum", "schedule": "constant"},
    "search": {"type": "random", "metric": "val_acc", "seed": 0},
    "space": {"train.lr": {"loguniform": [1.0e-3, 0.3]}},
    "resources": {"cpu": 1, "gpu": 0},
}


# ---------------------------------------------------------------- the sweep, as a user runs it
def sweep_run(doc: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """`sweep run` on ``doc`` in ``workdir``; its wall time and what the record says."""
    from sweeps.record.history import HistoryFile

    config = workdir / f"{doc['name']}.yaml"
    config.write_text(yaml.safe_dump(doc))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    began = time.time()
    done = subprocess.run(
        [SWEEP, "run", str(config)], cwd=workdir, env=env, capture_output=True, text=True
    )
    ended = time.time()
    if done.returncode != 0:
        sys.exit(f"sweep run exited {done.returncode}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    history = HistoryFile(workdir / "runs" / doc["name"] / "history.jsonl").read(doc["name"])
    epochs = [m for t in history.trials.values() for m in t.results]
    per_trial = [sum(m["epoch_seconds"] for m in t.results) for t in history.trials.values()]
    check_mlflow(workdir, doc["name"], len(history.trials), len(epochs))
    first, last = span(epochs)
    return {
        "wall": ended - began,
        "train": sum(per_trial),
        "trials": len(history.trials),
        "epochs": len(epochs),
        "median_trial_train": statistics.median(per_trial),
        "to_first_epoch": first - began,
        "after_last_epoch": ended - last,
        "span": last - first,
    }


def span(epochs: list[dict[str, Any]]) -> tuple[float, float]:
    """When the first epoch started and the last ended (``time``: its end, in ms)."""
    return (
        min(m["time"] / 1000 - m["epoch_seconds"] for m in epochs),
        max(m["time"] / 1000 for m in epochs),
    )


def check_mlflow(workdir: Path, name: str, trials: int, epochs: int) -> None:
    """The store holds the sweep as the record does: a run per trial, a point per epoch."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], "tags.`sweep.trial_id` != ''", max_results=50000)
    runs = [r for r in runs if "sweep.role" not in r.data.tags]  # not the chosen one's refit
    points = sum(len(client.get_metric_history(r.info.run_id, "val_acc")) for r in runs)
    if len(runs) != trials or points != epochs:
        sys.exit(f"MLflow holds {len(runs)} runs, {points} points; the record {trials}, {epochs}")


# ---------------------------------------------------------------- Ray Tune used bare
@functools.lru_cache(maxsize=4)
def _bare_datasets(data_json: str) -> list:
    from trainers.config import trial_config
    from trainers.data import prepare

    return prepare(trial_config({"data": json.loads(data_json)}).data)


def bare_trainable(config: dict[str, Any], sections: dict[str, Any], cpus: float) -> None:
    """The project's trainer, one tune.report per epoch, nothing else."""
    from dataclasses import asdict

    import torch
    from ray import tune

    from sweeps.spec.document import trial_config_with
    from trainers.loop import Trial

    torch.set_num_threads(max(1, int(cpus)))
    cfg = trial_config_with(sections, config)
    trial = Trial(cfg, _bare_datasets(json.dumps(asdict(cfg.data), sort_keys=True)))
    trial.run(lambda metrics, _: tune.report({**metrics, "time": time.time() * 1000}))


def bare_main(config: str, storage: str) -> None:
    """The process of the bare run: prints its summed training time as JSON."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from sweeps.spec.document import load
    from sweeps.spec.sweep import sweep_spec

    saved = dict(os.environ)
    from sweeps.search.draws import (
        search_space,  # (the same space; its Ray settings are undone here)
    )

    os.environ.clear()
    os.environ.update(saved)

    spec = sweep_spec(load(config))
    s = spec.search
    scheduler = FIFOScheduler()
    if s.type == "asha":
        scheduler = ASHAScheduler(
            time_attr="epoch",
            max_t=spec.trial.train.epochs,
            grace_period=s.grace_period,
            reduction_factor=s.reduction_factor,
            brackets=s.brackets,
        )
    cpu = spec.resources.cpu
    trainable = tune.with_resources(
        tune.with_parameters(bare_trainable, sections=spec.sections, cpus=cpu), {"cpu": cpu}
    )
    grid = tune.Tuner(
        trainable,
        param_space=search_space(spec),
        tune_config=tune.TuneConfig(
            metric=s.metric,
            mode=s.mode,
            num_samples=s.num_samples,
            scheduler=scheduler,
            search_alg=BasicVariantGenerator(random_state=s.seed, max_concurrent=s.max_concurrent),
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(storage_path=storage, name="bare", verbose=0),
    ).fit()
    epochs = [row for r in grid for row in r.metrics_dataframe.to_dict("records")]
    first, last = span(epochs)
    train = sum(m["epoch_seconds"] for m in epochs)
    print(json.dumps({"train": train, "span": last - first}))


def bare_run(doc: dict[str, Any], workdir: Path) -> dict[str, Any]:
    config = workdir / "bare.yaml"
    config.write_text(yaml.safe_dump(doc))
    return in_process_of_its_own("the bare run", f"bare_main({str(config)!r}, {str(workdir)!r})")


def in_process_of_its_own(what: str, call: str) -> dict[str, Any]:
    """``call`` (a function of this module, with its arguments) run in a new Python process,
    timed from its start to its exit: its wall time and the JSON it printed last. The module
    is imported by name (not run as __main__), so that Ray's workers find its trainables."""
    path = os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": path}
    main = f"import {Path(__file__).stem} as b; b.{call}"
    began = time.time()
    done = subprocess.run([sys.executable, "-c", main], env=env, capture_output=True, text=True)
    wall = time.time() - began
    if done.returncode != 0:
        sys.exit(f"{what} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return {"wall": wall, **json.loads(done.stdout.strip().splitlines()[-1])}


# ---------------------------------------------------------------- floors
def noop_trainable(config: dict[str, Any]) -> None:
    from ray import tune

    tune.report({"x": config["x"]})


def ray_floor_main(storage: str) -> None:
    """The process of the Ray floor: prints its phases as JSON."""
    began = time.time()
    import ray
    from ray import tune

    imported = time.time()
    ray.init(include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    started = time.time()
    tune.Tuner(
        noop_trainable,
        param_space={"x": tune.grid_search([1, 2])},
        tune_config=tune.TuneConfig(reuse_actors=True),
        run_config=tune.RunConfig(storage_path=storage, name="floor", verbose=0),
    ).fit()
    fitted = time.time()
    ray.shutdown()
    phases = [imported - began, started - imported, fitted - started, time.time() - fitted]
    print(json.dumps(dict(zip(["import", "ray.init", "fit", "shutdown"], phases))), flush=True)
    os._exit(0)  # as the sweep executable ends: no interpreter teardown


def mlflow_floor(workdir: Path, runs: int = 256) -> float:
    """Seconds per run written as the sweep's writer thread writes a trial's."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    from sweeps.tracking.store import sqlite_without_fsync

    sqlite_without_fsync()
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating tables"
    client = MlflowClient(f"sqlite:///{workdir}/floor.db")
    experiment = client.create_experiment("floor")
    now = int(time.time() * 1000)
    metrics = [Metric(f"m{k}", 0.5, now, epoch) for k in range(7) for epoch in range(10)]
    params = [Param(f"p{k}", str(k)) for k in range(6)]
    tags = [RunTag(f"t{k}", "x") for k in range(3)]

    def write() -> None:
        run = client.create_run(experiment, run_name="floor")
        client.log_batch(run.info.run_id, metrics=metrics, params=params, tags=tags)
        client.set_terminated(run.info.run_id)

    for _ in range(8):  # warm-up: the store's first runs
        write()
    began = time.perf_counter()
    for _ in range(runs):
        write()
    return (time.perf_counter() - began) / runs


def floors() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ray = in_process_of_its_own("the Ray floor", f"ray_floor_main({tmp!r})")
        per_run = mlflow_floor(Path(tmp))
    phases = ", ".join(f"{k} {ray[k]:.1f}" for k in ("import", "ray.init", "fit", "shutdown"))
    print(f"load average at the end  {os.getloadavg()[0]:.2f} (1 min)")
    print(f"Ray Tune alone, 2 trials that report once: {ray['wall']:.1f} s end to end")
    print(f"  ({phases} s; the rest is the interpreter's start)")
    print(f"MLflow alone, a trial's run written: {1000 * per_run:.1f} ms")
    print(f"  (2,048 runs: {2048 * per_run:.1f} s on one thread)")


# ---------------------------------------------------------------- reports
def slots(doc: dict[str, Any]) -> int:
    """Trials the machine runs at once: its cores over each trial's CPUs, or fewer."""
    cores = len(os.sched_getaffinity(0))
    cpu = float((doc.get("resources") or {}).get("cpu", 1))
    at_once = max(1, int(cores // cpu))
    limit = int((doc.get("search") or {}).get("max_concurrent") or 0)
    return min(at_once, limit) if limit else at_once


def efficiency(train: float, wall: float, n: int) -> str:
    return f"{100 * train / (wall * n):5.1f} %"


def compare(doc: dict[str, Any], bare: bool) -> None:
    n = slots(doc)
    with tempfile.TemporaryDirectory() as tmp:
        other = bare_run(doc, Path(tmp)) if bare else None
        ours = sweep_run(doc, Path(tmp))
    print(f"load average at the end  {os.getloadavg()[0]:.2f} (1 min)")
    print(f"trials                   {ours['trials']}")
    print(f"epochs trained           {ours['epochs']}")
    print(f"training per trial       {ours['median_trial_train']:8.2f} s (median)")
    print(f"concurrent trial slots   {n}")
    print(f"sweep wall time          {ours['wall']:8.1f} s (end to end: process start to exit)")
    print(f"  to the first epoch     {ours['to_first_epoch']:8.1f} s")
    print(f"  after the last epoch   {ours['after_last_epoch']:8.1f} s")
    print(f"summed training time     {ours['train']:8.1f} s")
    print(f"overhead ratio wall/train {ours['wall'] / ours['train']:7.2f}   (ideal: {1 / n:.2f})")
    print(f"parallel efficiency      {efficiency(ours['train'], ours['wall'], n)} (end to end)")
    print(
        f"  while trials train     {efficiency(ours['train'], ours['span'], n)} (epoch 1 to last)"
    )
    print(f"wall time per trial      {ours['wall'] / ours['trials']:8.2f} s")
    print(f"wall time per epoch      {1000 * ours['wall'] / ours['epochs']:8.1f} ms")
    if other is not None:
        print()
        print("Ray Tune used bare, same workload, same run (no checkpoints, no MLflow):")
        print(f"  wall time              {other['wall']:8.1f} s")
        print(f"  summed training time   {other['train']:8.1f} s")
        print(
            f"  parallel efficiency    {efficiency(other['train'], other['wall'], n)} (end to end)"
        )
        print(f"    while trials train   {efficiency(other['train'], other['span'], n)}")
        print(f"  sweep run / bare       {ours['wall'] / other['wall']:8.2f}")


def scaling(sizes: list[int]) -> None:
    rows = []
    for size in sizes:
        doc = {**SCALING, "name": f"scaling{size}"}
        doc["search"] = {**SCALING["search"], "num_samples": size}
        with tempfile.TemporaryDirectory() as tmp:
            rows.append({"size": size, **sweep_run(doc, Path(tmp))})
        r = rows[-1]
        print(f"  {size} trials: {r['wall']:.1f} s (load {os.getloadavg()[0]:.2f})", flush=True)
    fixed, slope = 0.0, rows[0]["wall"] / rows[0]["size"]
    if len(rows) > 1:
        xs, ys = [r["size"] for r in rows], [r["wall"] for r in rows]
        slope, fixed = statistics.linear_regression(xs, ys)
    print()
    print("| trials | wall s | to 1st epoch s | after last s | (wall - fixed) / trial s |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        marginal = (r["wall"] - fixed) / r["size"]
        print(
            f"| {r['size']} | {r['wall']:.1f} | {r['to_first_epoch']:.1f} | "
            f"{r['after_last_epoch']:.1f} | {marginal:.3f} |"
        )
    print(f"fixed cost (intercept) {fixed:.1f} s; marginal cost (slope) {slope:.3f} s per trial")
    for a, b in zip(rows, rows[1:]):
        step = (b["wall"] - a["wall"]) / (b["size"] - a["size"])
        print(f"marginal cost from {a['size']} to {b['size']} trials: {step:.3f} s per trial")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs/digits_asha.yaml"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--long", action="store_true", help="trials of about 2 s each")
    parser.add_argument("--no-bare", action="store_true", help="skip the bare Ray Tune run")
    parser.add_argument("--scaling", action="store_true", help="wall time against trials")
    parser.add_argument("--sizes", default=",".join(map(str, SCALING_SIZES)))
    parser.add_argument("--floor", action="store_true", help="Ray Tune and MLflow alone")
    args = parser.parse_args()
    if args.floor:
        floors()
        return
    if args.scaling:
        scaling([int(n) for n in args.sizes.split(",")])
        return
    from sweeps.spec import document

    doc = document.load(args.config, [*(LONG if args.long else []), *args.set])
    doc["name"] = doc.get("name") or "bench"
    compare(doc, bare=not args.no_bare)


if __name__ == "__main__":
    main()
