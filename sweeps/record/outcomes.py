"""How a trial ends and how a sweep ends: the words the record holds (history.jsonl,
results.csv, the ``sweep.status`` tag), each with the MLflow status its run ends with.

The members are strings: each equals its word and is written as it (JSON, CSV, f-strings, MLflow
tags), so a record written before is read the same. How a view shows them (words, colours) is
the view's.
"""

from __future__ import annotations

from enum import Enum

RUNNING = "running"  # the sweep.status of a run not ended yet (a trial's or a sweep's)


class _Ending(str, Enum):
    """A way to end, as its word; ``run_status``: the MLflow status its run ends with;
    ``choosable``: a best config can come from a trial that ended so."""

    run_status: str
    choosable: bool

    def __new__(cls, word: str, run_status: str, choosable: bool = False) -> _Ending:
        member = str.__new__(cls, word)
        member._value_ = word
        member.run_status, member.choosable = run_status, choosable
        return member

    def __str__(self) -> str:
        return str(self.value)

    @classmethod
    def of(cls, word: str) -> _Ending:
        """The member spelled ``word``; a ValueError that lists the words otherwise."""
        try:
            return cls(word)
        except ValueError:
            words = ", ".join(cls)
            raise ValueError(f"outcome must be one of {words}; got {word!r}") from None


class Outcome(_Ending):
    """How a trial ended."""

    COMPLETED = "completed", "FINISHED", True  # it trained all its epochs
    EARLY_STOPPED = "early_stopped", "KILLED", True  # ASHA stopped it at a rung
    DIVERGED = "diverged", "FAILED"  # its loss went non-finite
    ERROR = "error", "FAILED"  # it raised
    INTERRUPTED = "interrupted", "KILLED"  # the sweep stopped before it ended; a resume goes on


class SweepOutcome(_Ending):
    """How a sweep ended."""

    COMPLETED = "completed", "FINISHED"  # every trial ended and a best config was chosen
    FAILED = "failed", "FAILED"  # every trial ended and none can be chosen
    INTERRUPTED = "interrupted", "KILLED"  # stopped first; `sweep resume` goes on


CHOOSABLE = tuple(o for o in Outcome if o.choosable)  # outcomes a best config can come from
