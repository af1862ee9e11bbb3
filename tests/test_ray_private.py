"""The one use of Ray's private state (sweeps.engine.ray_tune.repoint_unmade_trials), checked
without starting Ray, so that a Ray release that changes it fails here, in the fast tests,
loudly."""

from __future__ import annotations

from pathlib import Path

from ray import tune
from ray.tune.experiment import Experiment

from sweeps.engine.ray_tune import Variants, repoint_unmade_trials


def nothing(config: dict) -> None:
    pass


def test_trials_not_yet_made_are_repointed_at_the_moved_folder(tmp_path: Path) -> None:
    old = tmp_path / "old"
    experiment = Experiment(
        "ray", run=nothing, config={"x": tune.grid_search([1, 2, 3])}, storage_path=str(old)
    )
    generator = Variants()
    generator.add_configurations([experiment])
    made = generator.next_trial()  # drawn from the grid: the other two wait, drawn, unmade
    assert made.storage.experiment_fs_path == str(old / "ray")
    repoint_unmade_trials(generator, tmp_path / "new" / "ray")
    later = [generator.next_trial(), generator.next_trial()]
    assert [t.storage.experiment_fs_path for t in later] == [str(tmp_path / "new/ray")] * 2
    assert made.storage.experiment_fs_path == str(old / "ray")  # copies: made trials untouched
