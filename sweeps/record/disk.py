"""A full disk (or a quota) under a running sweep: it stops while its state is whole, in one line.

Ray Tune rewrites its experiment state in place: a write cut short by a full disk leaves a state
that cannot be restored, and the sweep could not be resumed. So the driver does not wait for a
write to fail. ``Watch.check`` measures the free space of the sweep folder's filesystem and of
the SQLite store's, before the sweep starts, at every step of Ray Tune's loop and before the
phases after it; below ``Watch.room`` it raises ``DiskFull``, which ends the sweep the way a
killed driver does: Ray's last saved state and the folder's record are whole, and ``sweep
resume`` goes on from them. A write that fails anyway (another process filled the disk between
two checks, a quota, which free space does not show) is recognised by ``disk_full`` and ends
the sweep the same way. ``quiet`` keeps Ray's and MLflow's tracebacks of such a failure off the
terminal: the one line says it all.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from sweeps.record.layout import existing_ancestor

FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
FULL_TEXTS = (*(os.strerror(e) for e in FULL_ERRNOS), "database or disk is full")  # + SQLite's
MIN_FREE = 16 << 20  # what a sweep of a few trials writes between two checks, many times over
PER_TRIAL = 16 << 10  # Ray's experiment state holds about 5 KiB per trial, rewritten whole
# Where Ray and MLflow log a failed write with its traceback: a trial's, a trial's result that
# nobody fetched once the sweep stopped, a SQLite transaction's.
NOISY_LOGGERS = (
    "ray.tune.execution.tune_controller",
    "ray._private.worker",
    "mlflow.store.db.utils",
)


class DiskFull(Exception):
    """The sweep stopped for want of disk space; the message (one line) says where."""


def free_bytes(path: Path) -> int:
    """The bytes an unprivileged writer may still use on ``path``'s filesystem (its nearest
    existing ancestor's, where it is not made yet)."""
    return shutil.disk_usage(existing_ancestor(Path(path))).free


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


@dataclass(frozen=True)
class Watch:
    """The disks a sweep writes to: its folder's, and its SQLite store's (None for a server)."""

    folder: Path
    store: Path | None = None

    @staticmethod
    def room(trials: int) -> int:
        """The free space a sweep of ``trials`` trials stops below."""
        return MIN_FREE + PER_TRIAL * trials

    def check(self, trials: int = 0) -> None:
        """DiskFull when either disk has less than ``room(trials)`` free."""
        need = self.room(trials)
        for what, path in (("the sweep folder", self.folder), ("the MLflow store", self.store)):
            if path is not None and (free := free_bytes(path)) < need:
                raise DiskFull(
                    f"{_mib(free)} left on the disk of {what} {path} (below {_mib(need)} "
                    "a sweep stops, so that its saved state stays whole)"
                )

    def error(self, err: BaseException) -> DiskFull | None:
        """``err`` as a DiskFull naming the full path, if a full disk caused it."""
        if isinstance(err, DiskFull):
            return err
        cause = disk_full(err)
        if cause is None:
            return None
        if isinstance(cause, OSError) and cause.filename:
            where = Path(os.fsdecode(cause.filename))
        elif "database or disk is full" in str(cause) and self.store is not None:
            where = self.store
        else:
            where = self.folder
        return DiskFull(f"{why(cause)} writing {where}")


def disk_full(err: BaseException) -> BaseException | None:
    """The exception in ``err``'s chain (itself, its causes) that says the disk is full."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in FULL_ERRNOS or is_full_text(str(err)):
            return err
        err = err.__cause__ or err.__context__
    return None


def is_full_text(text: str) -> bool:
    """Whether an error's text (a Ray trial's, which comes as text) says the disk is full."""
    return any(t in text for t in FULL_TEXTS)


def why(err: BaseException) -> str:
    """'no space left on device' or 'disk quota exceeded'."""
    text = str(err)
    if isinstance(err, OSError) and err.errno in FULL_ERRNOS:
        text = os.strerror(err.errno)
    return next((t for t in FULL_TEXTS if t in text), FULL_TEXTS[0]).lower()


class _Quiet(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (exc is not None and disk_full(exc) or is_full_text(record.getMessage()))


_QUIET = _Quiet()


def quiet() -> None:
    """Ray's and MLflow's logged tracebacks of a write that failed for a full disk, dropped."""
    for name in NOISY_LOGGERS:
        logging.getLogger(name).addFilter(_QUIET)
