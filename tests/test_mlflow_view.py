"""The sweep's view in the MLflow UI: the experiment tags the tracker writes (against a real
SQLite store), and, marked slow, the pages `sweep ui` opens on in a real headless Chromium."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from sweeps.tracking import tags as tag
from sweeps.tracking import ui
from sweeps.tracking.reader import latest_trials_page
from sweeps.tracking.writer import SweepTracker

sys.path.insert(0, str(Path(__file__).resolve().parent))
from browser import Chromium  # noqa: E402
from mlflow_server import free_port, serving  # noqa: E402
from sweeping import make_data  # noqa: E402

SPACE = {"train.lr": {"loguniform": [1e-4, 1.0]}, "train.lambda": {"loguniform": [1e-5, 1e-1]}}
PARAMS = {"search.metric": "val_acc", "space": json.dumps(SPACE)}
LRS = [1e-4, 1e-3, 1e-2, 0.1, 0.3, 1.0]


def view_of(client: MlflowClient, experiment_id: str, parent: str) -> dict:
    tags = client.get_experiment(experiment_id).tags
    return json.loads(tags[tag.VIEW + ui.view_key(parent)])


def record_trials(tracker: SweepTracker, n: int) -> None:
    """``n`` ended trials whose val_acc grows with the learning rate; lambda does not matter."""
    for i in range(n):
        lr, lam = LRS[i % len(LRS)], [1e-5, 1e-3][i // len(LRS) % 2]
        config = {"train.lr": lr, "train.lambda": lam}
        acc = 0.5 + 0.05 * LRS.index(lr)
        tracker.write_trial(f"t{i}", config=config, results=[{"epoch": 1, "val_acc": acc}])
        tracker.trial_ended(f"t{i}", "completed", 1)


def test_the_view_lists_the_trials_and_draws_the_metric_against_the_key_that_matters(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = SweepTracker(uri, "exp", tmp_path / "state.json")
    parent = tracker.start_sweep(PARAMS, "sweep-1")
    client = MlflowClient(uri)
    experiment = client.get_experiment(tracker.experiment_id)
    assert experiment.tags[tag.KIND] == ui.TRAINING_KIND

    started = view_of(client, tracker.experiment_id, parent)  # written as the sweep starts
    assert started["searchFilter"] == f"tags.`mlflow.parentRunId` = '{parent}'"
    assert started["orderByKey"] == "metrics.`val_acc`" and started["orderByAsc"] is False
    assert started["selectedColumns"] == [
        "params.`train.lr`",
        "params.`train.lambda`",
        "metrics.`val_acc`",
        "tags.`sweep.status`",
    ]
    assert started["runsHiddenMode"] == "SHOW_ALL"
    parallel, scatter = started["compareRunCharts"]
    assert parallel["type"] == "PARALLEL" and parallel["showAllRuns"] is True
    assert parallel["selectedParams"] == ["train.lr", "train.lambda"]
    assert parallel["selectedMetrics"] == ["val_acc"]
    assert scatter["type"] == "SCATTER" and scatter["yaxis"] == {"key": "val_acc", "type": "METRIC"}
    assert scatter["xaxis"]["key"] == "train.lr"  # no trials yet: the first key

    record_trials(tracker, 12)
    tracker.end_sweep("completed")
    ended = view_of(client, tracker.experiment_id, parent)
    assert ended["compareRunCharts"][1]["xaxis"] == {"key": "train.lr", "type": "PARAM"}

    note = client.get_run(parent).data.tags[tag.NOTE]
    links = re.findall(r"\]\((#/experiments/[^)]+)\)", note)
    assert links == [
        ui.view_link(tracker.experiment_id, parent),
        ui.view_link(tracker.experiment_id, parent, charts=True),
    ]
    page = latest_trials_page(uri, base="http://h:1")
    assert page == f"http://h:1/{links[0]}"
    assert "viewStateShareKey=" + parent in page and "workflowType=machine_learning" in page
    assert latest_trials_page(uri, base="http://h:1", charts=True) == f"http://h:1/{links[1]}"


def test_the_scatter_follows_the_most_important_key_and_a_user_note_stays(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    space = {"train.lambda": SPACE["train.lambda"], "train.lr": SPACE["train.lr"]}
    tracker = SweepTracker(uri, "exp")
    parent = tracker.start_sweep({**PARAMS, "space": json.dumps(space)}, "sweep-1")
    client = MlflowClient(uri)
    assert view_of(client, tracker.experiment_id, parent)["compareRunCharts"][1]["xaxis"][
        "key"
    ] == ("train.lambda")  # the first key, before any trial
    client.set_tag(parent, tag.NOTE, "my own words")
    record_trials(tracker, 12)
    tracker.end_sweep("completed")
    assert view_of(client, tracker.experiment_id, parent)["compareRunCharts"][1]["xaxis"][
        "key"
    ] == ("train.lr")  # 12 trials: the one that explains val_acc
    assert client.get_run(parent).data.tags[tag.NOTE] == "my own words"


@pytest.mark.parametrize(("metric", "ascending"), [("val_acc", "false"), ("val_loss", "true")])
def test_a_store_without_the_view_gets_the_filtered_trials_page(tmp_path, metric, ascending):
    """Best first by the sweep's own metric: a val_loss sweep's lowest loss first."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = SweepTracker(uri, "exp")
    parent = tracker.start_sweep(PARAMS | {"search.metric": metric}, "sweep-1")
    client = MlflowClient(uri)
    client.delete_experiment_tag(tracker.experiment_id, tag.VIEW + parent)
    page = latest_trials_page(uri, base="http://h:1")
    assert page is not None and "viewStateShareKey" not in page
    assert "workflowType=machine_learning" in page
    assert "searchFilter=tags.%60mlflow.parentRunId%60" in page
    assert f"orderByKey=metrics.%60{metric}%60" in page and f"orderByAsc={ascending}" in page


# ---------------------------------------------------------------- in a real browser
GRID = {"train.lambda": {"grid": [1e-5, 1e-3]}, "train.lr": {"grid": LRS}}


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> Path:
    """A finished real sweep of 12 trials (a grid: lr matters, lambda hardly; lambda comes
    first, so that the chart of the key that matters is not the first key by default), copied
    by `sweep sync` into a store of its own (sync.db)."""
    folder = tmp_path_factory.mktemp("view")
    make_data(folder)
    doc = {
        "name": "view",
        "data": {"source": "npz", "path": str(folder / "good.npz")},
        "train": {"epochs": 4, "batch_size": 32, "optimizer": "sgd", "schedule": "constant"},
        "search": {"type": "grid", "refit": False},
        "space": GRID,
    }
    (folder / "view.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    sweep = str(Path(sys.executable).with_name("sweep"))
    for cmd in ([sweep, "run", "view.yaml"], [sweep, "sync", "view", "--tracking-uri", "sync.db"]):
        done = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return folder


def sweep_ui(folder: Path, db: str, port: int) -> list[str]:
    """The `sweep ui` command serving the store ``folder/db`` on ``port``."""
    sweep = str(Path(sys.executable).with_name("sweep"))
    return [sweep, "ui", "--port", str(port), "--tracking-uri", f"sqlite:///{folder / db}"]


def wait_for(browser: Chromium, expression: str, timeout: float = 90) -> object:
    """The expression's value once truthy (polled), else the last value after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = browser.evaluate(expression)
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.5)


HEADERS = "Array.from(document.querySelectorAll('[role=columnheader]')).map(h => h.innerText)"
SIDEBAR = "(document.querySelector('aside, nav') || document.body).innerText"
AXES = "Array.from(document.querySelectorAll('.parcoords text.label')).map(t => t.textContent)"
VIEW_LINKS = "Array.from(document.links).map(a => a.href).filter(h => h.includes('viewState'))"
TITLES = "Array.from(document.querySelectorAll('h4')).map(h => h.innerText)"


def shot(browser: Chromium, path: Path) -> None:
    """The viewport as PNG (a whole-page capture resizes the page, and its charts redraw)."""
    data = browser.call("Page.captureScreenshot", page=True, format="png")["data"]
    path.write_bytes(base64.b64decode(data))


@pytest.mark.slow
@pytest.mark.parametrize("db", ["mlflow.db", "sync.db"])  # the sweep's store, and a synced one
def test_sweep_ui_opens_the_sweeps_view_in_a_real_browser(swept, db, tmp_path):
    port = free_port()
    with serving(sweep_ui(swept, db, port), port, swept) as base:
        log = (swept / f"server-{port}.log").read_text()  # what `sweep ui` printed
        trials = re.search(r"trials, best first: (\S+)", log).group(1)
        charts = re.search(r"its charts: (\S+)", log).group(1)
        assert trials.startswith(base) and charts == trials + "&compareRunsMode=CHART"
        experiment_id = re.search(r"#/experiments/(\d+)/", trials).group(1)
        with Chromium(1600, 1000) as browser:
            # without the view's address, this browser opens the experiment on GenAI pages
            browser.open(f"{base}/#/experiments/{experiment_id}")
            assert "Judges" in wait_for(browser, f"{SIDEBAR}.includes('Judges') && {SIDEBAR}")

            browser.open(trials)
            wanted = ["val_acc", "train.lr", "train.lambda", "sweep.status"]
            headers = wait_for(
                browser, f"{HEADERS}.join('|').includes('sweep.status') && {HEADERS}"
            )
            assert headers and all(any(w in h for h in headers) for w in wanted), headers
            names = browser.evaluate("document.body.innerText")
            assert "12 matching runs" in names  # the trials, not the parent
            sidebar = browser.evaluate(SIDEBAR)
            assert "Model registry" in sidebar and "Judges" not in sidebar
            assert "Prompts" not in sidebar
            shot(browser, tmp_path / "trials.png")

            browser.open(charts)
            axes = wait_for(browser, f"{AXES}.length >= 3 && {AXES}")
            assert axes == ["train.lambda", "train.lr", "val_acc"]
            titles = browser.evaluate(TITLES)
            assert "Parallel Coordinates" in titles and "train.lr vs. val_acc" in titles
            assert "Judges" not in browser.evaluate(SIDEBAR)
            shot(browser, tmp_path / "charts.png")

            # the parent run's description links to both
            parent = re.search(r"viewStateShareKey=(\w+)", trials).group(1)
            browser.open(f"{base}/#/experiments/{experiment_id}/runs/{parent}")
            links = wait_for(browser, f"{VIEW_LINKS}.length == 2 && {VIEW_LINKS}")
            assert links == [trials, charts]


def test_the_views_trials_from_the_record_are_those_its_runs_give(tmp_path):
    """end_sweep draws the view from the record (no read of every run): the same table."""
    from sweeps.record.history import SweepHistory
    from sweeps.tracking.writer import trials_table

    tracker = SweepTracker(f"sqlite:///{tmp_path}/mlflow.db", "exp")
    tracker.start_sweep(PARAMS, "sweep-1")
    history = SweepHistory.new("exp")
    ends = ["completed", "early_stopped", "diverged", None]
    for i in range(12):
        config = {"train.lr": LRS[i % len(LRS)], "train.lambda": 1e-5 * (i + 1), "x": i}
        results = [{"epoch": e, "val_acc": 0.5 + i / 100 + e / 1000} for e in (1, 2)]
        if ends[i % 4] == "diverged":
            results.append({"epoch": 3, "diverged": True})
        history.apply({"event": "trial_started", "trial": f"t{i}", "params": {}, "config": config})
        tracker.write_trial(f"t{i}", config=config, results=results)
        for r in results:
            history.apply({"event": "result", "trial": f"t{i}", "metrics": r})
        if ends[i % 4]:
            end = {"outcome": ends[i % 4], "epochs_run": len(results), "error": None}
            history.apply({"event": "trial_ended", "trial": f"t{i}", **end})
            tracker.write_trial(f"t{i}", end=end)
    keys = list(SPACE)
    from_runs = tracker._trials_table(keys, "val_acc")
    assert len(from_runs) == 12 and from_runs["status"].nunique() == 4
    assert trials_table(history, keys, "val_acc").equals(from_runs)
