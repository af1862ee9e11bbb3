"""Absurd sizes, at the command line: a sweep of too many configurations or a trial of too many
epochs is refused in one `error:` line naming the key and the bound, exit code 2, before
anything is drawn or written. (Each bound's own negative values come from the rule table:
tests/test_rules.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from sweeps.cli import main
from sweeps.spec.sweep import MAX_CONFIGS, sweep_spec
from trainers.config import MAX_EPOCHS

ROOT = Path(__file__).resolve().parents[1]
ASHA = str(ROOT / "configs/digits_asha.yaml")
FUSED = str(ROOT / "configs/digits_fused.yaml")
DIGITS = str(ROOT / "configs/digits.yaml")
GRID_1600 = "{grid: [%s]}" % ", ".join(str(i) for i in range(1, 1601))  # noqa: UP031

CASES = [
    (["run", FUSED, "--set", "search.num_samples=1000000000"],
     f"error: search.num_samples must be an integer in [1, {MAX_CONFIGS}] or null; "
     "got 1000000000"),
    (["run", ASHA, "--set", "search.num_samples=1000000000"],
     f"error: search.num_samples must be an integer in [1, {MAX_CONFIGS}] or null; "
     "got 1000000000"),
    (["run", ASHA, "--set", "search.type=grid", "--set", "search.num_samples=null", "--set",
      "space={}", "--set",
      f"space.train.batch_size={GRID_1600}", "--set", f"space.train.epochs={GRID_1600}"],
     f"error: search.num_samples x the grid's points must be <= {MAX_CONFIGS} "
     "configurations; got 1 x 2560000 = 2560000"),
    (["run", ASHA, "--set", "search.type=grid", "--set", "search.num_samples=1000", "--set",
      "space={}", "--set", f"space.train.batch_size={GRID_1600}"],
     f"error: search.num_samples x the grid's points must be <= {MAX_CONFIGS} "
     "configurations; got 1000 x 1600 = 1600000"),
    (["run", ASHA, "--set", "train.epochs=1000000000000"],
     f"error: train.epochs must be an integer in [1, {MAX_EPOCHS}]; got 1000000000000"),
    (["run", ASHA, "--set", "space.train.epochs={choice: [10, 2000000]}", "--set",
      "search.type=random"],
     f"error: space.train.epochs must be an integer in [1, {MAX_EPOCHS}]; got 2000000"),
    (["train", DIGITS, "--set", "train.epochs=1000000000000"],
     f"error: train.epochs must be an integer in [1, {MAX_EPOCHS}]; got 1000000000000"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "message"), CASES, ids=lambda v: str(v)[:60])
def test_absurd_sizes_are_refused_before_anything_is_drawn_or_written(
    tmp_path, monkeypatch, capsys, argv, message
):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [message] and captured.out == ""
    assert list(tmp_path.iterdir()) == []  # no runs/, no mlflow.db


def test_the_bounds_themselves_are_accepted():
    doc = {
        "name": "t",
        "train": {"epochs": MAX_EPOCHS},
        "search": {"type": "grid", "num_samples": MAX_CONFIGS // 4},
        "space": {"train.batch_size": {"grid": [1, 2, 3, 4]}},
    }
    assert sweep_spec(doc).num_trials() == MAX_CONFIGS
