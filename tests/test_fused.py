"""The fused engine (search.engine: fused): the plan, Ray's ASHA rung rule inside a population,
a population run's news, resume and checkpoints (fast); then real sweeps through the CLI with a
local Ray and a SQLite MLflow store (slow): every configuration its own run, curves, outcome
and results.csv row; SIGKILL and resume; the bad-input rule."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from sweeps.engine import fused
from sweeps.search.asha import Asha, Rungs
from sweeps.search.draws import sample_params
from sweeps.spec.sweep import sweep_spec
from trainers.config import trial_config
from trainers.data import prepare
from trainers.loop import Trial
from trainers.metrics import CURVES

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweeping import (  # noqa: E402
    SWEEP,
    Hold,
    history_steps,
    make_data,
    runs_of,
    start_sweep,
    wait_for,
    write_config,
)

DATA = {"source": "synthetic", "n_samples": 300, "n_features": 8, "n_classes": 3}
COMPARED = ["epoch", "diverged", *(k for k in CURVES if k != "epoch_seconds")]
TRAIN = {"epochs": 9, "batch_size": 32, "optimizer": "sgd", "schedule": "constant"}


def spec_of(search: dict, space: dict, train: dict | None = None, data: dict | None = None):
    doc = {
        "name": "t",
        "data": data or DATA,
        "train": {**TRAIN, **(train or {})},
        "search": {"engine": "fused", **search},
        "space": space,
    }
    return sweep_spec(doc)


def population_plan(lrs: list[float], asha: Asha | None = None, epochs: int = 4):
    """One population of configurations differing in lr, as the plan makes it."""
    train = {**TRAIN, "epochs": epochs}
    cfgs = [trial_config({"data": DATA, "train": {**train, "lr": lr}}) for lr in lrs]
    ids = fused.config_ids(len(lrs))
    configs = [c.to_dict() for c in cfgs]
    return fused.PopulationPlan(ids, configs, [0] * len(lrs), asha, "val_acc", "max")


def run_to_end(run: fused.PopulationRun) -> dict[str, dict]:
    """Every member's news from here to the end, merged per member."""
    merged: dict[str, dict] = {}
    while not run.done:
        run.step()
        for id_, news in run.take_news().items():
            into = merged.setdefault(id_, {"started": False, "results": [], "end": None})
            into["started"] |= news["started"]
            into["results"] += news["results"]
            into["end"] = news["end"] or into["end"]
    return merged


# ---------------------------------------------------------------- the rung rule (fast)
def test_milestones_and_bracket_odds_are_rays():
    from ray.tune.schedulers.async_hyperband import AsyncHyperBandScheduler

    for grace, max_t, rf, brackets in [(1, 9, 3, 2), (3, 30, 3, 3), (2, 100, 4, 3), (1, 8, 2, 1)]:
        ray = AsyncHyperBandScheduler(
            max_t=max_t, grace_period=grace, reduction_factor=rf, brackets=brackets
        )
        ours = Asha(grace, rf, brackets, max_t, "val_acc", "max")
        for s, bracket in enumerate(ray._brackets):
            assert ours.milestones(s) == sorted(m for m, _ in bracket._rungs)
        sizes = np.array([len(b._rungs) for b in ray._brackets])
        odds = np.e ** (sizes - sizes.max())
        assert np.allclose(ours.bracket_odds(), odds / odds.sum())
        values = [0.2, 0.5, np.nan, 0.9, 0.1]
        cutoff = Rungs(ours, {}).cutoff(values)
        assert cutoff == ray._brackets[0].cutoff(dict(enumerate(values)))


def test_the_rung_rule_stops_below_the_quantile_of_the_cohort():
    asha = Asha(1, reduction_factor=3, brackets=1, max_t=9, metric="val_acc", mode="max")
    ids = [f"c{i}" for i in range(6)]
    rungs = Rungs(asha, dict.fromkeys(ids, 0))
    accs = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    first = {i: {"epoch": 1, "val_acc": a, "diverged": False} for i, a in zip(ids, accs)}
    # 66.7th percentile of 0.1..0.6 by linear interpolation: 0.4 + (5 * 2/3 - 3) * 0.1 = 0.4333
    assert rungs.stopped(first) == {"c0": 1, "c1": 1, "c2": 1, "c3": 1}
    assert rungs.stopped({i: {**first[i], "epoch": 2} for i in ("c4", "c5")}) == {}  # no rung
    # epoch 3: cutoff of [0.5, 0.7] is 0.5 + (2/3) * 0.2 = 0.6333
    third = {"c4": {"epoch": 3, "val_acc": 0.5}, "c5": {"epoch": 3, "val_acc": 0.7}}
    assert rungs.stopped(third) == {"c4": 3}
    assert rungs.recorded == {"0/1": dict(zip(ids, accs)), "0/3": {"c4": 0.5, "c5": 0.7}}
    assert rungs.stopped({"c5": {"epoch": 9, "val_acc": 0.1}}) == {}  # max_t: it completes


def test_the_rung_rule_for_a_loss_spares_diverged_members_and_ignores_nan():
    asha = Asha(1, 2, 1, 4, "val_loss", "min")
    rungs = Rungs(asha, {"a": 0, "b": 0, "c": 0, "d": 0})
    results = {
        "a": {"epoch": 1, "val_loss": 0.5},
        "b": {"epoch": 1, "val_loss": 2.0},
        "c": {"epoch": 1, "val_loss": 3.0, "diverged": True},  # it ends as diverged
        "d": {"epoch": 1, "val_loss": math.nan},
    }
    # rewards -0.5, -2, -3 (NaN left out): the median is -2; below it only c, which diverged
    assert rungs.stopped(results) == {}
    assert rungs.recorded["0/1"]["b"] == -2.0 and math.isnan(rungs.recorded["0/1"]["d"])


def test_brackets_have_their_own_rungs():
    asha = Asha(1, 2, 2, 8, "val_acc", "max")
    assert asha.milestones(0) == [1, 2, 4, 8] and asha.milestones(1) == [2, 4, 8]
    rungs = Rungs(asha, {"a": 0, "b": 0, "c": 1, "d": 1})
    at_1 = {i: {"epoch": 1, "val_acc": v} for i, v in zip("abcd", (0.9, 0.1, 0.8, 0.2))}
    assert rungs.stopped(at_1) == {"b": 1}  # bracket 1's first rung is epoch 2
    at_2 = {i: {"epoch": 2, "val_acc": v} for i, v in zip("acd", (0.9, 0.8, 0.2))}
    assert rungs.stopped(at_2) == {"d": 2}


# ---------------------------------------------------------------- the plan (fast)
def test_plan_names_groups_and_splits_evenly():
    from sweeps.search.draws import sample_params

    space = {
        "train.lr": {"grid": [0.01, 0.02, 0.03, 0.04, 0.05]},
        "train.batch_size": {"grid": [16, 32]},
    }
    spec = spec_of({"type": "grid", "population_size": 4}, space)
    plan = fused.plan(spec, sample_params(spec))
    assert list(plan.params) == [f"c{i:04d}" for i in range(10)]
    sizes = sorted(len(p.ids) for p in plan.populations)
    assert sizes == [2, 2, 3, 3]  # two batch sizes of 5, each cut into 3 + 2
    for p in plan.populations:
        assert len({c["train"]["batch_size"] for c in p.configs}) == 1
    assert sorted(i for p in plan.populations for i in p.ids) == list(plan.params)
    assert plan.configs["c0000"]["train.lr"] == plan.params["c0000"]["train.lr"]


def test_sampling_is_reproducible_and_random_draws_differ_by_seed():
    from sweeps.search.draws import sample_params

    space = {
        "train.lr": {"loguniform": [1e-4, 1.0]},
        "model.loss": {"choice": ["softmax", "hinge"]},
    }
    a = sample_params(spec_of({"type": "random", "num_samples": 8, "seed": 3}, space))
    b = sample_params(spec_of({"type": "random", "num_samples": 8, "seed": 3}, space))
    c = sample_params(spec_of({"type": "random", "num_samples": 8, "seed": 4}, space))
    assert a == b and a != c and len({p["train.lr"] for p in a}) == 8
    grid = sample_params(
        spec_of({"type": "grid", "num_samples": 2}, {"train.lr": {"grid": [0.1, 0.2]}})
    )
    assert [p["train.lr"] for p in grid] == [0.1, 0.2, 0.1, 0.2]
    assert len({p["train.seed"] for p in grid}) == 4  # each configuration its own seed


# ---------------------------------------------------------------- a population run (fast)
def test_a_diverging_member_ends_diverged_and_leaves_the_others_as_they_were():
    datasets = prepare(trial_config({"data": DATA}).data)
    alone = run_to_end(fused.PopulationRun.start(population_plan([0.05, 0.1]), datasets))
    mixed = run_to_end(fused.PopulationRun.start(population_plan([0.05, 0.1, 1e30]), datasets))
    assert mixed["c0002"]["end"] == {"outcome": "diverged", "epochs_run": 1}
    for id_ in ("c0000", "c0001"):
        assert mixed[id_]["end"] == {"outcome": "completed", "epochs_run": 4}
        for a, m in zip(alone[id_]["results"], mixed[id_]["results"], strict=True):
            for key in COMPARED:  # the same within float32 (another K, another sum order)
                assert m[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key


def test_asha_inside_a_run_stops_members_and_keeps_their_checkpoints(tmp_path):
    datasets = prepare(trial_config({"data": DATA}).data)
    asha = Asha(1, 3, 1, 9, "val_acc", "max")
    lrs = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0]
    run = fused.PopulationRun.start(population_plan(lrs, asha, epochs=9), datasets)
    news = run_to_end(run)
    ends = {i: n["end"] for i, n in news.items()}
    stopped = {i for i, e in ends.items() if e["outcome"] == "early_stopped"}
    assert stopped and all(ends[i]["epochs_run"] in (1, 3) for i in stopped)
    assert {e["outcome"] for e in ends.values()} == {"early_stopped", "completed"}
    for i, n in news.items():  # one result per epoch run, 1..its end
        assert [r["epoch"] for r in n["results"]] == list(range(1, ends[i]["epochs_run"] + 1))
    run.save(tmp_path)
    checkpoints = fused.MemberCheckpoints([tmp_path])
    for i, e in ends.items():
        trial = Trial.load(checkpoints[i])
        assert trial.epoch == e["epochs_run"]
        assert trial.final()["val_acc"] == pytest.approx(news[i]["results"][-1]["val_acc"])


def test_a_restored_run_goes_on_as_if_never_stopped(tmp_path):
    datasets = prepare(trial_config({"data": DATA}).data)
    asha = Asha(1, 2, 1, 6, "val_acc", "max")
    plan = population_plan([1e-3, 1e-2, 0.03, 0.1, 0.3, 1e30], asha, epochs=6)
    whole = run_to_end(fused.PopulationRun.start(plan, datasets))
    first = fused.PopulationRun.start(plan, datasets)
    for _ in range(3):
        first.step()
    before = first.take_news()
    first.save(tmp_path)
    restored = fused.PopulationRun.restore(plan, tmp_path, datasets)
    after = run_to_end(restored)
    assert all(n["started"] for n in after.values())  # the ones still training: opened again
    for id_, n in whole.items():
        results = [r for part in (before, after) for r in part.get(id_, {}).get("results", [])]
        assert [r["val_acc"] for r in results] == [r["val_acc"] for r in n["results"]]
        assert (after.get(id_) or before[id_])["end"] == n["end"]


def test_report_fields_carry_the_news_as_one_string():
    news = {
        "c0": {"started": True, "results": [{"epoch": 2, "val_acc": 0.5}], "end": None},
        "c1": {"started": False, "results": [{"epoch": 2, "val_acc": 0.7}], "end": None},
    }
    fields = fused.report_fields(news, "val_acc", "max")
    assert json.loads(fields[fused.NEWS_KEY]) == news
    assert fields["epoch"] == 2 and fields["val_acc"] == 0.7
    assert fused.next_report_after(0.0) == fused.MIN_REPORT_S
    assert fused.next_report_after(2.0) == 2.0 * fused.REPORT_RATIO


# ---------------------------------------------------------------- many runs at once (fast)
def epochs(*numbers: int) -> list[dict]:
    return [{"epoch": e, **dict.fromkeys(CURVES, 0.5 + e / 100)} for e in numbers]


def test_population_news_reach_the_record_and_mlflow_once_each(tmp_path):
    """A population's reports go through the Recorder: the record first, then MLflow from
    the writer thread, each run made once and each epoch logged once, also after a resume."""
    from sweeps.engine.recorder import Recorder, TrialNews
    from sweeps.record.history import HistoryFile
    from sweeps.tracking.writer import SweepTracker

    uri, state = f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "state.json"
    file = HistoryFile(tmp_path / "history.jsonl")
    config = {"train.lr": 0.1, "model.loss": "softmax"}

    def news(trial, started, numbers, end=None):
        return TrialNews(trial, {"train.lr": 0.1}, config, started, epochs(*numbers), end)

    def recorder():
        tracker = SweepTracker(uri, "many", state)
        rec = Recorder(file.read("many"), file, tracker)
        rec.start_sweep({}, fresh=False)
        return rec, tracker

    done = {"outcome": "completed", "epochs_run": 4, "error": None}
    first, tracker = recorder()
    first.trials_news([news("c0", True, [1, 2]), news("c1", True, [1, 2, 3, 4], done)])
    first.trials_news([news("c0", False, [2, 3])])  # epoch 2 again: a replay
    first.end_sweep("interrupted")  # c0 ends KILLED, as after Ctrl-C
    assert tracker.created == 3 and set(json.loads(state.read_text())["trials"]) == {"c0", "c1"}
    recorded = file.read("many").trials
    assert [m["epoch"] for m in recorded["c0"].results] == [1, 2, 3]
    assert recorded["c1"].end["outcome"] == "completed" and recorded["c0"].end is None

    again, tracker = recorder()  # a resumed driver
    again.trials_news([news("c0", True, [3, 4], done)])  # reopened, then ended
    again.end_sweep("completed")
    assert tracker.created == 0
    client = tracker.client
    for trial in ("c0", "c1"):
        run = client.get_run(tracker.trials[trial])
        assert run.info.status == "FINISHED" and run.data.tags["sweep.status"] == "completed"
        assert run.data.params == {k: str(v) for k, v in config.items()}
        for key in CURVES:
            assert history_steps(client, run, key) == [1, 2, 3, 4], (trial, key)


def test_sqlite_connections_commit_without_fsync(tmp_path):
    from sqlalchemy import create_engine

    from sweeps.tracking.store import sqlite_without_fsync

    sqlite_without_fsync()
    with create_engine(f"sqlite:///{tmp_path}/x.db").connect() as connection:
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 0


# ---------------------------------------------------------------- real sweeps (slow)
ENV = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
FUSED = {"engine": "fused", "seed": 1}


def sweep(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    """`sweep ARGS` as a user runs it, in ``workdir``."""
    return subprocess.run(
        [SWEEP, *args], cwd=workdir, env=ENV, capture_output=True, text=True, timeout=900
    )


def finished(workdir: Path, name: str, *args: str) -> pd.DataFrame:
    """Run a sweep to its end; its results.csv."""
    done = sweep(workdir, "run", str(workdir / f"{name}.yaml"), *args)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return pd.read_csv(workdir / "runs" / name / "results.csv")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fused")
    make_data(folder)
    return folder


@pytest.fixture(scope="module")
def grid(workdir):
    """8 configurations in 2 populations; lr 1e30 diverges."""
    space = {
        "train.lr": {"grid": [0.01, 0.05, 0.1, 1.0e30]},
        "model.loss": {"grid": ["softmax", "hinge"]},
    }
    write_config(
        workdir, "fgrid", search={"type": "grid", **FUSED, "population_size": 4}, space=space
    )
    return finished(workdir, "fgrid")


@pytest.mark.slow
def test_grid_every_configuration_is_a_run_with_its_curves_and_outcome(workdir, grid):
    assert len(grid) == 8 and sorted(grid["trial_id"]) == fused.config_ids(8)
    diverged = grid[grid["train.lr"] == 1.0e30]
    assert set(diverged["status"]) == {"diverged"} and len(diverged) == 2
    assert set(grid[grid["train.lr"] < 1]["status"]) == {"completed"}
    client, parent, children = runs_of(workdir, "fgrid")
    assert sorted(children) == fused.config_ids(8)
    assert parent.info.status == "FINISHED" and 0 < parent.data.metrics["best_test_acc"] <= 1
    artifacts = [a.path for a in client.list_artifacts(parent.info.run_id)]
    assert "best_model" in artifacts and "best_config.json" in artifacts
    assert parent.data.tags["best.trial_id"] == grid.iloc[0]["trial_id"]
    for _, row in grid.iterrows():
        run = children[row["trial_id"]]
        assert run.data.tags["sweep.status"] == row["status"]
        assert float(run.data.params["train.lr"]) == row["train.lr"]
        assert run.data.params["model.loss"] == row["model.loss"]
        if row["status"] == "completed":
            assert run.info.status == "FINISHED"
            for key in CURVES:
                assert history_steps(client, run, key) == [1, 2, 3, 4], key
            assert run.data.metrics["val_acc"] == pytest.approx(row["final_val_acc"])
        else:
            assert run.info.status == "FAILED" and run.data.tags["sweep.diverged"] == "true"


@pytest.fixture(scope="module")
def random_pair(workdir):
    """A random search fused (3 populations) and the same config with one trial each."""
    space = {
        "train.lr": {"loguniform": [1e-3, 1e-1]},
        "model.loss": {"choice": ["softmax", "hinge"]},
    }
    search = {"type": "random", "num_samples": 5, **FUSED, "population_size": 2}
    write_config(workdir, "frand", search=search, space=space)
    write_config(workdir, "trand", search={**search, "engine": "trial"}, space=space)
    return finished(workdir, "frand"), finished(workdir, "trand")


@pytest.mark.slow
def test_random_draws_the_per_trial_engines_configurations(workdir, random_pair):
    fused_table, trial_table = random_pair
    assert len(fused_table) == 5 and set(fused_table["status"]) == {"completed"}
    keys = ["train.lr", "model.loss"]
    ours = sorted(map(tuple, fused_table[keys].values.tolist()))
    theirs = sorted(map(tuple, trial_table[keys].values.tolist()))
    assert ours == theirs  # the same draws from the same seed
    client, _, children = runs_of(workdir, "frand")
    assert len(children) == 5
    for run in children.values():
        assert run.info.status == "FINISHED"
        assert history_steps(client, run) == [1, 2, 3, 4]


@pytest.fixture(scope="module")
def asha(workdir):
    search = {"type": "asha", "num_samples": 9, **FUSED, "grace_period": 1, "reduction_factor": 3}
    write_config(
        workdir,
        "fasha",
        train={"epochs": 9, "batch_size": 32, "optimizer": "sgd", "schedule": "constant"},
        search=search,
        space={"train.lr": {"loguniform": [1e-5, 1e-1]}},
    )
    return finished(workdir, "fasha")


@pytest.mark.slow
def test_asha_stops_the_configurations_the_rung_rule_names(workdir, asha):
    client, _, children = runs_of(workdir, "fasha")
    curves = {
        i: {m.step: m.value for m in client.get_metric_history(r.info.run_id, "val_acc")}
        for i, r in children.items()
    }
    rungs = Rungs(Asha(1, 3, 1, 9, "val_acc", "max"), dict.fromkeys(curves, 0))
    expected = {}
    for epoch in range(1, 10):  # the rule replayed on the logged curves
        alive = {i: c for i, c in curves.items() if i not in expected and epoch in c}
        at = {i: {"epoch": epoch, "val_acc": c[epoch]} for i, c in alive.items()}
        expected |= rungs.stopped(at)
    assert expected and len(asha) == 9
    for _, row in asha.iterrows():
        run = children[row["trial_id"]]
        if row["trial_id"] in expected:
            assert row["status"] == "early_stopped"
            assert row["epochs_run"] == expected[row["trial_id"]]
            assert run.info.status == "KILLED"
            assert run.data.tags["sweep.rung"] == str(row["epochs_run"])
        else:
            assert row["status"] == "completed" and row["epochs_run"] == 9
        assert history_steps(client, run) == list(range(1, row["epochs_run"] + 1))


@pytest.mark.slow
def test_sigkill_then_resume_logs_every_epoch_once(workdir, monkeypatch):
    name = "fkilled"
    write_config(
        workdir,
        name,
        data={"source": "digits"},
        train={"epochs": 60, "batch_size": 8, "optimizer": "sgd", "schedule": "constant"},
        search={"type": "grid", **FUSED, "population_size": 4, "max_concurrent": 1},
        space={"train.lr": {"grid": [0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.007, 0.008]}},
    )
    monkeypatch.chdir(workdir)  # start_sweep runs in the current directory
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    hold = Hold(workdir / "hold", "epoch-30")
    proc = start_sweep("run", str(workdir / f"{name}.yaml"), hold=hold)
    record = workdir / "runs" / name / "history.jsonl"
    try:
        hold.second("epoch-30")  # the first population ended, the second half-way
        wait_for(lambda: '"event":"result"' in record.read_text(), "a result recorded", proc=proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (workdir / "runs" / name / "results.csv").exists()

    resumed = sweep(workdir, "resume", name)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    table = pd.read_csv(workdir / "runs" / name / "results.csv")
    assert len(table) == 8 and set(table["status"]) == {"completed"}
    client, parent, children = runs_of(workdir, name)
    assert len(children) == 8 and parent.info.status == "FINISHED"
    for run in children.values():
        assert run.info.status == "FINISHED"
        assert history_steps(client, run) == list(range(1, 61))  # each epoch once


@pytest.mark.slow
def test_a_resume_draws_the_same_configurations_as_the_first_run(workdir, monkeypatch):
    """The draws follow the order of the space's keys, as the user wrote them (here not
    alphabetical): the sweep folder keeps that order, so the resumed sweep draws the same
    configuration under each id, and each id starts with one configuration only. A saved
    config whose keys were reordered since is refused on resume, before anything runs."""
    name = "forder"
    doc = {
        "name": name,
        "data": {"source": "digits"},
        "train": {"epochs": 40, "batch_size": 8, "optimizer": "sgd", "schedule": "constant"},
        "search": {
            "type": "random",
            "num_samples": 8,
            **FUSED,
            "population_size": 4,
            "max_concurrent": 1,
        },
        "space": {
            "train.lr": {"loguniform": [1e-4, 1e-1]},
            "train.lambda": {"loguniform": [1e-5, 1e-1]},
            "model.loss": {"choice": ["softmax", "hinge"]},
        },
    }
    (workdir / f"{name}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    monkeypatch.chdir(workdir)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    hold = Hold(workdir / "hold-order", "epoch-20")  # not the other tests' points
    proc = start_sweep("run", str(workdir / f"{name}.yaml"), hold=hold)
    try:
        hold.second("epoch-20")  # the first population ended, the second half-way
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    saved = workdir / "runs" / name / "sweep.yaml"
    kept, record = saved.read_text(), saved.with_name("history.jsonl")
    before = record.read_text()
    saved.write_text(yaml.safe_dump(yaml.safe_load(kept)))  # the space's keys sorted
    refused = sweep(workdir, "resume", name)
    assert refused.returncode == 2, refused.stdout[-3000:] + refused.stderr[-3000:]
    line = refused.stderr.strip().splitlines()
    assert len(line) == 1 and str(saved) in line[0] and "order" in line[0], refused.stderr
    assert record.read_text() == before  # nothing trained, nothing recorded

    saved.write_text(kept)
    resumed = sweep(workdir, "resume", name)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]

    drawn = sample_params(sweep_spec(doc))
    started: dict[str, list] = {}
    for line in (workdir / "runs" / name / "history.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event["event"] == "trial_started":
            started.setdefault(event["trial"], []).append(event["params"])
    assert sorted(started) == fused.config_ids(8)
    for i, (trial, params) in enumerate(sorted(started.items())):
        assert all(p == drawn[i] for p in params), (trial, params, drawn[i])
    assert len(pd.read_csv(workdir / "runs" / name / "results.csv")) == 8


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            ["search.population_size=0"],
            "search.population_size must be an integer >= 1 or auto; got 0",
        ),
        (["search.engine=fast"], "search.engine must be one of trial, fused; got 'fast'"),
    ],
)
def test_bad_fused_settings_are_refused_in_one_line(tmp_path, sets, message):
    make_data(tmp_path)
    cfg = write_config(tmp_path, "bad", search={"type": "grid", **FUSED}, space={})
    done = sweep(tmp_path, "run", str(cfg), *[x for s in sets for x in ("--set", s)])
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: {message}"], done.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()
