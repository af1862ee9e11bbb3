"""Fused trials: ms per trial-epoch of K configurations trained as one population, against the
single trainer in the same run, and the compute floor.

    python bench/fused.py [--ks 1,16,64,256] [--epochs 3] [--mix] [--n N --d D] [--threads T]

Pure torch (no Ray, MLflow or sweeps). Workloads, fp32, batch 256, C = 10, random data:
GPU N = 50,000, D = 3,072 (CIFAR-10-shaped); CPU N = 10,000, D = 512. Training only: the
per-epoch measurement of the metrics is left out of both. Configurations: softmax, momentum,
l2, with lr, lambda and rho differing; ``--mix`` cycles through every loss, regularizer and
optimizer instead. The floor counts the forward pass and the weight gradient, 2*N*D*K*C*2
FLOPs per epoch, at the device's fp32 rate: measured with a large sgemm, and from the
datasheet for known GPUs.
"""

from __future__ import annotations

import argparse
import itertools
import platform
import time
from pathlib import Path

import numpy as np
import torch

from trainers.config import trial_config
from trainers.data import Dataset, Split
from trainers.loop import Trainer
from trainers.population import Population

GPU_WORKLOAD = {"n": 50_000, "d": 3_072}
CPU_WORKLOAD = {"n": 10_000, "d": 512}
C, BATCH = 10, 256
DATASHEET_FP32_TFLOPS = {"H100 PCIe": 51.2, "H100": 66.9, "H200": 66.9, "A100": 19.5}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    models = [
        line.split(":", 1)[1].strip()
        for line in (cpuinfo.read_text().splitlines() if cpuinfo.exists() else [])
        if line.startswith("model name")
    ]
    cpu = models[0] if models else platform.processor() or "CPU"
    return f"{cpu}, {torch.get_num_threads()} threads"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measured_tflops(device: torch.device) -> float:
    """fp32 (no TF32) matrix-product rate of this device, from a large sgemm."""
    torch.backends.cuda.matmul.allow_tf32 = False
    size = 8192 if device.type == "cuda" else 1536
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    a @ b
    sync(device)
    start, reps = time.perf_counter(), 5
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * size**3 * reps / (time.perf_counter() - start) / 1e12


def datasheet_tflops(name: str) -> float | None:
    return next((v for k, v in DATASHEET_FP32_TFLOPS.items() if k in name), None)


def workload(n: int, d: int) -> list[Dataset]:
    rng = np.random.default_rng(0)

    def split(rows: int) -> Split:
        X = rng.standard_normal((rows, d), dtype=np.float32)
        return Split(X, rng.integers(0, C, rows))

    return [Dataset(split(n), split(1000), split(1000), n_classes=C, name="random")]


def configs(k: int, mix: bool, device: str) -> list:
    """k configurations on a grid of lr x lambda x rho (x loss, regularizer and optimizer)."""
    losses = ["softmax", "hinge", "squared_hinge"] if mix else ["softmax"]
    regs = ["l2", "l1", "elastic", "none"] if mix else ["l2"]
    optimizers = ["momentum", "sgd", "nesterov", "adam"] if mix else ["momentum"]
    grid = itertools.cycle(
        itertools.product(
            [1e-3, 3e-3, 1e-2], [1e-5, 1e-4, 1e-3], [0.5, 0.9], losses, regs, optimizers
        )
    )
    return [
        trial_config(
            {
                "model": {"loss": loss},
                "train": {
                    "epochs": 1000,
                    "batch_size": BATCH,
                    "lr": lr,
                    "lambda": lam,
                    "momentum": rho,
                    "reg": reg,
                    "optimizer": opt,
                    "device": device,
                },
            }
        )
        for (lr, lam, rho, loss, reg, opt), _ in zip(grid, range(k))
    ]


def timed(epoch, device: torch.device, epochs: int) -> float:
    """Seconds per epoch of ``epoch()``, after one untimed epoch."""
    epoch()
    sync(device)
    start = time.perf_counter()
    for _ in range(epochs):
        epoch()
    sync(device)
    return (time.perf_counter() - start) / epochs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", help="comma-separated population sizes")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per row")
    parser.add_argument("--mix", action="store_true", help="every loss, regularizer, optimizer")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--n", type=int, help="training examples (default: the workload's)")
    parser.add_argument("--d", type=int, help="features (default: the workload's)")
    parser.add_argument("--threads", type=int, help="CPU threads (torch's default if unset)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    name = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = torch.device("cpu" if name == "auto" else name)
    size = GPU_WORKLOAD if device.type == "cuda" else CPU_WORKLOAD
    n, d = args.n or size["n"], args.d or size["d"]
    default_ks = "1,16,64,256,1024" if device.type == "cuda" else "1,16,64,256"
    ks = [int(k) for k in (args.ks or default_ks).split(",")]
    datasets = workload(n, d)

    label = device_name(device)
    measured = measured_tflops(device)
    sheet = datasheet_tflops(label) if device.type == "cuda" else None
    print(f"device: {label}")
    print(f"workload: N={n:,} D={d:,} C={C} batch {BATCH}, fp32, training only")
    print(f"fp32 rate: {measured:.2f} TFLOP/s measured (sgemm)", end="")
    print(f", {sheet} datasheet" if sheet else ", no datasheet figure")
    flops = 2 * n * d * C * 2  # per trial-epoch: forward and weight gradient

    single = Trainer(configs(1, args.mix, device.type)[0], datasets[0], device)
    single_ms = timed(single.train_epoch, device, args.epochs) * 1e3
    print()
    print("| trainer | K | ms per epoch | ms per trial-epoch | x single | floor ms (measured"
          + (" / datasheet)" if sheet else ")") + " |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- |")
    floor = f"{flops / measured / 1e9:.4f}" + (f" / {flops / sheet / 1e9:.4f}" if sheet else "")
    print(f"| single (loop.Trainer) | 1 | {single_ms:.2f} | {single_ms:.3f} | 1.0 | {floor} |")
    for k in ks:
        pop = Population(configs(k, args.mix, device.type), datasets)
        ms = timed(pop.train_epoch, device, args.epochs) * 1e3
        per = ms / k
        print(f"| fused{' (mixed)' if args.mix else ''} | {k} | {ms:.2f} | {per:.3f} | "
              f"{single_ms / per:.1f} | {floor} |")  # fmt: skip
        del pop
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
