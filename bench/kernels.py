"""Where a training step's device time goes: the kernels of one epoch, per step.

    python bench/kernels.py [--device auto|cpu|cuda] [--k 256] [--top 12]

For the single trainer (softmax and hinge) and a population of K softmax configurations, on
bench/trainer.py's workload: one eager epoch under torch.profiler, then a table of the kernels
(CUDA) or operators (CPU) with their launches and time per step, and, on CUDA, the epoch
replayed from its CUDA graph. The difference between the graph's epoch and the kernels' summed
time is what launching them one after another costs (the gaps between kernels). On CUDA, last,
the forward product's time for each number of feature slices (trainers.model.split_k). Pure
torch.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a plain checkout
from bench.fused import configs, timed  # noqa: E402
from bench.trainer import SHAPES, config, synthetic  # noqa: E402
from trainers.loop import Trainer, capture_epoch, resolve_device  # noqa: E402
from trainers.model import multiprocessors, scores, split_k  # noqa: E402
from trainers.population import Population  # noqa: E402


def epoch_ms(epoch: Callable[[], object], device: torch.device) -> float:
    return timed(epoch, device, 3) * 1e3


def kernel_table(epoch: Callable[[], object], device: torch.device, steps: int, top: int) -> float:
    """Print the top kernels of one profiled epoch; return their summed time per step (us)."""
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        epoch()
        if cuda:
            torch.cuda.synchronize()
    events = prof.key_averages()
    if cuda:  # the kernels themselves (device_type CUDA), not the operators that launch them
        us = [(e, e.self_device_time_total) for e in events if e.device_type.name == "CUDA"]
    else:
        us = [(e, e.self_cpu_time_total) for e in events if e.key.startswith("aten::")]
    us.sort(key=lambda pair: -pair[1])
    total = sum(t for _, t in us)
    head = "kernel" if cuda else "operator (self CPU time)"
    print(f"  {head:<60} {'per step':>8} {'us/step':>8}")
    for e, t in us[:top]:
        print(f"  {e.key[:60]:<60} {e.count / steps:>8.2f} {t / steps:>8.2f}")
    launches = sum(e.count for e, _ in us) / steps
    print(f"  {'all (' + str(len(us)) + ' kinds)':<60} {launches:>8.2f} {total / steps:>8.2f}")
    return total / steps


def report(name: str, trainer, device: torch.device, steps: int, top: int) -> None:
    trainer.use_graph = False
    eager = epoch_ms(trainer.train_epoch, device)
    print(f"\n{name}: eager epoch {eager:.2f} ms ({eager / steps * 1e3:.1f} us a step)")
    summed = kernel_table(trainer.train_epoch, device, steps, top)
    if device.type == "cuda":
        trainer.use_graph = True
        graph = epoch_ms(trainer.train_epoch, device)
        gaps = graph / steps * 1e3 - summed
        print(f"  graph epoch {graph:.2f} ms: {graph / steps * 1e3:.1f} us a step, of which "
              f"kernels {summed:.1f} us and gaps between them {gaps:.1f} us")  # fmt: skip


def products(W: torch.Tensor, b: torch.Tensor, x: torch.Tensor, parts: int, steps) -> None:
    for _ in steps:
        scores(W, b, x, parts)


def split_table(device: torch.device, d: int, rows: int = 256, reps: int = 20) -> None:
    """us per scores product (rows, d) @ (d, cols) summed over S feature slices side by side,
    each timed as ``reps`` products replayed from one CUDA graph (as a trainer's epoch runs
    them), for the trainer's and populations' widths; * marks what model.split_k picks."""
    parts = [s for s in range(1, d // 128 + 1) if d % s == 0]
    print(f"\nscores (256, {d}) @ ({d}, cols) in S slices, us a product (* split_k's S)")
    print("  " + f"{'cols':>6}" + "".join(f"{'S=' + str(s):>8}" for s in parts))
    x = torch.randn(rows, d, device=device)
    for cols in (10, 40, 160, 640, 1280, 2560, 5120, 10240):
        W, b = torch.randn(d, cols, device=device), torch.randn(cols, device=device)
        pick, cells = split_k(d, rows, cols, multiprocessors(device)), []
        for s in parts:
            graph = capture_epoch(device, [], functools.partial(products, W, b, x, s), range(reps))
            graph.replay()
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(5):
                graph.replay()
            torch.cuda.synchronize()
            us = (time.perf_counter() - start) / (5 * reps) * 1e6
            cells.append(f"{us:>7.1f}" + ("*" if s == pick else " "))
        print("  " + f"{cols:>6}" + "".join(cells))


class PopulationEpoch:
    """A population as ``report`` drives a trainer: train_epoch and use_graph."""

    def __init__(self, pop: Population) -> None:
        self.pop = pop

    @property
    def use_graph(self) -> bool:
        return self.pop.folds[0].use_graph

    @use_graph.setter
    def use_graph(self, value: bool) -> None:
        self.pop.folds[0].use_graph = value

    def train_epoch(self) -> None:
        self.pop.train_epoch()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--k", type=int, default=256, help="population size")
    parser.add_argument("--top", type=int, default=12, help="kernels listed per table")
    args = parser.parse_args()
    device = resolve_device(args.device)
    n, d, c = SHAPES[device.type]
    data = synthetic(n, d, c)
    steps = -(-n // 256)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}; N={n:,} D={d:,} C={c}, batch 256, {steps} steps an epoch")
    for loss in ("softmax", "hinge"):
        trainer = Trainer(config(loss, device.type, 1000), data, device)
        report(f"trainer, {loss}", trainer, device, steps, args.top)
    pop = Population(configs(args.k, False, device.type), [data])
    report(f"population, K={args.k} softmax", PopulationEpoch(pop), device, steps, args.top)
    if device.type == "cuda":
        split_table(device, d)


if __name__ == "__main__":
    main()
