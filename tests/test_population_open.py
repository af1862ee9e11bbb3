"""A population that changes while it trains: members added (a sampler's refills), one member's
state copied onto another and hyperparameters changed (Population Based Training's exploit and
explore). Each is checked against a member or Trial that trained without the change."""

import json

import pytest
import torch
from test_population import DATA, config, same_metrics  # tests/ is on the path (conftest)

from trainers.config import ConfigError, trial_config
from trainers.data import prepare
from trainers.loop import CHECKPOINT_FILE, Trial
from trainers.population import CHECKPOINT_FILE as POPULATION_FILE
from trainers.population import Population
from trainers.schedule import lr_factor

CV = {**DATA, "folds": 2}
CHANGES = {"train": {"lr": 0.08, "lambda": 0.05, "momentum": 0.6, "elastic_beta": 0.2},
           "model": {"margin": 0.5}}  # fmt: skip
NO_PENALTY = {"train": {"lr": 0.08, "lambda": 0.0}}  # the population computes no penalty then


@pytest.fixture(scope="module")
def datasets():
    return prepare(config().data)


@pytest.fixture(scope="module")
def cv_datasets():
    return prepare(config(data=CV).data)


def changed(cfg, changes=CHANGES):
    """cfg with ``changes`` ({section: {key: value}}) applied."""
    sections = cfg.to_dict()
    return trial_config({s: {**keys, **changes.get(s, {})} for s, keys in sections.items()})


def without_time(history):
    return [{k: v for k, v in h.items() if k != "epoch_seconds"} for h in history]


def states(pop, k):
    """Member k's weights and every optimizer buffer, fold by fold."""
    return [
        [f.W[:, k], f.b[k], *(t[..., k, :] for s in f.state.values() for t in s.values())]
        for f in pop.folds
    ]


def close(x, y):
    """Within float32 rounding: a column's products round differently at another position."""
    return torch.allclose(x, y, rtol=1e-6, atol=1e-7)


def assert_equal_states(a, b, same=torch.equal):
    for fold_a, fold_b in zip(a, b, strict=True):
        assert len(fold_a) == len(fold_b)
        assert all(same(x, y) for x, y in zip(fold_a, fold_b))


@pytest.mark.parametrize("first", [["momentum"], ["sgd", "adam"]])
def test_added_members_train_as_in_a_fresh_population(cv_datasets, first):
    old = [config("hinge", optimizer=opt, lr=0.02, seed=i, data=CV, epochs=6)
           for i, opt in enumerate(first)]  # fmt: skip
    new = [config(optimizer="adam", lr=0.01, seed=7, data=CV, epochs=4, schedule="cosine",
                  warmup_epochs=2),  # its first lr (warm-up): in its fallback metrics too
           config("squared_hinge", optimizer="nesterov", reg="elastic", seed=8, data=CV,
                  epochs=4)]  # fmt: skip
    pop, twin = Population(old, cv_datasets), Population(old, cv_datasets)  # twin: never grown
    for _ in range(2):
        pop.step(), twin.step()
    pop.add(new, ["a", "n"])
    assert pop.ids == [*range(len(old)), "a", "n"] and pop.epochs_run[-2:] == [0, 0]
    assert pop.folds[0].state["W"]["m"].shape == (8, len(old) + 2, 3)  # Adam's, for everyone
    fresh = Population(new, cv_datasets, ids=["a", "n"])
    for grown_fold, fresh_fold in zip(pop.folds, fresh.folds, strict=True):
        fresh_fold.order.set_state(grown_fold.order.get_state())  # the same batches from now on
    for k in (0, 1):
        same_metrics(pop.last_finite[len(old) + k], fresh.last_finite[k])
    for _ in range(4):
        grown, alone, before = pop.step(), fresh.step(), twin.step()
        for id_ in ("a", "n"):
            same_metrics(grown[id_], alone[id_])
        for k in range(len(old)):  # the first members do not notice
            same_metrics(grown[k], before[k])
    assert pop.done and pop.step_epochs == [6] * len(old) + [4, 4]


def test_an_added_member_must_share_the_batches_and_have_a_new_id(datasets):
    pop = Population([config(), config(seed=1)], datasets, ids=["a", "b"])
    with pytest.raises(ValueError, match="distinct names"):
        pop.add([config(seed=2)], ["a"])
    with pytest.raises(ValueError, match="distinct names"):
        pop.add([config(seed=2), config(seed=3)], ["c", "c"])
    with pytest.raises(ConfigError, match="train.batch_size must be the same"):
        pop.add([config(batch_size=64)], ["c"])
    assert pop.ids == ["a", "b"] and pop.folds[0].W.shape == (8, 2, 3)


def test_an_exported_added_member_holds_its_own_adam_step_count(cv_datasets, tmp_path):
    pop = Population([config(optimizer="adam", lr=0.01, data=CV)], cv_datasets)
    pop.step()
    pop.add([config(optimizer="adam", lr=0.02, seed=5, data=CV)], ["late"])
    for _ in range(2):
        pop.step()
    pop.export("late", tmp_path)
    trial = Trial.load(tmp_path, cv_datasets)
    for trainer, fold in zip(trial.trainers, pop.folds, strict=True):
        assert trainer.optimizer.state["step"].item() == 2 * len(fold.batches(32))


def test_copy_member_gives_dst_the_state_of_src(cv_datasets):
    adam = {"optimizer": "adam", "lr": 0.01, "schedule": "constant", "data": CV}
    cfgs = [config(seed=1, **adam), config("hinge", data=CV)]

    def trained():
        pop = Population(cfgs, cv_datasets, ids=["src", "other"])
        pop.step()
        pop.add([config(seed=2, **adam)], ["dst"])  # equal hyperparameters and lr, fewer steps
        pop.step()
        return pop

    pop, twin = trained(), trained()
    dst_history = list(pop.history[2])
    pop.copy_member("src", "dst")
    assert_equal_states(states(pop, 2), states(pop, 0))
    assert pop.step_epochs == [2, 2, 2] and pop.epochs_run == [2, 2, 1]
    assert pop.history[2] == dst_history and pop.cfgs[2].train.seed == 2
    pop.step(), twin.step()
    assert_equal_states(states(pop, 2), states(pop, 0), close)  # Adam's count copied too
    assert_equal_states(states(pop, 0), states(twin, 0))  # src as if nothing happened
    assert_equal_states(states(pop, 1), states(twin, 1))


@pytest.mark.parametrize("changes", [CHANGES, NO_PENALTY], ids=["values", "code_paths"])
@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
def test_a_reconfigured_member_trains_as_a_reconfigured_trial(datasets, optimizer, changes):
    cfg = config("hinge", optimizer=optimizer, lr=0.02, reg="elastic", momentum=0.5, epochs=5)
    new = changed(cfg, changes)
    pop = Population([cfg, config(seed=4)], datasets)  # cfg's seed is the order seed
    trial, unchanged = Trial(cfg, datasets), Trial(cfg, datasets)
    for epoch in range(5):
        if epoch == 2:
            pop.reconfigure(0, new)
            trial.reconfigure(new)
        same_metrics(pop.step()[0], trial.step())
        unchanged.step()
    assert pop.cfgs[0] == new and trial.cfg == new
    assert trial.history[-1]["lr"] == pytest.approx(new.train.lr * lr_factor(4, new.train))
    assert trial.history[-1]["train_total_loss"] != unchanged.history[-1]["train_total_loss"]


def test_a_reconfigured_trial_trains_as_one_resumed_under_the_new_config(datasets, tmp_path):
    cfg = config("squared_hinge", optimizer="nesterov", reg="elastic", momentum=0.5, epochs=5)
    new = changed(cfg)
    trial = Trial(cfg, datasets)
    for _ in range(2):
        trial.step()
    trial.save(tmp_path)
    state = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)
    torch.save({**state, "config": new.to_dict()}, tmp_path / CHECKPOINT_FILE)
    resumed = Trial.load(tmp_path, datasets)  # built with the new config from the start
    trial.reconfigure(new)
    trial.run(), resumed.run()
    assert without_time(trial.history) == without_time(resumed.history)


@pytest.mark.parametrize(
    "changes, key",
    [
        ({"train": {"optimizer": "adam"}}, "train.optimizer"),
        ({"train": {"batch_size": 16}}, "train.batch_size"),
        ({"train": {"epochs": 9}}, "train.epochs"),
        ({"train": {"lr": 0.1, "seed": 3}}, "train.seed"),
        ({"model": {"loss": "hinge"}}, "model.loss"),
        ({"data": {"seed": 2}}, "data.seed"),
    ],
)
def test_reconfigure_refuses_a_change_of_the_state_layout(datasets, changes, key):
    cfg = config()
    pop, trial = Population([cfg], datasets), Trial(cfg, datasets)
    for target in (lambda c: pop.reconfigure(0, c), trial.reconfigure):
        with pytest.raises(ValueError, match=key):
            target(changed(cfg, changes))
    assert pop.cfgs == [cfg] and trial.cfg == cfg


def test_resume_after_add_and_copy_equals_uninterrupted_run(cv_datasets, tmp_path):
    def grown():
        cfgs = [config(optimizer="adam", lr=0.01, data=CV, epochs=5), config("hinge", data=CV)]
        pop = Population(cfgs, cv_datasets, ids=["x", "y"])
        pop.step()
        pop.add([config(optimizer="adam", lr=0.02, seed=3, data=CV, epochs=4)], ["z"])
        pop.step()
        pop.copy_member("x", "z")
        return pop

    full, first = grown(), grown()
    first.save(tmp_path)
    resumed = Population.load(tmp_path, cv_datasets)
    assert resumed.ids == ["x", "y", "z"]
    assert resumed.step_epochs == [2, 2, 2] and resumed.epochs_run == [2, 2, 1]
    while not full.done:
        full.step(), resumed.step()
    assert resumed.done
    for k in range(3):
        assert without_time(resumed.history[k]) == without_time(full.history[k])
        assert_equal_states(states(resumed, k), states(full, k))


def test_a_checkpoint_without_step_counts_counts_the_epochs_run(datasets, tmp_path):
    pop = Population([config(optimizer="adam", lr=0.01), config(seed=1)], datasets)
    for _ in range(2):
        pop.step()
    pop.save(tmp_path)
    path = tmp_path / POPULATION_FILE
    state = torch.load(path, weights_only=True)
    plain = json.loads(state["plain"])
    plain["adam_t"] = 2 * len(pop.folds[0].batches(32))  # the shared count it held then
    del plain["step_epochs"]
    torch.save({**state, "plain": json.dumps(plain)}, path)
    assert Population.load(tmp_path, datasets).step_epochs == [2, 2]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_a_graphed_population_changes_as_an_eager_one_on_cuda():
    data = {"source": "synthetic", "n_samples": 3000, "n_features": 40, "n_classes": 5}
    kw = {"data": data, "device": "cuda", "batch_size": 64, "epochs": 6}
    cfgs = [config("hinge", reg="l1", seed=1, **kw), config(reg="none", seed=2, **kw)]
    graphed, eager = Population(cfgs), Population(cfgs)
    for fold in eager.folds:
        fold.use_graph = False
    got, want = [graphed.step()], [eager.step()]
    graph = graphed.folds[0].graph
    for pop in (graphed, eager):  # the same code paths: the graph reads the new values
        pop.reconfigure(0, changed(cfgs[0], {"train": {"lr": 0.2}, "model": {"margin": 0.3}}))
    got.append(graphed.step()), want.append(eager.step())
    assert graphed.folds[0].graph is graph
    for pop in (graphed, eager):  # no penalty left: captured again
        pop.reconfigure(0, changed(cfgs[0], {"train": {"lambda": 0.0}}))
        pop.add([config(optimizer="nesterov", seed=3, **kw)], ["new"])
        pop.copy_member(1, "new")
    got += [graphed.step() for _ in range(2)]
    want += [eager.step() for _ in range(2)]
    assert graphed.folds[0].graph not in (None, graph)
    for g, w in zip(got, want, strict=True):
        assert list(g) == list(w)
        for id_ in g:
            same_metrics(g[id_], w[id_])
