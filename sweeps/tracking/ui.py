"""The sweep's page in the MLflow UI: its trials with the searched hyperparameters and the
metric as columns, best first; a parallel-coordinates chart of every trial, hyperparameters to
the metric; the metric against the hyperparameter that matters most.

MLflow's UI keeps a whole view (the runs' filter and order, columns, charts) as an experiment
tag ``mlflow.sharedViewState.<key>`` holding the view as JSON, and opens it from an address with
``viewStateShareKey=<key>`` (``useSharedExperimentViewState.ts``; field names as in
``ExperimentPageUIState.tsx`` and ``runs-charts.types.ts``). MLflow 3.17 reads this plain JSON
as earlier versions do (it tries its named "saved view" envelope first). Whether the UI shows
its training or its GenAI pages, MLflow 3.17 takes from the address's ``workflowType``, else
from what the browser last chose (GenAI at first); other versions read the experiment's
``mlflow.experimentKind`` tag. The sweep's experiment has the tag, and the address says
``workflowType=machine_learning``. One view per sweep, keyed by its parent run's id.

This module only builds the view; ``sweeps.tracking.writer`` writes it and ``sweep ui`` prints its
address.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

import pandas as pd

from sweeps.spec.space import Space
from sweeps.spec.sweep import METRICS
from sweeps.tracking import tags as tag

TRAINING_KIND = "custom_model_development"  # training (MLflow 3.17: the address decides)
SECTION = "sweep"  # uuid of the charts' section made for the sweep
CHART_TRIALS = 1000  # at most this many trials choose the scatter's hyperparameter


def view_key(parent_id: str) -> str:
    """The view's key: the sweep's parent run id (one view per sweep in an experiment)."""
    return parent_id


def view_url(base: str, experiment_id: str, key: str, charts: bool = False) -> str:
    """The address that opens the view on MLflow's training-runs pages: its table of trials,
    or (``charts``) its charts."""
    return f"{base}/{view_link(experiment_id, key, charts)}"


def view_link(experiment_id: str, key: str, charts: bool = False) -> str:
    """The view's address within the UI (a link from one of its pages)."""
    query = {"viewStateShareKey": key, "workflowType": "machine_learning"}
    if charts:
        query["compareRunsMode"] = "CHART"
    return f"#/experiments/{experiment_id}/runs?{urlencode(query)}"


def view_state(parent_id: str, keys: list[str], metric: str, x_key: str | None) -> dict[str, Any]:
    """The view of a sweep's trials (the children of ``parent_id``): columns, order, charts.
    ``keys``: the searched hyperparameters; ``x_key``: the one the metric is drawn against
    (None: no such chart)."""
    charts: list[dict[str, Any]] = []
    if keys:
        charts.append(
            _chart("PARALLEL", "parallel", selectedParams=keys, selectedMetrics=[metric])
            | {"showAllRuns": True}
        )
    if x_key is not None:
        charts.append(
            _chart(
                "SCATTER",
                "scatter",
                xaxis={"key": x_key, "type": "PARAM"},
                yaxis={"key": metric, "type": "METRIC"},
            )
        )
    return {
        "searchFilter": tag.children_of(parent_id),
        "orderByKey": f"metrics.`{metric}`",
        "orderByAsc": METRICS.get(metric) == "min",  # best first
        "selectedColumns": [
            *(f"params.`{k}`" for k in keys),
            f"metrics.`{metric}`",
            tag.column(tag.STATUS),
        ],
        "runsHiddenMode": "SHOW_ALL",  # every trial in the charts, not the first ten
        "compareRunCharts": charts,
        # The UI files every other metric's chart under "Model metrics" and "System metrics"
        # and expects those two sections last; they start folded, the sweep's charts first.
        "compareRunSections": [
            _section(SECTION, "Hyperparameters", True, columns=2, cardHeight=420),
            _section("model-metrics", "Model metrics", display=False),
            _section("system-metrics", "System metrics", display=False),
        ],
        "isAccordionReordered": False,
        "viewMaximized": False,
        "runListHidden": False,
        "groupBy": None,
        "groupsExpanded": {},
        "useGroupedValuesInCharts": True,
        "hideEmptyCharts": True,
        "columnOrder": [],
        "columnWidths": {},
        "runsExpanded": {},
        "runsPinned": [],
        "runsHidden": [],
        "runsVisibilityMap": {},
        "autoRefreshEnabled": True,
    }


def _chart(kind: str, uuid: str, **fields: Any) -> dict[str, Any]:
    card = {"uuid": uuid, "type": kind, "runsCountToCompare": 100, "metricSectionId": SECTION}
    return card | {"deleted": False, "isGenerated": False} | fields


def _section(uuid: str, name: str, display: bool, **fields: Any) -> dict[str, Any]:
    return {"uuid": uuid, "name": name, "display": display, "isReordered": False} | fields


def encode(state: dict[str, Any]) -> str:
    """The tag's value."""
    return json.dumps(state, separators=(",", ":"))


def chart_key(table: pd.DataFrame, keys: list[str], space: Space, metric: str) -> str:
    """The hyperparameter the metric is drawn against: the one that explains most of its
    variance (sweeps.view.importance, as the report computes it), else the first searched one.
    Of a large sweep, ``CHART_TRIALS`` trials drawn at random are enough to tell it (a forest
    on 10,000 takes tens of seconds)."""
    from sweeps.view.figures import is_log_scale
    from sweeps.view.importance import Importance, importance

    if len(table) > CHART_TRIALS:
        table = table.sample(CHART_TRIALS, random_state=0)

    varied = [k for k in keys if k in table and table[k].nunique() > 1]
    logs = [k for k in varied if is_log_scale(table[k], space[k].is_log)]
    found = importance(table, varied, logs, metric) if varied else None
    if isinstance(found, Importance):
        return max(zip(found.mean, found.keys, strict=True))[1]
    return (varied or keys)[0]
