"""data.dtype: the features kept on the device in bfloat16 or float16 (half the memory), each
batch read back as float32, the weights and their updates float32: accuracy within a bound of
float32's, for a single trial and a population, and the memory a population's size counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sweeps.engine import fused
from sweeps.spec.sweep import DataSize, sweep_spec
from trainers.config import ConfigError, trial_config
from trainers.data import prepare
from trainers.loop import Trial
from trainers.population import Population

DIGITS = {"source": "digits"}
TRAIN = {"epochs": 8, "batch_size": 32, "optimizer": "momentum", "lr": 0.05}
HALF = ["bfloat16", "float16"]
BOUND = 0.02  # of validation accuracy: 7 of digits' 360 validation examples


def trial_of(dtype: str, **train) -> Trial:
    return Trial(trial_config({"data": DIGITS | {"dtype": dtype}, "train": TRAIN | train}))


@pytest.mark.parametrize("dtype", HALF)
def test_a_trial_keeps_half_the_feature_bytes_and_learns_as_float32_does(dtype):
    full, half = trial_of("float32"), trial_of(dtype)
    trainer = half.trainers[0]
    assert trainer.X.dtype == getattr(torch, dtype) and trainer.W.dtype == torch.float32
    assert trainer.split_tensors("test")[0].dtype == trainer.X.dtype  # measured as chosen
    assert trainer.X.element_size() * 2 == full.trainers[0].X.element_size()
    a, b = full.run(), half.run()
    assert not b["diverged"] and b["val_acc"] >= 0.9
    assert abs(a["val_acc"] - b["val_acc"]) <= BOUND
    assert a["val_acc"] != b["val_acc"] or a["val_loss"] != b["val_loss"]  # really rounded


@pytest.mark.parametrize("dtype", HALF)
def test_a_population_in_half_precision_stays_within_the_bound_of_float32(dtype):
    finals = {}
    for kept in ("float32", dtype):
        cfgs = [
            trial_config({"data": DIGITS | {"dtype": kept}, "train": TRAIN | {"lr": lr}})
            for lr in (0.01, 0.05, 0.2)
        ]
        population = Population(cfgs, prepare(cfgs[0].data))
        while not population.done:
            population.step()
        finals[kept] = [population.final(k)["val_acc"] for k in range(len(cfgs))]
    for full, half in zip(finals["float32"], finals[dtype], strict=True):
        assert abs(full - half) <= BOUND


def test_features_float16_cannot_hold_are_refused_not_taken_for_divergence(tmp_path):
    """Unstandardized features past float16's 65504 would read as inf, and every trial as
    diverged whatever its lr: refused, naming the dtype that holds them."""
    X = np.random.default_rng(0).normal(size=(120, 4)) * 1e5
    np.savez(tmp_path / "big.npz", X=X, y=np.arange(120) % 2)
    data = {"source": "npz", "path": str(tmp_path / "big.npz"), "standardize": False}
    with pytest.raises(ConfigError, match=r"data.dtype: float16 cannot hold these features "
                       r"\(\|x\| up to [0-9.e+]+\); use bfloat16"):  # fmt: skip
        Trial(trial_config({"data": data | {"dtype": "float16"}, "train": TRAIN}))
    kept = Trial(trial_config({"data": data | {"dtype": "bfloat16"}, "train": TRAIN}))
    assert bool(torch.isfinite(kept.trainers[0].X).all())


def test_an_unknown_dtype_is_refused_naming_the_choices():
    with pytest.raises(ConfigError, match="data.dtype must be one of float32, bfloat16, float16"):
        trial_config({"data": DIGITS | {"dtype": "int8"}})


def test_on_the_cpu_a_half_dtype_is_each_populations_own_copy_so_fewer_members_fit():
    def spec(dtype: str):
        return sweep_spec(
            {
                "name": "t",
                "data": DIGITS | {"dtype": dtype},
                "train": {"batch_size": 256},
                "search": {"engine": "fused", "type": "random", "num_samples": 64},
                "space": {"train.lr": {"loguniform": [1e-3, 1.0]}},
            }
        )

    data, cpu = DataSize(rows=1_281_167, features=2048, classes=1000), {"cpu": 1.0, "gpu": 0.0}
    # the CPU maps one shared float32 copy; a smaller dtype is converted into each population
    free = 20 * 2**30
    assert fused.fitting(spec("bfloat16"), data, cpu, 1, free) < fused.fitting(
        spec("float32"), data, cpu, 1, free
    )
