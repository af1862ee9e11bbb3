"""train.matmul: tf32 sets the process's CUDA products to TensorFloat-32 as each trainer is
made, float32 back to exact; a CPU computes the same float32 numbers either way, and a fused
sweep never puts the two in one population. (On a GPU: tests/test_gpu.py bounds the cost.)"""

from __future__ import annotations

import pytest
import torch

from sweeps.engine import fused
from sweeps.search.draws import sample_params
from sweeps.spec.sweep import sweep_spec
from trainers.config import ConfigError, trial_config
from trainers.data import prepare
from trainers.loop import Trial
from trainers.population import Population

DIGITS = {"source": "digits"}
TRAIN = {"epochs": 3, "batch_size": 32, "optimizer": "momentum", "lr": 0.05}


def cfg(matmul: str, **train):
    return trial_config({"data": DIGITS, "train": TRAIN | {"matmul": matmul} | train})


def cuda_products() -> str:
    return torch.backends.cuda.matmul.fp32_precision


def test_each_trainer_sets_the_processes_cuda_products_as_it_is_made():
    datasets = prepare(cfg("float32").data)
    Trial(cfg("tf32"), datasets)
    assert cuda_products() == "tf32"
    Trial(cfg("float32"), datasets)
    assert cuda_products() == "ieee"
    Population([cfg("tf32", lr=lr) for lr in (0.01, 0.1)], datasets)
    assert cuda_products() == "tf32"
    Population([cfg("float32")], datasets)
    assert cuda_products() == "ieee"


def test_on_the_cpu_tf32_gives_the_float32_numbers():
    datasets = prepare(cfg("float32").data)
    exact, tf32 = Trial(cfg("float32"), datasets), Trial(cfg("tf32"), datasets)
    exact.run(), tf32.run()
    strip = [{k: v for k, v in m.items() if k != "epoch_seconds"} for m in exact.history]
    assert strip == [{k: v for k, v in m.items() if k != "epoch_seconds"} for m in tf32.history]


def test_an_unknown_matmul_is_refused_naming_the_choices():
    with pytest.raises(ConfigError, match="train.matmul must be one of float32, tf32"):
        cfg("bf16")


def test_a_fused_sweep_keeps_each_matmul_in_populations_of_its_own():
    spec = sweep_spec(
        {
            "name": "t",
            "data": DIGITS,
            "train": {"batch_size": 32},
            "search": {"engine": "fused", "type": "grid", "population_size": 8},
            "space": {
                "train.lr": {"grid": [0.01, 0.02, 0.03]},
                "train.matmul": {"grid": ["float32", "tf32"]},
            },
        }
    )
    plan = fused.plan(spec, sample_params(spec))
    assert sorted(len(p.ids) for p in plan.populations) == [3, 3]
    for p in plan.populations:
        assert len({c["train"]["matmul"] for c in p.configs}) == 1
