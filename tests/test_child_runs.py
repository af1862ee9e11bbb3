"""mlflow.child_runs best:N against a real sweep, Ray and SQLite store: every configuration in
results.csv, child runs for the N best only (and the chosen one), the same in a synced store."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweeping import make_data, runs_of, write_config  # noqa: E402
from test_fused import ENV, SWEEP, finished  # noqa: E402


@pytest.mark.slow
def test_a_fused_sweep_keeps_runs_of_its_best_n_and_every_row(tmp_path):
    make_data(tmp_path)
    search = {"type": "random", "engine": "fused", "num_samples": 12, "seed": 3}
    space = {"train.lr": {"loguniform": [1e-3, 1.0]}}
    write_config(tmp_path, "top", search=search, space=space, mlflow={"child_runs": "best:3"})
    table = finished(tmp_path, "top")  # best first
    assert len(table) == 12
    _, parent, children = runs_of(tmp_path, "top")
    assert sorted(children) == sorted(table["trial_id"][:3])
    assert parent.info.status == "FINISHED" and parent.data.params["mlflow.child_runs"] == "best:3"
    assert parent.data.tags["best.trial_id"] in children
    shown = subprocess.run(
        [SWEEP, "status", "top"], cwd=tmp_path, env=ENV, capture_output=True, text=True
    )  # its trials from the record: all 12, not the 3 with runs
    assert shown.returncode == 0, shown.stderr
    assert "completed, 12/12 trials ended" in shown.stdout, shown.stdout
    assert "trials: 12 completed" in shown.stdout, shown.stdout
    other = f"sqlite:///{tmp_path}/other.db"
    synced = subprocess.run(
        [SWEEP, "sync", "top", "--tracking-uri", other],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert synced.returncode == 0, synced.stderr
    assert sorted(runs_of(tmp_path, "top", other)[2]) == sorted(children)


def test_a_bad_child_runs_setting_is_refused_naming_the_key():
    from sweeps.spec.sweep import sweep_spec
    from trainers.config import ConfigError

    doc = {"name": "t", "data": {"source": "digits"}, "mlflow": {"child_runs": "best:0"}}
    with pytest.raises(ConfigError, match="mlflow.child_runs must be all or best:N, N >= 1"):
        sweep_spec(doc)
