"""Orchestration overhead of a sweep: its wall time against the training time of its trials.

    python bench/sweep_overhead.py [--config configs/digits_asha.yaml] [--set key=value ...]

Runs the sweep (64 trials by default, the demo's) in a temporary folder, then sums every
trial's per-epoch training time from its MLflow history. The ratio wall / summed training
time is what Ray, checkpoints, MLflow and the driver cost on top of the training itself; on
C cores, C trials train at once, so the ideal ratio is 1 / C.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from sweeps import config as config_file
from sweeps.run import run
from sweeps.spec import sweep_spec

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs/digits_asha.yaml"))
    parser.add_argument("--set", action="append", default=["search.num_samples=64"])
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        doc = config_file.load(args.config, args.set)
        spec = sweep_spec(doc, name="bench")
        start = time.perf_counter()
        code = run(spec, doc)
        wall = time.perf_counter() - start
        if code != 0:
            sys.exit(f"the sweep exited {code}")

        client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
        exp = client.get_experiment_by_name("bench")
        runs = client.search_runs(
            [exp.experiment_id], "tags.sweep.trial_id != ''", max_results=1000
        )
        train = sum(
            m.value for r in runs for m in client.get_metric_history(r.info.run_id, "epoch_seconds")
        )
        epochs = sum(int(r.data.tags["sweep.epochs_run"]) for r in runs)

    cores = os.cpu_count() or 1
    print()
    print(f"trials                      {len(runs)}")
    print(f"epochs trained              {epochs}")
    print(f"sweep wall time             {wall:8.1f} s")
    print(f"summed training time        {train:8.1f} s")
    ideal = f"(ideal on {cores} cores: {1 / cores:.2f})"
    print(f"overhead ratio wall/train   {wall / train:8.1f}   {ideal}")
    print(f"wall time per trial         {wall / len(runs):8.2f} s")
    print(f"wall time per epoch         {1000 * wall / epochs:8.1f} ms")


if __name__ == "__main__":
    main()
