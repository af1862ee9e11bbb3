"""One copy of the data per node (trainers/prepared.py), in a real sweep: two trials that train
at once map the same prepared files, and the kernel gives both the same pages."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweeping import Hold, output, start_sweep, wait_for, write_config  # noqa: E402

pytestmark = pytest.mark.slow


def mapping(pid: int, path: Path) -> dict[str, int]:
    """The kB counters of ``pid``'s mapping of ``path`` (/proc/PID/smaps), {} if unmapped."""
    found, counters = False, {}
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5:  # a mapping's header: address range ...
            if found:
                break
            found = (
                len(fields) >= 6
                and os.path.exists(fields[-1])
                and os.path.samefile(fields[-1], path)
            )
        elif found and fields[0].endswith(":") and len(fields) == 3:
            counters[fields[0][:-1]] = int(fields[1])
    return counters


def test_two_trials_at_once_share_one_copy_of_the_data(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(4000, 64)).astype(np.float32)  # 1 MB: many pages to share
    np.savez(tmp_path / "good.npz", X=X, y=np.arange(4000) % 4)
    config = write_config(
        tmp_path,
        "shared",
        train={"epochs": 2, "batch_size": 64, "optimizer": "sgd", "schedule": "constant"},
        search={"type": "grid", "max_concurrent": 2, "refit": False},
        space={"train.lr": {"grid": [0.01, 0.02]}},
        resources={"cpu": 0.5},  # two at once on any machine
    )
    hold = Hold(tmp_path / "hold", "epoch-1")
    proc = start_sweep("run", str(config), hold=hold, cwd=tmp_path)
    try:
        marks = hold.reached("epoch-1", 2)
        pids = [int(mark.read_text()) for mark in marks]
        data = tmp_path / "runs" / "shared" / "data"
        (copy,) = [p for p in data.iterdir() if p.is_dir()]  # one prepared copy for both
        train_X = copy / "fold0_train_X.npy"
        maps = [mapping(pid, train_X) for pid in pids]
        for counters in maps:
            assert counters, "each trial maps the prepared file"
            shared = counters["Shared_Clean"] + counters["Shared_Dirty"]  # dirty: not yet on disk
            assert counters["Rss"] > 0 and shared == counters["Rss"]  # pages the other maps too
            assert counters["Anonymous"] == 0 and counters["Private_Dirty"] == 0  # no own copy
            assert counters["Pss"] <= counters["Rss"] / 2 + 4  # each pays half: one copy
        hold.let_go("epoch-1")
        wait_for(lambda: proc.poll() is not None, "the sweep's end", proc=None)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
    assert proc.returncode == 0, output(proc)[-3000:]
