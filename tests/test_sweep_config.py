"""Sweep configs: overrides, the space's rules, and what --dry-run and bad input print."""

from pathlib import Path

import pytest

from sweeps.cli import main
from sweeps.config import apply_sets, parse_sets
from sweeps.spec import sweep_spec
from trainers.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
BASE = {"name": "t", "search": {"type": "random", "num_samples": 4}}


def spec(**extra):
    return sweep_spec({**BASE, **extra})


def test_set_parses_yaml_values_and_dotted_space_keys():
    sets = parse_sets(["train.lr=0.1", "search.type=grid", "space.train.lr={grid: [0.1, 0.2]}"])
    doc = apply_sets({}, sets)
    assert doc["train"]["lr"] == 0.1 and doc["search"]["type"] == "grid"
    assert doc["space"]["train.lr"] == {"grid": [0.1, 0.2]}


def test_number_of_trials():
    grid = spec(
        search={"type": "grid", "num_samples": 3},
        space={"train.lr": {"grid": [0.1, 0.2]}, "model.loss": {"grid": ["softmax", "hinge"]}},
    )
    assert grid.num_trials() == 12
    assert spec(space={"train.lr": {"loguniform": [1e-3, 1]}}).num_trials() == 4


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"space": {"train.lrr": {"choice": [1]}}},
            "unknown key space.train.lrr; did you mean space.train.lr",
        ),
        ({"space": {"train.lr": {"loguniform": [0, 1]}}}, "train.lr must be a number > 0"),
        ({"space": {"train.lr": {"uniform": [1, 0.5]}}}, "needs low < high"),
        ({"space": {"train.lr": {"gaussian": [1, 2]}}}, "unknown distribution gaussian"),
        ({"space": {"train.lr": [0.1, 0.2]}}, "must be one distribution"),
        ({"space": {"train.batch_size": {"uniform": [8, 64]}}}, "takes integers"),
        ({"space": {"model.loss": {"choice": ["softmax", "l2"]}}}, "model.loss must be one of"),
        (
            {"search": {"type": "grid"}, "space": {"train.lr": {"loguniform": [0.1, 1]}}},
            "a grid search needs explicit values",
        ),
        (
            {"train": {"optimizer": "sgd"}, "space": {"train.momentum": {"uniform": [0.5, 0.9]}}},
            "train.momentum is searched but train.optimizer is never momentum or nesterov",
        ),
        (
            {"space": {"train.step_size": {"choice": [2, 4]}}},
            "train.step_size is searched but train.schedule is never step",
        ),
        ({"search": {"type": "bayes"}}, "search.type must be one of grid, random, asha"),
        ({"search": {"metrc": "val_acc"}}, "unknown key search.metrc; did you mean search.metric"),
        (
            {"search": {"type": "asha"}, "space": {"train.epochs": {"choice": [5, 10]}}},
            "cannot be searched with asha",
        ),
        ({"resources": {"gpu": -1}}, "resources.gpu must be a number >= 0"),
        ({"name": "../evil"}, "name must be letters"),
        ({"mlflow": {"uri": "x"}}, "mlflow takes one key"),
    ],
)
def test_bad_sweep_configs(extra, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("{", r"\{")):
        spec(**extra)


def test_momentum_may_be_searched_when_the_optimizer_is_searched_too():
    spec(
        train={"optimizer": "sgd"},
        space={
            "train.optimizer": {"choice": ["sgd", "momentum"]},
            "train.momentum": {"uniform": [0.5, 0.9]},
        },
    )


def test_dry_run_prints_space_and_trial_count(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(
        [
            "run",
            str(ROOT / "configs/digits_asha.yaml"),
            "--dry-run",
            "--set",
            "search.num_samples=5",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "asha search, 5 trials" in out and "train.lambda" in out
    assert list(tmp_path.iterdir()) == []  # nothing written
