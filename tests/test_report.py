"""`sweep report` on real sweeps of each search type, with 3-fold cross-validation (what each
search did, fold by fold, is checked here too), read back as a user would: the figures'
artists (one line or point per trial), the page in a real headless Chromium, the artifacts on
the MLflow parent run; and a 1,000-trial report against the clock."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from matplotlib.collections import LineCollection
from mlflow.tracking import MlflowClient
from PIL import Image
from sklearn.datasets import make_classification

from sweeps.record.naming import format_value, run_name
from sweeps.spec.sweep import sweep_spec
from sweeps.tracking.reader import latest_trials_page, run_url, trials_page_url
from sweeps.view.report import SweepData, find_folder, load, write_report
from sweeps.view.sections import lr_spread, rungs, sections, top_trials
from trainers.metrics import fold_key

sys.path.insert(0, str(Path(__file__).resolve().parent))
from browser import Chromium  # noqa: E402
from sweeping import Hold, output, runs_of, start_sweep  # noqa: E402

SWEEP = str(Path(sys.executable).with_name("sweep"))
FOLDS = 3
BASE = {"epochs": 4, "batch_size": 32, "optimizer": "sgd", "schedule": "constant"}
CONFIGS = {
    "grid": {  # 3 x 2 grid, two rates diverge: the heatmap and the diverged markers
        "search": {"type": "grid"},
        "space": {
            "train.lr": {"grid": [0.001, 0.1, 1.0e30]},
            "train.lambda": {"grid": [1.0e-4, 1.0e-2]},
        },
    },
    "random": {  # asks for half a GPU: a machine without one runs it on the CPU
        "resources": {"cpu": 1, "gpu": 0.5},
        "search": {"type": "random", "num_samples": 6, "seed": 3},
        "space": {
            "train.lr": {"loguniform": [1.0e-3, 1.0]},
            "train.lambda": {"loguniform": [1.0e-5, 1.0e-1]},
            "model.loss": {"choice": ["softmax", "hinge"]},
        },
    },
    "asha": {
        "train": {**BASE, "epochs": 9},
        "search": {"type": "asha", "num_samples": 8, "grace_period": 1, "reduction_factor": 3},
        "space": {
            "train.lr": {"loguniform": [1.0e-4, 10.0]},
            "model.loss": {"choice": ["softmax", "hinge"]},
        },
    },
}


def make_data(folder: Path) -> None:
    X, y = make_classification(
        n_samples=300, n_features=8, n_informative=6, n_classes=3, random_state=0
    )
    np.savez(folder / "good.npz", X=X.astype("float32"), y=y)
    np.savez(folder / "bad.npz", X=X.astype("float32"), y=y + 0.5)  # labels not integers


def run_sweep(
    folder: Path, name: str, sections_: dict, folds: int = 1
) -> subprocess.CompletedProcess:
    data = {"source": "npz", "path": str(folder / "good.npz"), "folds": folds}
    doc = {"name": name, "data": data, "train": BASE} | sections_
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(doc))
    return subprocess.run(
        [SWEEP, "run", f"{name}.yaml"], cwd=folder, capture_output=True, text=True, timeout=900
    )


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("reports")
    make_data(folder)
    return folder


@pytest.fixture(scope="module", params=list(CONFIGS))
def swept(request, workdir):
    """A finished real sweep of one search type, selecting on FOLDS-fold cross-validation, and
    its report (the grid's written again by `sweep report`)."""
    kind = request.param
    done = run_sweep(workdir, kind, CONFIGS[kind], folds=FOLDS)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "final_val_acc_std" in done.stdout  # the terminal's table shows the folds' spread
    page = workdir / "runs" / kind / "report" / "index.html"
    assert f"report: {page}" in done.stdout  # drawn at the end of the sweep
    if kind == "grid":  # and drawn again, on its own, by `sweep report`
        page.unlink()
        made = subprocess.run(
            [SWEEP, "report", kind], cwd=workdir, capture_output=True, text=True, timeout=600
        )
        assert made.returncode == 0, made.stdout + made.stderr
        assert f"report: {page}" in made.stdout and page.exists()
    uri = f"sqlite:///{workdir}/mlflow.db"
    data = load(find_folder(kind, workdir / "runs"), uri)
    return kind, page, data, uri


def figures_of(data: SweepData) -> dict:
    return {shown.stem: shown.figure for sec in sections(data) for shown in sec.figures}


def marks(ax) -> int:
    """Points drawn per trial in a scatter: every collection but the chosen trial's star."""
    return sum(len(c.get_offsets()) for c in ax.collections if c.get_gid() != "chosen")


def segments(ax) -> int:
    return sum(len(c.get_segments()) for c in ax.collections if isinstance(c, LineCollection))


@pytest.mark.slow
def test_every_figure_is_written_and_holds_each_trial(swept):
    kind, page, data, _ = swept
    n = len(data.table)
    figs = figures_of(data)
    expected = {"loss_top", "loss_by_lr", "metric_vs_lr", "parallel", "outcomes"}
    expected |= {"grid": {"metric_vs_lam", "heatmap"}, "random": {"metric_vs_lam"}}.get(kind, set())
    expected |= {"asha_rungs", "asha_curves"} if kind == "asha" else set()
    assert expected <= set(figs), set(figs)
    assert {p.stem for p in page.parent.glob("*.png")} == set(figs)  # each written as a PNG

    for stem in (s for s in figs if s.startswith("metric_vs_")):
        ax = figs[stem].axes[0]
        assert marks(ax) == n  # one point per trial, diverged and failed ones included
        assert ax.get_xscale() == "log" and ax.get_xlabel() and ax.get_ylabel() and ax.get_title()
        assert ax.get_legend() is not None
    assert segments(figs["parallel"].axes[0]) == n  # one polyline per trial

    top = top_trials(data)
    for ax in figs["loss_top"].axes[:2]:
        assert [line.get_gid() for line in ax.get_lines()] == top
        assert ax.get_yscale() == "log" and "epoch" in ax.get_xlabel()
    spread = lr_spread(data)
    panels = [ax for ax in figs["loss_by_lr"].axes if ax.get_visible()]
    assert len(panels) == len(spread) >= 2
    for ax, trial in zip(panels, spread):
        assert [line.get_gid() for line in ax.get_lines()] == [trial, trial]  # train, val
    lrs = data.table.set_index("trial_id").loc[spread, "train.lr"]
    assert list(lrs) == sorted(lrs)  # low to high
    if data.chosen in set(data.table[data.table["status"] != "error"]["trial_id"]):
        assert data.chosen in spread

    if kind == "grid":
        image = figs["heatmap"].axes[0].images[0]
        assert image.get_array().shape == (2, 3)  # lambda x lr
        assert (data.table["status"] == "diverged").sum() == 2
        diverged_cell = [t.get_text() for t in figs["heatmap"].axes[0].texts]
        assert diverged_cell.count("diverged") == 2  # lr=1e30 for both lambdas
    if kind == "asha":
        assert segments(figs["asha_curves"].axes[0]) == n  # each curve ends where it stopped
        stopped = data.table[data.table["status"] == "early_stopped"]
        assert len(stopped) >= 1
        bars = figs["asha_rungs"].axes[0].patches
        assert len(bars) == 2 * len(rungs(data)) == 2 * 3  # rungs 1, 3, 9
        assert bars[0].get_height() == n  # every trial reached the first rung


@pytest.mark.slow
def test_the_curves_drawn_are_the_points_mlflow_holds(swept):
    """The report reads its curves from the sweep folder's record; they are MLflow's points,
    every one (diverged epochs have none in either), for each trial, curve and fold."""
    _, _, data, uri = swept
    client = MlflowClient(uri)
    keys = [k for k in data.curves.columns if k not in ("trial_id", "epoch")]
    assert {"val_acc", "epoch_seconds", fold_key(FOLDS - 1)} <= set(keys)
    drawn = {
        (row.trial_id, int(row.epoch), k, round(float(getattr(row, k)), 9))
        for row in data.curves.itertuples()
        for k in keys
        if not np.isnan(getattr(row, k))
    }
    logged = {
        (trial_id, m.step, k, round(m.value, 9))
        for trial_id, run in data.runs.trials.items()
        for k in keys
        for m in client.get_metric_history(run.run_id, k)
    }
    assert drawn and drawn == logged


@pytest.mark.slow
def test_each_search_type_selects_on_the_mean_of_its_folds(swept):
    """data.folds through grid, random and ASHA: each fold's accuracy is a curve of the trial's
    run; val_acc, which ranked the trial and decided its rungs, is their mean at each epoch."""
    kind, page, data, uri = swept
    folder = page.parent.parent
    table = pd.read_csv(folder / "results.csv")
    ok = table[table["status"].isin(["completed", "early_stopped"])]
    finals = ok[[f"final_{fold_key(i)}" for i in range(FOLDS)]].to_numpy()
    np.testing.assert_allclose(ok["final_val_acc"], finals.mean(axis=1), atol=1e-6)
    np.testing.assert_allclose(ok["final_val_acc_std"], finals.std(axis=1), atol=1e-9)
    client, _, children = runs_of(folder.parent.parent, kind)
    assert len(children) == len(table)
    for trial_id, ran in zip(ok["trial_id"], ok["epochs_run"]):
        run = children[trial_id]
        per_fold = [
            {m.step: m.value for m in client.get_metric_history(run.info.run_id, fold_key(i))}
            for i in range(FOLDS)
        ]
        mean = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_acc")}
        assert all(sorted(fold) == list(range(1, ran + 1)) for fold in per_fold)
        for step, value in mean.items():
            assert value == pytest.approx(np.mean([fold[step] for fold in per_fold]), abs=1e-6)
    if kind == "random":  # num_samples trials, each its own draw
        assert len(table) == 6 and table["train.lr"].nunique() == 6
    if kind == "asha":  # stopped at a rung, with the shorter history and the rung's tag
        stopped = table[table["status"] == "early_stopped"]
        assert len(stopped) >= 1 and (stopped["epochs_run"] < 9).all()
        assert (table[table["status"] == "completed"]["epochs_run"] == 9).all()
        for trial_id, ran in zip(stopped["trial_id"], stopped["epochs_run"]):
            run = children[trial_id]
            assert run.info.status == "KILLED" and run.data.tags["sweep.rung"] == str(ran)


@pytest.mark.slow
def test_page_opens_in_chromium_with_every_image(swept, tmp_path):
    kind, page, data, _ = swept
    text = page.read_text()
    pngs = sorted(p.name for p in page.parent.glob("*.png"))
    assert text.count("src='data:image/png;base64,") == len(pngs)  # embedded, not linked
    assert "http://" not in text.replace("http://127.0.0.1:5000/#/", "")  # no other address
    with Chromium() as browser:
        browser.open(page.as_uri())
        images = browser.evaluate(
            "Array.from(document.images).map(i => [i.dataset.file, i.complete, i.naturalWidth])"
        )
        assert sorted(f for f, _, _ in images) == pngs
        assert all(complete and width > 0 for _, complete, width in images), images
        assert browser.errors() == []
        links = browser.evaluate("Array.from(document.links).map(a => a.href)")
        shot = tmp_path / f"{kind}.png"
        browser.screenshot(shot)
    run_links = [a for a in links if "/runs/" in a and "searchFilter" not in a]
    for run in data.runs.trials.values():  # every trial links to its MLflow run
        assert run_url("http://127.0.0.1:5000", data.runs.experiment_id, run.run_id) in run_links
    with Image.open(shot) as im:
        assert im.height > 2000  # the whole page, not the first screen
        colours = im.convert("RGB").resize((200, 400)).getcolors(maxcolors=100_000)
        assert colours is not None and len(colours) > 50  # not blank


@pytest.mark.slow
def test_report_files_are_artifacts_of_the_parent_run(swept):
    kind, page, data, uri = swept
    parent = data.runs.parent.run_id
    filed = {Path(a.path).name for a in MlflowClient(uri).list_artifacts(parent, "report")}
    assert filed == {p.name for p in page.parent.iterdir()}
    assert "index.html" in filed


@pytest.mark.slow
def test_chosen_config_section_says_what_and_why(swept):
    kind, page, data, _ = swept
    text = page.read_text()
    chosen = data.chosen
    assert chosen == str(data.ranked.iloc[0]["trial_id"])
    assert f">{chosen}</a>" in text and "test accuracy" in text
    test_acc = data.runs.parent.metrics["best_test_acc"]
    assert f"{test_acc:.4f}" in text
    if kind == "random":  # the loss was searched: one row per loss, each with its test result
        assert "softmax or hinge" in text
        for loss in data.ranked["model.loss"].unique():
            assert f"{data.runs.parent.metrics[f'best_{loss}_test_acc']:.4f}" in text
    if kind == "grid":
        assert "2 trial(s) diverged, all with a learning rate of 1e30 or more" in text


@pytest.mark.slow
def test_the_cost_says_what_each_ray_trial_got(swept):
    kind, page, data, _ = swept
    gpu = 0.5 if kind == "random" and torch.cuda.is_available() else 0
    assert (data.resources.cpu, data.resources.gpu) == (1, gpu)
    assert f"<th>resources per Ray trial</th><td>1 CPU, {gpu:g} GPU</td>" in page.read_text()


@pytest.mark.slow
def test_a_sweep_where_every_trial_failed_says_so_in_words(workdir):
    """Its one trial's data file is deleted after the driver's checks read it (while the driver
    holds at ray-started), so the trial errors in Ray."""
    doomed = workdir / "doomed.npz"
    doomed.write_bytes((workdir / "good.npz").read_bytes())
    doc = {"name": "allbad", "data": {"source": "npz", "path": str(doomed)}, "train": BASE}
    doc["search"] = {"type": "grid", "max_failures": 0}
    (workdir / "allbad.yaml").write_text(yaml.safe_dump(doc))
    hold = Hold(workdir / "hold-allbad", "ray-started")
    proc = start_sweep("run", "allbad.yaml", hold=hold, cwd=workdir)
    hold.reached("ray-started")
    doomed.unlink()
    hold.let_go("ray-started")
    proc.wait()
    said = output(proc)
    assert proc.returncode == 1, said
    errors = [ln for ln in said.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "no such file" in errors[0], said  # the first error
    _, parent, children = runs_of(workdir, "allbad")
    assert parent.info.status == "FAILED"
    assert [r.info.status for r in children.values()] == ["FAILED"]
    made = subprocess.run([SWEEP, "report", "allbad"], cwd=workdir, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    text = (workdir / "runs/allbad/report/index.html").read_text()
    assert "No trial finished" in text and "no such file" in text  # the first error, in words
    assert "<img" not in text and not list((workdir / "runs/allbad/report").glob("*.png"))


@pytest.mark.slow
@pytest.mark.parametrize("swept", ["grid"], indirect=True)  # one sweep is enough
@pytest.mark.parametrize("store", ["nobody listens", "not a store"])
def test_a_store_that_does_not_answer_leaves_the_report_to_the_folder(swept, tmp_path, store):
    """A copy of a finished sweep whose state file names a store that cannot be read (a server
    nobody answers at: a local port nothing listens on; a SQLite file that is no database):
    `sweep report` draws the report from the folder within seconds, says on the page why the
    store was not read, and in one line that it could not file the report on the MLflow run;
    `sweep status` takes the sweep's state from the folder and says why in one line."""
    from tests.mlflow_server import free_port

    kind, page, _, _ = swept
    folder = tmp_path / "runs" / kind
    shutil.copytree(page.parents[1], folder, ignore=shutil.ignore_patterns("report"))
    if store == "nobody listens":
        uri = f"http://127.0.0.1:{free_port()}"
        silent = f"no MLflow server answers at {uri} (connection refused)"
    else:
        (tmp_path / "garbage.db").write_text("not an SQLite database\n" * 100)
        uri = f"sqlite:///{tmp_path / 'garbage.db'}"
        silent = f"MLflow {uri}: file is not a database"
    state = json.loads((folder / "mlflow_runs.json").read_text())
    (folder / "mlflow_runs.json").write_text(json.dumps(state | {"tracking_uri": uri}))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    mine = folder / "report" / "index.html"
    for args, said in (
        ([], f"report not filed on the sweep's MLflow run: {silent}; file it with `sweep "
         f"report {kind}` once the store answers\n"),
        (["--no-log"], ""),
    ):  # fmt: skip
        started = time.monotonic()
        made = subprocess.run(
            [SWEEP, "report", kind, *args], cwd=tmp_path, env=env, capture_output=True,
            text=True, timeout=120,
        )  # fmt: skip
        assert made.returncode == 0 and made.stderr == "", made.stdout + made.stderr
        assert made.stdout == f"{said}report: {mine}\n"
        assert time.monotonic() - started < 60  # not MLflow's minutes of retries
        text = mine.read_text()
        assert (
            f"{silent[0].upper()}{silent[1:]}: drawn from the sweep&#x27;s folder, no links."
            in text
        )
        assert "<img" in text and "<a href" not in text and "#/experiments/" not in text
    shown = subprocess.run(
        [SWEEP, "status"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert shown.returncode == 0 and "Traceback" not in shown.stdout + shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[1].split()[:2] == [kind, "completed"], shown.stdout
    assert f"{kind}: {silent}; the state is the folder's" in lines, shown.stdout


def test_an_unfinished_sweep_is_reported_from_its_record_alone(swept, tmp_path):
    """A sweep that has not finished (no results.csv) and whose store does not answer: its
    report lists every trial of the record, with how it ended, marked not finished."""
    from tests.mlflow_server import free_port

    kind, page, _, _ = swept
    folder = tmp_path / "runs" / kind
    shutil.copytree(page.parents[1], folder, ignore=shutil.ignore_patterns("report"))
    ended = pd.read_csv(folder / "results.csv")
    (folder / "results.csv").unlink()
    state = json.loads((folder / "mlflow_runs.json").read_text())
    uri = f"http://127.0.0.1:{free_port()}"
    (folder / "mlflow_runs.json").write_text(json.dumps(state | {"tracking_uri": uri}))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    made = subprocess.run(
        [SWEEP, "report", kind, "--no-log"], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert made.returncode == 0 and made.stderr == "", made.stdout + made.stderr
    text = (folder / "report" / "index.html").read_text()
    assert "not finished" in text and all(trial_id in text for trial_id in ended["trial_id"])
    data = load(find_folder(kind, tmp_path / "runs"), uri)
    assert not data.finished and data.runs is None
    got = data.table.set_index("trial_id")
    assert got["status"].to_dict() == dict(zip(ended["trial_id"], ended["status"]))
    assert got["epochs_run"].to_dict() == dict(zip(ended["trial_id"], ended["epochs_run"]))


def test_report_of_an_unknown_sweep_is_one_error_line(tmp_path):
    done = subprocess.run([SWEEP, "report", "nope"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.startswith("error: no sweep nope") and len(done.stderr.splitlines()) == 1
    assert not any(tmp_path.iterdir())


def synthetic(n: int, seed: int = 0) -> SweepData:
    """An ASHA sweep of ``n`` trials whose accuracy is set by the learning rate, with curves."""
    rng = np.random.default_rng(seed)
    doc = {
        "name": "big",
        "data": {"source": "digits"},
        "train": {"epochs": 27},
        "search": {"type": "asha", "num_samples": n, "grace_period": 1, "reduction_factor": 3},
        "space": {
            "train.lr": {"loguniform": [1e-4, 10.0]},
            "train.lambda": {"loguniform": [1e-5, 1e-1]},
            "model.loss": {"choice": ["softmax", "hinge"]},
            "train.batch_size": {"choice": [32, 64, 128]},
        },
    }
    lr = 10 ** rng.uniform(-4, 1, n)
    acc = 0.95 - 0.08 * (np.log10(lr) + 1.5) ** 2 + rng.normal(0, 0.01, n)
    epochs = rng.choice([1, 3, 9, 27], n, p=[0.6, 0.25, 0.1, 0.05])
    status = np.where(epochs == 27, "completed", "early_stopped").astype(object)
    status[lr > 5] = "diverged"
    status[rng.choice(n, min(10, n // 4), replace=False)] = "error"
    table = pd.DataFrame(
        {
            "trial_id": [f"big_{i:05d}" for i in range(n)],
            "status": status,
            "train.lr": lr,
            "train.lambda": 10 ** rng.uniform(-5, -1, n),
            "model.loss": rng.choice(["softmax", "hinge"], n),
            "train.batch_size": rng.choice([32, 64, 128], n),
            "epochs_run": epochs,
            "final_val_acc": np.where(status == "error", np.nan, acc),
            "final_val_loss": 1 - acc,
            "final_train_acc": acc + 0.02,
            "final_train_loss": 0.98 - acc,
            "error": "",
        }
    )
    has_curve = table[table["status"] != "error"]
    rows = [
        (t, e, 1.5 / e, 1.6 / e, a * (1 - 0.5 / e), 0.01)
        for t, k, a in zip(
            has_curve["trial_id"], has_curve["epochs_run"], has_curve["final_val_acc"]
        )
        for e in range(1, k + 1)
    ]
    curves = pd.DataFrame(
        rows, columns=["trial_id", "epoch", "train_loss", "val_loss", "val_acc", "epoch_seconds"]
    )
    return SweepData(sweep_spec(doc), table, curves)


def test_a_thousand_trials_are_reported_each_drawn_once(tmp_path):
    """How long it takes is bench/report.py's to measure, not a test's."""
    data = synthetic(1000)
    page = write_report(data, tmp_path / "report")
    assert page.stat().st_size < 5_000_000
    figs = figures_of(data)
    assert segments(figs["parallel"].axes[0]) == 1000
    assert marks(figs["metric_vs_lr"].axes[0]) == 1000
    assert segments(figs["asha_curves"].axes[0]) == 990  # the 10 failed trials logged no epoch
    importance = figs["importance"].axes[0]
    bars = {
        t.get_text(): p.get_width()
        for t, p in zip(importance.get_yticklabels(), importance.patches)
    }
    assert max(bars, key=bars.get) == "learning rate (lr)"  # the metric was made from lr alone
    assert "990 trials" in page.read_text()  # the importance note says what it rests on


def test_importance_refuses_with_too_few_trials():
    from sweeps.view.importance import importance

    data = synthetic(8)
    found = importance(data.table, ["train.lr"], ["train.lr"], data.metric)
    assert isinstance(found, str) and "at least 12 trials" in found


def test_run_names_read_like_the_searched_values():
    params = {
        "train.lr": 0.0312,
        "model.loss": "hinge",
        "train.lambda": 4.5e-5,
        "train.batch_size": np.int64(128),
    }
    assert run_name(params) == "hinge lr=0.031 lam=4.5e-5 bs=128"
    assert run_name({"train.lr": 1e30, "data.path": "/a/b/good.npz"}) == "lr=1e30 data=good.npz"
    assert [format_value(v) for v in (730.2, 0.5, 0.004, 12345.0, 3)] == [
        "730",
        "0.5",
        "4e-3",
        "1.2e4",
        "3",
    ]
    assert run_name({}) == "base config"


def test_trials_page_url_filters_to_the_sweeps_children():
    url = trials_page_url("http://h:5000", "7", "abc", "val_loss", ascending=True)
    assert url.startswith("http://h:5000/#/experiments/7/runs?")
    assert "searchFilter=tags.%60mlflow.parentRunId%60+%3D+%27abc%27" in url
    assert "orderByKey=metrics.%60val_loss%60" in url and "orderByAsc=true" in url
    assert "compareRunsMode=CHART" in url


@pytest.mark.slow
@pytest.mark.parametrize("swept", ["asha"], indirect=True)  # one sweep is enough
def test_the_trials_page_lists_every_trial_in_the_mlflow_ui(swept, tmp_path):
    """The address `sweep ui` prints opens MLflow 3's training-runs page with the trials
    listed flat (not under a collapsed parent), checked in a real browser."""
    from tests.mlflow_server import free_port, serving

    _, _, data, uri = swept
    port = free_port()
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    cmd = [
        mlflow,
        "server",
        "--backend-store-uri",
        uri,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    with serving(cmd, port, tmp_path) as base:
        url = latest_trials_page(uri, None, base=base)
        assert url is not None and f"/experiments/{data.runs.experiment_id}/runs?" in url
        client = MlflowClient(uri)  # the trials' runs are listed by their readable names
        names = {client.get_run(r.run_id).info.run_name for r in data.runs.trials.values()}
        assert len(names) > 1
        with Chromium(1400, 1000) as browser:
            browser.open(url)
            deadline, shown = time.monotonic() + 60, set()
            while time.monotonic() < deadline and shown != names:
                text = browser.evaluate("document.body.innerText") or ""
                shown = {t for t in names if t in text}
                time.sleep(0.5)
            assert shown == names
            text = browser.evaluate("document.body.innerText")  # the training pages, not GenAI's
            assert "Model registry" in text and "Judges" not in text


def test_latest_trials_page_is_none_for_an_empty_store(tmp_path):
    uri = f"sqlite:///{tmp_path}/empty.db"
    MlflowClient(uri).create_experiment("other")
    assert latest_trials_page(uri) is None
    assert latest_trials_page(uri, "missing") is None
