"""Hostile input at the command line: each mistake is one `error:` line, exit code 2, and
nothing written (no runs/ folder, no mlflow.db), before any Ray or MLflow start."""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from sweeps.cli import main
from sweeps.spec import document as config_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweeping import one_error_line  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SWEEP = str(Path(sys.executable).with_name("sweep"))
DIGITS = str(ROOT / "configs/digits.yaml")
ASHA = str(ROOT / "configs/digits_asha.yaml")
# What a given store URI must be: no "or null", which a command line cannot say (a config can).
URI_WHAT = (
    "an MLflow store URI: http(s)://HOST:PORT, sqlite:///FILE, postgresql://..., or a path "
    "ending in .db"
)

CONFIGS = {  # file name -> bytes
    "latin1.yaml": "train:\n  lr: 0.1\n  device: c\xe9pu\n".encode("latin-1"),
    "twice.yaml": b"train:\n  lr: 0.1\n  epochs: 3\n  lr: 0.2\n",
    "sections_twice.yaml": b"train: {lr: 0.1}\nmodel: {loss: hinge}\ntrain: {epochs: 2}\n",
    "big.yaml": b"# " + b"x" * (2 << 20) + b"\n",  # 2 MiB
    "newline_key.yaml": b'train: {"l\\nr": 0.1}\n',
    "deep.yaml": b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n",  # 10 KB, 5,000 lists deep
}


@pytest.fixture
def work(tmp_path, monkeypatch):
    """An empty working directory; the bad files live beside it, in tmp_path/in."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name, data in CONFIGS.items():
        (inputs / name).write_bytes(data)
    os.mkfifo(inputs / "fifo.yaml")
    (inputs / "folder.yaml").mkdir()
    (inputs / "labels.csv").write_text("a,b,label\n1,2,0\n3,4,1\n5,6,1e300\n")
    os.mkfifo(inputs / "fifo.csv")
    with contextlib.closing(sqlite3.connect(inputs / "notes.db")) as con, con:
        con.execute("CREATE TABLE notes (line TEXT)")  # another program's database
    cwd = tmp_path / "work"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


FILE_CASES = [
    ("latin1.yaml", "latin1.yaml: not UTF-8 text (byte 0xe9 at offset 28); save the config "
     "file as UTF-8"),
    ("twice.yaml", "twice.yaml: not valid YAML at line 4: duplicate key 'lr' (first at line 2)"),
    ("sections_twice.yaml", "not valid YAML at line 3: duplicate key 'train' (first at line 1)"),
    ("big.yaml", "big.yaml: larger than 1 MiB; not a config file"),
    ("fifo.yaml", "fifo.yaml: not a regular file; give a YAML config file"),
    ("folder.yaml", "folder.yaml: not a regular file; give a YAML config file"),
    ("newline_key.yaml", r"error: unknown key train.l\nr; did you mean train.lr?"),
    ("deep.yaml", "deep.yaml: its YAML is nested too deeply to be a config"),
]  # fmt: skip


@pytest.mark.parametrize("command", ["train", "run"])
@pytest.mark.parametrize(("name", "message"), FILE_CASES)
def test_bad_config_files(work, capsys, command, name, message):
    line = one_error_line(capsys, [command, str(work.parent / "in" / name)], work)
    assert message in line, line


def test_dev_zero_as_a_config(work, capsys):
    assert "/dev/zero: not a regular file" in one_error_line(capsys, ["train", "/dev/zero"], work)


RUN_CASES = [
    (["--name", "evil\n"], "name must be letters, digits, '_', '.' or '-' (at most 64, the "
     "first a letter or digit; set name: in the config or pass --name); got 'evil\\n'"),
    (["--set", "train.l\nr=0.1"], r"error: unknown key train.l\nr; did you mean train.lr?"),
    (["--set", "space.data.val_fraction={uniform: [0.85, 0.9]}", "--set",
      "data.test_fraction=0.2"], "data.val_fraction + data.test_fraction must be < 1 to leave "
     "a training split; got 0.85 + 0.2 (a corner of space)"),
    (["--set", "space.train.lr={quniform: [0.01, 0.02, 0.1]}"], "space.train.lr.quniform "
     "needs low and high that are multiples of the step 0.1"),
    (["--set", "train.seed=99999999999999999999"], "error: train.seed must be an integer in "
     "[0, 4294967295]; got 99999999999999999999"),
    (["--set", "data.seed=4294967296"], "data.seed must be an integer in [0, 4294967295]"),
    (["--set", "data.source=csv", "--set", "data.path={in}/labels.csv", "--set",
      "space.data.path={choice: [/nonexistent.csv]}"],
     "error: data.path: no such file: /nonexistent.csv"),
    (["--set", "data.source=csv", "--set", "data.path={in}/labels.csv"],
     "column 'label' must be labels 0..C-1; 1 are not, e.g. 1e+300"),
    (["--set", "data.source=csv", "--set", "data.path={in}/fifo.csv"],
     "fifo.csv is not a regular file; give a data file"),
    (["--set", "data.source=csv", "--set", "data.path=/dev/zero"],
     "error: data.path: /dev/zero is not a regular file; give a data file"),
    (["--set", "data.source=csv", "--set", "data.path={in}"], "in is a folder; give a data file"),
    (["--set", "data.source=cifar10", "--set", "data.path={in}/labels.csv"],
     "labels.csv is not a folder; cifar10 reads a folder"),
    (["--set", "space.train.batch_size={choice: [32, 5000]}"],
     "error: space.train.batch_size must be <= the training split (1077 examples); got 5000"),
    (["--set", "space.data.val_fraction={choice: [0.2, 0.7]}", "--set",
      "space.train.batch_size={choice: [64, 256]}"],
     "error: space.train.batch_size must be <= the training split (179 examples); got 256"),
    (["--set", "mlflow.tracking_uri={in}/notes.db"],
     "in/notes.db: it holds other tables than MLflow's"),
    (["--set", "mlflow.tracking_uri=file:///tmp/x"],
     f"error: mlflow.tracking_uri must be {URI_WHAT} or null; got 'file:///tmp/x'"),
    (["--set", "train.lr={grid: [1], grid: [2]}"], "--set train.lr: not valid YAML at line 1: "
     "duplicate key 'grid'"),
    (["--set", "data=[]"], "error: data must be a mapping of keys to values; got []"),
    (["--set", "space=false"], "error: space must map trainer keys to distributions"),
    (["--set", "storage=~no_such_user_4242/x"], "error: storage: ~no_such_user_4242/x names a "
     "home directory this machine does not know; give the path in full"),
    (["--set", "data.source=npz", "--set", "data.path=~no_such_user_4242/x.npz"],
     "error: data.path: ~no_such_user_4242/x.npz names a home directory"),
]  # fmt: skip


@pytest.mark.parametrize(("sets", "message"), RUN_CASES)
def test_bad_sweep_input_is_refused_before_anything_is_written(work, capsys, sets, message):
    sets = [s.replace("{in}", str(work.parent / "in")) for s in sets]
    line = one_error_line(capsys, ["run", ASHA, "--dry-run", *sets], work)
    assert message in line, line


def test_a_store_uri_from_the_environment_is_checked_without_null(work, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "ftp://y")
    assert one_error_line(capsys, ["run", ASHA, "--dry-run"], work) == (
        f"error: $MLFLOW_TRACKING_URI must be {URI_WHAT}; got 'ftp://y'"
    )


def test_a_dry_run_refuses_a_taken_name_as_the_run_would(work, capsys, monkeypatch):
    """A folder that holds a sweep: --dry-run says what `sweep run` would (no --resume: the
    name is taken; --resume with another config: refused), and writes nothing."""
    import shutil

    from sweeps.cli import main

    monkeypatch.chdir(work)
    folder = work / "runs" / "digits_asha"
    folder.mkdir(parents=True)
    shutil.copy(ASHA, folder / "sweep.yaml")
    for args, said in (
        ([], f"error: {folder} already exists; continue it with --resume, or pick another"),
        (["--resume", "--set", "train.epochs=5"], f"error: {folder}/sweep.yaml holds sweep "
         "digits_asha with another config: train.epochs 30 there, 5 here;"),
    ):  # fmt: skip
        assert main(["run", ASHA, "--dry-run", *args]) == 2
        captured = capsys.readouterr()
        assert captured.err.startswith(said) and captured.err.count("\n") == 1, captured.err
    assert main(["run", ASHA, "--dry-run", "--resume"]) == 0
    assert sorted(p.name for p in work.rglob("*")) == ["digits_asha", "runs", "sweep.yaml"]
    edited = (folder / "sweep.yaml").read_text().replace("type: asha", "type: ashaa")
    (folder / "sweep.yaml").write_text(edited)  # a hand edit: the saved config is named
    resumes = (["resume", "digits_asha"], ["resume", f"{folder}/"], ["resume", "runs/digits_asha"])
    for argv in (["run", ASHA, "--dry-run", "--resume"], *resumes):  # (a folder: as report's)
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {folder}/sweep.yaml: search.type must be one of "), err
        assert err.endswith("got 'ashaa'; it should hold the sweep's config\n"), err
    (work / "runs" / "as_file").write_text("not a sweep\n")  # a file where a folder would be
    for resume in ([], ["--resume"]):
        assert main(["run", ASHA, "--dry-run", "--name", "as_file", *resume]) == 2
        assert capsys.readouterr().err == (
            f"error: {work / 'runs' / 'as_file'} is a file, not a sweep's folder; move it, or "
            "pick another --name\n"
        )


# ---------------------------------------------------------------- output into a closed pipe
@pytest.mark.parametrize(
    "argv", [["train", DIGITS], ["run", ASHA, "--dry-run"]], ids=["train", "dry-run"]
)
def test_output_into_a_pipe_nobody_reads_ends_quietly(tmp_path, argv):
    """`sweep ... | head -1` where head has already gone: the first write finds no reader, and
    the command ends there, exit 1, without a traceback (the Python docs' recipe)."""
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line
    try:
        done = subprocess.run(
            [SWEEP, *argv], cwd=tmp_path, stdout=write, stderr=subprocess.PIPE, text=True,
            timeout=120,
        )  # fmt: skip
    finally:
        os.close(write)
    assert done.returncode == 1 and done.stderr == "", done.stderr


def test_a_reader_that_leaves_after_the_first_line_stops_the_training(tmp_path):
    """`sweep train | head -1`: the reader closes after the first line while the command
    still has thousands of lines to write, more than a pipe holds, so it meets the closed pipe
    whatever the timing; it stops there, quietly, instead of training on."""
    with open(tmp_path / "stderr", "w+") as err:
        proc = subprocess.Popen(
            [SWEEP, "train", DIGITS, "--set", "train.epochs=5000"], cwd=tmp_path,
            stdout=subprocess.PIPE, stderr=err, text=True,
        )  # fmt: skip
        first = proc.stdout.readline()
        proc.stdout.close()
        code = proc.wait(timeout=120)  # the 5000 epochs would take minutes
        err.seek(0)
        said = err.read()
    assert first.startswith("training softmax on digits")
    assert "Traceback" not in said and "BrokenPipeError" not in said, said
    assert code == 1 and said == "", said


def test_numbers_written_1e_minus_3_are_numbers(work, capsys):
    assert main(["run", ASHA, "--dry-run", "--set", "train.lr=1e-3", "--set",
                 "space.train.lambda={loguniform: [1e-4, 1E-2]}"]) == 0  # fmt: skip
    assert 'train.lambda: {"loguniform": [0.0001, 0.01]}' in capsys.readouterr().out
    doc = config_file.load(DIGITS, ["train.lr=1e-3"])
    assert config_file.trainer_config(doc).train.lr == 0.001


@pytest.fixture
def busy_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "-1"], "error: --port must be an integer in [1, 65535]; got -1"),
        (["--port", "65536"], "error: --port must be an integer in [1, 65535]; got 65536"),
        (["--port", "BUSY"], "cannot listen on 127.0.0.1:BUSY (Address already in use); pick"),
        (
            ["--tracking-uri", "foo://bar"],
            f"error: --tracking-uri must be {URI_WHAT}; got 'foo://bar'",
        ),
        ([], "error: no MLflow store at TMP/mlflow.db: run `sweep ui` in the folder the sweep"),
        (["--tracking-uri", "x.db"], "error: no MLflow store at TMP/x.db: run `sweep ui` in"),
    ],
)
def test_sweep_ui_checks_the_port_before_starting_mlflow(tmp_path, busy_port, args, message):
    """A port that cannot be used, or a store that is not there (serving it would make it,
    empty): one line, exit 2, nothing started nor made."""
    args = [a.replace("BUSY", str(busy_port)) for a in args]
    done = subprocess.run(
        [SWEEP, "ui", *args], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    message = message.replace("BUSY", str(busy_port)).replace("TMP", str(tmp_path.resolve()))
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [done.stderr.strip()] and message in done.stderr
    assert list(tmp_path.iterdir()) == []  # no mlflow.db


@pytest.mark.parametrize("kind", ["text", "another program's database"])
def test_sweep_ui_refuses_a_file_that_is_no_store(tmp_path, kind):
    """A .db file that is no MLflow store (MLflow would add its tables to another program's
    SQLite database): one line naming it, exit 2, the file as it was."""
    import sqlite3

    db = tmp_path / "notes.db"
    if kind == "text":
        db.write_text("not a database\n" * 100)
        why = "file is not a database"
    else:
        with contextlib.closing(sqlite3.connect(db)) as con, con:
            con.execute("CREATE TABLE notes (line TEXT)")
        why = "it holds other tables than MLflow's"
    before = db.read_bytes()
    done = subprocess.run(
        [SWEEP, "ui", "--tracking-uri", "notes.db"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == "" and done.stderr == (
        f"error: {tmp_path.resolve()}/notes.db is no MLflow store ({why}): run `sweep ui` in "
        "the folder the sweep ran from, or give its store with --tracking-uri\n"
    )
    assert db.read_bytes() == before


NOBODY = "no_such_user_4242"  # ~NOBODY: a home directory no machine knows
READER_CASES = [
    (["report", "mk3", "--out", "/proc/x", "--no-log"],
     "error: --out /proc/x: cannot write in /proc ("),
    (["report", "mk3", "--out", "runs/mk3/sweep.yaml/page"],
     "error: --out runs/mk3/sweep.yaml/page: {cwd}/runs/mk3/sweep.yaml is a file, not a folder"),
    (["report", "mk3", "--tracking-uri", "ftp://x"],
     f"error: --tracking-uri must be {URI_WHAT}; got 'ftp://x'\n"),
    (["status", "--tracking-uri", "ftp://x"],
     f"error: --tracking-uri must be {URI_WHAT}; got 'ftp://x'\n"),
    (["status", "mk3", "--tracking-uri", "ftp://x"],
     f"error: --tracking-uri must be {URI_WHAT}; got 'ftp://x'\n"),
    *[([*argv, f"~{NOBODY}/x.db"], f"error: {argv[-1] if len(argv) > 1 else 'sweep'}: "
       f"~{NOBODY}/x.db names a home directory this machine does not know; give the path in "
       "full\n")
      for argv in (["report", "mk3", "--out"], ["report"], ["status", "--storage"],
                   ["status", "--tracking-uri"])],
]  # fmt: skip


@pytest.mark.parametrize(("argv", "message"), READER_CASES)
def test_report_and_status_check_out_and_tracking_uri_first(tmp_path, monkeypatch, capsys,
                                                            argv, message):  # fmt: skip
    """An --out that cannot be written and a --tracking-uri that is no store are refused in one
    line, before a sweep is read or its report drawn: its folder is left as it was."""
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "runs/mk3/sweep.yaml"
    config.parent.mkdir(parents=True)
    config.write_text("name: mk3\nsearch: {type: grid}\n")
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.splitlines() == [captured.err.strip()]
    assert message.replace("{cwd}", str(tmp_path.resolve())) in captured.err, captured.err
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "runs", "runs/mk3", "runs/mk3/sweep.yaml"
    ]  # fmt: skip
