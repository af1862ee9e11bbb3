"""SweepTracker against a real MLflow SQLite store (and, marked slow, a real server)."""

from __future__ import annotations

import json
import shutil
import socket
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from sweeps.tracking.store import check_store
from sweeps.tracking.uri import resolve_tracking_uri
from sweeps.tracking.writer import SweepTracker
from trainers.config import ConfigError, TrialConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mlflow_server import mlflow_server  # noqa: E402

CONFIG = TrialConfig().flat()


def epoch_metrics(epoch: int, **extra) -> dict:
    return {
        "epoch": epoch,
        "train_loss": 1.0 / epoch,
        "train_total_loss": 1.1 / epoch,
        "train_acc": 0.5 + epoch / 100,
        "val_loss": 1.2 / epoch,
        "val_acc": 0.4 + epoch / 100,
        "lr": 0.05,
        "epoch_seconds": 0.01,
        "diverged": False,
        "time_total_s": 3.0,  # a Ray key: must not be logged
        **extra,
    }


@pytest.fixture(scope="session")
def empty_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated, empty MLflow database: creating one takes ~1.5 s, copying it nothing."""
    db = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def uri(tmp_path: Path, empty_db: Path) -> str:
    shutil.copyfile(empty_db, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path}/mlflow.db"


def new_tracker(uri: str, tmp_path: Path) -> SweepTracker:
    return SweepTracker(uri, "exp", tmp_path / "sweep" / "tracking.json")


def steps(client: MlflowClient, run_id: str, key: str = "val_loss") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_parent_and_children_nest_and_carry_config(uri: str, tmp_path: Path) -> None:
    tr = new_tracker(uri, tmp_path)
    parent = tr.start_sweep({"sweep.name": "s", "num_samples": 4})
    tr.write_trial("t1", config=CONFIG)
    tr.write_trial("t2", config={**CONFIG, "train.lr": 0.5})
    client = MlflowClient(uri)
    run = client.get_run(parent)
    assert run.data.params == {"sweep.name": "s", "num_samples": "4"}
    assert run.info.run_name == "exp"
    for trial, lr in (("t1", "0.05"), ("t2", "0.5")):
        run = client.get_run(tr.trials[trial])
        assert run.data.tags["mlflow.parentRunId"] == parent
        assert run.data.tags["sweep.trial_id"] == trial
        assert run.info.run_name == trial
        assert run.data.params == {k: str(v) for k, v in {**CONFIG, "train.lr": lr}.items()}
    state = json.loads((tmp_path / "sweep" / "tracking.json").read_text())
    assert state == {
        "tracking_uri": uri,
        "experiment_id": tr.experiment_id,
        "parent": parent,
        "trials": tr.trials,
    }
    assert sorted(tr.open_runs()) == sorted([parent, *tr.trials.values()])


def test_many_and_long_params_are_chunked(uri: str, tmp_path: Path) -> None:
    tr = new_tracker(uri, tmp_path)
    tr.start_sweep({})
    config = {f"k.{i}": i for i in range(250)} | {"long": "x" * 7000}
    tr.write_trial("t1", config=config)
    params = MlflowClient(uri).get_run(tr.trials["t1"]).data.params
    assert len(params) == 251 and len(params["long"]) == 6000


def test_one_point_per_epoch_only_curve_keys(uri: str, tmp_path: Path) -> None:
    tr = new_tracker(uri, tmp_path)
    tr.start_sweep({})
    tr.write_trial("t1", config=CONFIG)
    for epoch in (1, 2, 3):
        tr.write_trial("t1", results=[epoch_metrics(epoch)])
    run = MlflowClient(uri).get_run(tr.trials["t1"])
    assert set(run.data.metrics) == {
        "train_loss",
        "train_total_loss",
        "train_acc",
        "val_loss",
        "val_acc",
        "lr",
        "epoch_seconds",
    }
    client = MlflowClient(uri)
    for key in run.data.metrics:
        assert steps(client, run.info.run_id, key) == [1, 2, 3]
    assert {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_acc")}[
        2
    ] == pytest.approx(0.42)


def test_resume_reopens_same_runs_without_duplicates(uri: str, tmp_path: Path) -> None:
    tr = new_tracker(uri, tmp_path)
    parent = tr.start_sweep({"a": 1})
    tr.write_trial("t1", config=CONFIG)
    child = tr.trials["t1"]
    for epoch in (1, 2, 3):
        tr.write_trial("t1", results=[epoch_metrics(epoch)])
    tr.end_sweep("interrupted")  # the driver stopped: everything KILLED
    client = MlflowClient(uri)
    assert client.get_run(parent).info.status == "KILLED"
    assert client.get_run(child).info.status == "KILLED"

    again = new_tracker(uri, tmp_path)  # a resumed driver, same state file
    assert again.start_sweep({"a": 1, "b": 2}) == parent
    again.write_trial("t1", config=CONFIG)
    assert again.trials == {"t1": child}
    assert client.get_run(parent).info.status == "RUNNING"
    assert client.get_run(parent).data.params == {"a": "1", "b": "2"}
    assert client.get_run(child).info.status == "RUNNING"
    for epoch in (1, 2, 3, 4, 5):  # replayed from the checkpoint
        again.write_trial("t1", results=[epoch_metrics(epoch)])
    assert steps(client, child) == [1, 2, 3, 4, 5]
    assert len(client.search_runs([again.experiment_id])) == 2


def test_result_for_a_trial_resumed_without_its_config(uri: str, tmp_path: Path) -> None:
    tr = new_tracker(uri, tmp_path)
    tr.start_sweep({})
    tr.write_trial("t1", config=CONFIG)
    tr.write_trial("t1", results=[epoch_metrics(1)])
    tr.write_trial("t1", results=[epoch_metrics(2)])
    again = new_tracker(uri, tmp_path)
    again.start_sweep({})
    again.write_trial("t1", results=[epoch_metrics(2)])  # last epoch read back from MLflow
    again.write_trial("t1", results=[epoch_metrics(3)])
    assert steps(MlflowClient(uri), tr.trials["t1"]) == [1, 2, 3]


def test_diverged_record_is_not_logged_but_tagged(uri: str, tmp_path: Path) -> None:
    tr = new_tracker(uri, tmp_path)
    tr.start_sweep({})
    tr.write_trial("t1", config=CONFIG)
    tr.write_trial("t1", results=[epoch_metrics(1)])
    tr.write_trial("t1", results=[epoch_metrics(2, diverged=True)])
    tr.trial_ended("t1", "diverged", 2)
    run = MlflowClient(uri).get_run(tr.trials["t1"])
    assert steps(MlflowClient(uri), run.info.run_id) == [1]
    assert run.data.tags["sweep.diverged"] == "true"
    assert (run.info.status, run.data.tags["sweep.status"]) == ("FAILED", "diverged")


@pytest.mark.parametrize(
    ("outcome", "status"),
    [
        ("completed", "FINISHED"),
        ("early_stopped", "KILLED"),
        ("diverged", "FAILED"),
        ("error", "FAILED"),
        ("interrupted", "KILLED"),
    ],
)
def test_outcome_maps_to_status_and_tags(
    uri: str, tmp_path: Path, outcome: str, status: str
) -> None:
    tr = new_tracker(uri, tmp_path)
    tr.start_sweep({})
    tr.write_trial("t1", config=CONFIG)
    error = "ValueError: boom\n" + "  frame\n" * 2000 if outcome == "error" else None
    tr.trial_ended("t1", outcome, 4, error=error)
    tr.trial_ended("t1", outcome, 4, error=error)  # idempotent
    run = MlflowClient(uri).get_run(tr.trials["t1"])
    assert run.info.status == status
    assert run.info.end_time is not None
    tags = run.data.tags
    assert (tags["sweep.status"], tags["sweep.epochs_run"]) == (outcome, "4")
    assert ("sweep.rung" in tags) == (outcome == "early_stopped")
    if outcome == "early_stopped":
        assert tags["sweep.rung"] == "4"
    if outcome == "error":
        assert tags["sweep.error"].startswith("ValueError: boom\n")
        assert 5000 < len(tags["sweep.error"]) < 5100
    else:
        assert "sweep.error" not in tags


def test_unknown_outcome_and_unknown_trial_are_refused(uri: str, tmp_path: Path) -> None:
    tr = new_tracker(uri, tmp_path)
    tr.start_sweep({})
    tr.write_trial("t1", config=CONFIG)
    with pytest.raises(ValueError, match="outcome"):
        tr.trial_ended("t1", "stopped", 1)
    with pytest.raises(KeyError, match="t9"):
        tr.write_trial("t9", results=[epoch_metrics(1)])


def test_end_sweep_leaves_nothing_running_and_records_best(uri: str, tmp_path: Path) -> None:
    tr = new_tracker(uri, tmp_path)
    parent = tr.start_sweep({})
    tr.write_trial("t1", config=CONFIG)
    tr.write_trial("t2", config=CONFIG)
    for epoch in (1, 2):
        tr.write_trial("t1", results=[epoch_metrics(epoch)])
        tr.write_trial("t2", results=[epoch_metrics(epoch)])
    tr.trial_ended("t1", "completed", 2)
    model = tmp_path / "ckpt"
    model.mkdir()
    (model / "model.pt").write_bytes(b"weights")
    best = {
        "trial_id": "t1",
        "config": CONFIG,
        "metrics": {"val_acc": 0.9, "test_acc": 0.88, "epochs_run": 2, "diverged": False},
    }
    tr.end_sweep("completed", best=best, artifact_dir=model)

    client = MlflowClient(uri)
    assert tr.open_runs() == []
    t2 = client.get_run(tr.trials["t2"])
    assert (t2.info.status, t2.data.tags["sweep.status"]) == ("KILLED", "interrupted")
    assert t2.data.tags["sweep.epochs_run"] == "2"
    assert client.get_run(tr.trials["t1"]).info.status == "FINISHED"
    run = client.get_run(parent)
    assert (run.info.status, run.data.tags["sweep.status"]) == ("FINISHED", "completed")
    assert run.data.metrics == {"best_val_acc": 0.9, "best_test_acc": 0.88, "best_epochs_run": 2}
    assert run.data.tags["best.trial_id"] == "t1"
    assert run.data.tags["best.train.lr"] == "0.05"
    local = Path(client.download_artifacts(parent, "best_config.json", str(tmp_path / "dl")))
    assert json.loads(local.read_text()) == best
    assert [f.path for f in client.list_artifacts(parent, "best_model")] == ["best_model/model.pt"]
    # artifacts of a local store sit beside the database, not in the working directory
    assert (tmp_path / "mlartifacts" / "exp").is_dir()


@pytest.mark.parametrize(
    ("status", "mlflow_status"), [("failed", "FAILED"), ("interrupted", "KILLED")]
)
def test_end_sweep_status(uri: str, tmp_path: Path, status: str, mlflow_status: str) -> None:
    tr = new_tracker(uri, tmp_path)
    parent = tr.start_sweep({})
    tr.end_sweep(status)
    assert MlflowClient(uri).get_run(parent).info.status == mlflow_status


def test_resolve_tracking_uri_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    work = tmp_path / "w"
    assert resolve_tracking_uri(None, work) == f"sqlite:///{work.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert resolve_tracking_uri(None, work) == "http://env:5000"
    assert resolve_tracking_uri("http://cfg:5000", work) == "http://cfg:5000"
    assert (
        resolve_tracking_uri("sqlite:///runs/m.db", work) == f"sqlite:///{work.resolve()}/runs/m.db"
    )
    assert resolve_tracking_uri("sqlite:////abs/m.db", work) == "sqlite:////abs/m.db"
    assert resolve_tracking_uri("runs/m.db", work) == f"sqlite:///{work.resolve()}/runs/m.db"
    assert resolve_tracking_uri("https://host/mlflow", work) == "https://host/mlflow"


@pytest.mark.parametrize(
    ("given", "hint"),
    [
        (5, ""),
        ("foo://bar", ""),
        ("file:///tmp/x", ""),
        ("store", ""),  # a folder: the old file store, which MLflow 3 refuses
        ("sqlite://", ""),
        ("http://", ""),
        ("http://host:99999", ""),
    ],
)
def test_tracking_uri_of_another_form_is_refused_naming_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given, hint: str
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ConfigError) as err:
        resolve_tracking_uri(given, tmp_path)
    message = str(err.value)
    assert message.startswith("mlflow.tracking_uri must be an MLflow store URI")
    assert f"got {given!r}" in message and hint in message and "\n" not in message
    if isinstance(given, str):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", given)
        with pytest.raises(ConfigError, match=r"^\$MLFLOW_TRACKING_URI must be"):
            resolve_tracking_uri(None, tmp_path)


def silent_server() -> socket.socket:
    """A port that accepts connections and never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    return s


def test_a_store_that_does_not_answer_is_reported_within_seconds(tmp_path: Path) -> None:
    with silent_server() as silent:
        for uri, why in [
            ("http://127.0.0.1:9", "connection refused"),
            (f"http://127.0.0.1:{silent.getsockname()[1]}", "no answer within 5 s"),
        ]:
            start = time.monotonic()
            with pytest.raises(ConfigError) as err:
                check_store(uri)
            assert time.monotonic() - start < 10
            assert str(err.value) == (
                f"mlflow.tracking_uri: no MLflow server answers at {uri} ({why}); "
                "start it or fix the URI"
            )


def test_a_sqlite_store_is_checked_without_being_made(tmp_path: Path) -> None:
    check_store(f"sqlite:///{tmp_path}/new.db")
    assert not (tmp_path / "new.db").exists()
    (tmp_path / "dir.db").mkdir()
    for path, why in [(tmp_path / "no/such.db", "no folder"), (tmp_path / "dir.db", "directory")]:
        with pytest.raises(ConfigError, match=f"cannot use the SQLite store {path}: .*{why}"):
            check_store(f"sqlite:///{path}")
    with pytest.raises(ConfigError, match="cannot write in /proc"):
        check_store("sqlite:////proc/m.db")


def test_a_damaged_state_file_is_refused_in_one_line(uri: str, tmp_path: Path) -> None:
    state = tmp_path / "sweep" / "tracking.json"
    state.parent.mkdir()
    for text in ['{"experiment_id": "1", "par', "[1, 2]", '{"trials": 3}']:
        state.write_text(text)
        with pytest.raises(ConfigError, match="tracking.json is damaged .*found again by their"):
            SweepTracker(uri, "exp", state)


def test_runs_are_found_by_their_tags_in_a_store_without_state(uri: str, tmp_path: Path) -> None:
    first = SweepTracker(uri, "exp")  # no state file: as `sweep sync` into another store
    parent = first.open_sweep({"a": 1}, sweep_id="s1")
    first.ensure_trial("t1", CONFIG)
    first.write_trial("t1", results=[epoch_metrics(e) for e in (1, 2, 3)])
    first.trial_ended("t1", "completed", 3)
    again = SweepTracker(uri, "exp")
    assert again.open_sweep({"a": 1, "b": 2}, sweep_id="s1") == parent
    assert again.trials == first.trials and again.ended == {"t1": "completed"}
    again.write_trial("t1", results=[epoch_metrics(e) for e in (1, 2, 3, 4)])
    client = MlflowClient(uri)
    assert steps(client, first.trials["t1"]) == [1, 2, 3, 4]
    assert client.get_run(parent).data.params == {"a": "1", "b": "2"}
    other = SweepTracker(uri, "exp")
    assert other.open_sweep({}, sweep_id="s2") != parent  # another sweep of the same name
    assert (first.created, again.created, other.created) == (2, 0, 1)
    assert again.logged == 1  # epoch 4 only


def test_end_sweep_twice_records_the_best_once(uri: str, tmp_path: Path) -> None:
    tr = new_tracker(uri, tmp_path)
    parent = tr.start_sweep({})
    best = {"trial_id": "t1", "config": CONFIG, "metrics": {"val_acc": 0.9}}
    model = tmp_path / "ckpt"
    model.mkdir()
    (model / "model.pt").write_bytes(b"weights")
    client = MlflowClient(uri)
    tr.end_sweep("completed", best=best, artifact_dir=model)
    run = client.get_run(parent)
    tr.end_sweep("completed", best=best, artifact_dir=model)
    again = client.get_run(parent)
    assert len(client.get_metric_history(parent, "best_val_acc")) == 1
    assert (again.info.status, again.info.end_time) == (run.info.status, run.info.end_time)
    assert again.data.tags == run.data.tags
    assert [a.path for a in client.list_artifacts(parent)] == ["best_config.json", "best_model"]


@pytest.mark.slow
def test_logging_over_a_real_server(tmp_path: Path) -> None:
    start = time.monotonic()
    with mlflow_server(tmp_path / "srv") as url:
        tr = SweepTracker(url, "exp", tmp_path / "tracking.json")
        parent = tr.start_sweep({"sweep.name": "srv"})
        tr.write_trial("t1", config=CONFIG)
        for epoch in (1, 2, 3):
            tr.write_trial("t1", results=[epoch_metrics(epoch)])
        tr.trial_ended("t1", "completed", 3)
        model = tmp_path / "ckpt"
        model.mkdir()
        (model / "model.pt").write_bytes(b"weights")
        best = {"trial_id": "t1", "config": CONFIG, "metrics": {"val_acc": 0.43}}
        tr.end_sweep("completed", best=best, artifact_dir=model)

        client = MlflowClient(url)
        run = client.get_run(parent)
        assert run.info.status == "FINISHED" and run.data.metrics == {"best_val_acc": 0.43}
        (child,) = client.search_runs([tr.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'")
        assert child.info.run_id == tr.trials["t1"] and child.info.status == "FINISHED"
        assert child.data.params["train.lr"] == "0.05"
        assert steps(client, child.info.run_id) == [1, 2, 3]
        assert run.info.artifact_uri.startswith("mlflow-artifacts:")
        local = Path(client.download_artifacts(parent, "best_config.json", str(tmp_path / "d")))
        assert json.loads(local.read_text())["trial_id"] == "t1"
        got = Path(client.download_artifacts(parent, "best_model", str(tmp_path / "m")))
        assert (got / "model.pt").read_bytes() == b"weights"
    assert (tmp_path / "srv" / "artifacts").is_dir()  # uploaded through the server
    print(f"server test took {time.monotonic() - start:.1f} s")


def test_state_naming_runs_of_another_store_starts_fresh(uri: str, tmp_path: Path) -> None:
    state = tmp_path / "sweep" / "tracking.json"
    state.parent.mkdir()
    state.write_text(json.dumps({"experiment_id": "9", "parent": "f" * 32, "trials": {"t": "x"}}))
    tr = SweepTracker(uri, "exp", state)
    parent = tr.start_sweep({})
    assert parent != "f" * 32 and tr.trials == {}
    assert json.loads(state.read_text())["parent"] == parent


def test_module_imports_no_ray() -> None:
    import ast

    import sweeps.tracking.writer as mod

    tree = ast.parse(Path(mod.__file__).read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
    assert not [n for n in names if n == "ray" or n.startswith("ray.")]
