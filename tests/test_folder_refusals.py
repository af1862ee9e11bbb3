"""`sweep run | resume | sync` refuse, as real processes, what cannot work: a tracking store of
another form or that does not answer, storage that cannot be written, a damaged sweep folder
(which `sweep status | report` refuse too), a sweep another process runs. Each: one `error:`
line naming the key or file, exit code 2, nothing written (no folder, no database), within
seconds. None of these starts Ray."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mlflow_server import free_port  # noqa: E402
from sweeping import SWEEP, write_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def refused(args: list[str], cwd: Path, *needles: str, env: dict | None = None) -> str:
    """Run `sweep ARGS`; check one error line holding every needle, exit 2; the line."""
    done = subprocess.run(
        [SWEEP, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stdout + done.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    for needle in needles:
        assert needle in lines[0]
    return lines[0]


def nothing_written(workdir: Path) -> None:
    assert not (workdir / "runs").exists()
    assert not list(workdir.glob("*.db")) and not (workdir / "mlartifacts").exists()


@pytest.mark.parametrize(
    ("uri", "needle"),
    [
        ("5", "got 5"),
        ("foo://bar", "got 'foo://bar'"),
        ("file:///tmp/x", "got 'file:///tmp/x'"),
        ("http://127.0.0.1:9", "no MLflow server answers at http://127.0.0.1:9"),
    ],
)
def test_a_tracking_store_that_cannot_be_used_is_refused_first(workdir, uri, needle):
    cfg = write_config(workdir, "uri", search={"type": "grid"})
    refused(
        ["run", str(cfg), "--set", f"mlflow.tracking_uri={uri}"],
        workdir,
        "mlflow.tracking_uri",
        needle,
    )
    nothing_written(workdir)


def test_a_server_that_never_answers_is_given_up_within_seconds(workdir):
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
        cfg = write_config(workdir, "silent", search={"type": "grid"})
        refused(["run", str(cfg)], workdir, "$MLFLOW_TRACKING_URI", "no answer within 5 s", env=env)
        silent.setblocking(False)
        asked = []  # every connection it made waits to be accepted, closed or not
        with contextlib.suppress(BlockingIOError):
            while True:
                asked.append(silent.accept()[0])
        for conn in asked:
            conn.close()
        assert len(asked) == 1  # asked once, given up after 5 s: not 261 s of retries
    nothing_written(workdir)


@pytest.mark.parametrize(
    "command",
    [["report", "saved"], ["report", "saved", "--no-log"], ["status"], ["status", "saved"]],
)
def test_report_and_status_refuse_a_tracking_uri_that_does_not_answer(workdir, command):
    """--tracking-uri is asked within seconds, as `sweep sync` asks it: a local port nothing
    listens on is one line naming the flag (`sweep report` took minutes of MLflow's retries,
    `sweep status` listed the sweep as unknown with MLflow's exception and exit 0)."""
    folder = saved_sweep(workdir)
    uri = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    line = refused([*command, "--tracking-uri", uri], workdir)
    assert line == (
        f"error: --tracking-uri: no MLflow server answers at {uri} (connection refused); "
        "start it or fix the URI"
    )
    assert time.monotonic() - started < 60
    assert sorted(p.name for p in folder.iterdir()) == ["sweep.yaml"]  # no report drawn


def test_report_from_a_sqlite_store_that_is_not_there_makes_none(workdir):
    """Reading a missing SQLite file would make it (MLflow's tables and all): the report takes
    it for a store that holds no runs of the sweep, here one with neither results nor runs."""
    saved_sweep(workdir)
    refused(
        ["report", "saved", "--tracking-uri", "other.db", "--no-log"],
        workdir,
        "sweep saved has no results.csv and no trial in its record yet",
    )
    assert not list(workdir.glob("*.db"))


@pytest.mark.parametrize(
    ("storage", "lists"),
    [([], "`sweep status` lists"), (["--storage", "elsewhere"], "`sweep status --storage "
     "elsewhere` lists")],
)  # fmt: skip
@pytest.mark.parametrize("command", ["resume", "sync"])
def test_a_sweep_name_that_is_not_there_says_how_to_find_the_sweeps(workdir, command, storage,
                                                                     lists):  # fmt: skip
    where = storage[-1] if storage else "runs"
    line = refused([command, "nosuch", *storage], workdir)
    assert line == (
        f"error: no sweep named nosuch under {where}/ ({workdir}/{where}/nosuch/sweep.yaml is "
        f"missing); {lists} the sweeps there, --storage names another folder"
    )
    nothing_written(workdir)


@pytest.mark.parametrize("where", ["a file", "/proc", "read-only"])
def test_storage_that_cannot_be_written_is_refused(workdir, where):
    if where == "a file":
        storage, needle = workdir / "afile", "is a file"
        storage.write_text("x")
    elif where == "/proc":
        storage, needle = Path("/proc/sweeps"), "cannot write in /proc"
    else:
        storage, needle = workdir / "ro", "cannot write in"
        storage.mkdir(mode=0o500)
        if os.geteuid() == 0:  # root writes through permission bits, not into an immutable dir
            subprocess.run(["chattr", "+i", str(storage)], check=True)
    cfg = write_config(workdir, "st", search={"type": "grid"}, storage=str(storage))
    try:
        refused(["run", str(cfg)], workdir, "storage: ", needle)
    finally:
        if where == "read-only" and os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(storage)], check=True)
    nothing_written(workdir)
    assert not (storage / "st").exists()


def saved_sweep(workdir: Path, name: str = "saved") -> Path:
    """A sweep folder as `sweep run` leaves it, before Ray's state: sweep.yaml."""
    folder = workdir / "runs" / name
    folder.mkdir(parents=True)
    doc = yaml.safe_load(write_config(workdir, name, search={"type": "grid"}).read_text())
    (folder / "sweep.yaml").write_text(yaml.safe_dump(doc))
    return folder


@pytest.mark.parametrize(
    ("damage", "needles"),
    [
        (("mlflow_runs.json", '{"experiment_id": "1", "pa'), ("mlflow_runs.json is damaged",)),
        (("sweep.yaml", ""), ("sweep.yaml is empty",)),
        (("sweep.yaml", "- a\n- b\n"), ("sweep.yaml", "mapping")),
        (("sweep.yaml", "name: [unclosed\n"), ("sweep.yaml", "not valid YAML")),
        (("history.jsonl", '{"event": "sweep_started"\n{}\n'), ("history.jsonl: line 1",)),
    ],
)
def test_resume_of_a_damaged_folder_is_refused(workdir, damage, needles):
    folder = saved_sweep(workdir)
    name, text = damage
    (folder / name).write_text(text)
    refused(["resume", "saved"], workdir, *needles)
    assert not list(workdir.glob("*.db"))


@pytest.mark.parametrize(
    ("damage", "needles"),
    [
        (("mlflow_runs.json", '{"experiment_id": "1", "pa'), ("mlflow_runs.json is damaged",)),
        (("sweep.yaml", "name: [unclosed\n"), ("sweep.yaml", "not valid YAML")),
    ],
)
@pytest.mark.parametrize("command", [["status", "saved"], ["report", "saved"]])
def test_status_and_report_of_a_damaged_folder_are_refused(workdir, damage, needles, command):
    folder = saved_sweep(workdir)
    name, text = damage
    (folder / name).write_text(text)
    refused(command, workdir, *needles)
    assert not list(workdir.glob("*.db")) and not (folder / "report").exists()


@pytest.mark.parametrize(
    ("damage", "needles"),
    [
        (("mlflow_runs.json", '{"experiment_id": "1", "pa'), ("mlflow_runs.json is damaged",)),
        (("sweep.yaml", "name: [unclosed\n"), ("sweep.yaml", "not valid YAML")),
    ],
)
def test_the_overview_lists_a_damaged_sweep_with_its_problem(workdir, damage, needles):
    """`sweep status` lists every sweep: a damaged one as its problem, the others as usual."""
    folder, other = saved_sweep(workdir), saved_sweep(workdir, "other")
    name, text = damage
    (folder / name).write_text(text)
    done = subprocess.run([SWEEP, "status"], capture_output=True, text=True, cwd=workdir)
    assert done.returncode == 0 and "Traceback" not in done.stdout + done.stderr, done.stderr
    problem = next(line for line in done.stdout.splitlines() if line.startswith("saved: "))
    assert all(needle in problem for needle in needles), done.stdout
    assert any(line.split()[:1] == [other.name] for line in done.stdout.splitlines())
    assert "other: " not in done.stdout  # no problem with the sound one


def test_resume_of_a_sweep_another_process_runs_names_it(workdir):
    folder = saved_sweep(workdir)
    hold = (
        "import sys; from sweeps.record.layout import SweepFolder; from sweeps.record.lock import "
        "SweepLock; SweepLock(SweepFolder.of('runs', 'saved')).take(); print('ok', flush=True); "
        "sys.stdin.read()"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen(
        [sys.executable, "-c", hold],
        cwd=workdir,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ok"
        line = refused(["resume", "saved"], workdir)
        assert line.startswith(
            f"error: sweep saved is already running (pid {holder.pid} on {socket.gethostname()})"
        )
        (folder / "history.jsonl").write_text("")  # sync wants a record before it locks
        refused(["sync", "saved"], workdir, "sweep saved is already running")
    finally:
        holder.kill()
        holder.wait()
    assert sorted(p.name for p in folder.iterdir()) == ["history.jsonl", "sweep.lock", "sweep.yaml"]


def test_run_resume_with_another_config_is_refused_and_changes_nothing(workdir):
    """`sweep run CONFIG --resume` of a sweep saved with other data: its trials so far were
    trained on the saved config, so the mix is refused, naming the key and both values."""
    folder = saved_sweep(workdir)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    cfg = str(workdir / "saved.yaml")
    line = refused(
        ["run", cfg, "--resume", "--set", "data.source=digits", "--set", "data.path=null"],
        workdir,
        "sweep.yaml holds sweep saved with another config: data.path",
        'data.source "npz" there, "digits" here',
        "sweep resume saved",
    )
    assert "train." not in line  # only what differs
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # lock released too
    assert not list(workdir.glob("*.db"))


def test_resume_may_change_where_a_sweep_runs_not_what_it_is(workdir):
    """What a requeued SLURM job changes (resources, search.max_failures, mlflow, storage)
    passes; a searched key or a search setting does not."""
    from sweeps.spec import document
    from sweeps.spec.sweep import check_same_sweep, sweep_spec
    from trainers.config import ConfigError

    saved_sweep(workdir)
    doc = document.load(workdir / "saved.yaml")
    moved = {"resources": {"cpu": 2, "gpu": 0.5}, "search": {"type": "grid", "max_failures": 3}}
    moved |= {"mlflow": {"tracking_uri": "http://127.0.0.1:5000"}, "storage": "runs"}
    os.chdir(workdir)
    check_same_sweep(sweep_spec({**doc, **moved}))
    for other, key in [
        ({"space": {"train.lr": {"grid": [0.1, 0.2]}}}, "space.train.lr unset there"),
        ({"search": {"type": "grid", "seed": 1}}, "search.seed 0 there, 1 here"),
        ({"train": {**doc["train"], "epochs": 9}}, "train.epochs 4 there, 9 here"),
    ]:
        with pytest.raises(ConfigError, match=key):
            check_same_sweep(sweep_spec({**doc, **other}))
