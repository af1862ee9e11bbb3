"""The adaptive searches (tpe, bohb, pbt): their rules (fast); open populations asking the real
Optuna sampler, in-process, and PBT inside a population (fast); then real sweeps through the CLI
with a local Ray and a SQLite MLflow store, on both engines (slow): completion, one run per
configuration, the same configurations for the same seed, SIGKILL and resume without a repeat,
and PBT's exploits in the record and in MLflow."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch

from sweeps.engine import fused
from sweeps.search.tpe import Sampler
from sweeps.spec.sweep import sweep_spec
from trainers.config import ConfigError
from trainers.data import prepare

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweeping import Hold, make_data, runs_of, start_sweep, write_config  # noqa: E402
from test_fused import finished, sweep  # noqa: E402

DATA = {"source": "synthetic", "n_samples": 300, "n_features": 8, "n_classes": 3}
TRAIN = {"epochs": 6, "batch_size": 32, "optimizer": "momentum", "schedule": "constant"}
SPACE = {
    "train.lr": {"loguniform": [1e-3, 1.0]},
    "train.lambda": {"loguniform": [1e-6, 1e-2]},
    "model.loss": {"choice": ["softmax", "hinge"]},
}
PBT_SPACE = {"train.lr": {"loguniform": [1e-3, 1.0]}, "train.momentum": {"uniform": [0.0, 0.95]}}


def spec_of(search: dict, space: dict | None = None, train: dict | None = None):
    doc = {
        "name": "t",
        "data": DATA,
        "train": {**TRAIN, **(train or {})},
        "search": {"engine": "fused", **search},
        "space": SPACE if space is None else space,
    }
    return sweep_spec(doc)


# ---------------------------------------------------------------- the rules (fast)
@pytest.mark.parametrize(
    ("search", "space", "message"),
    [
        ({"type": "tpe"}, {"train.lr": {"grid": [0.1, 0.2]}}, "space.train.lr: tpe draws from"),
        ({"type": "pbt"}, {"model.loss": {"choice": ["softmax"]}}, "search.type pbt perturbs"),
        ({"type": "pbt"}, {**PBT_SPACE, "model.loss": {"choice": ["softmax"]}}, "space.model."),
        ({"type": "pbt", "perturbation_interval": 6}, PBT_SPACE, "perturbation_interval must be <"),
        ({"type": "pbt", "num_samples": 1}, PBT_SPACE, "search.num_samples must be >= 2 for pbt"),
        ({"type": "bohb", "grace_period": 6}, SPACE, "search.grace_period must be < train.epochs"),
        ({"type": "bohb"}, {"train.epochs": {"choice": [3, 4]}}, "space.train.epochs cannot"),
        (
            {"type": "tpe"},
            {"train.batch_size": {"randint": [16, 64]}},
            "space.train.batch_size: with search.engine fused, tpe gives",
        ),
        (
            {"type": "pbt", "num_samples": 20, "population_size": 16},
            PBT_SPACE,
            "set search.population_size >= 20",
        ),
        ({"type": "pbt", "quantile_fraction": 0.75}, PBT_SPACE, "search.quantile_fraction must"),
        ({"type": "pbt", "resample_probability": 2}, PBT_SPACE, "search.resample_probability"),
    ],
)
def test_each_bad_setting_gets_one_line_naming_its_key(search, space, message):
    with pytest.raises(ConfigError) as raised:
        spec_of(search, space)
    assert message in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("last", "told"),
    [
        ({"epoch": 6, "val_acc": 0.9, "diverged": False}, optuna.trial.TrialState.COMPLETE),
        ({"epoch": 2, "val_acc": 0.5, "diverged": False}, optuna.trial.TrialState.PRUNED),
        ({"epoch": 6, "val_acc": 0.1, "diverged": True}, optuna.trial.TrialState.FAIL),
    ],
)
def test_the_per_trial_sampler_is_told_how_each_trial_ended(last, told):
    """As the fused engine's: a trial ASHA stopped is pruned (its rung's value ranks it), a
    diverged one failed; only a trial that ran to its last epoch is told its value."""
    from sweeps.engine.ray_tune import searcher

    spec = spec_of({"type": "bohb", "engine": "trial", "num_samples": 4}, SPACE)
    search = getattr(found := searcher(spec), "searcher", found)  # (ConcurrencyLimiter's)
    assert search.suggest("t1")
    search.on_trial_result("t1", {**last, "training_iteration": 1})
    search.on_trial_complete("t1", last)
    (trial,) = search._ot_study.trials
    assert trial.state == told
    assert trial.value == (None if last["diverged"] else last["val_acc"])  # pruned: its rung's


def test_open_plan_gives_each_unfusable_value_populations_and_keeps_few_in_flight():
    space = {**SPACE, "train.batch_size": {"choice": [16, 32]}}
    plan = fused.open_plan(spec_of({"type": "tpe", "num_samples": 64}, space))
    assert [p.fixed for p in plan.populations] == [
        {"train.batch_size": 16},
        {"train.batch_size": 32},
    ]
    assert [p.slots for p in plan.populations] == [4, 4]  # 64 / 8 in flight, shared out
    assert fused.in_flight(spec_of({"type": "tpe", "num_samples": 1024})) == 128
    assert fused.in_flight(spec_of({"type": "tpe", "num_samples": 10})) == 4


# ---------------------------------------------------------------- open populations (fast)
def run_open(spec, journal: Path, until: int | None = None) -> tuple[fused.PopulationRun, dict]:
    """The spec's one open population asking a real Sampler, to its end (or ``until`` steps);
    every member's news merged."""
    s = spec.search
    sampler = Sampler(journal, spec.space, s.mode, s.seed, s.num_samples, spec.name)
    (population,) = fused.open_plan(spec).populations
    datasets = prepare(spec.trial.data)
    run = fused.PopulationRun.start(population, datasets, sampler)
    merged: dict[str, dict] = {}
    steps = 0
    while not run.done and (until is None or steps < until):
        run.step()
        steps += 1
        for id_, news in run.take_news().items():
            into = merged.setdefault(id_, {"results": [], "end": None, "params": None})
            into["results"] += news["results"]
            into["end"] = news["end"] or into["end"]
            into["params"] = news.get("params", into["params"])
    return run, merged


def study_of(journal: Path, name: str = "t") -> optuna.Study:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(journal)))
    return optuna.load_study(study_name=name, storage=storage)


def test_an_open_population_refills_until_the_budget_and_tells_each_end(tmp_path):
    spec = spec_of({"type": "tpe", "num_samples": 12, "seed": 3})
    run, news = run_open(spec, tmp_path / "search.journal")
    assert sorted(news) == [f"c{i:04d}" for i in range(12)]  # each asked once
    assert all(n["end"]["outcome"] == "completed" for n in news.values())
    assert all(len(n["results"]) == TRAIN["epochs"] for n in news.values())
    trials = study_of(tmp_path / "search.journal").trials
    assert len(trials) == 12 and {t.state.name for t in trials} == {"COMPLETE"}
    for t in trials:  # what the study was told is what the member reported at its end
        last = news[f"c{t.number:04d}"]["results"][-1]
        assert t.value == pytest.approx(last["val_acc"])
        assert set(news[f"c{t.number:04d}"]["params"]) == set(SPACE)


def test_the_same_seed_asks_the_same_configurations(tmp_path):
    spec = spec_of({"type": "tpe", "num_samples": 14, "seed": 5})
    _, first = run_open(spec, tmp_path / "a.journal")
    _, again = run_open(spec, tmp_path / "b.journal")
    assert {i: n["params"] for i, n in first.items()} == {i: n["params"] for i, n in again.items()}


def test_bohb_stops_at_rungs_and_feeds_the_rung_values_to_the_model(tmp_path):
    spec = spec_of({"type": "bohb", "num_samples": 12, "grace_period": 1, "reduction_factor": 2})
    _, news = run_open(spec, tmp_path / "search.journal")
    stopped = [i for i, n in news.items() if n["end"]["outcome"] == "early_stopped"]
    assert stopped and len(news) == 12
    for t in study_of(tmp_path / "search.journal").trials:
        member = news[f"c{t.number:04d}"]
        if member["end"]["outcome"] == "early_stopped":
            assert t.state.name == "PRUNED"
            rung = member["end"]["epochs_run"]
            assert t.intermediate_values[rung] == pytest.approx(member["results"][-1]["val_acc"])


def test_a_restored_open_population_takes_back_what_it_asked_after_its_checkpoint(tmp_path):
    spec = spec_of({"type": "tpe", "num_samples": 10, "seed": 2}, train={"epochs": 3})
    journal = tmp_path / "search.journal"
    run, _ = run_open(spec, journal, until=1)
    run.save(tmp_path)  # held: the first 4
    held = list(run.population.ids)
    run.step()
    run.step()  # the first 4 end after epoch 3: 4 more asked, never checkpointed
    asked = {t.number for t in study_of(journal).trials}
    assert len(asked) == 8
    s = spec.search
    sampler = Sampler(journal, spec.space, s.mode, s.seed, s.num_samples, spec.name)
    (population,) = fused.open_plan(spec).populations
    restored = fused.PopulationRun.restore(population, tmp_path, prepare(spec.trial.data), sampler)
    assert restored.population.ids[: len(held)] == held
    assert sorted(restored.population.ids[len(held) :]) == [f"c{i:04d}" for i in range(4, 8)]
    while not restored.done:
        restored.step()
    trials = study_of(journal).trials
    assert len(trials) == 10 and {t.state.name for t in trials} == {"COMPLETE"}


def test_pbt_copies_the_top_members_state_and_records_each_exploit():
    spec = spec_of(
        {"type": "pbt", "num_samples": 4, "perturbation_interval": 2, "seed": 0},
        PBT_SPACE,
        train={"epochs": 4},
    )
    (population,) = fused.plan(spec, [dict(p) for p in _draws(spec)]).populations
    run = fused.PopulationRun.start(population, prepare(spec.trial.data))
    run.step()
    run.take_news()
    # the epoch before the exploit, then the exploit epoch itself: state after it is src's
    pop = run.population
    run.step()
    news = run.take_news()
    exploits = {i: n["exploits"] for i, n in news.items() if n["exploits"]}
    assert len(exploits) == 1  # ceil(4 * 0.25) = 1 of the bottom copies one of the top
    ((dst, [exploit]),) = exploits.items()
    src = exploit["source"]
    assert exploit["epoch"] == 2 and src != dst
    k, j = pop.ids.index(dst), pop.ids.index(src)
    for fold in pop.folds:
        assert torch.equal(fold.W[:, k], fold.W[:, j]) and torch.equal(fold.b[k], fold.b[j])
        assert fold.state["W"] and fold.state["b"]  # momentum: its velocity is copied too
        for name, buffer in fold.state["W"].items():
            assert torch.equal(buffer[:, k], buffer[:, j]), name
        for name, buffer in fold.state["b"].items():
            assert torch.equal(buffer[k], buffer[j]), name
    scores = {i: news[i]["results"][-1]["val_acc"] for i in pop.ids}
    assert scores[src] == max(scores.values()) and scores[dst] == min(scores.values())
    for key, value in exploit["params"].items():  # the explored values are the member's now
        assert pop.cfgs[k].flat()[key] == pytest.approx(value)
    assert {"lambda", "momentum"} <= set(news[dst]["results"][-1])


def _draws(spec):
    from sweeps.search.draws import sample_params

    return sample_params(spec)


# ---------------------------------------------------------------- real sweeps (slow)
@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("adaptive")
    make_data(folder)
    return folder


def config(workdir: Path, name: str, search: dict, space: dict, **train) -> Path:
    train = {"epochs": 6, "batch_size": 32, "optimizer": "momentum", "schedule": "constant"} | train
    return write_config(workdir, name, train=train, search={"seed": 1, **search}, space=space)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["fused", "trial"])
@pytest.mark.parametrize("kind", ["tpe", "bohb"])
def test_tpe_and_bohb_sweeps_complete_with_a_run_per_configuration(workdir, kind, engine):
    name = f"{kind}-{engine}"
    search = {"type": kind, "engine": engine, "num_samples": 8, "grace_period": 1}
    config(workdir, name, search, SPACE)
    table = finished(workdir, name)
    assert len(table) == 8 and len(table["trial_id"].unique()) == 8
    ends = set(table["status"])
    assert ends <= {"completed", "early_stopped", "diverged"}
    if kind == "bohb":
        assert "early_stopped" in ends
    _, parent, children = runs_of(workdir, name)
    assert sorted(children) == sorted(table["trial_id"]) and parent.info.status == "FINISHED"
    keys = list(SPACE)
    assert len({tuple(r) for r in table[keys].values.tolist()}) == 8  # none asked twice


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["fused", "trial"])
def test_a_tpe_sweep_asks_the_same_configurations_for_the_same_seed(workdir, engine):
    # past TPE's 10 random startup draws, so the model's own asks are compared too
    search = {"type": "tpe", "engine": engine, "num_samples": 12, "max_concurrent": 1}
    tables = []
    for name in (f"same-{engine}-a", f"same-{engine}-b"):
        config(workdir, name, search, SPACE, epochs=3)
        tables.append(finished(workdir, name))
    keys = [*SPACE, "final_val_acc"]  # per trial, Ray names trials at random: compare the rest
    asked = [sorted(map(tuple, t[keys].values.tolist())) for t in tables]
    assert len(set(asked[0])) == 12 and asked[0] == asked[1]


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["fused", "trial"])
def test_pbt_members_keep_one_run_and_show_their_exploits(workdir, engine):
    name = f"pbt-{engine}"
    search = {"type": "pbt", "engine": engine, "num_samples": 4, "perturbation_interval": 2}
    config(workdir, name, search, PBT_SPACE, epochs=6)
    done = sweep(workdir, "run", str(workdir / f"{name}.yaml"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Remote file not found" not in done.stdout + done.stderr  # Ray's, of its own files
    table = pd.read_csv(workdir / "runs" / name / "results.csv")
    assert len(table) == 4 and set(table["status"]) <= {"completed", "diverged"}
    client, parent, children = runs_of(workdir, name)
    assert sorted(children) == sorted(table["trial_id"])
    assert parent.data.tags["best.evaluated"] == "checkpoint"  # a learnt schedule: no refit
    events = [json.loads(x) for x in (workdir / "runs" / name / "history.jsonl").open()]
    epochs = {t: {e["metrics"]["epoch"] for e in events if e.get("trial") == t and
                  e["event"] == "result"} for t in table["trial_id"]}  # fmt: skip
    assert all(epochs[t.trial_id] == set(range(1, t.epochs_run + 1)) for t in table.itertuples())
    exploits = [e for e in events if e["event"] == "exploit"]
    assert exploits, "a population of 4 exploits at epochs 2 and 4"
    for e in exploits:
        run = children[e["trial"]]
        assert f"epoch {e['epoch']} from {e['source']}" in run.data.tags["sweep.exploits"]
        lr = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "lr")}
        new = e["params"]["train.lr"]  # a constant schedule: the lr it trains with
        assert lr[e["epoch"]] != pytest.approx(new) and lr[e["epoch"] + 1] == pytest.approx(new)
        momentum = client.get_metric_history(run.info.run_id, "momentum")
        assert sorted(m.step for m in momentum) == list(range(1, 7))


def killed_then_resumed(
    workdir: Path, name: str, hold: Hold, held: Callable[[], object]
) -> pd.DataFrame:
    """Start the sweep, wait until ``held`` returns (the sweep is where the test wants it),
    SIGKILL its whole process group, resume it to its end; its results.csv."""
    proc = start_sweep("run", str(workdir / f"{name}.yaml"), hold=hold)
    try:
        held()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    resumed = sweep(workdir, "resume", name)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    return pd.read_csv(workdir / "runs" / name / "results.csv")


@pytest.mark.slow
def test_sigkill_then_resume_continues_the_search_without_a_repeat(workdir, monkeypatch):
    name = "tpe-killed"
    search = {"type": "tpe", "engine": "fused", "num_samples": 16, "max_concurrent": 1}
    config(workdir, name, search, SPACE, epochs=30, batch_size=8)
    monkeypatch.chdir(workdir)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    hold = Hold(workdir / "hold", "epoch-10")
    # the first 4 (of 4 slots) ended at 30, told; the next 4 asked and at 10; the kill may
    # come before anything reached the record
    table = killed_then_resumed(workdir, name, hold, lambda: hold.second("epoch-10"))
    assert sorted(table["trial_id"]) == [f"c{i:04d}" for i in range(16)]
    assert len({tuple(r) for r in table[list(SPACE)].values.tolist()}) == 16
    trials = study_of(workdir / "runs" / name / "search.journal", name).trials
    assert len(trials) == 16 and {t.state.name for t in trials} <= {"COMPLETE", "FAIL"}
    _, parent, children = runs_of(workdir, name)
    assert len(children) == 16 and parent.info.status == "FINISHED"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["tpe", "random"])
def test_a_killed_per_trial_sweep_resumes_without_a_repeat(workdir, monkeypatch, kind):
    """Ray restores its last snapshot, which a kill leaves behind the record: the trials it
    does not know leave the record and MLflow, and are asked for again."""
    name = f"{kind}-trial-killed"
    search = {"type": kind, "engine": "trial", "num_samples": 12, "max_concurrent": 1}
    config(workdir, name, search, SPACE, epochs=4)
    monkeypatch.chdir(workdir)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    hold = Hold(workdir / f"hold-{name}", "epoch-2")  # the module's tests share workdir

    def eleventh() -> None:  # past the 10 random asks: the model asked the 11th
        for count in range(1, 11):
            hold.let_go(hold.reached("epoch-2", count)[-1])
        hold.reached("epoch-2", 11)

    table = killed_then_resumed(workdir, name, hold, eleventh)
    assert len(table) == 12 and set(table["status"]) <= {"completed", "diverged"}
    assert len({tuple(r) for r in table[list(SPACE)].values.tolist()}) == 12
    _, parent, children = runs_of(workdir, name)
    assert sorted(children) == sorted(table["trial_id"]) and parent.info.status == "FINISHED"
