"""Fused trials end to end: whole sweeps with `search.engine: fused`, Ray and MLflow included.

    python bench/fused_sweep.py [grid] [asha] [random] [random_best] [random_10k] [--no-baseline]
                                 [--server [sqlite|postgresql]]

grid:   configs/digits_fused.yaml, 256 configurations x 30 epochs, engine fused against one
        Ray trial per configuration (skipped with --no-baseline): wall times, their ratio,
        the best configuration of each, and MLflow's share of the wall time: the tracker's
        calls timed in the sweep's process, those the driver waits on (its own calls and its
        waits for the writer thread) apart from the writer thread's.
asha:   configs/digits_asha.yaml (64 trials) with engine fused.
random: 2,048 random configurations on digits, 10 epochs each, engine fused; checks that
        every configuration is its own MLflow run.
random_best: the same with mlflow.child_runs best:100: runs for the 100 best only.
random_10k: 10,240 random configurations, each its own run.
--server: the store is a real `mlflow server` on 127.0.0.1, which the tracker writes through
MLflow's client, 8 runs at once (sweeps.tracking.writer.WRITERS): ``sqlite`` (the default),
one server worker with a SQLite file behind it; ``postgresql``, 4 server workers with a real
PostgreSQL behind them (tests/postgres.py starts it).
The random cases also time `sweep status` of the finished sweep (its folder and its runs).

Each sweep is the `sweep run` command in a fresh temporary folder (its own mlflow.db); the wall
time is the command's, interpreter start and imports included.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
RANDOM_2048 = [
    "search.type=random",
    "search.num_samples=2048",
    "search.population_size=1024",  # two populations: one per core
    "train.epochs=10",
    "space={model.loss: {choice: [softmax, hinge]}, train.lr: {loguniform: [1.0e-3, 0.3]}, "
    "train.lambda: {loguniform: [1.0e-5, 1.0e-1]}, train.momentum: {uniform: [0.5, 0.95]}, "
    "train.schedule: {choice: [step, cosine]}}",
]
CASES = {  # name -> (config, --set overrides)
    "grid": ("configs/digits_fused.yaml", []),
    "asha": ("configs/digits_asha.yaml", ["search.engine=fused"]),
    "random": ("configs/digits_fused.yaml", RANDOM_2048),
    "random_best": ("configs/digits_fused.yaml", [*RANDOM_2048, "mlflow.child_runs=best:100"]),
    "random_10k": ("configs/digits_fused.yaml", [*RANDOM_2048, "search.num_samples=10240"]),
}
# every SweepTracker method the Recorder, its writer thread and sync call
TRACKER_CALLS = ("open_sweep", "start_sweep", "end_sweep", "ensure_trial")
TRACKER_CALLS += ("log_results", "trial_ended", "write_trial", "write_trials")
TRACKER_CALLS += ("save_state",)


def timed_tracker(totals: dict[str, float]) -> None:
    """Time SweepTracker's public writes (the outermost call only: some call others), apart
    for the driver's thread and the writer thread (sweeps.tracking.writes.TrialWrites), and the
    driver's waits for that thread: what the driver waits on is what MLflow adds to the wall
    time."""
    import threading

    from sweeps.tracking.writer import SweepTracker
    from sweeps.tracking.writes import TrialWrites

    local = threading.local()

    def wrap(method, call=True):
        @functools.wraps(method)
        def timed(*args, **kwargs):
            depth = getattr(local, "depth", 0)
            local.depth = depth + 1
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                local.depth = depth
                if depth == 0:
                    main = threading.current_thread() is threading.main_thread()
                    totals["driver_s" if main else "writer_s"] += time.perf_counter() - start
                    totals["calls"] += call

        return timed

    for name in TRACKER_CALLS:
        setattr(SweepTracker, name, wrap(getattr(SweepTracker, name)))
    TrialWrites.wait = wrap(TrialWrites.wait, call=False)


def child(out: Path, argv: list[str]) -> int:
    """In the sweep's own process: run the CLI with the tracker timed; write the totals."""
    totals = {"driver_s": 0.0, "writer_s": 0.0, "calls": 0}
    timed_tracker(totals)
    from sweeps.cli import main

    try:
        return main(argv)
    finally:
        out.write_text(json.dumps(totals))


def sweep(case: str, engine: str | None = None, server: str | None = None) -> dict:
    """One sweep as a command in a fresh folder: wall time, MLflow time, results, runs. With
    ``server`` (sqlite or postgresql), its store is a real ``mlflow server`` started for it
    with that database behind it."""
    config, sets = CASES[case]
    sets = sets + ([f"search.engine={engine}"] if engine else [])
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        store = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        if server is not None:
            sys.path.insert(0, str(ROOT / "tests"))
            from mlflow_server import mlflow_server
            from postgres import postgres

            store, workers = f"sqlite:///{Path(tmp) / 'server' / 'srv.db'}", 1
            if server == "postgresql":
                (store,), workers = stack.enter_context(postgres("bench")), 4
            url = stack.enter_context(mlflow_server(Path(tmp) / "server", store, workers))
            sets = [*sets, f"mlflow.tracking_uri={url}"]
        out = Path(tmp) / "totals.json"
        overrides = [a for s in sets for a in ("--set", s)]
        args = ["run", str(ROOT / config), "--name", "bench", *overrides]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("MLFLOW_TRACKING_URI", None)
        start = time.perf_counter()
        command = [sys.executable, __file__, "--child", str(out), *args]
        done = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            tail = done.stdout[-2000:] + done.stderr[-2000:]
            raise SystemExit(f"{case} ({engine or 'config'}) failed:\n{tail}")
        totals = json.loads(out.read_text())
        table = pd.read_csv(Path(tmp) / "runs/bench/results.csv")
        start = time.perf_counter()
        status = [str(Path(sys.executable).with_name("sweep")), "status", "bench"]
        subprocess.run(status, cwd=tmp, env=env, capture_output=True, check=True)
        status_s = time.perf_counter() - start
        runs = mlflow_children(store)
        return {"wall_s": wall, **totals, "table": table, "runs": runs, "status_s": status_s}


def mlflow_children(store: str) -> int:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store)
    exp = client.get_experiment_by_name("bench")
    runs = client.search_runs([exp.experiment_id], "tags.`sweep.trial_id` != ''", max_results=50000)
    return sum("sweep.role" not in r.data.tags for r in runs)  # not the chosen ones' refits


def best(table: pd.DataFrame) -> dict:
    row = table.iloc[0]
    return {k: row[k] for k in table.columns if k.startswith(("model.", "train."))} | {
        "final_val_acc": round(float(row["final_val_acc"]), 4)
    }


def line(name: str, r: dict) -> str:
    wall = r["wall_s"]
    return (
        f"{name}: {wall:.1f} s end to end, {len(r['table'])} configurations, "
        f"{r['runs']} MLflow runs; MLflow: the driver waited {r['driver_s']:.1f} s "
        f"({r['driver_s'] / wall:.0%} of the wall time), the writer thread wrote for "
        f"{r['writer_s']:.1f} s ({r['writer_s'] / wall:.0%}, beside the training), "
        f"{r['calls']} tracker calls"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="*", default=list(CASES), help=", ".join(CASES))
    parser.add_argument("--no-baseline", action="store_true", help="grid: skip the per-trial run")
    parser.add_argument(
        "--server",
        nargs="?",
        const="sqlite",
        choices=["sqlite", "postgresql"],
        help="write to a real `mlflow server`, with this database behind it",
    )
    args = parser.parse_args()
    if unknown := set(args.cases) - set(CASES):
        parser.error(f"unknown case {', '.join(sorted(unknown))}; use {', '.join(CASES)}")
    print(f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f} at the start")
    for case in args.cases:
        fused = sweep(case, "fused", args.server)
        print(line(f"{case} fused", fused), flush=True)
        if case == "grid":
            print(f"  best: {best(fused['table'])}")
            if not args.no_baseline:
                trial = sweep(case, "trial")
                print(line(f"{case} trial", trial), flush=True)
                print(f"  best: {best(trial['table'])}")
                print(f"  fused is {trial['wall_s'] / fused['wall_s']:.1f}x sooner")
        if case.startswith("random"):
            rows = 10240 if case == "random_10k" else 2048
            runs = 100 if case == "random_best" else rows
            ok = fused["runs"] == runs and len(fused["table"]) == rows
            print(f"  {rows:,} rows in results.csv and {runs:,} MLflow runs: {ok}")
            print(f"  sweep status bench: {fused['status_s']:.1f} s")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        sys.exit(child(Path(sys.argv[2]), sys.argv[3:]))
    main()
