"""Ray's processes, seen from the driver: joined or started (``connect``), stopped in the
background while the driver goes on (``stop_in_background``), waited for (``shutdown``), or
killed with every other process the driver started (``kill_local``). The environment they start
with is sweeps/engine/ray_env.py's.
"""

from __future__ import annotations

import contextlib
import gc
import os
import secrets
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray


@dataclass
class _Stopping:
    """A stop under way and what must wait for it, in one object at module level."""

    stopping: threading.Thread | None = None  # ray.shutdown in the background
    results: Any = None  # the last fit's ResultGrid (``keep_until_stopped``)


_state = _Stopping()


def connect() -> dict[str, float]:
    """Join the Ray cluster named by RAY_ADDRESS (a SLURM job's), else start a local one.

    A local Ray gets a new token of its own, in this process's environment, which Ray's
    processes inherit and no other user can read (left to itself, Ray would keep one token
    for every cluster in ~/.ray/auth_token, readable by all). A token the user set is kept.
    """
    address = os.environ.get("RAY_ADDRESS")
    if not (address or os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)  # once per process: Ray caches it
    if not ray.is_initialized():
        ray.init(
            address=address,
            include_dashboard=False,
            logging_level="WARNING",
            log_to_driver=False,
        )
    return ray.cluster_resources()


def stop_in_background() -> None:
    """Start stopping Ray (seconds of waiting for its processes) while the driver goes on with
    what needs no Ray: the refit, the test look, the report.

    A Ray object freed while Ray stops ends the process with exit code 1 (its core worker is
    half gone). The fit leaves some in cyclic garbage (a GcsClient, for one), which Python's
    collector would free at any allocation of the main thread: they are collected now, while
    Ray is up, and the collector waits until Ray has stopped."""
    gc.collect()
    gc.disable()

    def stop() -> None:
        try:
            ray.shutdown()
        finally:
            gc.enable()

    _state.stopping = threading.Thread(target=stop, name="ray-shutdown")
    _state.stopping.start()


def kill_local() -> None:
    """For a driver that ends right after: every process it started, Ray's local ones (their
    children too: Ray's agents, the trial workers) killed at once, with no wait. ray.shutdown would
    wait a second for each (they do not hear its SIGTERM: sweeps/engine/stopping.py) and, after an
    interrupt, Ray Tune's threads may still call into Ray and Ray then ends the process with exit
    code 1. Where there is no /proc, the kernel and Ray's reaper end them."""
    for pid in descendants(os.getpid()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def descendants(pid: int) -> list[int]:
    """The processes below ``pid``, parents first (one read of /proc; none without it)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):  # (one that just ended)
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(0), [])
        found += below
        todo += below
    return found


def keep_until_stopped(results: Any) -> None:
    """Hold a fit's results (Ray objects among them) until ``shutdown`` has stopped Ray."""
    _state.results = results


def shutdown() -> None:
    """Ray stopped, when this returns; then the last fit's results are let go (freed while Ray
    stops, Ray objects end the process with exit code 1)."""
    if _state.stopping is not None:
        _state.stopping.join()
        _state.stopping = None
    ray.shutdown()  # (a no-op once stopped)
    _state.results = None
