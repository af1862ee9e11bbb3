"""The fused engine (search.engine: fused): the plan, Ray's ASHA rung rule inside a population,
a population run's news, resume and checkpoints (fast); then real sweeps through the CLI with a
local Ray and a SQLite MLflow store (slow): every configuration its own run, curves, outcome
and results.csv row; SIGKILL and resume; the bad-input rule."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from sweeps import fused
from sweeps.spec import sweep_spec
from trainers.config import trial_config
from trainers.data import prepare
from trainers.loop import Trial
from trainers.metrics import CURVES

sys.path.insert(0, str(Path(__file__).resolve().parent))

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


def population_plan(lrs: list[float], asha: fused.Asha | None = None, epochs: int = 4):
    """One population of configurations differing in lr, as the plan makes it."""
    train = {**TRAIN, "epochs": epochs}
    cfgs = [trial_config({"data": DATA, "train": {**train, "lr": lr}}) for lr in lrs]
    ids = fused.config_ids(len(lrs))
    return fused.PopulationPlan(ids, [c.to_dict() for c in cfgs], [0] * len(lrs), asha)


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
        ours = fused.Asha(grace, rf, brackets, max_t, "val_acc", "max")
        for s, bracket in enumerate(ray._brackets):
            assert ours.milestones(s) == sorted(m for m, _ in bracket._rungs)
        sizes = np.array([len(b._rungs) for b in ray._brackets])
        odds = np.e ** (sizes - sizes.max())
        assert np.allclose(ours.bracket_odds(), odds / odds.sum())
        values = [0.2, 0.5, np.nan, 0.9, 0.1]
        cutoff = fused.Rungs(ours, {}).cutoff(values)
        assert cutoff == ray._brackets[0].cutoff(dict(enumerate(values)))


def test_the_rung_rule_stops_below_the_quantile_of_the_cohort():
    asha = fused.Asha(1, reduction_factor=3, brackets=1, max_t=9, metric="val_acc", mode="max")
    ids = [f"c{i}" for i in range(6)]
    rungs = fused.Rungs(asha, dict.fromkeys(ids, 0))
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
    asha = fused.Asha(1, 2, 1, 4, "val_loss", "min")
    rungs = fused.Rungs(asha, {"a": 0, "b": 0, "c": 0, "d": 0})
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
    asha = fused.Asha(1, 2, 2, 8, "val_acc", "max")
    assert asha.milestones(0) == [1, 2, 4, 8] and asha.milestones(1) == [2, 4, 8]
    rungs = fused.Rungs(asha, {"a": 0, "b": 0, "c": 1, "d": 1})
    at_1 = {i: {"epoch": 1, "val_acc": v} for i, v in zip("abcd", (0.9, 0.1, 0.8, 0.2))}
    assert rungs.stopped(at_1) == {"b": 1}  # bracket 1's first rung is epoch 2
    at_2 = {i: {"epoch": 2, "val_acc": v} for i, v in zip("acd", (0.9, 0.8, 0.2))}
    assert rungs.stopped(at_2) == {"d": 2}


# ---------------------------------------------------------------- the plan (fast)
def test_plan_names_groups_and_splits_evenly():
    from sweeps.tune import sample_params

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
    from sweeps.tune import sample_params

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
    assert len({p["train.seed"] for p in grid}) == 4  # each repeat of the grid, its own seeds


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
    asha = fused.Asha(1, 3, 1, 9, "val_acc", "max")
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
    asha = fused.Asha(1, 2, 1, 6, "val_acc", "max")
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
