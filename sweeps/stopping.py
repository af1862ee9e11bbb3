"""Ctrl-C after Ray Tune returned: the driver stops at the next safe point, not mid-write.

While Ray Tune runs, its own handler turns Ctrl-C (and SIGTERM, SIGUSR1: sweeps.run routes them
to SIGINT) into a saved state and a clean stop. After it, the driver refits the chosen config and
takes the test look, writing to the folder's record and to MLflow as it goes; a KeyboardInterrupt
raised in the middle of a SQLite write leaves the store locked, and the interrupted sweep could
not even be marked so. So, in that phase, a signal only asks to stop, and ``check`` (called
between refit epochs and before the test look) stops there. A second Ctrl-C stops at once.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

_asked = threading.Event()


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Within: SIGINT asks to stop at the next ``check``."""

    def ask(signum: int, frame: object) -> None:
        _asked.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second one: at once

    kept = signal.signal(signal.SIGINT, ask)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, kept)
        _asked.clear()


def asked() -> bool:
    """Whether a stop was asked for: the caller saves what it must before ``check``."""
    return _asked.is_set()


def check() -> None:
    """Raise KeyboardInterrupt here if a stop was asked for."""
    if asked():
        raise KeyboardInterrupt
