"""The lock per sweep, between real processes: who holds it is named, a SIGKILL frees it, and
of many processes creating one new sweep at once exactly one wins."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from sweeps.record.layout import SweepFolder
from sweeps.record.lock import SweepLock, SweepRunning

ROOT = Path(__file__).resolve().parents[1]
HOLD = """
import sys, time
from sweeps.record.layout import SweepFolder
from sweeps.record.lock import SweepLock
lock = SweepLock(SweepFolder.of(sys.argv[1], sys.argv[2]))
if sys.argv[3] == "create":
    print("ready", flush=True)
    while not __import__("os").path.exists(sys.argv[4]):  # all start at once
        time.sleep(0.001)
    print(lock.create(), flush=True)
else:
    lock.take()
    print("locked", flush=True)
sys.stdin.read()  # kept alive, holding what it holds, until the test ends it
"""


def python(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", HOLD, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_a_held_sweep_names_its_holder_and_a_sigkill_frees_it(tmp_path: Path) -> None:
    files = SweepFolder.of(tmp_path, "s")
    files.root.mkdir()
    holder = python(str(tmp_path), "s", "take", "")
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(SweepRunning) as err:
            SweepLock(files).take()
        assert str(err.value).startswith(
            f"sweep s is already running (pid {holder.pid} on {socket.gethostname()})"
        )
        assert not SweepLock(files).create()  # the folder exists: the one holding it wins
        assert [p.name for p in tmp_path.iterdir()] == ["s"]  # no staging folder left
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock = SweepLock(files)
    lock.take()  # the kernel dropped the dead holder's lock: nothing stale
    assert files.lock.read_text() == f"pid {os.getpid()} on {socket.gethostname()}\n"
    lock.release()


def test_one_process_cannot_lock_a_sweep_twice(tmp_path: Path) -> None:
    files = SweepFolder.of(tmp_path, "s")
    first = SweepLock(files)
    assert first.create() and first.held
    with pytest.raises(SweepRunning, match=f"pid {os.getpid()}"):
        SweepLock(files).take()  # POSIX locks do not conflict in one process: refused here
    first.release()
    SweepLock(files).take()


def test_of_many_creating_one_new_sweep_exactly_one_wins(tmp_path: Path) -> None:
    go = tmp_path / "go"
    procs = [python(str(tmp_path / "runs"), "new", "create", str(go)) for _ in range(6)]
    assert [p.stdout.readline().strip() for p in procs] == ["ready"] * 6
    go.touch()
    try:
        answers = [p.stdout.readline().strip() for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert sorted(answers) == ["False"] * 5 + ["True"]
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["new"]
    assert sorted(p.name for p in (tmp_path / "runs/new").iterdir()) == ["sweep.lock"]
