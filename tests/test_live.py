"""The live view: redrawn in place in a real terminal (tmux), plain lines in a pipe, and its
sums (progress, best, time left) with a clock the test sets."""

from __future__ import annotations

import io
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sweeps.view.live import LiveView

sys.path.insert(0, str(Path(__file__).resolve().parent))
from browser import ensure_installed  # noqa: E402
from sweeping import wait_for  # noqa: E402

OUTCOMES = ["completed", "early_stopped", "diverged", "error"]
DRIVER = """
import os, sys, time
from sweeps.view.live import LiveView
n, pause = int(sys.argv[1]), float(sys.argv[2])
gate = sys.argv[3] if len(sys.argv) > 3 else None  # trial i started: wait for the file gate/i
with LiveView(n, name="demo", summary_every=1.0) as view:
    for i in range(n):
        trial = f"t_{i:05d}"
        params = {"model.loss": ["softmax", "hinge"][i % 2], "train.lr": 10 ** (-3 + i / 2)}
        view.started(trial, params)
        while gate and not os.path.exists(os.path.join(gate, str(i))):
            time.sleep(0.02)
        for epoch in (1, 2, 3):
            view.result(trial, {"epoch": epoch, "val_acc": 0.3 + 0.05 * i + 0.01 * epoch})
            time.sleep(pause)
        outcome = OUTCOMES[i % 4]
        view.ended(trial, outcome, {"epoch": 3, "val_acc": 0.33 + 0.05 * i})
    print("printed while the view is live")
print("driver done")
""".replace("OUTCOMES", repr(OUTCOMES))


def driver(tmp_path: Path) -> Path:
    path = tmp_path / "driver.py"
    path.write_text(DRIVER)
    return path


def test_in_a_pipe_one_line_per_trial_end_and_summaries(tmp_path):
    done = subprocess.run(
        [sys.executable, str(driver(tmp_path)), "8", "0.15"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "\x1b[" not in done.stdout  # no terminal codes in a log
    ends = [ln for ln in lines if ln.startswith("[")]
    assert [ln.split("]")[0] for ln in ends] == [f"[{k}/8" for k in range(1, 9)]
    assert "t_00002 diverged after 3 epochs" in ends[2] and "t_00003 failed" in ends[3]
    assert "t_00001 stopped early" in ends[1] and "hinge lr=3.2e-3" in ends[1]
    summaries = [ln for ln in lines if ln.startswith("sweep demo:")]
    assert len(summaries) >= 2  # periodic (every second) and a last one
    assert summaries[-1].startswith("sweep demo: 8/8 ended, 0 running, 2 completed")
    assert "best val_acc 0.5800: t_00005" in summaries[-1] and "elapsed" in summaries[-1]
    assert lines[-1] == "driver done"


@pytest.mark.slow
def test_in_a_terminal_it_redraws_in_place(tmp_path):
    tmux = ensure_installed("tmux", "tmux")
    session = f"live{int(time.time() * 1000) % 100000}"
    log, gate = tmp_path / "done", tmp_path / "gate"
    gate.mkdir()
    cmd = f"{sys.executable} {driver(tmp_path)} 10 0.25 {gate}; touch {log}; sleep infinity"
    subprocess.run(
        [tmux, "new-session", "-d", "-s", session, "-x", "110", "-y", "40", cmd], check=True
    )

    def screen(history: bool = False) -> str:
        extra = ["-S", "-"] if history else []
        return subprocess.run(
            [tmux, "capture-pane", "-p", "-t", session, *extra],
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    def showing(ended: int) -> str:
        text = screen()
        return text if f"{ended}/10 trials ended" in text and "running trial" in text else ""

    try:
        seen = []
        for k in range(10):  # the driver waits, its trial k started, until the test saw it
            seen.append((k, wait_for(lambda k=k: showing(k), f"{k}/10 on the screen", 120)))
            (gate / str(k)).touch()
        wait_for(log.exists, "the driver's end", 60)
        final = screen(history=True)
    finally:
        subprocess.run([tmux, "kill-session", "-t", session], check=False)
    progress = [k for k, _ in seen]
    assert progress == list(range(10))
    middle = next(text for k, text in seen if 0 < k < 10)
    assert middle.count("trials ended") == 1  # one panel, redrawn in place, not scrolled
    assert "running trial" in middle and "best val_acc" in middle and "left" in middle
    # the whole scrollback holds the panel once: it was redrawn, never printed again
    assert final.count("trials ended") == 1 and "10/10 trials ended" in final
    assert "3 completed  3 stopped early  2 diverged  2 failed" in final
    assert "printed while the view is live" in final and "driver done" in final


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_best_and_time_left_from_the_events():
    clock, out = Clock(), io.StringIO()
    view = LiveView(
        10,
        metric="val_loss",
        mode="min",
        stream=out,
        interactive=False,
        summary_every=1e9,
        prior={"p1": ("completed", 0.7, {}), "p2": ("error", math.nan, {})},
        clock=clock,
    )
    assert view.eta() is None and "estimated after the first" in view.summary()
    view.started("a", {"train.lr": 0.1})
    view.started("b", {"train.lr": 0.2})
    clock.now += 30
    view.ended("a", "completed", {"epoch": 5, "val_loss": 0.5})
    view.ended("b", "diverged", {"epoch": 2, "val_loss": 0.1})  # diverged: never the best
    assert view.done == 4 and view.best[:2] == (0.5, "a")
    assert view.eta() == pytest.approx(6 / (2 / 30))  # 6 left at 2 trials per 30 s
    assert "4/10 ended" in view.summary() and "~1:30 left" in view.summary()
    assert (
        out.getvalue().splitlines()[0]
        == "[ 3/10] a completed after 5 epochs, val_loss 0.5000  lr=0.1"
    )
    with pytest.raises(ValueError, match="outcome must be one of"):
        view.ended("c", "finished")


def test_trials_run_again_after_a_resume_count_once():
    """After a kill, Ray restores its last snapshot of the sweep: a trial that ended after it is
    withdrawn and run again (sweeps.engine.recorder.withdraw), one that was running then ends
    again; either way progress counts it once and never passes the plan."""
    out = io.StringIO()
    prior = {"a": ("completed", 0.9, {}), "b": ("completed", 0.95, {})}
    prior["c"] = ("early_stopped", 0.8, {})
    view = LiveView(3, stream=out, interactive=False, prior=prior, clock=Clock())
    assert view.best[:2] == (0.95, "b")  # the best so far counts the trials ended before
    view.withdrawn(["b"])
    assert view.done == 2 and view.best[:2] == (0.9, "a")
    for trial in ("a", "b"):  # a: restored as running, ends again; b: run again
        view.started(trial, {"train.lr": 0.1})
        view.ended(trial, "completed", {"epoch": 1, "val_acc": 0.5})
        assert view.best[:2] == (0.8, "c")  # a's value now is its last, below c's
    assert [line[:5] for line in out.getvalue().splitlines()] == ["[2/3]", "[3/3]"]
    assert "3/3 ended, 0 running, 2 completed, 1 stopped early;" in view.summary()


def test_a_tie_for_the_best_goes_where_results_csv_puts_it(tmp_path):
    """Two trials end with the same value, the one drawn later first (as a pbt sweep's did):
    the live view's best so far is the trial results.csv ranks first, and so the one chosen
    at the end (sweeps.record.results.rank_order, for both), whichever order they end in."""
    from sweeps.record.results import write_csv

    ends = [("7a332_00003", 0.9417), ("7a332_00000", 0.90), ("7a332_00001", 0.9417)]
    for order in (ends, ends[::-1]):
        view = LiveView(3, stream=io.StringIO(), interactive=False, clock=Clock())
        for trial, acc in order:
            view.started(trial, {"train.lr": 0.1})
            view.ended(trial, "completed", {"epoch": 8, "val_acc": acc})
        rows = [{"trial_id": t, "final_val_acc": acc} for t, acc in order]
        table = write_csv(rows, "val_acc", "max", tmp_path / "results.csv")
        assert view.best[:2] == (0.9417, "7a332_00001") == (0.9417, table["trial_id"].iloc[0])
        assert "best val_acc 0.9417: 7a332_00001" in view.summary()
    low = LiveView(2, metric="val_loss", mode="min", stream=io.StringIO(), clock=Clock())
    for trial in ("b", "a"):
        low.ended(trial, "completed", {"epoch": 1, "val_loss": 0.25})
    assert low.best[:2] == (0.25, "a")
