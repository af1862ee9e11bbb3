"""The trainer on a CUDA GPU: the same numbers as on the CPU, deterministic, resumable.

    PYTHONPATH=. python -m pytest -p no:cacheprovider -m gpu tests/test_gpu.py

(bench/gpu_check.sh runs it.) Imports only torch and trainers, never Ray, MLflow or sweeps,
so it runs on a GPU machine that has nothing but torch and the scientific stack. On CUDA the
trainer replays each epoch from a CUDA graph; these tests are what checks that path.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from trainers.config import LOSSES, OPTIMIZERS, REGULARIZERS, TrialConfig, trial_config
from trainers.loop import Trial

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]
ROOT = Path(__file__).resolve().parents[1]
DATA = {"source": "synthetic", "n_samples": 3000, "n_features": 40, "n_classes": 5}
COMPARED = ("train_loss", "train_total_loss", "train_acc", "val_loss", "val_acc", "lr")


def config(device: str, **train: Any) -> TrialConfig:
    model = {"loss": train.pop("loss", "softmax")}
    base = {"epochs": 5, "batch_size": 64, "lr": 0.05, "schedule": "cosine", "lambda": 0.01}
    train = {**base, **train, "device": device}
    return trial_config({"data": DATA, "model": model, "train": train})


def same_permutations(gpu: Trial, cpu: Trial, epochs: int) -> None:
    """Make the GPU trial shuffle as the CPU one does (the two devices' generators differ), so
    that only the arithmetic differs between them."""
    for g, c in zip(gpu.trainers, cpu.trainers):
        order = torch.Generator().manual_seed(c.cfg.train.seed)
        perms = iter([torch.randperm(len(c.y), generator=order) for _ in range(epochs)])
        g._shuffle = lambda g=g, perms=perms: g.perm.copy_(next(perms))


def assert_close(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    assert len(got) == len(want)
    for epoch, (a, b) in enumerate(zip(got, want), start=1):
        for key in COMPARED:
            tol = {"abs": 2.5e-3} if key.endswith("acc") else {"rel": 1e-3, "abs": 1e-6}
            assert a[key] == pytest.approx(b[key], **tol), f"epoch {epoch} {key}"


def without_time(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k != "epoch_seconds"}


CASES = [(loss, reg, "momentum") for loss, reg in itertools.product(LOSSES, REGULARIZERS)]
CASES += [("softmax", "l2", opt) for opt in OPTIMIZERS if opt != "momentum"]


@pytest.mark.parametrize(("loss", "reg", "optimizer"), CASES)
def test_cuda_gives_the_cpu_metrics(loss, reg, optimizer):
    lr = 0.005 if optimizer == "adam" else 0.05
    kw = {"loss": loss, "reg": reg, "optimizer": optimizer, "lr": lr}
    gpu, cpu = Trial(config("cuda", **kw)), Trial(config("cpu", **kw))
    assert gpu.device.type == "cuda" and gpu.trainers[0].X.is_cuda
    same_permutations(gpu, cpu, epochs=5)
    gpu.run()
    cpu.run()
    assert gpu.trainers[0].graph is not None  # the epochs were replayed from a CUDA graph
    assert_close(gpu.history, cpu.history)


def test_graph_replay_equals_eager_steps_on_cuda():
    kw = {"optimizer": "adam", "lr": 0.01, "loss": "hinge", "reg": "elastic"}
    graphed, eager = Trial(config("cuda", **kw)), Trial(config("cuda", **kw))
    eager.trainers[0].use_graph = False
    graphed.run()
    eager.run()
    assert graphed.trainers[0].graph is not None and eager.trainers[0].graph is None
    assert_close(graphed.history, eager.history)


def test_cuda_folds_give_the_cpu_metrics():
    folds = {**DATA, "folds": 3}
    gpu = Trial(trial_config({"data": folds, "train": {"epochs": 4, "device": "cuda"}}))
    cpu = Trial(trial_config({"data": folds, "train": {"epochs": 4, "device": "cpu"}}))
    same_permutations(gpu, cpu, epochs=4)
    gpu.run()
    cpu.run()
    assert all(t.graph is not None for t in gpu.trainers)
    assert_close(gpu.history, cpu.history)


def test_same_seed_same_metrics_on_cuda():
    a, b, c = (Trial(config("cuda", seed=s)).run() for s in (1, 1, 2))
    assert without_time(a) == without_time(b)
    assert a["val_loss"] != c["val_loss"]


def test_resume_on_cuda_equals_uninterrupted(tmp_path):
    kw = {"epochs": 8, "schedule": "step", "step_size": 3, "optimizer": "adam", "lr": 0.01}
    full = Trial(config("cuda", **kw)).run()
    first = Trial(config("cuda", **kw))
    for _ in range(3):
        first.step()
    first.save(tmp_path)
    del first
    resumed = Trial.load(tmp_path)  # the device generator's state comes back with it
    assert resumed.device.type == "cuda" and resumed.epoch == 3
    final = resumed.run()
    assert len(resumed.history) == 8
    assert without_time(final) == without_time(full)


def test_cuda_checkpoint_evaluated_where_there_is_no_gpu(tmp_path):
    trial = Trial(config("cuda"))
    trial.run()
    trial.save(tmp_path)
    on_gpu = trial.evaluate("test")
    code = (
        "import json, sys, torch\n"
        "from trainers.loop import evaluate\n"
        "assert not torch.cuda.is_available()\n"
        f"scores = evaluate({str(tmp_path)!r}, 'test')\n"
        "assert not any(m in sys.modules for m in ('ray', 'mlflow', 'sweeps'))\n"
        "print(json.dumps(scores))\n"
    )
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    on_cpu = json.loads(done.stdout.splitlines()[-1])
    assert on_cpu.keys() == on_gpu.keys() == {"test_loss", "test_acc"}
    assert on_cpu["test_loss"] == pytest.approx(on_gpu["test_loss"], rel=1e-4)
    assert on_cpu["test_acc"] == pytest.approx(on_gpu["test_acc"], abs=1e-3)


def test_divergence_guard_on_cuda():
    trial = Trial(config("cuda", lr=1e30, optimizer="sgd", schedule="constant", epochs=20))
    final = trial.run()
    assert final["diverged"] is True and final["epochs_run"] < 20
    for key in ("train_loss", "val_loss", "val_acc"):
        assert torch.isfinite(torch.tensor(final[key]))


def population_configs(device: str) -> list[TrialConfig]:
    combos = itertools.product(LOSSES, REGULARIZERS, ("sgd", "momentum", "nesterov"))
    return [
        config(device, loss=loss, reg=reg, optimizer=opt, seed=i)
        for i, (loss, reg, opt) in enumerate(combos)
    ]


def test_population_graph_replay_equals_eager_steps_on_cuda():
    from trainers.population import Population

    graphed, eager = Population(population_configs("cuda")), Population(population_configs("cuda"))
    for fold in eager.folds:
        fold.use_graph = False
    got = [graphed.step() for _ in range(3)]
    want = [eager.step() for _ in range(3)]
    assert all(f.graph is not None for f in graphed.folds)
    assert all(f.graph is None for f in eager.folds)
    stopped = list(got[0])[::2]  # compaction: the graph is made again for the rest
    graphed.remove(stopped)
    eager.remove(stopped)
    got += [graphed.step() for _ in range(2)]
    want += [eager.step() for _ in range(2)]
    for g, w in zip(got, want, strict=True):
        assert list(g) == list(w)
        assert_close([without_time(g[k]) for k in g], [without_time(w[k]) for k in w])
    with_adam = Population([*population_configs("cuda")[:2], config("cuda", optimizer="adam")])
    with_adam.step()
    assert all(f.graph is None for f in with_adam.folds)  # Adam's populations run eagerly


def test_population_triton_step_equals_torch_ops_on_cuda():
    """The sgd family's one-pass Triton kernel against torch's ops, every loss, regularizer and
    sgd-family optimizer mixed in one population, CUDA graphs on in both."""
    pytest.importorskip("triton")
    from trainers.population import Population

    fused, ops = Population(population_configs("cuda")), Population(population_configs("cuda"))
    assert all(f.use_triton for f in fused.folds)
    for fold in ops.folds:
        fold.use_triton = False
    got = [fused.step() for _ in range(4)]
    want = [ops.step() for _ in range(4)]
    for g, w in zip(got, want, strict=True):
        assert list(g) == list(w)
        assert_close([without_time(g[k]) for k in g], [without_time(w[k]) for k in w])


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_features_on_cuda_stay_within_the_bound_of_float32(dtype):
    """data.dtype on the device, through the CUDA graph (a trial) and the Triton step (a
    population): validation accuracy within 0.02 of float32's (tests/test_dtype.py's bound)."""
    from trainers.population import Population

    def cfg(kept: str, lr: float = 0.05) -> TrialConfig:
        train = {"epochs": 5, "batch_size": 64, "lr": lr, "device": "cuda"}
        return trial_config({"data": DATA | {"dtype": kept}, "train": train})

    full, half = Trial(cfg("float32")).run(), Trial(cfg(dtype)).run()
    assert abs(full["val_acc"] - half["val_acc"]) <= 0.02
    finals = {}
    for kept in ("float32", dtype):
        population = Population([cfg(kept, lr) for lr in (0.01, 0.05, 0.2)])
        assert population.folds[0].X.dtype == getattr(torch, kept)
        while not population.done:
            population.step()
        finals[kept] = [population.final(k)["val_acc"] for k in range(3)]
    for a, b in zip(finals["float32"], finals[dtype], strict=True):
        assert abs(a - b) <= 0.02


def test_tf32_products_stay_within_the_bound_of_float32():
    """train.matmul tf32, through the CUDA graph (a trial) and a population: validation accuracy
    within 0.02 of float32's; from Ampere on the products really are rounded (the weights
    differ). Each trainer runs before the next is made: the setting is the process's."""
    from trainers.population import Population

    data = {"source": "synthetic", "n_samples": 4000, "n_features": 512, "n_classes": 20}

    def cfg(matmul: str, lr: float = 0.05) -> TrialConfig:
        train = {"epochs": 5, "batch_size": 64, "lr": lr, "device": "cuda", "matmul": matmul}
        return trial_config({"data": data, "train": train})

    weights, finals = {}, {}
    for matmul in ("float32", "tf32"):
        trial = Trial(cfg(matmul))
        finals[matmul] = trial.run()["val_acc"]
        weights[matmul] = trial.trainers[0].W.clone()
    assert abs(finals["float32"] - finals["tf32"]) <= 0.02
    if torch.cuda.get_device_capability() >= (8, 0):
        assert not torch.equal(weights["float32"], weights["tf32"])
    for matmul in ("float32", "tf32"):
        population = Population([cfg(matmul, lr) for lr in (0.01, 0.05, 0.2)])
        while not population.done:
            population.step()
        finals[matmul] = [population.final(k)["val_acc"] for k in range(3)]
    for a, b in zip(finals["float32"], finals["tf32"], strict=True):
        assert abs(a - b) <= 0.02


def test_a_populations_device_memory_is_within_what_its_size_counts():
    """search.population_size auto counts member_bytes a member, beside the data and what
    measuring a split takes: the allocator's peak of a real population stays under it."""
    from trainers.population import MEASURE_BYTES, Population, member_bytes

    data = {"source": "synthetic", "n_samples": 3000, "n_features": 512, "n_classes": 100}
    train = {"epochs": 2, "batch_size": 64, "optimizer": "momentum", "device": "cuda"}
    cfgs = [
        trial_config({"data": data, "train": train | {"lr": 0.01 * (k + 1)}}) for k in range(64)
    ]
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    population = Population(cfgs)
    population.step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    rows = len(population.folds[0].y) + len(population.folds[0].y_val)
    counted = 64 * member_bytes(512, 100, 64, ["momentum"]) + rows * (4 * 512 + 8)
    assert peak <= counted + MEASURE_BYTES, (peak, counted)
