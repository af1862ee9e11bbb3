"""The sweep folder's layout: one home for every name in ``runs/<name>/``.

The folder is the sweep's source of truth: its config, its MLflow run ids, Ray's state and
checkpoints, the results and the chosen model. Every module asks this one for a path, so a
file is named in one place. It imports neither Ray nor MLflow (a login node reads it cheaply).
"""

from __future__ import annotations

import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

from trainers.rules import expanded

DEFAULT_STORAGE = "runs"  # where sweep folders go unless a config sets ``storage``
DEFAULT_DB = "mlflow.db"  # the SQLite store in the working directory, when no URI is set


@dataclass(frozen=True)
class SweepFolder:
    """Paths inside one sweep's folder (``storage/name``)."""

    root: Path

    @classmethod
    def of(cls, storage: str | Path, name: str) -> SweepFolder:
        return cls((expanded(storage, "--storage") / name).resolve())

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def config(self) -> Path:
        """The config the sweep was started with, for ``sweep resume``."""
        return self.root / "sweep.yaml"

    @property
    def state(self) -> Path:
        """MLflow run ids (parent, trial -> run) in the sweep's store: a cache, so a resume
        reopens its runs without a search; runs are found again by their tags without it."""
        return self.root / "mlflow_runs.json"

    @property
    def history(self) -> Path:
        """The sweep's own record, appended by the driver before each MLflow write: the sweep's
        id and experiment, each trial's config, every reported epoch, each end. MLflow is a
        copy of it (``sweep sync`` rebuilds the copy), so losing the store loses nothing."""
        return self.root / "history.jsonl"

    @property
    def lock(self) -> Path:
        """Locked (fcntl) by the one driver or sync working on the sweep; says who holds it."""
        return self.root / "sweep.lock"

    def staging(self) -> Path:
        """Where a new sweep's folder is made, locked, before its rename to ``root``."""
        return self.root.with_name(f".{self.name}.new-{socket.gethostname()}-{os.getpid()}")

    @property
    def results(self) -> Path:
        """One row per trial, best first."""
        return self.root / "results.csv"

    def best(self, label: str = "best") -> Path:
        """The chosen model's checkpoint (``best``), or the best of one loss (``softmax``)."""
        return self.root / ("best_model" if label == "best" else f"best_model_{label}")

    def refit(self, trial_id: str) -> Path:
        """The refit of trial ``trial_id`` on train+validation: its checkpoint, written each
        epoch, so that a refit killed mid-way goes on from there on resume."""
        return self.root / "refit" / trial_id

    @property
    def report(self) -> Path:
        """The HTML report (``sweep report``): index.html and its figures."""
        return self.root / "report"

    @property
    def ray(self) -> Path:
        """Ray Tune's experiment folder: tuner state, trial folders, checkpoints."""
        return self.root / "ray"

    @property
    def search_journal(self) -> Path:
        """tpe and bohb: the Optuna study of the fused engine's sampler (sweeps.search.tpe): a
        resumed sweep's search goes on from it."""
        return self.root / "search.journal"

    @property
    def prepared(self) -> Path:
        """The prepared data, one copy for the node (trainers.prepared) of the trials' and one
        of the refits': derived, so a deleted one is written again by the next reader."""
        return self.root / "data"

    @property
    def tuner_state(self) -> Path:
        """Present once Ray has saved the experiment: a sweep that can be resumed."""
        return self.ray / "tuner.pkl"

    @property
    def job_script(self) -> Path:
        """The sbatch script written by ``sweep submit``."""
        return self.root / "job.sbatch"

    @property
    def head_address(self) -> Path:
        """Workers mode: the Ray head's address, published for the worker jobs."""
        return self.root / "ray-head-address"

    @property
    def ray_token(self) -> Path:
        """A SLURM job's Ray token (mode 0600, new at each start of the head job): its nodes
        and driver read it; a process without it cannot join the job's Ray."""
        return self.root / "ray-auth-token"


def unwritable(folder: Path) -> str | None:
    """Why ``folder`` cannot be made (or written in), or None. Nothing is left behind: it
    tries a temporary folder in the nearest existing ancestor, since permission bits mislead
    (root passes every os.access check, /proc refuses anyway)."""
    ancestor = existing_ancestor(Path(folder).resolve())
    if not ancestor.is_dir():
        return f"{ancestor} is a file, not a folder"
    try:
        os.rmdir(tempfile.mkdtemp(dir=ancestor, prefix=".sweeps-probe-"))
    except OSError as err:
        return f"cannot write in {ancestor} ({err.strerror})"
    return None


def existing_ancestor(path: Path) -> Path:
    """``path`` where it exists, else its nearest ancestor that does (``path`` where none does:
    a relative one under a deleted working directory)."""
    return next((p for p in (path, *path.parents) if p.exists()), path)
