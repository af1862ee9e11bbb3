"""Trainer speed: milliseconds per trial-epoch, a tutorial loop against the project's trainer.

    python bench/trainer.py [--device auto|cpu|cuda] [--quick] [--epochs N] [--threads T]

On one device and the same synthetic data, for a softmax and a hinge workload:
  (a) a tutorial-style loop written here: CPU tensors in a DataLoader (shuffle, batch 256),
      each batch copied to the device, nn.Linear, the loss plus the L2 term, torch.optim.SGD
      with momentum;
  (b) the project's Trainer, training only (trainers.loop.Trainer.train_epoch);
  (c) the project's Trial, training plus its per-epoch train and validation metrics.
Each figure is the median over several epochs after warm-up (the first epoch on CUDA records
the CUDA graph). Workloads: CIFAR-10-shaped on a GPU (N = 50,000, D = 3,072, C = 10), N = 10,000,
D = 512, C = 10 on a CPU. Pure torch: imports only trainers/, no Ray, MLflow or sweeps.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a plain checkout
from trainers.config import trial_config  # noqa: E402
from trainers.data import Dataset, Split  # noqa: E402
from trainers.loop import Trainer, Trial, resolve_device  # noqa: E402

BATCH, LR, MOMENTUM, LAMBDA = 256, 0.01, 0.9, 1e-4
SHAPES = {"cuda": (50_000, 3_072, 10), "cpu": (10_000, 512, 10)}  # N, D, C
TARGETS = {"cuda": {"b": 75.0, "c": None}, "cpu": {"b": 4.0, "c": 3.0}}  # times faster than (a)
GPU_MS_TARGET = 10.0  # (b) on an H100


def synthetic(n: int, d: int, c: int, seed: int = 0) -> Dataset:
    """Gaussian inputs labelled by a random linear teacher; validation is a fifth of n."""
    gen = torch.Generator().manual_seed(seed)
    n_val = n // 5
    X = torch.randn(n + n_val, d, generator=gen)
    teacher = torch.randn(d, c, generator=gen) / d**0.5
    y = (X @ teacher + 0.5 * torch.randn(n + n_val, c, generator=gen)).argmax(dim=1)
    train, val = Split(X[:n].numpy(), y[:n].numpy()), Split(X[n:].numpy(), y[n:].numpy())
    return Dataset(train=train, val=val, test=val, n_classes=c, name="synthetic")


def config(loss: str, device: str, epochs: int):
    return trial_config(
        {
            "model": {"loss": loss},
            "train": {
                "epochs": epochs,
                "batch_size": BATCH,
                "lr": LR,
                "optimizer": "momentum",
                "momentum": MOMENTUM,
                "reg": "l2",
                "lambda": LAMBDA,
                "schedule": "constant",
                "device": device,
            },
        }
    )


def tutorial_epoch(data: Dataset, loss: str, device: torch.device) -> Callable[[], None]:
    """(a): the loop a tutorial writes, one epoch per call."""
    X, y = torch.from_numpy(data.train.X), torch.from_numpy(data.train.y)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(X, y), batch_size=BATCH, shuffle=True
    )
    model = torch.nn.Linear(X.shape[1], data.n_classes).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    if loss == "softmax":
        criterion = torch.nn.CrossEntropyLoss()
    else:  # the course's hinge sums over wrong classes; multi_margin_loss averages over C

        def criterion(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return data.n_classes * F.multi_margin_loss(s, t)

    def epoch() -> None:
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            objective = criterion(model(xb), yb) + LAMBDA * model.weight.pow(2).sum()
            optimizer.zero_grad()
            objective.backward()
            optimizer.step()

    return epoch


def epoch_ms(fn: Callable[[], object], device: torch.device) -> float:
    """Wall time of one call of ``fn`` in ms, the device drained before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 1000 * (time.perf_counter() - start)


def median_ms(
    ways: dict[str, Callable[[], object]], device: torch.device, warmup: int, reps: int
) -> dict[str, float]:
    """Median ms per call of each way, the ways taking turns epoch by epoch so that a machine
    shared with other work slows them alike and their ratios hold."""
    times: dict[str, list[float]] = {key: [] for key in ways}
    for i in range(warmup + reps):
        for key, fn in ways.items():
            ms = epoch_ms(fn, device)
            if i >= warmup:
                times[key].append(ms)
    return {key: statistics.median(t) for key, t in times.items()}


def bandwidth(device: torch.device) -> float:
    """Bytes per second of a large device-to-device copy (it reads and writes each byte)."""
    src = torch.empty(256 * 2**20, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    seconds = median_ms({"copy": lambda: dst.copy_(src)}, device, warmup=2, reps=10)["copy"] / 1000
    return 2 * src.numel() * src.element_size() / seconds


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (cuda)"
    cpu = platform.processor() or platform.machine()
    return f"CPU {cpu}, {torch.get_num_threads()} torch threads"


def run(loss: str, data: Dataset, device: torch.device, warmup: int, reps: int) -> dict:
    cfg = config(loss, device.type, epochs=warmup + reps + 1)
    ways = {
        "a": tutorial_epoch(data, loss, device),
        "b": Trainer(cfg, data, device).train_epoch,
        "c": Trial(cfg, [data]).step,
    }
    if device.type == "cuda":  # what the CUDA graph is worth: the same steps launched one by one
        eager = Trainer(cfg, data, device)
        eager.use_graph = False
        ways["b-eager"] = eager.train_epoch
    return median_ms(ways, device, warmup, reps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--quick", action="store_true", help="fewer epochs timed")
    parser.add_argument("--epochs", type=int, default=None, help="epochs timed per figure")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = resolve_device(args.device)
    except ValueError as err:
        sys.exit(f"error: {err}")
    warmup, reps = (1, 3) if args.quick else (2, 7)
    reps = args.epochs or reps
    n, d, c = SHAPES[device.type]
    data = synthetic(n, d, c)
    x_bytes = n * d * 4
    print(f"device: {device_name(device)}; torch {torch.__version__}")
    print(f"data: N={n:,} D={d:,} C={c} float32, batch {BATCH}, momentum SGD, L2; validation")
    print(f"      {len(data.val.y):,} examples; median of {reps} epochs after {warmup} warm-up,")
    print("      the three ways taking turns epoch by epoch")
    if device.type == "cuda":
        bw = bandwidth(device)
        floor = f"{1000 * x_bytes / bw:.3f} ms"
        print(f"memory floor: X ({x_bytes / 1e6:.0f} MB) read once per epoch at {bw / 1e12:.2f} "
              f"TB/s (device copy) = {floor} per trial-epoch")  # fmt: skip
    else:
        print("memory floor: not computed on a CPU (caches and threads make it meaningless)")
    targets, misses = TARGETS[device.type], []
    for loss in ("softmax", "hinge"):
        ms = run(loss, data, device, warmup, reps)
        print(f"\n{loss}")
        print(f"  {'way':<44} {'ms/epoch':>9} {'x faster than (a)':>18}")
        names = {
            "a": "(a) tutorial: DataLoader, copy per batch",
            "b": "(b) trainer, training only",
            "c": "(c) trainer + train/val metrics",
            "b-eager": "(b) without its CUDA graph (eager steps)",
        }
        for key, name in names.items():
            if key not in ms:
                continue
            print(f"  {name:<44} {ms[key]:9.2f} {ms['a'] / ms[key]:18.1f}")
        for key, need in targets.items():
            if need is not None and ms["a"] / ms[key] < need:
                misses.append(f"{loss} ({key}) {ms['a'] / ms[key]:.1f}x < {need:g}x")
        if device.type == "cuda" and ms["b"] > GPU_MS_TARGET:
            misses.append(f"{loss} (b) {ms['b']:.2f} ms > {GPU_MS_TARGET:g} ms")
    wanted = ", ".join(f"({k}) >= {v:g}x" for k, v in targets.items() if v is not None)
    if device.type == "cuda":
        wanted += f", (b) <= {GPU_MS_TARGET:g} ms (an H100's target)"
    print(f"\ntargets: {wanted}: {'all met' if not misses else 'MISSED ' + '; '.join(misses)}")


if __name__ == "__main__":
    main()
