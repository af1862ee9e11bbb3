"""The names of the MLflow tags the project writes and reads, and the search filters built from
them. A user sees these names in the MLflow UI and filters runs on them, so they stay as they are.

On every run of a sweep: ``sweep.*``. On a sweep's parent run, the chosen trial and its config:
``best.*``. MLflow's own: a child run's parent, a run's description, and the experiment tags that
hold the sweep's page in the UI (sweeps.tracking.ui).
"""

from __future__ import annotations

# ---------------------------------------------------------------- a sweep's runs
STATUS = "sweep.status"  # running, then a trial's or the sweep's outcome (sweeps.record.outcomes)
SWEEP_ID = "sweep.id"  # the parent's: the sweep's id, by which it is found again
ROLE = "sweep.role"  # PARENT or REFIT; a trial's run has none
PARENT = "parent"  # the role of a sweep's parent run
REFIT = "refit"  # the role of a refit's run: the chosen config on train+validation
TRIAL_ID = "sweep.trial_id"  # a child's: its trial (a refit's: the refit's id)
SOURCE_TRIAL_ID = "sweep.source_trial_id"  # a refit's: the trial whose config it trains
EPOCHS_RUN = "sweep.epochs_run"  # an ended trial's: the epochs it trained
RUNG = "sweep.rung"  # an early-stopped trial's: the epoch ASHA stopped it at
ERROR = "sweep.error"  # a failed trial's: the error's line, then its text
DIVERGED = "sweep.diverged"  # "true" once a trial reported a diverged epoch
EXPLOITS = "sweep.exploits"  # a PBT member's: "epoch 4 from c0003, ..." (whose weights it took)
BEST = "best."  # on the parent, + "trial_id" or a searched key: the chosen trial, its config
BEST_TRIAL_ID = BEST + "trial_id"

# ---------------------------------------------------------------- MLflow's own
PARENT_RUN_ID = "mlflow.parentRunId"  # a child run's parent: the UI nests it there
NOTE = "mlflow.note.content"  # a run's description in the UI (Markdown)
VIEW = "mlflow.sharedViewState."  # + key: a saved view of the runs page (JSON), an experiment tag
KIND = "mlflow.experimentKind"  # an experiment tag: which pages the UI opens it on


def column(name: str) -> str:
    """The tag as a search filter's or the runs table's column: tags.`name`."""
    return f"tags.`{name}`"


def equals(name: str, value: str) -> str:
    """A search filter: the runs whose tag ``name`` is ``value``."""
    return f"{column(name)} = '{value}'"


def children_of(parent_id: str) -> str:
    """A search filter: the child runs of ``parent_id`` (a sweep's trials and refits)."""
    return equals(PARENT_RUN_ID, parent_id)
