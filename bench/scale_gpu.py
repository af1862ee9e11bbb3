"""A linear probe at ImageNet-embedding size on one GPU: a fused random sweep, step by step.

    python bench/scale_gpu.py [--n 1281167 --d 2048 --c 1000] [--configs 64] [--epochs 30]
                              [--matmul tf32] [--baseline-epochs 1] [--folder DIR]

bench/scale.py's large sizes need Ray; a GPU machine may have only torch and the scientific stack.
This script takes, with the project's own functions, the steps that `sweep run` takes for a
fused random sweep on one GPU node, and times each:

1. the data (not the sweep's time): N x D float32 in an npy folder, Gaussian classes;
2. the driver's check of the data (``check_data``) and ``search.population_size: auto``
   (``fused.sized``) for this device;
3. the shared copy, prepared once (``trainers.prepared.shared``);
4. the populations: each maps that copy, moves it to the device, trains every epoch and
   measures its members on the training and validation splits each epoch;
5. the best configuration refit on train+validation, and its one look at the test split.

It prints the seconds of each step and their sum (what the sweep takes, less Ray's start and
MLflow's writes: seconds, measured on CPUs by bench/fused_sweep.py), the device's peak memory,
ms per trial-epoch, and, with ``--baseline-epochs``, the same population's ms per trial-epoch
with float32 products in the same run. Then the per-trial engine with ``resources.gpu: 0.25``:
refused in one line, or four trials, each with its own copy of the data on the device, one
epoch each, at once, and the device memory they hold together.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sweeps.engine import fused
from sweeps.spec.document import trial_config_with
from sweeps.spec.sweep import check_data, sweep_spec
from trainers.config import ConfigError, TrialConfig, trial_config
from trainers.data import memory_size
from trainers.loop import Trial
from trainers.population import Population
from trainers.prepared import shared

# ImageNet-1k's training images as embeddings (D 2,048, C 1,000), and the sweep its target is for
FULL = {"n": 1_281_167, "d": 2048, "c": 1000, "configs": 64, "epochs": 30}
TRIAL_TIMEOUT_S = 300  # for a per-trial process to hold its data and train its epoch


def make_data(folder: Path, n: int, d: int, c: int, device: torch.device) -> Path:
    """X.npy (N x D float32) and y.npy: classes around random centres, drawn on ``device`` a
    block at a time and written into the files' maps."""
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator(device=device).manual_seed(0)
    centres = 0.1 * torch.randn(c, d, generator=gen, device=device)
    y = torch.randint(0, c, (n,), generator=gen, device=device)
    X = np.lib.format.open_memmap(folder / "X.npy", mode="w+", dtype=np.float32, shape=(n, d))
    block = max(1, 2**28 // (4 * d))  # 256 MiB
    for start in range(0, n, block):
        labels = y[start : start + block]
        noise = torch.randn(len(labels), d, generator=gen, device=device)
        X[start : start + block] = (noise + centres[labels]).cpu().numpy()
    X.flush()
    del X
    np.save(folder / "y.npy", y.cpu().numpy())
    return folder


def draws(count: int) -> list[dict[str, float]]:
    """The random search's configurations (Ray's sampler needs Ray, which a GPU machine may
    lack): lr and lambda log-uniform, rho uniform, as ``sweep_doc``'s space states them."""
    rng = np.random.default_rng(0)
    return [
        {
            "train.lr": float(np.exp(rng.uniform(np.log(1e-3), np.log(0.3)))),
            "train.lambda": float(np.exp(rng.uniform(np.log(1e-6), np.log(1e-2)))),
            "train.momentum": float(rng.uniform(0.5, 0.95)),
        }
        for _ in range(count)
    ]


def sweep_doc(args: argparse.Namespace, data: Path, engine: str) -> dict[str, Any]:
    train = {
        "epochs": args.epochs,
        "batch_size": args.batch,
        "optimizer": "momentum",
        "schedule": "cosine",
        "matmul": args.matmul,
        "device": args.device,
    }
    return {
        "name": "scale_gpu",
        "data": {"source": "npy", "path": str(data)},
        "train": train,
        "search": {"engine": engine, "type": "random", "num_samples": args.configs},
        "space": {
            "train.lr": {"loguniform": [1e-3, 0.3]},
            "train.lambda": {"loguniform": [1e-6, 1e-2]},
            "train.momentum": {"uniform": [0.5, 0.95]},
        },
        "resources": {"cpu": 1, "gpu": 1 if engine == "fused" else args.gpu_share},
    }


def device_peak() -> str:
    if not torch.cuda.is_available():
        return "n/a (no CUDA device)"
    torch.cuda.synchronize()
    return memory_size(torch.cuda.max_memory_allocated())


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def train_population(cfgs: list[TrialConfig], ids: list[str], prepared: Path, epochs: int | None):
    """A population trained ``epochs`` epochs (None: to its end); (finals by id, seconds to
    the first epoch's metrics, seconds a trial-epoch after the first epoch)."""
    start = time.perf_counter()
    population = Population(cfgs, shared(cfgs[0].data, prepared), ids=ids)
    first, trained, epoch = None, 0, 0
    while not population.done and (epochs is None or epoch < epochs):
        news = population.step()
        epoch += 1
        print(f"  epoch {epoch}: {time.perf_counter() - start:.1f} s", flush=True)
        if first is None:
            first = time.perf_counter() - start
            after = time.perf_counter()
        else:
            trained += len(news)
    rest = time.perf_counter() - after
    per_trial_epoch = rest / trained if trained else float("nan")
    finals = {i: population.final(i) for i in ids}
    del population
    return finals, first, per_trial_epoch


def fused_sweep(args: argparse.Namespace, data: Path, prepared: Path) -> None:
    """Steps 2 to 5, each timed."""
    times: dict[str, float] = {}
    t = time.perf_counter()
    spec = sweep_spec(sweep_doc(args, data, "fused"))
    size = check_data(spec)
    spec = fused.sized(spec, size, {"cpu": 1.0, "gpu": 1.0}, mp.cpu_count())
    times["check the data, size the populations"] = time.perf_counter() - t
    print(
        f"data: {size.rows:,} train+validation rows x {size.features} x {size.classes} "
        f"classes; population_size auto: {spec.search.population_size}",
        flush=True,
    )
    plan = fused.plan(spec, draws(args.configs))
    t = time.perf_counter()
    shared(spec.trial.data, prepared)
    times["prepare the shared copy"] = time.perf_counter() - t
    if args.baseline_epochs:
        first = plan.populations[0]
        cfgs = [
            trial_config(c | {"train": c["train"] | {"matmul": "float32"}}) for c in first.configs
        ]
        reset_peak()
        _, _, base = train_population(cfgs, first.ids, prepared, args.baseline_epochs + 1)
        print(
            f"baseline, float32 products: {1000 * base:.1f} ms a trial-epoch "
            f"({len(cfgs)} configurations, after the first epoch)",
            flush=True,
        )
    reset_peak()
    finals = {}
    t = time.perf_counter()
    for p in plan.populations:
        got, first_s, rate = train_population(
            [trial_config(c) for c in p.configs], p.ids, prepared, None
        )
        finals |= got
        print(
            f"population of {len(p.ids)}: first epoch {first_s:.1f} s, then "
            f"{1000 * rate:.1f} ms a trial-epoch",
            flush=True,
        )
    times["train the populations"] = time.perf_counter() - t
    peak = device_peak()
    best = max(finals, key=lambda i: finals[i]["val_acc"] if not finals[i]["diverged"] else -1)
    t = time.perf_counter()
    cfg = trial_config_with({}, plan.configs[best])
    refit = Trial(cfg, shared(cfg.data, prepared, refit=True))
    refit.run()
    test = refit.evaluate("test")
    times["refit the best on train+validation, look at the test split"] = time.perf_counter() - t
    for step, seconds in times.items():
        print(f"{step}: {seconds:.1f} s", flush=True)
    total = sum(times.values())
    print(
        f"end to end (less Ray's start and MLflow's writes): {total:.1f} s; device peak "
        f"{peak} while training; best {best}: val_acc {finals[best]['val_acc']:.4f}, "
        f"test_acc {test['test_acc']:.4f}",
        flush=True,
    )
    if all(getattr(args, k) == v for k, v in FULL.items()):  # the target is for the full size
        verdict = "met" if total < 600 else "NOT met"
        print(f"targets: 64 x 30 epochs fused, end to end under 600 s: {verdict} ({total:.0f} s)")


def one_trial(cfg: dict[str, Any], prepared: str, barrier: Any, out: Any) -> None:
    """A per-trial engine's trial: its own copy of the data on the device, one epoch; waits at
    ``barrier`` holding it, so that the parent reads the device memory of all of them."""
    cfg_ = trial_config(cfg)
    trial = Trial(cfg_, shared(cfg_.data, prepared))  # held until the parent has read
    trial.run()
    out.put(torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0)
    barrier.wait()
    barrier.wait()  # the parent has read the device's memory


def per_trial(args: argparse.Namespace, data: Path, prepared: Path) -> None:
    """The per-trial engine with ``resources.gpu: args.gpu_share``: refused before anything
    starts, or 1 / share trials at once, each holding its own copy."""
    doc = sweep_doc(args, data, "trial")
    spec = sweep_spec(doc | {"train": doc["train"] | {"epochs": 1}})
    size = check_data(spec)
    resources = {"cpu": 1.0, "gpu": args.gpu_share}
    try:
        fused.sized(spec, size, resources, mp.cpu_count())
    except ConfigError as err:
        print(f"per trial, gpu {args.gpu_share:g}: refused: {err}", flush=True)
        return
    count = round(1 / args.gpu_share)
    plan = fused.plan(spec, draws(args.configs))
    cfgs = [c for p in plan.populations for c in p.configs]
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(count + 1), ctx.Queue()
    start = time.perf_counter()
    procs = [
        ctx.Process(target=one_trial, args=(cfgs[k % len(cfgs)], str(prepared), barrier, out))
        for k in range(count)
    ]
    for p in procs:
        p.start()
    try:
        barrier.wait(timeout=TRIAL_TIMEOUT_S)  # a trial that failed never comes
    except threading.BrokenBarrierError:
        for p in procs:
            p.terminate()
            p.join()
        codes = [p.exitcode for p in procs]
        print(f"per trial, gpu {args.gpu_share:g}: FAILED: exit codes {codes}", flush=True)
        return
    held = "n/a (no CUDA device)"
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        held = memory_size(total - free)
    peaks = [out.get() for _ in procs]
    barrier.wait()
    for p in procs:
        p.join()
    print(
        f"per trial, gpu {args.gpu_share:g}: {count} trials at once, each its own copy: "
        f"{time.perf_counter() - start:.1f} s for one epoch each (start-up included); "
        f"device memory in use while they all held their data: {held}; each trial's peak: "
        + ", ".join(memory_size(peak) for peak in peaks),
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for key, default in FULL.items():
        parser.add_argument(f"--{key}", type=int, default=default)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--matmul", choices=("float32", "tf32"), default="tf32")
    parser.add_argument("--baseline-epochs", type=int, default=1)
    parser.add_argument("--gpu-share", type=float, default=0.25)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--folder", type=Path, help="for the data (default: a temporary one)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu")
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    # a timeout's SIGTERM unwinds, so that the temporary folder (gigabytes) is removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(124))
    with tempfile.TemporaryDirectory(dir=args.folder) as tmp:
        t = time.perf_counter()
        data = make_data(Path(tmp) / "data", args.n, args.d, args.c, device)
        nbytes = args.n * args.d * 4
        print(
            f"made {args.n:,} x {args.d} x {args.c} ({memory_size(nbytes)}) in "
            f"{time.perf_counter() - t:.1f} s",
            flush=True,
        )
        prepared = Path(tmp) / "prepared"
        fused_sweep(args, data, prepared)
        if args.gpu_share:
            per_trial(args, data, prepared)


if __name__ == "__main__":
    main()
