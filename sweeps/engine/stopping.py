"""How the driver stops on a signal: at a safe point, the sweep's state saved, Ray stopped by it.

The stop signals: SIGINT (Ctrl-C), SIGTERM (``kill``, ``scancel``, a container's stop), SIGHUP
(a closed terminal; left ignored where the driver was started with it ignored, as by
``nohup``) and SIGUSR1 (SLURM's pre-timeout signal). ``install`` makes each act as Ctrl-C.

A signal sent to the driver's process group (a terminal's, ``kill -- -PGID``, a scheduler's)
reaches the local Ray processes it started too. Ray starts them deaf to SIGINT;
``ray_starting`` makes them deaf to the other stop signals the same way, so that the driver
alone hears a stop and ends Ray itself (a GCS killed under it leaves the driver waiting a
minute, then Ray ends it with exit code 1). A cluster the driver joins (a SLURM job's) is
started, and stopped, by its job script.

While Ray Tune runs, its own SIGINT handler stops the trials and saves the sweep's state. Around
it the driver writes to the folder's record and to MLflow; a KeyboardInterrupt raised in the
middle of a SQLite write leaves the store locked, and the interrupted sweep could not even be
marked so. So, inside ``deferred``, a signal only asks to stop, and ``check`` (called once Ray
is up, before and after Ray Tune, between refit epochs, before the test look and before the
report) stops there. A second signal stops at once.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

EXIT_INTERRUPTED = 130  # as a shell reports Ctrl-C; a SLURM job requeues on a stop (> 128)
OTHER_STOPS = (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1)  # besides SIGINT
_asked = threading.Event()


def install() -> None:
    """The driver's handlers: SIGINT raises KeyboardInterrupt (a driver started in the
    background by a job script inherits it ignored), the other stop signals do what SIGINT
    does; no stop asked yet."""
    _asked.clear()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    _install_others()


def _install_others() -> None:
    for sig in OTHER_STOPS:
        if not (sig == signal.SIGHUP and signal.getsignal(sig) == signal.SIG_IGN):
            signal.signal(sig, _as_ctrl_c)


def _as_ctrl_c(signum: int, frame: FrameType | None) -> None:
    """Run the SIGINT handler in place: Ray Tune's, ``deferred``'s, or the one that raises."""
    handler = signal.getsignal(signal.SIGINT)
    if not callable(handler):
        raise KeyboardInterrupt
    handler(signal.SIGINT, frame)


@contextlib.contextmanager
def ray_starting() -> Iterator[None]:
    """Start Ray's local processes within. A process inherits the signal mask of the thread that
    starts it, so the stop signals are blocked here: Ray's processes never hear them, and the
    driver hears one that came meanwhile when this ends. ``ray.init`` puts in a SIGTERM
    handler of its own, which exits: the driver's come back here, and an exit that handler
    raised (another thread took the signal) is a stop asked."""
    kept = signal.pthread_sigmask(signal.SIG_BLOCK, OTHER_STOPS)
    try:
        yield
    except SystemExit as stop:
        if stop.code != signal.SIGTERM:
            raise
        _asked.set()
    finally:
        _install_others()
        signal.pthread_sigmask(signal.SIG_SETMASK, kept)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Within: a stop signal asks to stop at the next ``check``; a second one stops at once."""
    kept = signal.signal(signal.SIGINT, _ask)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, kept)


def _ask(signum: int, frame: FrameType | None) -> None:
    _asked.set()
    signal.signal(signal.SIGINT, signal.default_int_handler)


class _Noted:
    """A SIGINT handler that notes the stop, then runs the one it wraps."""

    def __init__(self, handler: Callable[[int, FrameType | None], Any]) -> None:
        self.handler = handler

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        _asked.set()
        self.handler(signum, frame)


def hand_over() -> None:
    """Called once Ray Tune runs (its SIGINT handler in place; it restores the one before it
    after the first signal): Tune's handler notes each stop, so that the driver stops even if
    every trial ended meanwhile, and gets one asked for while Tune was setting up."""
    handler = signal.getsignal(signal.SIGINT)
    if not callable(handler) or isinstance(handler, _Noted):
        return
    if handler in (_ask, signal.default_int_handler):  # Tune's, already run
        return
    signal.signal(signal.SIGINT, _Noted(handler))
    _install_others()  # Tune's SIGUSR1 handler too: the signal goes through the noted one
    if asked():
        handler(signal.SIGINT, None)


def asked() -> bool:
    """Whether a stop was asked for: the caller saves what it must before ``check``."""
    return _asked.is_set()


def check() -> None:
    """Raise KeyboardInterrupt here if a stop was asked for."""
    if asked():
        raise KeyboardInterrupt
