"""A stop signal to every process of a running sweep, at each moment of it, per engine; and
the parts of sweeps/engine/stopping.py that make it work, on their own.

What `scancel`, a container's stop or `kill -- -PGID` do: SIGTERM to the driver's process group
(Ray's GCS and raylet are in it) and to every other process of the sweep (the trial workers lead
groups of their own). Each test holds the sweep at a named point (sweeps/engine/hold.py), signals,
and reads what a user reads: the exit code, the terminal, the time the sweep took to stop, and, once
resumed to its end, that every trial or configuration is in results.csv and MLflow once, with each
of its epochs once. One sweep per engine walks through every moment, resumed after each stop, so
that the module runs a dozen sweeps.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from sweeps.engine import stopping
from sweeps.engine.ray_process import descendants

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweeping import (  # noqa: E402
    LRS,
    check_complete,
    make_data,
    output,
    runs_of,
    start_sweep,
    write_config,
)

EPOCHS = 6
STOP_S = 10  # an upper bound on a hang: a stop takes well under a second here
RAY_FATAL = ("Failed to connect to GCS", "will terminate", "SIGTERM received", "Check failed")
UNDRAWN = "the sweep is complete, its report not written; draw it with:"
TUNE_WORDS = (
    "Stop signal received",
    "Failed to fetch metrics",
    "FileNotFoundError",
    "Tuner.restore",
)


def sweep_of(workdir: Path, name: str, engine: str) -> Path:
    """Four configurations, more than the machine's Ray runs at once (some wait, never started,
    when a stop comes); per trial or fused into populations of two."""
    search = {"type": "grid"}
    if engine == "fused":
        search |= {"engine": "fused", "population_size": 2}
    return write_config(
        workdir,
        name,
        train={"epochs": EPOCHS, "batch_size": 32, "optimizer": "sgd"},
        search=search,
        space={"train.lr": {"grid": LRS}},
    )


def stopped_at(
    monkeypatch, workdir: Path, point: str, *args: str, sig: int = signal.SIGTERM
) -> tuple[subprocess.Popen, float]:
    """`sweep ARGS` held at ``point``, then ``sig`` to every process of it; the finished
    process and the seconds from the signal to its exit."""
    hold = workdir / f"hold-{uuid.uuid4().hex[:8]}"
    hold.mkdir()
    (hold / f"{point}.hold").touch()
    monkeypatch.setenv("SWEEPS_HOLD", str(hold))
    proc = start_sweep(*args)
    try:
        deadline = time.monotonic() + 300
        while not list(hold.glob(f"{point}.*.reached")):
            assert proc.poll() is None, output(proc)
            assert time.monotonic() < deadline, f"{point} not reached in 300 s: {output(proc)}"
            time.sleep(0.05)
        everyone = descendants(proc.pid)
        start = time.monotonic()
        os.killpg(proc.pid, sig)
        for pid in everyone:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        (hold / f"{point}.go").touch()  # what is held goes on, and meets the stop
        proc.wait(timeout=120)
        took = time.monotonic() - start
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    print(f"{' '.join(args[:1])} stopped at {point} in {took:.2f} s")
    return proc, took


def assert_stopped(proc: subprocess.Popen, took: float, line: str) -> None:
    """Exit 130 within STOP_S, one line that says so (``line``), and none of Ray's words."""
    out = output(proc)
    assert proc.returncode == 130, out
    assert took < STOP_S, out
    said = [s for s in out.splitlines() if s.startswith("interrupted")]
    assert said == [line], out
    assert "Traceback" not in out, out
    assert not [w for w in RAY_FATAL + TUNE_WORDS if w in out], out


def assert_none_running(workdir: Path, name: str) -> None:
    _, parent, children = runs_of(workdir, name)
    assert [r for r in [parent, *children.values()] if r.info.status == "RUNNING"] == []


# Each engine's walk: the moments one sweep meets, stopped at each and resumed. Before Ray Tune
# the engines do not differ (Ray starting), so the fused walk starts where they do.
WALKS = {
    "trial": ["ray-started", "epoch-2", "ray-started", "refit", "test-look", "report"],
    "fused": ["epoch-2", "refit", "test-look", "report"],
}


@pytest.mark.slow
@pytest.mark.parametrize("engine", list(WALKS))
def test_sigterm_to_every_process_at_each_moment_then_resume_completes(
    tmp_path, monkeypatch, engine
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    make_data(tmp_path)
    name = f"term{engine}"
    folder = tmp_path / "runs" / name
    config = str(sweep_of(tmp_path, name, engine))
    for point in WALKS[engine]:
        started = folder.exists()
        args = ("resume", name) if started else ("run", config)
        proc, took = stopped_at(monkeypatch, tmp_path, point, *args)
        if not started and point == "ray-started":  # nothing written: nothing to resume
            assert_stopped(proc, took, f"interrupted before sweep {name} started; nothing written")
            assert not folder.exists()
        elif point == "report":  # the sweep's end recorded: only its page is left to draw
            assert_stopped(proc, took, f"interrupted: {UNDRAWN} sweep resume {name}")
        else:
            assert_stopped(proc, took, f"interrupted; continue with: sweep resume {name}")
            assert_none_running(tmp_path, name)
            assert not (folder / "best_model").exists()

    monkeypatch.delenv("SWEEPS_HOLD")
    done = start_sweep("resume", name)
    assert done.wait(timeout=300) == 0, output(done)
    assert not [w for w in ("Traceback", *RAY_FATAL) if w in output(done)], output(done)
    assert (folder / "report" / "index.html").exists()
    check_complete(tmp_path, name, LRS, EPOCHS)


@pytest.mark.slow
def test_ctrl_c_says_only_what_the_user_needs(tmp_path, monkeypatch):
    """Ctrl-C (SIGINT to the group) with trials waiting that never started: one line, none of
    Ray Tune's warnings about files those trials never wrote."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    make_data(tmp_path)
    config = str(sweep_of(tmp_path, "ctrlc", "trial"))
    proc, took = stopped_at(monkeypatch, tmp_path, "epoch-2", "run", config, sig=signal.SIGINT)
    assert_stopped(proc, took, "interrupted; continue with: sweep resume ctrlc")
    assert_none_running(tmp_path, "ctrlc")


# ---------------------------------------------------------------- sweeps/engine/stopping.py alone
STOPS = (signal.SIGINT, *stopping.OTHER_STOPS)


@pytest.fixture
def handlers():
    """This process's stop handlers and signal mask, put back after the test."""
    kept = {sig: signal.getsignal(sig) for sig in STOPS}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    stopping.install()
    yield
    for sig, handler in kept.items():
        signal.signal(sig, handler)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def blocked(pid: int) -> set[int]:
    """The signals process ``pid`` blocks (its SigBlk in /proc)."""
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if "SigBlk" in x)
    bits = int(line.split()[1], 16)
    return {sig for sig in range(1, 65) if bits >> (sig - 1) & 1}


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_processes_started_while_ray_starts_do_not_hear_the_stop_signals(handlers):
    with stopping.ray_starting():
        child = subprocess.Popen(["sleep", "60"])
    try:
        assert set(stopping.OTHER_STOPS) <= blocked(child.pid)
        assert not set(stopping.OTHER_STOPS) & blocked(os.getpid())  # the driver hears them
    finally:
        child.kill()
        child.wait()


def test_a_stop_while_ray_starts_is_heard_once_it_has(handlers):
    with stopping.deferred():
        with stopping.ray_starting():
            signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)
            assert signal.SIGTERM in signal.sigpending() and not stopping.asked()
        assert stopping.asked()
        with pytest.raises(KeyboardInterrupt):
            stopping.check()


def test_ray_inits_own_sigterm_exit_is_a_stop_and_its_handler_goes(handlers):
    with stopping.deferred(), stopping.ray_starting():
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))  # as ray.init
        raise SystemExit(signal.SIGTERM)
    assert stopping.asked()
    assert signal.getsignal(signal.SIGTERM) is signal.getsignal(signal.SIGUSR1)  # the driver's


def test_tunes_handler_gets_a_stop_asked_before_it_came_and_notes_its_own(handlers):
    heard = []

    def tune_handler(signum, frame):  # as Ray Tune's: stop, then the handler before it back
        heard.append(signum)
        signal.signal(signal.SIGINT, before)

    with stopping.deferred():
        before = signal.getsignal(signal.SIGINT)
        signal.raise_signal(signal.SIGTERM)  # while Tune sets up: only asked
        signal.signal(signal.SIGINT, tune_handler)
        stopping.hand_over()
        stopping.hand_over()  # at each step: passed on once
        assert heard == [signal.SIGINT]

    stopping.install()
    signal.signal(signal.SIGINT, tune_handler)
    before = signal.default_int_handler
    stopping.hand_over()
    assert not stopping.asked()
    signal.raise_signal(signal.SIGUSR1)  # Tune's own stop: noted for the driver
    assert heard == [signal.SIGINT, signal.SIGINT] and stopping.asked()
