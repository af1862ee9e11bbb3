"""history.jsonl, the sweep folder's own record: folding its events, surviving a kill mid-write,
refusing a damaged file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sweeps.record.history import HistoryFile
from trainers.config import ConfigError


def start(file: HistoryFile, fresh: bool = True) -> None:
    file.append(
        {"event": "sweep_started", "id": "abc", "experiment": "exp"}
        | {"params": {"search.type": "grid"}, "fresh": fresh}
    )


def result(trial: str, epoch: int, **extra) -> dict:
    metrics = {"epoch": epoch, "val_acc": 0.5 + epoch / 100, "diverged": False, **extra}
    return {"event": "result", "trial": trial, "metrics": metrics}


def trial(trial_id: str) -> dict:
    return {"event": "trial_started", "trial": trial_id, "params": {"train.lr": 0.1}} | {
        "config": {"train.lr": 0.1}
    }


def ended(trial_id: str, outcome: str = "completed", error: str | None = None) -> dict:
    return {"event": "trial_ended", "trial": trial_id, "outcome": outcome} | {
        "epochs_run": 3,
        "error": error,
    }


def test_no_file_is_a_new_sweep_with_its_own_id(tmp_path: Path) -> None:
    first = HistoryFile(tmp_path / "h.jsonl").read("exp")
    second = HistoryFile(tmp_path / "h.jsonl").read("exp")
    assert first.experiment == "exp" and not first.started
    assert first.id != second.id and len(first.id) == 32


def test_fold_skips_replayed_epochs_and_reopens_retried_trials(tmp_path: Path) -> None:
    file = HistoryFile(tmp_path / "h.jsonl")
    start(file)
    file.append(trial("t1"))
    for epoch in (1, 2, 3, 2, 3, 4):  # 2 and 3 replayed after a restore from a checkpoint
        file.append(result("t1", epoch))
    file.append(ended("t1", "error", "boom"))
    file.append(trial("t1"))  # retried (resume_errored)
    h = file.read("other")
    assert (h.id, h.experiment) == ("abc", "exp")  # the record's, not the caller's
    assert [r["epoch"] for r in h.trials["t1"].results] == [1, 2, 3, 4]
    assert h.trials["t1"].end is None and not h.finished(1)
    file.append(ended("t1"))
    h = file.read("exp")
    assert h.finished(1) and not h.finished(2) and not h.completed
    file.append({"event": "sweep_ended", "status": "completed", "best": {"trial_id": "t1"}})
    assert file.read("exp").completed


def test_a_fresh_ray_experiment_voids_earlier_trials(tmp_path: Path) -> None:
    file = HistoryFile(tmp_path / "h.jsonl")
    start(file)
    file.append(trial("old"))
    start(file, fresh=True)  # Ray had saved no state: its trials start over, new ids
    file.append(trial("new"))
    assert list(file.read("exp").trials) == ["new"]
    start(file, fresh=False)  # a restore keeps them
    assert list(file.read("exp").trials) == ["new"]


def test_a_line_cut_by_a_kill_is_dropped_then_cut_before_the_next_append(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    file = HistoryFile(path)
    start(file)
    file.append(trial("t1"))
    file.append(result("t1", 1))
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"event":"result","trial":"t1","metr')  # SIGKILL mid-write
    assert [r["epoch"] for r in HistoryFile(path).read("exp").trials["t1"].results] == [1]
    again = HistoryFile(path)  # the resumed driver
    again.append(result("t1", 2))
    assert path.read_bytes().startswith(whole) and path.read_bytes().count(b"metr") == 2
    assert [r["epoch"] for r in again.read("exp").trials["t1"].results] == [1, 2]


def test_a_damaged_line_inside_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    file = HistoryFile(path)
    start(file)
    file.append(trial("t1"))
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "{not json", lines[1]]) + "\n")
    with pytest.raises(ConfigError, match=r"h.jsonl: line 2 is damaged") as err:
        file.read("exp")
    assert "\n" not in str(err.value)
    path.write_text('{"event": "result", "trial": "t1"}\n{"event": "x"}\n')  # no start
    with pytest.raises(ConfigError, match="line 1 is damaged"):
        file.read("exp")


def test_numpy_values_are_recorded_as_numbers(tmp_path: Path) -> None:
    file = HistoryFile(tmp_path / "h.jsonl")
    start(file)
    file.append(trial("t1") | {"params": {"train.batch_size": np.int64(16)}})
    file.append(result("t1", 1, val_loss=np.float32(0.25)))
    h = file.read("exp")
    assert h.trials["t1"].params == {"train.batch_size": 16}
    assert h.trials["t1"].results[0]["val_loss"] == 0.25
