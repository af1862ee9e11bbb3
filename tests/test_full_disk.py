"""A full disk under a running sweep, on a real small filesystem (a tmpfs, mounted as root): the
sweep folder's disk, or the SQLite store's. The sweep stops in one `error:` line naming the
path and how to go on, exit code 1, no traceback; once space is freed, `sweep resume` ends it
with every trial and every curve once. The disk is filled at a held point (sweeps/engine/hold.py),
so nothing races the sweep."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest
from sweeping import (
    LRS,
    SWEEP,
    Hold,
    history_steps,
    make_data,
    output,
    runs_of,
    start_sweep,
    write_config,
)

from sweeps.record.disk import MIN_FREE, DiskFull, Watch, disk_full, free_bytes
from sweeps.record.history import HistoryFile

EPOCHS = 4


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MiB tmpfs, unmounted at the end."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "--lazy", str(mount)], check=True)


def fill(disk: Path, leave: int) -> Path:
    """A file that leaves ``leave`` bytes free on ``disk``."""
    filler = disk / "filler"
    with open(filler, "wb") as f:
        os.posix_fallocate(f.fileno(), 0, free_bytes(disk) - leave)
    return filler


def fill_up(disk: Path) -> Path:
    """A file that leaves nothing free on ``disk``."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as err:
            assert err.errno == errno.ENOSPC
    return filler


def stopped_by_full_disk(workdir: Path, disk: Path, name: str, **sections) -> str:
    """Run a 4-trial sweep held after a trial's epoch 2, fill ``disk`` then, free it once the
    sweep has stopped; the sweep's output."""
    make_data(workdir)
    config = write_config(
        workdir,
        name,
        train={"epochs": EPOCHS, "batch_size": 32, "optimizer": "sgd", "schedule": "constant"},
        search={"type": "grid", "max_concurrent": 1},
        space={"train.lr": {"grid": LRS}},
        **sections,
    )
    holds = Hold(workdir / "holds", "epoch-2")
    proc = start_sweep("run", str(config), hold=holds)
    try:
        holds.reached("epoch-2")
        filler = fill(disk, MIN_FREE // 2)
        holds.let_go("epoch-2")
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
    filler.unlink()  # space freed
    text = output(proc)
    assert proc.returncode == 1, text
    assert "Traceback" not in text and "ERROR" not in text, text
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, text
    return errors[0]


def resume(workdir: Path, name: str, storage: Path) -> None:
    done = subprocess.run(
        [SWEEP, "resume", name, "--storage", str(storage)],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def check_every_curve_once(workdir: Path, name: str, uri: str) -> None:
    client, parent, children = runs_of(workdir, name, uri)
    assert parent.info.status == "FINISHED"
    assert sorted(float(r.data.params["train.lr"]) for r in children.values()) == LRS
    for run in children.values():
        assert run.info.status == "FINISHED"
        assert history_steps(client, run) == list(range(1, EPOCHS + 1))


@pytest.mark.slow
def test_the_sweep_folders_disk_fills_up(tmp_path, monkeypatch, small_disk):
    monkeypatch.chdir(tmp_path)
    line = stopped_by_full_disk(tmp_path, small_disk, "full", storage=str(small_disk))
    folder = small_disk / "full"
    assert line.startswith("error: ") and f"the sweep folder {folder} " in line, line
    assert line.endswith("; free space there, then continue with: sweep resume full"), line
    resume(tmp_path, "full", small_disk)
    check_every_curve_once(tmp_path, "full", f"sqlite:///{tmp_path}/mlflow.db")
    assert (folder / "results.csv").exists()


@pytest.mark.slow
def test_the_mlflow_stores_disk_fills_up(tmp_path, monkeypatch, small_disk):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{small_disk}/mlflow.db"
    line = stopped_by_full_disk(tmp_path, small_disk, "store", mlflow={"tracking_uri": uri})
    assert f"the MLflow store {small_disk}/mlflow.db " in line, line
    assert line.endswith("; free space there, then continue with: sweep resume store"), line
    resume(tmp_path, "store", tmp_path / "runs")
    check_every_curve_once(tmp_path, "store", uri)


def test_a_sweep_is_refused_before_anything_is_written_on_a_full_disk(tmp_path, small_disk):
    make_data(tmp_path)
    config = write_config(tmp_path, "none", storage=str(small_disk), search={"type": "grid"})
    fill(small_disk, MIN_FREE // 2)
    done = subprocess.run(
        [SWEEP, "run", str(config)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1 and done.stdout == "", done.stdout + done.stderr
    line = done.stderr.strip()
    assert line.startswith(f"error: 8.0 MiB left on the disk of the sweep folder {small_disk}"), (
        line
    )
    assert line.endswith("; free space there, then run it again"), line
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]


# ---------------------------------------------------------------- writes that fail anyway
# (the disk filled between two checks, or a quota): recognised, said with the path
def test_a_record_append_that_fails_is_taken_back_whole(small_disk):
    record = HistoryFile(small_disk / "history.jsonl")
    record.append({"event": "sweep_started", "id": "x", "experiment": "e"} | {"params": {}})
    before = record.path.read_bytes()
    fill_up(small_disk)
    with pytest.raises(OSError) as err:
        record.append(*({"event": "result", "trial": "t", "metrics": {"x": "y" * 999}},) * 99)
    assert record.path.read_bytes() == before
    full = Watch(small_disk / "sweep").error(err.value)
    assert isinstance(full, DiskFull)
    assert str(full).startswith("no space left on device writing ")


def test_a_full_sqlite_store_is_recognised(small_disk):
    from mlflow.tracking import MlflowClient

    db = small_disk / "mlflow.db"
    client = MlflowClient(f"sqlite:///{db}")
    experiment = client.create_experiment("e")
    fill_up(small_disk)
    with pytest.raises(Exception) as err:  # noqa: PT011 - whatever MLflow wraps it in
        for i in range(10_000):
            client.create_run(experiment, tags={"x" * 200: str(i) * 2000})
    assert disk_full(err.value) is not None
    full = Watch(small_disk / "sweep", db).error(err.value)
    assert str(full) == f"database or disk is full writing {db}"


def test_a_write_that_fails_otherwise_is_no_full_disk(tmp_path):
    with pytest.raises(OSError) as err:
        (tmp_path / "no" / "such").write_text("x")
    assert Watch(tmp_path).error(err.value) is None
    assert disk_full(RuntimeError("database is locked")) is None
