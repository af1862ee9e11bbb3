"""When a trial reports to Ray Tune and when it checkpoints: a pure function of its progress.

A report is a round trip to the driver (the trial waits for it) and a checkpoint is a file
written, copied into the sweep folder and registered by Ray: with epochs of a few milliseconds,
one of each per epoch cost several times the training (docs/performance.md). So a trial
reports only
- at the epochs where ASHA decides (its rungs): ASHA compares the result reported AT a rung,
- at its last epoch (trained out, or diverged),
- once REPORT_S seconds or REPORT_EPOCHS epochs have passed since its last report,
and carries the epochs in between inside the report, so that the record and MLflow still get
every epoch. It checkpoints at rungs (an early-stopped trial's model is the one at its rung),
at its last epoch, and at a report once CHECKPOINT_S seconds of its training are unsaved: what
a kill can cost, redone exactly from the checkpoint before.
"""

from __future__ import annotations

from dataclasses import dataclass, field

EARLIER = "earlier_epochs"  # a report's key: the epochs since the report before, oldest first
REPORT_S = 1.0  # the driver and the live view hear from a running trial at least this often
REPORT_EPOCHS = 100  # epochs carried in one report at most (Ray keeps the last in its state)
CHECKPOINT_S = 5.0  # training time a kill may cost, at most (plus one report's worth)


@dataclass
class Cadence:
    """A trial's clock for reports and checkpoints; ``due`` is asked after each epoch."""

    milestones: frozenset[int]  # epochs that must be reported and checkpointed
    start: float  # when the trial (or its restore) started, in monotonic seconds
    report_s: float = REPORT_S
    report_epochs: int = REPORT_EPOCHS
    checkpoint_s: float = CHECKPOINT_S
    unreported: int = 0  # epochs trained since the last report
    last_report: float = field(init=False)
    last_checkpoint: float = field(init=False)

    def __post_init__(self) -> None:
        self.last_report = self.last_checkpoint = self.start

    def due(self, epoch: int, last: bool, now: float) -> tuple[bool, bool]:
        """(report, checkpoint) after ``epoch``; ``last``: the trial trains no further."""
        self.unreported += 1
        must = last or epoch in self.milestones
        report = (
            must or now - self.last_report >= self.report_s or self.unreported >= self.report_epochs
        )
        if not report:
            return False, False
        checkpoint = must or now - self.last_checkpoint >= self.checkpoint_s
        self.last_report, self.unreported = now, 0
        if checkpoint:
            self.last_checkpoint = now
        return True, checkpoint
