"""Every MLflow call of the report and of ``sweep status``: reading a sweep back, and filing the
report on its parent run.

The sweep driver writes MLflow (sweeps.tracking.writer); this module only reads what it wrote,
plus one write after the fact: the report's files as artifacts of the parent run. It works from any
machine that reaches the store (a login node while the sweep runs as a SLURM job). Its reads of
a run by id and its paginated searches are the writer's too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

from mlflow.entities import Experiment, Run
from mlflow.exceptions import MlflowException
from mlflow.store.entities import PagedList
from mlflow.tracking import MlflowClient
from sqlalchemy.exc import SQLAlchemyError

from sweeps.spec.sweep import METRICS, Search
from sweeps.tracking import tags as tag
from sweeps.tracking import ui
from sweeps.tracking.store import unanswered, why_failed
from sweeps.tracking.uri import sqlite_file

DEFAULT_UI = "http://127.0.0.1:5000"  # where `sweep ui` serves a local store
PAGE = 1000  # results per search page
OLDEST_FIRST = ["attributes.start_time ASC"]  # a trial's or a sweep's oldest run is its own
REPORT = "report"  # the report's folder among the parent run's artifacts
T = TypeVar("T")


@dataclass
class RunInfo:
    """What reports need of one MLflow run."""

    run_id: str
    status: str  # MLflow's: RUNNING, FINISHED, FAILED, KILLED
    start_ms: int
    end_ms: int | None
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # the latest value of each

    @classmethod
    def of(cls, run: Run) -> RunInfo:
        info, data = run.info, run.data
        return cls(
            info.run_id,
            info.status,
            info.start_time,
            info.end_time,
            dict(data.tags),
            dict(data.params),
            dict(data.metrics),
        )


@dataclass
class SweepRuns:
    """A sweep as MLflow holds it: the parent run and one child run per trial."""

    tracking_uri: str
    experiment_id: str
    parent: RunInfo
    trials: dict[str, RunInfo]  # trial id -> its run


def read_sweep(
    tracking_uri: str,
    experiment: str,
    parent_id: str | None = None,
    children: bool = True,
    sweep_id: str | None = None,
) -> SweepRuns | None:
    """The sweep's parent run and, with ``children``, its child runs; None when the store has
    no such experiment or parent run. The parent: ``parent_id``'s (the state file's), else the
    one tagged with ``sweep_id`` (the record's: a store ``sweep sync`` copied the sweep into
    has other run ids), else, for a folder without a record, the experiment's latest."""
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    parent = get_run(client, parent_id) if parent_id else None
    if parent is not None and sweep_id and parent.data.tags.get(tag.SWEEP_ID, sweep_id) != sweep_id:
        parent = None  # the state names another sweep's run
    if parent is None and sweep_id:
        parent = sweep_parent(client, found.experiment_id, sweep_id)
    elif parent is None:
        parent = latest_parent(client, [found.experiment_id])
    if parent is None:
        return None
    query = tag.children_of(parent.info.run_id)
    found_runs = runs_where(client, [found.experiment_id], query) if children else []
    children = [RunInfo.of(r) for r in found_runs]
    trials = {  # a refit (sweep.role=refit) is no trial of the search
        r.tags.get(tag.TRIAL_ID, r.run_id): r for r in children if r.tags.get(tag.ROLE) != tag.REFIT
    }
    return SweepRuns(tracking_uri, found.experiment_id, RunInfo.of(parent), trials)


def read_runs(
    uri: str,
    experiment: str,
    parent_id: str | None,
    children: bool = True,
    sweep_id: str | None = None,
) -> tuple[str | None, SweepRuns | None]:
    """(why the store did not answer, None) or (None, ``read_sweep``'s runs, if any), for the
    views: the sweep's folder is the source of truth, so a store that cannot be read is said in
    a few words and the view goes on without it. A server is asked once within seconds first
    (sweeps.tracking.store), not retried for minutes. A SQLite file that is not there holds no
    runs (reading it would make it)."""
    db = sqlite_file(uri)
    if db is not None and not db.exists():
        return None, None
    if db is None and (why := unanswered(uri)):
        return f"no MLflow server answers at {uri} ({why})", None
    try:
        return None, read_sweep(uri, experiment, parent_id, children, sweep_id)
    except MlflowException as err:  # a server that stopped meanwhile, a store it cannot read
        return f"MLflow {uri}: {why_failed(err)}", None
    except SQLAlchemyError as err:  # a SQLite file that is no MLflow store, or is locked
        return f"MLflow {uri}: {str(err.orig or err).strip() or type(err).__name__}", None


def sweep_parent(client: MlflowClient, experiment_id: str, sweep_id: str) -> Run | None:
    """The parent run of the sweep whose record has id ``sweep_id`` (its first, if two)."""
    query = f"{tag.equals(tag.SWEEP_ID, sweep_id)} and {tag.equals(tag.ROLE, tag.PARENT)}"
    found = client.search_runs([experiment_id], query, max_results=1, order_by=OLDEST_FIRST)
    return found[0] if found else None


def latest_parent(client: MlflowClient, experiment_ids: list[str]) -> Run | None:
    """The most recently started sweep (parent run) in these experiments."""
    if not experiment_ids:
        return None
    runs = client.search_runs(
        experiment_ids,
        tag.equals(tag.ROLE, tag.PARENT),
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    return runs[0] if runs else None


def log_report(tracking_uri: str, run_id: str, folder: Path) -> None:
    """File the report's page and figures on the sweep's parent run (under ``report/``)."""
    MlflowClient(tracking_uri).log_artifacts(run_id, str(folder), REPORT)


def has_report(tracking_uri: str, run_id: str) -> bool:
    """Whether the sweep's parent run has a report filed (``log_report``)."""
    return REPORT in {a.path for a in MlflowClient(tracking_uri).list_artifacts(run_id)}


def param_value(text: str | None) -> Any:
    """An MLflow param (a string) back to the int, float or string that was logged."""
    if text is None:
        return math.nan
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


# ---------------------------------------------------------------- links into the MLflow UI
def ui_base(tracking_uri: str) -> str:
    """The UI's address: a tracking server serves its own UI; a local store, `sweep ui`'s."""
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/")
    return DEFAULT_UI


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    """One run's page in the MLflow UI."""
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def trials_page_url(
    base: str, experiment_id: str, parent_id: str, metric: str, ascending: bool
) -> str:
    """The experiment's training-runs page showing this sweep's trials, best first, as charts.

    MLflow 3 nests child runs under a collapsed parent unless the runs are filtered or sorted
    (other than by date); a filter on the parent id lists the trials flat, and the chart view
    draws the curves of the first ten at once. ``workflowType``: the training pages, not the
    GenAI ones (sweeps.tracking.ui). A sweep's own view (``view_url``) shows more.
    """
    query = {
        "searchFilter": tag.children_of(parent_id),
        "orderByKey": f"metrics.`{metric}`",
        "orderByAsc": str(ascending).lower(),
        "compareRunsMode": "CHART",
        "workflowType": "machine_learning",
    }
    return f"{base}/#/experiments/{experiment_id}/runs?{urlencode(query)}"


def latest_trials_page(
    tracking_uri: str,
    experiment: str | None = None,
    base: str | None = None,
    charts: bool = False,
) -> str | None:
    """For `sweep ui`: the latest sweep (named ``experiment``, else the latest of all) in
    its view (sweeps.tracking.ui): its table of trials, or (``charts``) its charts; a store
    that lacks the view, its trials page, best first by the sweep's metric. None when the
    store holds no sweep."""
    client = MlflowClient(tracking_uri)
    if experiment is None:
        ids = [e.experiment_id for e in all_experiments(client)]
    else:
        found = client.get_experiment_by_name(experiment)
        ids = [found.experiment_id] if found else []
    parent = latest_parent(client, ids)
    if parent is None:
        return None
    experiment_id, key = parent.info.experiment_id, ui.view_key(parent.info.run_id)
    base = base or ui_base(tracking_uri)
    if tag.VIEW + key in client.get_experiment(experiment_id).tags:
        return ui.view_url(base, experiment_id, key, charts)
    metric = parent.data.params.get("search.metric", Search.metric)
    ascending = METRICS.get(metric) == "min"
    return trials_page_url(base, experiment_id, parent.info.run_id, metric, ascending)


# ---------------------------------------------------------------- reads the writer uses too
def get_run(client: MlflowClient, run_id: str) -> Run | None:
    """The run, or None when the store has no such run; any other error (a server that does
    not answer) is raised, not taken for "no such run"."""
    try:
        return client.get_run(run_id)
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def pages(search: Callable[[str | None], PagedList[T]]) -> Iterator[T]:
    """Every result of a paginated MLflow search; ``search(token)`` fetches one page."""
    token = None
    while True:
        page = search(token)
        yield from page
        token = page.token
        if not token:
            return


def runs_where(
    client: MlflowClient, experiment_ids: list[str], query: str, order_by: list[str] | None = None
) -> Iterator[Run]:
    """Every run of these experiments that matches the filter ``query``, page by page."""
    return pages(
        lambda token: client.search_runs(
            experiment_ids, query, max_results=PAGE, order_by=order_by, page_token=token
        )
    )


def all_experiments(client: MlflowClient) -> list[Experiment]:
    """Every active experiment of the store."""
    return list(pages(lambda token: client.search_experiments(max_results=PAGE, page_token=token)))
