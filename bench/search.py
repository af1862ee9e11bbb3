"""Adaptive search against random search: best validation accuracy against configurations tried
and against wall time, for random, asha, tpe, bohb and pbt, fused and per trial.

    python bench/search.py [--seeds 5] [--datasets digits,synthetic] [--engines fused,trial]
                           [--parts curves,anchor,pbt,sampler,floor] [--epochs 20]

Data sets: scikit-learn's digits (1,797 x 64, 10 classes), and a harder synthetic set
(make_classification: 1,500 x 100, 15 informative, 15 redundant and 70 noise features, 10
classes, 2% of labels flipped: few examples for many noisy features, where lambda matters),
written as an npz.

Parts, each printed as it ends; medians and (min-max) over the seeds:
- curves: per engine, random (64 configurations), asha (64), tpe (64) and bohb (256 fused, 64
  per trial) over a 6-dimensional space (loss, lr, lambda, rho, batch size, step or cosine
  decay), ``train.epochs`` epochs. For each: the best validation accuracy after 8, 16, 32, 64
  (and 256) configurations (configurations in the order they were asked), the wall time, and,
  for tpe and bohb, how many configurations it took to reach random search's 64-configuration
  best of the same seed. Target: fused tpe in at most 32.
- anchor: Optuna used directly, one process, no Ray, no MLflow: multivariate TPE with
  SuccessiveHalvingPruner (the same grace period and reduction factor as the sweeps' ASHA), 64
  trials of the same trainer (trainers.loop.Trial, an epoch at a time, the value reported each
  epoch). Target: fused bohb's 256-configuration best >= the anchor's best.
- pbt: per engine, a population of 16 (lr, lambda, rho searched; perturbation every 4 epochs)
  against the best of 16 random configurations of the same space trained as long: with cosine
  decay over ``2 x epochs`` epochs, and with a constant lr over ``4 x epochs`` (where a
  schedule matters).
- sampler: one fused tpe sweep of 1,024 configurations (digits): the seconds its sampler spent
  in Optuna (the sweep prints them) against the sweep's wall time. Target: under 10 %.
- floor: bench/sweep_overhead.py --floor, Ray Tune's and MLflow's own cost here.

Every sweep is the `sweep run` command in a fresh temporary folder (its own MLflow store), timed
from its start to its exit; refit is off (selection is what is compared; the test look is
taken on the chosen trial's checkpoint).
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
SWEEP = str(Path(sys.executable).with_name("sweep"))
SPACE = {
    "model.loss": {"choice": ["softmax", "hinge"]},
    "train.lr": {"loguniform": [1.0e-3, 0.3]},
    "train.lambda": {"loguniform": [1.0e-5, 1.0e-1]},
    "train.momentum": {"uniform": [0.5, 0.95]},
    "train.batch_size": {"choice": [32, 64, 128]},
    "train.schedule": {"choice": ["step", "cosine"]},
}
PBT_SPACE = {key: SPACE[key] for key in ("train.lr", "train.lambda", "train.momentum")}
GRACE, REDUCTION = 2, 3
CHECKPOINTS = (8, 16, 32, 64, 256)


def synthetic(folder: Path) -> Path:
    """The harder set: informative, redundant and noise features, 10 classes."""
    from sklearn.datasets import make_classification

    X, y = make_classification(
        n_samples=1500,
        n_features=100,
        n_informative=15,
        n_redundant=15,
        n_classes=10,
        n_clusters_per_class=1,
        flip_y=0.02,
        random_state=0,
    )
    path = folder / "synthetic.npz"
    np.savez(path, X=X.astype("float32"), y=y)
    return path


def data_section(dataset: str, folder: Path) -> dict[str, Any]:
    if dataset == "digits":
        return {"source": "digits", "seed": 0}
    return {"source": "npz", "path": str(synthetic(folder)), "seed": 0}


def document(
    data: dict, epochs: int, search: dict, space: dict, schedule: str = "cosine"
) -> dict[str, Any]:
    """A sweep config: momentum SGD, L2, the given search and space."""
    return {
        "name": "bench",
        "data": data,
        "model": {"loss": "softmax"},
        "train": {
            "epochs": epochs,
            "optimizer": "momentum",
            "reg": "l2",
            "schedule": schedule,
            "step_size": max(1, epochs // 3),
            "gamma": 0.3,
            "batch_size": 64,
        },
        "search": {"metric": "val_acc", "max_failures": 1, "refit": False, **search},
        "space": space,
        "resources": {"cpu": 1, "gpu": 0},
    }


def sweep(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` run as `sweep run` in a fresh folder: its wall time, the best-so-far curve of
    final val_acc over configurations in the order asked, and the sampler's seconds (fused tpe
    and bohb print them)."""
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "bench.yaml"
        config.write_text(yaml.safe_dump(doc))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("MLFLOW_TRACKING_URI", None)
        start = time.perf_counter()
        done = subprocess.run(
            [SWEEP, "run", str(config)], cwd=tmp, env=env, capture_output=True, text=True
        )
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"sweep failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        table = pd.read_csv(Path(tmp) / "runs/bench/results.csv")
    found = re.search(r"sampler: ([0-9.]+) s in Optuna \(([0-9.]+) s of CPU\)", done.stdout)
    table = table.sort_values("trial_id")  # c0000, ... and Ray's <id>_00000, ...: asked order
    values = table["final_val_acc"].fillna(0.0).to_numpy()
    return {
        "wall_s": wall,
        "best": np.maximum.accumulate(values),
        "sampler_s": float(found.group(1)) if found else math.nan,
        "sampler_cpu_s": float(found.group(2)) if found else math.nan,
    }


def spread(values: list[float], digits: int = 4) -> str:
    """Median (min-max)."""
    med = statistics.median(values)
    return f"{med:.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def reached(curve: np.ndarray, target: float) -> float:
    """Configurations tried until ``curve`` reached ``target`` (inf if never)."""
    hits = np.nonzero(curve >= target - 1e-9)[0]
    return float(hits[0] + 1) if len(hits) else math.inf


# ---------------------------------------------------------------- parts
def curves(data: dict, engine: str, seeds: list[int], epochs: int) -> dict[str, list[dict]]:
    """random, asha, tpe and bohb on one data set and engine, per seed."""
    bohb = 256 if engine == "fused" else 64
    types = {"random": 64, "asha": 64, "tpe": 64, "bohb": bohb}
    out: dict[str, list[dict]] = {t: [] for t in types}
    for seed in seeds:
        for kind, n in types.items():
            search = {"type": kind, "num_samples": n, "seed": seed, "engine": engine}
            if kind in ("asha", "bohb"):
                search |= {"grace_period": GRACE, "reduction_factor": REDUCTION, "brackets": 1}
            out[kind].append(sweep(document(data, epochs, search, SPACE)))
    return out


def print_curves(name: str, engine: str, out: dict[str, list[dict]]) -> None:
    print(f"\n{name}, {engine}: best val_acc after n configurations, median (min-max)")
    for kind, runs in out.items():
        cells = [
            f"n={n} {spread([float(r['best'][n - 1]) for r in runs])}"
            for n in CHECKPOINTS
            if n <= len(runs[0]["best"])
        ]
        wall = spread([r["wall_s"] for r in runs], 1)
        print(f"  {kind:<7} wall {wall} s  " + "  ".join(cells), flush=True)
    random_best = [float(r["best"][63]) for r in out["random"]]
    for kind in ("tpe", "bohb"):
        needed = [reached(r["best"], b) for r, b in zip(out[kind], random_best, strict=True)]
        print(
            f"  {kind} reaches random's 64-configuration best after "
            f"{statistics.median(needed):g} configurations (per seed: "
            f"{', '.join(f'{x:g}' for x in needed)})",
            flush=True,
        )


def anchor(data: dict, seed: int, epochs: int) -> dict[str, float]:
    """Optuna directly: multivariate TPE + SuccessiveHalvingPruner, 64 trials, one process."""
    import optuna
    import torch

    from sweeps.spec.document import apply_sets, trainer_config
    from trainers.data import prepare
    from trainers.loop import Trial

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    base = document(data, epochs, {}, {})
    datasets = prepare(trainer_config(base).data)

    def objective(trial: optuna.Trial) -> float:
        sets = {
            "model.loss": trial.suggest_categorical("model.loss", ["softmax", "hinge"]),
            "train.lr": trial.suggest_float("train.lr", 1e-3, 0.3, log=True),
            "train.lambda": trial.suggest_float("train.lambda", 1e-5, 1e-1, log=True),
            "train.momentum": trial.suggest_float("train.momentum", 0.5, 0.95),
            "train.batch_size": trial.suggest_categorical("train.batch_size", [32, 64, 128]),
            "train.schedule": trial.suggest_categorical("train.schedule", ["step", "cosine"]),
        }
        run = Trial(trainer_config(apply_sets(base, sets)), datasets)
        while not run.done:
            metrics = run.step()
            trial.report(metrics["val_acc"], run.epoch)
            if run.done:
                break
            if trial.should_prune():
                raise optuna.TrialPruned
        return float(run.final()["val_acc"])

    start = time.perf_counter()
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(multivariate=True, seed=seed),
        pruner=optuna.pruners.SuccessiveHalvingPruner(
            min_resource=GRACE, reduction_factor=REDUCTION
        ),
    )
    study.optimize(objective, n_trials=64)
    values = [t.value for t in study.trials if t.value is not None]
    return {"best": max(values), "wall_s": time.perf_counter() - start}


def pbt(
    data: dict, engine: str, seeds: list[int], epochs: int, schedule: str
) -> dict[str, list[dict]]:
    """pbt, a population of 16, against 16 random configurations as long."""
    out: dict[str, list[dict]] = {"pbt": [], "random": []}
    for seed in seeds:
        for kind in out:
            search = {"type": kind, "num_samples": 16, "seed": seed, "engine": engine}
            if kind == "pbt":
                search["perturbation_interval"] = 4
            doc = document(data, epochs, search, PBT_SPACE, schedule)
            out[kind].append(sweep(doc))
    return out


def sampler_share(data: dict, epochs: int) -> None:
    """The sampler's seconds in a fused tpe sweep of 1,024 configurations, and Optuna's own
    floor: the same asks and tells on an in-memory study, no journal, one sampler."""
    search = {"type": "tpe", "num_samples": 1024, "seed": 0, "engine": "fused"}
    result = sweep(document(data, epochs, search, SPACE))
    share = result["sampler_s"] / result["wall_s"]
    print(
        f"\nsampler, fused tpe, 1,024 configurations x {epochs} epochs on digits: wall "
        f"{result['wall_s']:.1f} s, sampler {result['sampler_s']:.2f} s in Optuna = "
        f"{share:.1%} of the wall time (target < 10%), of which {result['sampler_cpu_s']:.2f} s "
        f"of CPU = {result['sampler_cpu_s'] / result['wall_s']:.1%}; best val_acc "
        f"{result['best'][-1]:.4f}",
        flush=True,
    )
    floor_s = optuna_floor(1024, slots=128)
    print(
        f"  Optuna's floor: 1,024 asks (128 in flight, told 16 at a time) and tells of an "
        f"in-memory multivariate TPE with the constant liar: {floor_s:.2f} s "
        f"= {floor_s / result['wall_s']:.1%} of that wall time",
        flush=True,
    )


def optuna_floor(asks: int, slots: int) -> float:
    import optuna

    from sweeps.search.tpe import distributions
    from sweeps.spec.space import Space

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rng = np.random.default_rng(0)
    space = distributions(Space.read(SPACE))
    sampler = optuna.samplers.TPESampler(multivariate=True, constant_liar=True, seed=0)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    start, asked, in_flight = time.perf_counter(), 0, []
    while asked < asks or in_flight:
        while len(in_flight) < slots and asked < asks:
            in_flight.append(study.ask(space))
            asked += 1
        for trial in in_flight[:16]:
            study.tell(trial, float(rng.random()))
        in_flight = in_flight[16:]
    return time.perf_counter() - start


def floor() -> None:
    print("\nfloor (bench/sweep_overhead.py --floor):", flush=True)
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench/sweep_overhead.py"), "--floor"],
        capture_output=True,
        text=True,
    )
    print(done.stdout[-3000:] or done.stderr[-3000:], flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--datasets", default="digits,synthetic")
    parser.add_argument("--engines", default="fused,trial")
    parser.add_argument("--parts", default="curves,anchor,pbt,sampler,floor")
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    seeds, parts = list(range(args.seeds)), args.parts.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        datasets = {d: data_section(d, Path(tmp)) for d in args.datasets.split(",")}
        if "floor" in parts:
            floor()
        if "sampler" in parts:
            sampler_share(datasets.get("digits") or data_section("digits", Path(tmp)), 10)
        for name, data in datasets.items():
            bests: dict[str, list[float]] = {}
            if "curves" in parts:
                for engine in args.engines.split(","):
                    out = curves(data, engine, seeds, args.epochs)
                    print_curves(name, engine, out)
                    for kind, runs in out.items():
                        bests[f"{engine} {kind}"] = [float(r["best"][-1]) for r in runs]
            if "anchor" in parts:
                runs = [anchor(data, seed, args.epochs) for seed in seeds]
                best = [r["best"] for r in runs]
                print(
                    f"\n{name}: Optuna alone, TPE + SuccessiveHalving, 64 trials: best "
                    f"{spread(best)}, wall {spread([r['wall_s'] for r in runs], 1)} s",
                    flush=True,
                )
                if "fused bohb" in bests:
                    ours = bests["fused bohb"]
                    wins = sum(a >= b for a, b in zip(ours, best, strict=True))
                    print(
                        f"  fused bohb (256) best {spread(ours)}: >= the anchor in {wins} of "
                        f"{len(seeds)} seeds (target: median >= the anchor's median)",
                        flush=True,
                    )
            if "pbt" in parts:
                for engine, (schedule, times) in itertools.product(
                    args.engines.split(","), (("cosine", 2), ("constant", 4))
                ):
                    epochs = times * args.epochs
                    out = pbt(data, engine, seeds, epochs, schedule)
                    pb, rb = ([float(r["best"][-1]) for r in out[k]] for k in ("pbt", "random"))
                    wins = sum(a >= b for a, b in zip(pb, rb, strict=True))
                    print(
                        f"\n{name}, {engine}: pbt 16 vs random 16, {schedule} lr, {epochs} "
                        f"epochs: pbt "
                        f"{spread(pb)} (wall {spread([r['wall_s'] for r in out['pbt']], 1)} s), "
                        f"random {spread(rb)}; pbt >= random in {wins} of {len(seeds)} seeds",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
