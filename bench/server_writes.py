"""What a run costs a real `mlflow server` on a real PostgreSQL, written as a sweep writes it:

    python bench/server_writes.py [--runs 512] [--workers 4]

Starts PostgreSQL (tests/postgres.py) and `mlflow server --workers N` on it, then writes
``--runs`` trials' whole lives (bench/sqlite_journal.py's: 8 params, 10 epochs of 7 curves,
ended) through the sweep's tracker, 64 a batch, WRITERS runs at once. Prints the wall time a
run and the CPU time a run of the server's processes, of PostgreSQL's (its user's processes)
and of this client: on a machine whose cores the server shares, their sum over the cores is the
floor of a sweep's MLflow writes to a server.
"""

from __future__ import annotations

import argparse
import os
import pwd
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from mlflow_server import mlflow_server  # noqa: E402
from postgres import postgres  # noqa: E402
from sqlite_journal import BATCH, writes  # noqa: E402

from sweeps.tracking.writer import WRITERS, SweepTracker  # noqa: E402


def processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, uid, command line), from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                status = (entry / "status").read_text().splitlines()
                uid = int(next(line for line in status if line.startswith("Uid:")).split()[1])
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except (OSError, StopIteration):
                continue
            found[int(entry.name)] = (parent, uid, command)
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User and system time of ``pids`` and of their children that ended."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def server_and_database(url: str) -> tuple[list[int], list[int]]:
    """The pids of the server on ``url``'s port (its process and every one below it), and
    those of the postgres user."""
    table, port = processes(), url.rsplit(":", 1)[1]
    roots = [p for p, (_, _, c) in table.items() if " server " in c and f"--port {port}" in c]
    tree, todo = [], list(roots)
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += [p for p, (parent, _, _) in table.items() if parent == pid]
    owner = pwd.getpwnam("postgres").pw_uid if os.geteuid() == 0 else os.geteuid()
    database = [p for p, (_, uid, c) in table.items() if uid == owner and "postgres" in c]
    return tree, database


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=512)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as tmp,
        postgres("bench") as (store,),
        mlflow_server(Path(tmp), store, args.workers) as url,
    ):
        tracker = SweepTracker(url, "bench")
        tracker.open_sweep({"space": "{}"}, "bench")
        server, database = server_and_database(url)
        todo = writes(0, args.runs)
        before = cpu_seconds(server), cpu_seconds(database), sum(os.times()[:2])
        start = time.perf_counter()
        for at in range(0, args.runs, BATCH):
            tracker.write_trials(todo[at : at + BATCH])
        wall = time.perf_counter() - start
        _, database = server_and_database(url)  # PostgreSQL starts a process a connection
        after = cpu_seconds(server), cpu_seconds(database), sum(os.times()[:2])
    server_ms, database_ms, client_ms = (1000 * (b - a) / args.runs for a, b in zip(before, after))
    print(
        f"{args.runs} runs, {WRITERS} at once, to {args.workers} server workers on PostgreSQL "
        f"({os.cpu_count()} CPUs): {1000 * wall / args.runs:.1f} ms a run; CPU a run: server "
        f"{server_ms:.1f} ms, PostgreSQL {database_ms:.1f} ms, client {client_ms:.1f} ms, "
        f"{server_ms + database_ms + client_ms:.1f} ms in all"
    )


if __name__ == "__main__":
    main()
