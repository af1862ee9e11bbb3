"""Does SQLite's WAL journal speed up a sweep's MLflow writes? Each way of writing, to a fresh
store in each journal mode, in turn:

    python bench/sqlite_journal.py [--runs 2048] [--client-runs 256] [--repeats 3]

- bulk: the sweep's writes, 64 runs a transaction (sweeps.tracking.bulk, what a fused
  population's end writes), each run made with its 8 params, 10 epochs of 7 curves, ended;
- client: the same runs through MLflow's client, one at a time (create_run with its tags, one
  log_batch, set_terminated): what a store bulk does not apply to gets.

Both as the tracker opens SQLite: synchronous=OFF (sweeps.tracking.store.sqlite_without_fsync).
Prints milliseconds a run for the rollback journal (``delete``, the store's) and ``wal``, and
their ratio in each repeat (the two modes run back to back, so the ratio is measured on one
machine state).
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sweeps.tracking.writer import SweepTracker  # noqa: E402

CURVES = ("train_loss", "train_acc", "train_total_loss", "val_loss", "val_acc", "lr", "seconds")
BATCH = 64


def writes(first: int, count: int) -> list[tuple[str, dict]]:
    """``count`` trials' whole lives (started, 10 epochs, ended) as the writer thread merges
    them."""
    out = []
    for i in range(first, first + count):
        config = {f"train.p{k}": i * 0.001 + k for k in range(8)}
        results = [
            {"epoch": e, "time": 1_700_000_000_000 + e, **{c: i + e / 10 for c in CURVES}}
            for e in range(1, 11)
        ]
        end = {"outcome": "completed", "epochs_run": 10, "error": None}
        life = {"config": config, "name": f"run {i}", "results": results, "end": end}
        out.append((f"t{i}", life))
    return out


def ms_per_run(folder: Path, journal: str, runs: int, bulk: bool) -> float:
    db = folder / f"{journal}-{'bulk' if bulk else 'client'}.db"
    sqlite3.connect(db).execute(f"PRAGMA journal_mode={journal}").close()  # kept by the file
    tracker = SweepTracker(f"sqlite:///{db}", "bench")
    if not bulk:
        tracker.rows = None
    tracker.open_sweep({"space": "{}"}, "bench")
    todo = writes(0, runs)
    start = time.perf_counter()
    for at in range(0, runs, BATCH):
        tracker.write_trials(todo[at : at + BATCH])
    seconds = time.perf_counter() - start
    mode = sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == journal, (mode, journal)
    return 1000 * seconds / runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2048, help="runs written in bulk")
    parser.add_argument("--client-runs", type=int, default=256, help="runs through the client")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    for bulk, runs in ((True, args.runs), (False, args.client_runs)):
        ratios = []
        for repeat in range(args.repeats):
            with tempfile.TemporaryDirectory() as tmp:
                delete = ms_per_run(Path(tmp), "delete", runs, bulk)
                wal = ms_per_run(Path(tmp), "wal", runs, bulk)
            ratios.append(wal / delete)
            print(
                f"{'bulk' if bulk else 'client'} {runs} runs, repeat {repeat + 1}: rollback "
                f"journal {delete:.2f} ms a run, WAL {wal:.2f} ms a run, WAL / rollback "
                f"{wal / delete:.2f}",
                flush=True,
            )
        print(f"  median WAL / rollback: {statistics.median(ratios):.2f}", flush=True)


if __name__ == "__main__":
    main()
