"""Runs written several at once (sweeps.tracking.writer.writers) to a real `mlflow server` on a
real PostgreSQL, and straight to that PostgreSQL, read back as the same writes made one at a
time to SQLite: run by run, every field a reader sees."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mlflow_server import mlflow_server  # noqa: E402
from postgres import postgres  # noqa: E402
from test_bulk_writes import QUERIES, config, epoch, found, history, seen, tracker  # noqa: E402

from sweeps.tracking.writer import WRITERS, writers  # noqa: E402

pytestmark = pytest.mark.slow


def test_served_stores_are_written_several_runs_at_once():
    assert writers("http://127.0.0.1:5000") == writers("postgresql+psycopg://h/db") == WRITERS
    assert writers("sqlite:///mlflow.db") == writers("file:///tmp/mlruns") == 1


def test_runs_written_at_once_to_servers_read_back_as_one_at_a_time(tmp_path: Path) -> None:
    public = tracker(f"sqlite:///{tmp_path}/public.db")
    with (
        postgres("server", "direct") as (behind, direct),
        mlflow_server(tmp_path / "srv", store=behind, workers=2) as url,
    ):
        for t in (tracker(url), tracker(direct)):
            assert sorted(t.trials) == sorted(public.trials)
            for trial in public.trials:
                got, want = seen(t, trial), seen(public, trial)
                got.pop("artifact_uri"), want.pop("artifact_uri")  # served: mlflow-artifacts:/
                assert got == want, trial
            for query, order_by in QUERIES:
                assert found(t, query, order_by) == found(public, query, order_by), query
            assert (t.created, t.logged) == (public.created, public.logged)

        # a write that fails (its run deleted) is raised; those beside it are written and kept
        t.client.delete_run(t.trials["t0"])
        batch = [(f"n{i}", {"config": config(i), "results": [epoch(1, i)]}) for i in range(6)]
        with pytest.raises(MlflowException, match="must be in the 'active' state"):
            t.write_trials([*batch[:3], ("t0", {"results": [epoch(9, 0)]}), *batch[3:]])
        made = [trial for trial, _ in batch if trial in t.trials]
        assert made[:3] == ["n0", "n1", "n2"]  # taken by the writers before the failing one
        for trial in made:
            assert history(t, t.trials[trial], "val_loss")[0][0] == 1
