"""One process at a time per sweep: an exclusive lock on the sweep folder for the driver's life.

POSIX record locks (``fcntl.lockf``): the kernel drops them when their process ends, however it
ends (SIGKILL included), so no lock outlives its holder; and they are the locks NFS (NLM, or
NFSv4 itself) and GPFS carry to the server, so drivers on two hosts sharing the folder see each
other's (docs/slurm.md says where that holds). Two caveats of POSIX locks, both kept here: a
process never conflicts with itself (so this module refuses a second lock of one folder in one
process), and closing any descriptor of the file drops the lock (so nothing else opens it, but
``holder`` in a process holding none). ``holder`` asks the kernel who holds a folder's lock
without taking it: whether a sweep's driver is alive (``sweep status``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import socket
import struct
import sys

from sweeps.record.layout import SweepFolder
from trainers.config import ConfigError

_HELD: set[tuple[int, int]] = set()  # (device, inode) of the lock files this process holds


class SweepRunning(ConfigError):
    """Another driver (or ``sweep sync``) holds the sweep."""


class SweepLock:
    """The lock on one sweep folder: ``take`` an existing folder's, or ``create`` the folder."""

    def __init__(self, files: SweepFolder, label: str | None = None) -> None:
        self.files = files
        self.label = label or files.name  # the name the user typed, for the message
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def take(self) -> None:
        """Lock the existing folder; SweepRunning if another process holds it."""
        with contextlib.suppress(FileNotFoundError):
            st = os.stat(self.files.lock)
            if (st.st_dev, st.st_ino) in _HELD:  # a second descriptor's close would unlock it
                raise self._running(f"pid {os.getpid()} on {socket.gethostname()}")
        fd = os.open(self.files.lock, os.O_RDWR | os.O_CREAT, 0o644)
        self._lock(fd)
        self._fd = fd

    def create(self) -> bool:
        """Make the folder, already locked, in one atomic step; False if it exists by then.

        Two drivers starting one new sweep both passed the "does it exist" check: each builds
        the folder under a staging name with its lock held, then renames it into place, and
        rename(2) lets only one of them win. The other finds the folder and must ``take``.
        """
        staging = self.files.staging()
        shutil.rmtree(staging, ignore_errors=True)  # left by a process of this pid and host
        staging.mkdir(parents=True)
        fd = os.open(staging / self.files.lock.name, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            self._lock(fd)  # nobody else knows this folder: it fails only without locks
        except ConfigError:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        try:
            os.rename(staging, self.files.root)
        except OSError as err:
            self._unlock(fd)
            shutil.rmtree(staging, ignore_errors=True)
            if err.errno in (errno.EEXIST, errno.ENOTEMPTY):
                return False
            raise ConfigError(f"cannot create {self.files.root} ({err.strerror})") from None
        self._fd = fd
        return True

    def release(self) -> None:
        """Unlock (also done by the kernel when the process ends)."""
        if self._fd is not None:
            self._unlock(self._fd)
            self._fd = None

    def _running(self, holder: str) -> SweepRunning:
        return SweepRunning(
            f"sweep {self.label} is already running ({holder or 'pid unknown'}); "
            "wait for it to end or stop it first"
        )

    def _lock(self, fd: int) -> None:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.pread(fd, 200, 0).decode(errors="replace").partition("\n")[0]
            os.close(fd)
            if err.errno in (errno.EACCES, errno.EAGAIN):
                raise self._running(holder) from None
            raise ConfigError(
                f"cannot lock {self.files.lock} ({err.strerror}): this file system offers no "
                "locks across hosts; see docs/slurm.md, 'One driver per sweep'"
            ) from None
        _HELD.add(_key(fd))
        # Written over the old text, then cut to length: a reader sees a whole first line.
        me = f"pid {os.getpid()} on {socket.gethostname()}\n".encode()
        os.pwrite(fd, me, 0)
        os.ftruncate(fd, len(me))

    @staticmethod
    def _unlock(fd: int) -> None:
        _HELD.discard(_key(fd))
        os.close(fd)  # closing the descriptor ends the process's lock on the file


def holder(files: SweepFolder) -> str | None:
    """Who holds the sweep's lock (``pid N on HOST``, as the holder wrote it), or None when
    nobody does: a driver killed however hard holds nothing. It asks (F_GETLK) and takes
    nothing, so a driver starting meanwhile is never refused. OSError where the file system
    cannot say."""
    try:
        st = os.stat(files.lock)
    except FileNotFoundError:
        return None
    if (st.st_dev, st.st_ino) in _HELD:  # ours: opening and closing it would drop it
        return f"pid {os.getpid()} on {socket.gethostname()}"
    fd = os.open(files.lock, os.O_RDONLY)
    try:
        if not _locked(fd):
            return None
        return os.pread(fd, 200, 0).decode(errors="replace").partition("\n")[0] or "pid unknown"
    finally:
        os.close(fd)


# struct flock, as fcntl(2) takes it: Linux's field order, else the BSDs' (macOS)
if sys.platform.startswith("linux"):
    _FLOCK, _FIELDS = "@hhqqi4x", ("type", "whence", "start", "len", "pid")
else:
    _FLOCK, _FIELDS = "@qqihh", ("start", "len", "pid", "type", "whence")


def _locked(fd: int) -> bool:
    """Whether another process holds a lock that an exclusive lock of the whole file meets."""
    ask = {"type": fcntl.F_WRLCK, "whence": os.SEEK_SET, "start": 0, "len": 0, "pid": 0}
    got = fcntl.fcntl(fd, fcntl.F_GETLK, struct.pack(_FLOCK, *(ask[f] for f in _FIELDS)))
    return dict(zip(_FIELDS, struct.unpack(_FLOCK, got)))["type"] != fcntl.F_UNLCK


def _key(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino
