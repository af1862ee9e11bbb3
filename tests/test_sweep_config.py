"""Sweep configs: overrides, the space's rules, and what --dry-run and bad input print."""

from pathlib import Path

import pytest

from sweeps.cli import main
from sweeps.spec.document import apply_sets, load, parse_sets
from sweeps.spec.sweep import sweep_spec
from trainers.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
BASE = {  # draws differ only where something is searched (an empty space is refused)
    "name": "t",
    "search": {"type": "random", "num_samples": 4},
    "space": {"train.lr": {"loguniform": [1e-3, 0.3]}},
}


def spec(**extra):
    return sweep_spec({**BASE, **extra})


def test_set_parses_yaml_values_and_dotted_space_keys():
    sets = parse_sets(["train.lr=0.1", "search.type=grid", "space.train.lr={grid: [0.1, 0.2]}"])
    doc = apply_sets({}, sets)
    assert doc["train"]["lr"] == 0.1 and doc["search"]["type"] == "grid"
    assert doc["space"]["train.lr"] == {"grid": [0.1, 0.2]}


def test_a_relative_data_path_is_made_absolute_from_where_the_command_runs(tmp_path, monkeypatch):
    """Trials run in Ray's trial folders: a path relative to the user's directory would not be
    found there."""
    (tmp_path / "cfg.yaml").write_text("data: {source: npz, path: data/x.npz}\n")
    monkeypatch.chdir(tmp_path)
    assert load("cfg.yaml")["data"]["path"] == str(tmp_path / "data/x.npz")
    sets = ["data.path=/abs/y.npz"]
    assert load("cfg.yaml", sets)["data"]["path"] == "/abs/y.npz"
    sets = ["space.data.path={grid: [a.npz, /abs/b.npz]}", "space.train.lr={grid: [0.1]}"]
    space = load("cfg.yaml", sets)["space"]
    assert space["data.path"] == {"grid": [str(tmp_path / "a.npz"), "/abs/b.npz"]}  # searched too
    assert space["train.lr"] == {"grid": [0.1]}


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
        ({"mlflow": {"uri": "x"}}, "unknown key mlflow.uri; did you mean mlflow.tracking_uri?"),
        # every value a distribution can produce, and the rules over keys on the space's corners
        (
            {"space": {"data.val_fraction": {"uniform": [0.85, 0.9]}}},
            "data.val_fraction + data.test_fraction must be < 1 to leave a training split; "
            "got 0.85 + 0.2 (a corner of space)",
        ),
        (
            {"space": {"train.lr": {"quniform": [0.01, 0.02, 0.1]}}},
            "space.train.lr.quniform needs low and high that are multiples of the step 0.1 "
            "(draws are rounded to it); got [0.01, 0.02, 0.1]",
        ),
        (
            {"space": {"train.lr": {"quniform": [0.1, 0.3, 1e-320]}}},
            "space.train.lr.quniform step 1e-320 is too small: its multiples overflow",
        ),
        (
            {"space": {"train.lr": {"qloguniform": [0.1, 1, 0]}}},
            "space.train.lr.qloguniform step must be a number > 0; got 0",
        ),
        (
            {"space": {"data.source": {"choice": ["digits", "csv"]}}},
            "data.path is required for data.source csv (a corner of space)",
        ),
        (
            {
                "space": {
                    "train.optimizer": {"choice": ["sgd", "nesterov"]},
                    "train.momentum": {"uniform": [0, 0.9]},
                }
            },
            "train.momentum must be > 0 for train.optimizer nesterov; got 0 (a corner of space)",
        ),
        (
            {"train": {"epochs": 5}, "space": {"train.warmup_epochs": {"randint": [0, 5]}}},
            "train.warmup_epochs must be < train.epochs (5); got 5 (a corner of space)",
        ),
        (
            {"space": {"train.seed": {"grid": [1, 2**32]}}},
            "space.train.seed must be an integer in [0, 4294967295]; got 4294967296",
        ),
        (
            {"space": {"data.val_fraction": {"choice": [0.1, 1.5]}}},
            "space.data.val_fraction must be a number in (0, 1); got 1.5",
        ),
        ({"train": {"seed": 99999999999999999999}}, "train.seed must be an integer in [0, "),
        ({"data": {"seed": 4294967296}}, "data.seed must be an integer in [0, 4294967295]"),
        ({"search": {"seed": -1}}, "search.seed must be an integer in [0, 4294967295]"),
        ({"name": "evil\n"}, r"set name: in the config or pass --name); got 'evil\n'"),
        ({"mlflow": {"tracking_uri": "file:///tmp/x"}}, "mlflow.tracking_uri must be an MLflow"),
        ({"mlflow": {"tracking_uri": 5}}, "mlflow.tracking_uri must be an MLflow store URI"),
        ({"mlflow": {"tracking_uri": "foo://bar"}}, "mlflow.tracking_uri must be an MLflow"),
        ({"space": {"train.l\nr": {"choice": [1]}}}, r"unknown key space.train.l\nr;"),
    ],
)
def test_bad_sweep_configs(extra, message):
    with pytest.raises(ConfigError) as err:
        spec(**extra)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "space",
    [
        {"data.val_fraction": {"uniform": [0.5, 0.75]}},  # 0.75 + 0.2 < 1
        {"train.lr": {"quniform": [0.1, 0.5, 0.1]}},  # 0.3 / 0.1 is 2.9999999999999996
        {"train.lr": {"qloguniform": [0.001, 0.1, 0.001]}},
        {"train.optimizer": {"choice": ["sgd", "nesterov"]}, "train.momentum": {"grid": [0.5]}},
        {"train.seed": {"randint": [0, 2**32 - 1]}},
    ],
)
def test_spaces_whose_corners_all_hold_are_accepted(space):
    assert spec(space=space).space.doc() == space


def test_numbers_as_people_write_them():
    sets = parse_sets(["train.lr=1e-3", "space.train.lambda={loguniform: [1e-4, 1E-1]}"])
    assert sets["train.lr"] == 0.001
    assert spec(**apply_sets({}, sets)).space.doc() == {"train.lambda": {"loguniform": [1e-4, 0.1]}}
    assert parse_sets(["x=1e", "y=e5", "z=1_000", "w=-2.5e+3"]) == {
        "x": "1e",
        "y": "e5",
        "z": 1000,
        "w": -2500.0,
    }


def test_momentum_may_be_searched_when_the_optimizer_is_searched_too():
    space = {
        "train.optimizer": {"choice": ["sgd", "momentum"]},
        "train.momentum": {"uniform": [0.5, 0.9]},
    }
    resolved = spec(train={"optimizer": "sgd"}, space=space)
    assert resolved.space.doc() == space
    assert resolved.trial.train.optimizer == "sgd"  # the fixed value, where a trial draws none


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
