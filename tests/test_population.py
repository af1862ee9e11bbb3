"""The population trainer: each fused configuration trains as its own Trial would, epoch by epoch;
divergence, stopping, resume and export per configuration."""

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainers.config import ConfigError, trial_config
from trainers.data import prepare
from trainers.loop import Trial, evaluate
from trainers.metrics import CURVES
from trainers.model import LinearClassifier
from trainers.population import Population

DATA = {"source": "synthetic", "n_samples": 400, "n_features": 8, "n_classes": 3}
COMPARED = [k for k in CURVES if k != "epoch_seconds"]
SCHEDULES = {
    "constant": {"schedule": "constant"},
    "step": {"schedule": "step", "step_size": 2, "gamma": 0.5},
    "cosine": {"schedule": "cosine"},
    "warmup": {"schedule": "cosine", "warmup_epochs": 2},
}


def config(loss="softmax", margin=1.0, data=None, **train):
    train = {"epochs": 4, "batch_size": 32, "lr": 0.05, "lambda": 0.01, **train}
    return trial_config(
        {"data": data or DATA, "model": {"loss": loss, "margin": margin}, "train": train}
    )


@pytest.fixture(scope="module")
def datasets():
    return prepare(config().data)


def same_metrics(fused: dict, alone: dict) -> None:
    """Every per-epoch metric agrees within float32 tolerance; epoch and diverged exactly."""
    assert set(fused) == set(alone)
    assert (fused["epoch"], fused["diverged"]) == (alone["epoch"], alone["diverged"])
    for key in COMPARED:
        assert fused[key] == pytest.approx(alone[key], rel=1e-5, abs=1e-6), key


def check_against_trials(cfgs, datasets, epochs):
    """Train cfgs fused, then each alone with the same data order; compare every epoch."""
    pop = Population(cfgs, datasets)
    fused = [pop.step() for _ in range(epochs)]
    for k, cfg in enumerate(cfgs):
        trial = Trial(cfg, datasets)
        for epoch in range(epochs):
            same_metrics(fused[epoch][k], trial.step())
    return pop


def loss_and_reg_mix(**train):
    """The 12 losses x regularizers, with margins, lambdas and elastic betas that differ."""
    combos = itertools.product(
        ["softmax", "hinge", "squared_hinge"], ["l2", "l1", "elastic", "none"]
    )
    return [
        config(loss, margin=0.5 + 0.25 * i, reg=reg, elastic_beta=0.3 + 0.1 * i,
               **{"lambda": 0.003 * (i + 1), **train})
        for i, (loss, reg) in enumerate(combos)
    ]  # fmt: skip


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "nesterov", "adam"])
def test_each_configuration_trains_as_its_own_trial(datasets, optimizer, schedule):
    lr = 0.01 if optimizer == "adam" else 0.05
    cfgs = loss_and_reg_mix(optimizer=optimizer, lr=lr, momentum=0.8, **SCHEDULES[schedule])
    check_against_trials(cfgs, datasets, epochs=4)


def test_a_bias_gradient_of_zero_stays_zero_under_adam():
    """Hinge slopes summed over a batch are integers, so a bias whose active terms cancel gets
    exactly 0 and Adam takes no step from rounding noise (about 0.8 lr a step otherwise: the
    metrics then drift apart by 6e-3 on digits within three epochs)."""
    digits = {"source": "digits"}
    cfg = config("hinge", data=digits, optimizer="adam", lr=0.1, batch_size=200, epochs=3)
    check_against_trials([cfg], prepare(cfg.data), epochs=3)


def test_an_unused_penalty_term_is_zero_past_float32s_range(datasets):
    """Weights whose sum of squares passes float32's range (an absurd lr): a configuration
    without that penalty term has a finite total loss, fused as alone (0 times inf is NaN,
    which read as diverged), while the l2 one diverges in both."""
    cfgs = [config("hinge", reg=reg, lr=1e21, **{"lambda": 0.0}) for reg in ("none", "l1", "l2")]
    check_against_trials(cfgs, datasets, epochs=1)
    assert [Trial(c, datasets).step()["diverged"] for c in cfgs] == [False, False, True]


def test_mixed_optimizers_and_epochs_in_one_population(datasets):
    cfgs = [
        config(loss, optimizer=opt, lr=lr, epochs=epochs, momentum=rho, reg="elastic")
        for (loss, (opt, lr, rho)), epochs in zip(
            itertools.product(
                ["softmax", "hinge", "squared_hinge"],
                [("sgd", 0.1, 0.9), ("momentum", 0.05, 0.5), ("nesterov", 0.02, 0.9),
                 ("adam", 0.01, 0.9)],
            ),
            itertools.cycle([4, 2, 3]),
        )
    ]  # fmt: skip
    pop = Population(cfgs, datasets)
    frozen = {}
    for _ in range(4):
        for k in pop.finished():
            frozen.setdefault(k, pop.folds[0].W[:, k].clone())
        reported = pop.step()
        assert all(pop.epochs_run[k] <= cfgs[k].train.epochs for k in reported)
    for k, W in frozen.items():  # a finished configuration's weights no longer move
        assert torch.equal(pop.folds[0].W[:, k], W)
    assert pop.done and pop.finished() == list(range(len(cfgs)))
    assert pop.step() == {}
    for k, cfg in enumerate(cfgs):
        trial = Trial(cfg, datasets)
        trial.run()
        assert len(pop.history[k]) == cfg.train.epochs
        for fused, alone in zip(pop.history[k], trial.history):
            same_metrics(fused, alone)


def test_each_configuration_starts_from_its_own_seed_and_shares_the_order(datasets):
    cfgs = [config(seed=s, lr=0.1 * (1 + s)) for s in (3, 5, 7)]
    pop = Population(cfgs, datasets)
    assert pop.order_seed == 3
    for k, cfg in enumerate(cfgs):
        model = LinearClassifier(8, 3, torch.Generator().manual_seed(cfg.train.seed))
        assert torch.equal(pop.folds[0].W[:, k], model.W.detach())
    fused = [pop.step()[0] for _ in range(4)]
    trial = Trial(cfgs[0], datasets)  # train.seed 3 = the order seed: the same batches
    for metrics in fused:
        same_metrics(metrics, trial.step())
    assert Population(cfgs, datasets, order_seed=9).step()[0] != fused[0]


def test_cross_validation_folds_train_as_a_trial_does():
    data = {**DATA, "folds": 3}
    cfgs = [config("hinge", data=data), config(optimizer="adam", lr=0.01, data=data)]
    datasets = prepare(cfgs[0].data)
    assert len(Population(cfgs, datasets).folds) == 3
    check_against_trials(cfgs, datasets, epochs=3)


def test_a_diverging_configuration_is_frozen_and_the_others_go_on(datasets):
    kw = {"optimizer": "sgd", "schedule": "constant", "epochs": 6}
    cfgs = [config(**kw), config(**{**kw, "lr": 1e30}), config("hinge", **kw)]
    pop = Population(cfgs, datasets, ids=["a", "wild", "c"])
    steps = [pop.step() for _ in range(6)]
    diverged_at = next(e for e, s in enumerate(steps) if s["wild"]["diverged"])
    flagged = steps[diverged_at]["wild"]
    assert flagged["epoch"] == diverged_at + 1
    assert all(flagged[k] == pop.last_finite[1][k] for k in COMPARED)  # the last finite ones
    assert all(torch.isfinite(torch.tensor(flagged[k])) for k in COMPARED)
    assert all("wild" not in s for s in steps[diverged_at + 1 :])  # frozen: no more epochs
    assert pop.finished() == ["a", "wild", "c"] and pop.final("wild")["diverged"]
    assert torch.isfinite(pop.folds[0].W).all()  # its columns were zeroed, nothing lingers
    for k, id_ in ((0, "a"), (2, "c")):
        trial = Trial(cfgs[k], datasets)
        for s in steps:
            same_metrics(s[id_], trial.step())


def test_removed_configurations_cost_nothing_and_change_nothing(datasets):
    cfgs = [config(loss, optimizer=opt, lr=0.02) for loss in ("softmax", "hinge")
            for opt in ("momentum", "adam")]  # fmt: skip
    whole, cut = Population(cfgs, datasets), Population(cfgs, datasets)
    for _ in range(2):
        whole.step(), cut.step()
    cut.remove([0, 3])
    assert cut.ids == [1, 2] and [c.model.loss for c in cut.cfgs] == ["softmax", "hinge"]
    assert cut.folds[0].W.shape == (8, 2, 3) and cut.folds[0].state["W"]["m"].shape == (8, 2, 3)
    for _ in range(2):
        full, part = whole.step(), cut.step()
        assert set(part) == {1, 2}
        for id_ in part:
            same_metrics(part[id_], full[id_])
    with pytest.raises(KeyError, match="no configuration 0"):
        cut.remove([0])
    cut.keep([2])
    assert cut.ids == [2] and cut.folds[0].b.shape == (1, 3)


def test_resume_from_checkpoint_equals_uninterrupted_run(datasets, tmp_path):
    cfgs = [config(optimizer="adam", lr=0.01, epochs=5), config("squared_hinge", epochs=5,
            schedule="step", step_size=2, optimizer="nesterov")]  # fmt: skip
    full = Population(cfgs, datasets, ids=["x", "y"])
    for _ in range(5):
        full.step()
    first = Population(cfgs, datasets, ids=["x", "y"])
    for _ in range(2):
        first.step()
    first.save(tmp_path)
    del first
    resumed = Population.load(tmp_path, datasets)
    assert resumed.ids == ["x", "y"] and resumed.epochs_run == [2, 2]
    while not resumed.done:
        resumed.step()
    strip = ("epoch_seconds",)
    for k in range(2):
        assert [{m: v for m, v in h.items() if m not in strip} for h in resumed.history[k]] == [
            {m: v for m, v in h.items() if m not in strip} for h in full.history[k]
        ]


@pytest.mark.parametrize("optimizer", ["momentum", "adam", "sgd"])
def test_an_exported_configuration_is_a_trial_checkpoint(datasets, tmp_path, optimizer):
    cfgs = [config("hinge", epochs=5, optimizer=optimizer, lr=0.02), config(epochs=5)]
    pop = Population(cfgs, datasets, ids=["h", "s"])
    for _ in range(3):
        pop.step()
    pop.export("h", tmp_path)
    trial = Trial.load(tmp_path, datasets)
    assert trial.epoch == 3 and trial.history == pop.history[0]
    assert trial.evaluate("test") == pytest.approx(pop.evaluate("test", "h"), rel=1e-6)
    assert evaluate(tmp_path, "test") == pytest.approx(pop.evaluate("test", "h"), rel=1e-6)
    alone = Trial(cfgs[0], datasets)  # the exported trial continues as if never fused
    alone.run()
    trial.run()
    for fused, single in zip(trial.history, alone.history):
        same_metrics(fused, single)


@pytest.mark.parametrize(
    "second, message",
    [
        ({"train": {"batch_size": 64}}, "train.batch_size must be the same"),
        ({"train": {"batch_size": 32, "device": "cpu"}}, "train.device must be the same"),
        ({"train": {"batch_size": 32, "matmul": "tf32"}}, "train.matmul must be the same"),
        ({"data": {**DATA, "seed": 1}}, "data.seed must be the same"),
        ({"data": {"source": "digits"}}, "data.source must be the same"),
    ],
)
def test_configurations_that_cannot_share_a_batch_are_refused(second, message):
    first = trial_config({"data": DATA, "train": {"batch_size": 32}})
    other = trial_config({"data": DATA, "train": {"batch_size": 32}, **second})
    with pytest.raises(ConfigError, match=message) as err:
        Population([first, other])
    assert "\n" not in str(err.value)


def test_an_empty_population_or_a_too_large_batch_is_refused(datasets):
    with pytest.raises(ConfigError, match="at least one configuration"):
        Population([])
    with pytest.raises(ConfigError, match="train.batch_size must be <= the training split"):
        Population([config(batch_size=10_000)], datasets)


def test_the_benchmark_prints_its_table():
    bench = Path(__file__).resolve().parents[1] / "bench" / "fused.py"
    args = ["--n", "600", "--d", "16", "--ks", "1,4", "--epochs", "1", "--mix", "--threads", "1"]
    env = {**os.environ, "PYTHONPATH": str(bench.parents[1])}
    out = subprocess.run(
        [sys.executable, str(bench), *args], capture_output=True, text=True, check=True, env=env
    ).stdout
    assert out.startswith("device: ")
    rows = [line for line in out.splitlines() if line.startswith("| fused")]
    assert [row.split("|")[2].strip() for row in rows] == ["1", "4"]


def test_the_kernel_profile_prints_a_table_per_trainer():
    bench = Path(__file__).resolve().parents[1] / "bench" / "kernels.py"
    env = {**os.environ, "PYTHONPATH": str(bench.parents[1])}
    out = subprocess.run(
        [sys.executable, str(bench), "--device", "cpu", "--k", "4", "--top", "3"],
        capture_output=True, text=True, check=True, env=env,
    ).stdout  # fmt: skip
    heads = [line.split(":")[0] for line in out.splitlines() if "eager epoch" in line]
    assert heads == ["trainer, softmax", "trainer, hinge", "population, K=4 softmax"]
    totals = [line.split() for line in out.splitlines() if line.strip().startswith("all (")]
    assert len(totals) == 3 and all(float(t[-1]) > 0 and float(t[-2]) > 1 for t in totals)


def test_the_linear_probe_benchmark_runs_where_ray_mlflow_and_optuna_are_not(tmp_path):
    """bench/scale_gpu.py runs on a GPU machine that has torch and the scientific stack only:
    here the three are shadowed by modules that refuse to import."""
    for name in ("ray", "mlflow", "optuna"):
        (tmp_path / f"{name}.py").write_text(f"raise ImportError('no {name} here')\n")
    bench = Path(__file__).resolve().parents[1] / "bench" / "scale_gpu.py"
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{bench.parents[1]}"}
    args = ["--n", "3000", "--d", "8", "--c", "3", "--configs", "3", "--epochs", "2"]
    out = subprocess.run(
        [sys.executable, str(bench), *args, "--folder", str(tmp_path)],
        capture_output=True, text=True, check=True, env=env,
    ).stdout  # fmt: skip
    assert "population_size auto: 256" in out and "population of 3:" in out
    assert "baseline, float32 products:" in out and "test_acc" in out
    assert "per trial, gpu 0.25: 4 trials at once" in out
    assert not out.count("targets:")  # the target is for the full size only
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.py", "optuna.py", "ray.py"]
