"""Every MLflow call of the project: one parent run per sweep, one nested child run per trial.

Used only from the sweep driver process (one writer, so a SQLite store is safe). It speaks to
MLflow through ``MlflowClient`` with explicit run ids, never the fluent global-state API, and
keeps those ids in a JSON state file so that a resumed sweep continues the same runs.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from sweeps.layout import DEFAULT_DB
from trainers.metrics import CURVES

TRIAL_STATUS = {  # outcome -> MLflow run status
    "completed": "FINISHED",
    "early_stopped": "KILLED",
    "diverged": "FAILED",
    "error": "FAILED",
    "interrupted": "KILLED",
}
EXPERIMENT_KIND = "mlflow.experimentKind"
SWEEP_STATUS = {"completed": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
BATCH = 100  # MLflow: at most 100 params or tags per log_batch
PARAM_MAX = 6000  # MLflow: param values up to 6000 characters
TAG_MAX = 8000  # MLflow: tag values up to 8000 characters
ERROR_MAX = 5000  # characters of an error's full text kept in the sweep.error tag
NOTHING = -1  # "no epoch logged yet"


def resolve_tracking_uri(configured: str | None, workdir: Path) -> str:
    """The sweep config's ``mlflow.tracking_uri``, else $MLFLOW_TRACKING_URI, else a SQLite
    database in ``workdir``. Relative paths in the configured URI are made absolute against
    ``workdir`` (the environment's against the current directory): trials and the UI run
    elsewhere. A bare path ending in .db/.sqlite means a SQLite database."""
    if configured:
        return _absolute(configured, workdir)
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return _absolute(os.environ["MLFLOW_TRACKING_URI"], Path.cwd())
    return f"sqlite:///{workdir.resolve()}/{DEFAULT_DB}"


def _absolute(uri: str, base: Path) -> str:
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///") :]
        return uri if path.startswith("/") else f"sqlite:///{base.resolve() / path}"
    if "://" in uri or uri.startswith(("file:", "databricks")):
        return uri  # a server, a database or an explicit file URI: leave it as given
    path = (base / Path(uri).expanduser()).resolve()
    return f"sqlite:///{path}" if path.suffix in (".db", ".sqlite", ".sqlite3") else str(path)


class SweepTracker:
    """All MLflow writes of one sweep: one parent run, one nested child run per trial.

    Run ids persist in ``state_file`` (JSON ``{"experiment_id", "parent", "trials":
    {trial_id: run_id}}``, written atomically) so a resumed sweep reopens its runs.
    """

    def __init__(self, tracking_uri: str, experiment: str, state_file: Path) -> None:
        # over HTTP, set_terminated prints two "View run" lines per run to stdout
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        self.client = MlflowClient(tracking_uri)
        self.experiment = experiment
        self.state_file = Path(state_file)
        found = self.client.get_experiment_by_name(experiment)
        if found is not None:
            self.experiment_id = found.experiment_id
        else:  # a local SQLite store keeps artifacts beside its database, not in the cwd
            location = None
            if tracking_uri.startswith("sqlite:///"):
                db_dir = Path(tracking_uri[len("sqlite:///") :].split("?")[0]).resolve().parent
                location = (db_dir / "mlartifacts" / re.sub(r"[^\w.-]", "_", experiment)).as_uri()
            self.experiment_id = self.client.create_experiment(experiment, location)
            # The MLflow 3 UI opens an experiment on its GenAI pages unless told otherwise.
            self.client.set_experiment_tag(
                self.experiment_id, EXPERIMENT_KIND, "custom_model_development"
            )
        state = json.loads(self.state_file.read_text()) if self.state_file.exists() else {}
        self.parent: str | None = state.get("parent")
        self.trials: dict[str, str] = dict(state.get("trials", {}))
        self.last_epoch: dict[str, int] = {}  # run id -> last epoch logged

    # ------------------------------------------------------------------ the sweep
    def start_sweep(self, params: dict[str, str | int | float]) -> str:
        """Create the parent run and log ``params``, or reopen the parent of a resumed sweep."""
        if self.parent and self._exists(self.parent):
            self.client.update_run(self.parent, status="RUNNING")
            self._log_tags(self.parent, {"sweep.status": "running"})
        else:  # first start, or the state names a run this store does not have
            tags = {"sweep.role": "parent", "sweep.status": "running"}
            run = self.client.create_run(self.experiment_id, tags=tags, run_name=self.experiment)
            self.parent = run.info.run_id
            self.trials = {}
            self._save()
        self._log_new_params(self.parent, params)
        return self.parent

    def end_sweep(
        self, status: str, best: dict[str, Any] | None = None, artifact_dir: Path | None = None
    ) -> None:
        """Record the best trial on the parent, end every child still RUNNING (KILLED,
        sweep.status=interrupted), then end the parent: completed -> FINISHED,
        failed -> FAILED, interrupted -> KILLED."""
        parent = self._parent()
        if best is not None:
            self.client.log_dict(parent, best, "best_config.json")
            tags = {"best.trial_id": best.get("trial_id", "")}
            tags |= {f"best.{k}": v for k, v in best.get("config", {}).items()}
            self._log_tags(parent, tags)
            now = _now()
            metrics = [
                Metric(f"best_{k}", float(v), now, 0)
                for k, v in best.get("metrics", {}).items()
                if isinstance(v, int | float) and not isinstance(v, bool)
            ]
            for i in range(0, len(metrics), BATCH):
                self.client.log_batch(parent, metrics=metrics[i : i + BATCH])
        if artifact_dir is not None:
            self.client.log_artifacts(parent, str(artifact_dir), "best_model")
        by_run = {run_id: trial for trial, run_id in self.trials.items()}
        for run_id in self.open_runs():
            if run_id != parent:
                trial = by_run.get(run_id)
                if trial is None:  # a child made before a crash, missing from the state
                    trial = self.client.get_run(run_id).data.tags.get("sweep.trial_id", run_id)
                    self.trials[trial] = run_id
                self.trial_ended(trial, "interrupted", max(self._last(run_id), 0))
        self._log_tags(parent, {"sweep.status": status})
        self.client.set_terminated(parent, SWEEP_STATUS[status])

    def open_runs(self) -> list[str]:
        """Ids of this sweep's runs (parent and children) whose status is RUNNING."""
        if not self.parent:
            return []
        found = [self.parent] if self.client.get_run(self.parent).info.status == "RUNNING" else []
        query = f"tags.`mlflow.parentRunId` = '{self.parent}' and attributes.status = 'RUNNING'"
        token = None
        while True:
            page = self.client.search_runs([self.experiment_id], query, page_token=token)
            found += [run.info.run_id for run in page]
            token = page.token
            if not token:
                return found

    # ------------------------------------------------------------------ the trials
    def trial_started(self, trial_id: str, config: dict[str, Any]) -> None:
        """Create the trial's child run with its config as params, or reopen it on resume."""
        run_id = self.trials.get(trial_id)
        if run_id is not None and self._exists(run_id):
            self.client.update_run(run_id, status="RUNNING")
            self._log_tags(run_id, {"sweep.status": "running"})
            self.last_epoch[run_id] = self._read_last_epoch(run_id)
        else:
            tags = {
                "mlflow.parentRunId": self._parent(),
                "sweep.trial_id": trial_id,
                "sweep.status": "running",
            }
            run = self.client.create_run(self.experiment_id, tags=tags, run_name=trial_id)
            run_id = self.trials[trial_id] = run.info.run_id
            self.last_epoch[run_id] = NOTHING
            self._save()
        self._log_new_params(run_id, config)

    def trial_result(self, trial_id: str, metrics: dict[str, Any]) -> None:
        """Log one epoch's curves at step = epoch; replayed or diverged epochs are skipped."""
        run_id = self._child(trial_id)
        if metrics.get("diverged"):  # it repeats the last finite values: no new point
            self._log_tags(run_id, {"sweep.diverged": "true"})
            return
        epoch = int(metrics["epoch"])
        if epoch <= self._last(run_id):
            return
        now = _now()
        points = [
            Metric(k, float(metrics[k]), now, epoch)
            for k in CURVES
            if isinstance(metrics.get(k), int | float) and not isinstance(metrics[k], bool)
        ]
        self.client.log_batch(run_id, metrics=points)
        self.last_epoch[run_id] = epoch

    def trial_ended(
        self, trial_id: str, outcome: str, epochs_run: int, error: str | None = None
    ) -> None:
        """Tag the outcome and end the child run with the status of TRIAL_STATUS (idempotent)."""
        if outcome not in TRIAL_STATUS:
            raise ValueError(f"outcome must be one of {', '.join(TRIAL_STATUS)}; got {outcome!r}")
        run_id = self._child(trial_id)
        tags = {"sweep.status": outcome, "sweep.epochs_run": str(epochs_run)}
        if outcome == "early_stopped":
            tags["sweep.rung"] = str(epochs_run)
        if error:
            first = error.strip().splitlines()[0] if error.strip() else error
            full = error if len(error) <= ERROR_MAX else "..." + error[-ERROR_MAX:]
            tags["sweep.error"] = first if full.strip() == first else f"{first}\n\n{full}"
        self._log_tags(run_id, tags)
        self.client.set_terminated(run_id, TRIAL_STATUS[outcome])

    # ------------------------------------------------------------------ helpers
    def _parent(self) -> str:
        if not self.parent:
            raise RuntimeError("start_sweep() must be called before logging trials")
        return self.parent

    def _child(self, trial_id: str) -> str:
        if trial_id not in self.trials:
            raise KeyError(f"trial {trial_id} has no run: call trial_started() first")
        return self.trials[trial_id]

    def _exists(self, run_id: str) -> bool:
        try:
            return self.client.get_run(run_id).info.lifecycle_stage == "active"
        except MlflowException as e:  # only "no such run"; a server outage must not fork runs
            if e.error_code == "RESOURCE_DOES_NOT_EXIST":
                return False
            raise

    def _last(self, run_id: str) -> int:
        if run_id not in self.last_epoch:
            self.last_epoch[run_id] = self._read_last_epoch(run_id)
        return self.last_epoch[run_id]

    def _read_last_epoch(self, run_id: str) -> int:
        history = self.client.get_metric_history(run_id, "val_loss")
        return max((m.step for m in history), default=NOTHING)

    def _log_new_params(self, run_id: str, params: dict[str, Any]) -> None:
        """Params are immutable in MLflow: log only keys the run does not have yet."""
        have = self.client.get_run(run_id).data.params
        new = [Param(k, str(v)[:PARAM_MAX]) for k, v in params.items() if k not in have]
        for i in range(0, len(new), BATCH):
            self.client.log_batch(run_id, params=new[i : i + BATCH])

    def _log_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        items = [RunTag(k, str(v)[:TAG_MAX]) for k, v in tags.items()]
        for i in range(0, len(items), BATCH):
            self.client.log_batch(run_id, tags=items[i : i + BATCH])

    def _save(self) -> None:
        state = {"experiment_id": self.experiment_id, "parent": self.parent, "trials": self.trials}
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_name(self.state_file.name + ".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, self.state_file)


def _now() -> int:
    return int(time.time() * 1000)
