"""search.population_size auto: the most members that fit a population's share of the device's
free memory beside the data (sweeps.engine.fused.sized), the refusals when not one fits, and a
real fused sweep that records the size it chose (slow)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from sweeps.engine import fused
from sweeps.spec.sweep import AUTO_POPULATION, DataSize, sweep_spec
from trainers.config import ConfigError
from trainers.population import MEASURE_BYTES, member_bytes

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweeping import make_data, runs_of, write_config  # noqa: E402
from test_fused import finished  # noqa: E402

GiB = 2**30
CPU = {"cpu": 1.0, "gpu": 0.0}
IMAGENET = DataSize(rows=1_281_167, features=2048, classes=1000)  # embeddings, as float32


def spec_of(search: dict | None = None, train: dict | None = None, space: dict | None = None):
    doc = {
        "name": "t",
        "data": {"source": "digits"},
        "train": {"batch_size": 256, "optimizer": "momentum"} | (train or {}),
        "search": {"engine": "fused", "type": "random", "num_samples": 64} | (search or {}),
        "space": space or {"train.lr": {"loguniform": [1e-3, 1.0]}},
    }
    return sweep_spec(doc)


def test_small_data_gets_the_cap_and_a_set_size_or_a_kept_one_stays():
    spec = spec_of()
    assert spec.search.population_size == "auto"
    digits = DataSize(rows=1617, features=64, classes=10)
    assert fused.fitting(spec, digits, CPU, 2, free=8 * GiB) == AUTO_POPULATION
    assert fused.sized(spec, digits, CPU, 2, kept=7).search.population_size == 7  # a resume
    fixed = spec_of({"population_size": 16})
    assert fused.sized(fixed, digits, CPU, 2).search.population_size == 16
    per_trial = spec_of({"engine": "trial"})
    assert fused.sized(per_trial, digits, CPU, 2).search.population_size == "auto"


@pytest.mark.parametrize("free_gib", [24, 64, 200])
@pytest.mark.parametrize("cpus", [1, 2, 16])
def test_the_size_is_the_most_members_that_fit_the_cores_share(free_gib, cpus):
    """On the CPU the populations of a node map one copy of the data and share the rest of the
    memory by cores; the size is the largest whose members fit their share, up to the cap."""
    spec, free = spec_of(), free_gib * GiB
    size = fused.fitting(spec, IMAGENET, CPU, cpus, free=free)
    data = IMAGENET.rows * (4 * IMAGENET.features + 8)
    member = member_bytes(IMAGENET.features, IMAGENET.classes, 256, ["momentum"])
    budget = (0.8 * free - data) / cpus - MEASURE_BYTES
    assert 1 <= size <= AUTO_POPULATION and size * member <= budget
    assert size == AUTO_POPULATION or (size + 1) * member > budget


def test_adam_and_a_larger_batch_cost_more_memory_per_member():
    sgd = member_bytes(2048, 1000, 256, ["sgd"])
    assert member_bytes(2048, 1000, 256, ["momentum"]) == sgd  # one buffer either way
    assert member_bytes(2048, 1000, 256, ["adam"]) > sgd
    assert member_bytes(2048, 1000, 256, ["sgd", "adam"]) > member_bytes(2048, 1000, 256, ["adam"])
    assert member_bytes(2048, 1000, 1024, ["sgd"]) > sgd
    free = 24 * GiB
    alone = fused.fitting(spec_of(train={"optimizer": "sgd"}), IMAGENET, CPU, 2, free)
    mixed = spec_of(space={"train.optimizer": {"choice": ["sgd", "adam"]}})
    assert fused.fitting(mixed, IMAGENET, CPU, 2, free) < alone


@pytest.mark.parametrize("engine", ["fused", "trial"])
def test_one_configuration_that_does_not_fit_is_refused_in_one_line(engine):
    with pytest.raises(ConfigError) as refused:  # the data alone: 9.8 GiB
        fused.fitting(spec_of({"engine": engine}), IMAGENET, CPU, 2, free=12 * GiB)
    message = str(refused.value)
    key = "search.population_size auto" if engine == "fused" else "resources.cpu 1"
    assert message.startswith(f"{key}: one configuration of 1000 classes x 2048 features")
    assert "\n" not in message and "use a smaller train.batch_size" in message


def test_a_pbt_population_that_does_not_fit_names_its_members():
    spec = spec_of({"type": "pbt", "num_samples": 200}, {"optimizer": "momentum"})
    wide = DataSize(rows=10_000, features=100_000, classes=100)  # 120 MB a member
    with pytest.raises(ConfigError, match="pbt's 200 members of 100 classes x 100000 features"):
        fused.fitting(spec, wide, CPU, 2, free=24 * GiB)


@pytest.mark.slow
def test_a_fused_sweep_records_the_size_it_chose(tmp_path):
    make_data(tmp_path)
    search = {"type": "random", "engine": "fused", "num_samples": 6}
    write_config(tmp_path, "auto", search=search, space={"train.lr": {"loguniform": [1e-3, 0.3]}})
    table = finished(tmp_path, "auto")
    assert len(table) == 6
    _, parent, children = runs_of(tmp_path, "auto")
    assert len(children) == 6
    assert 1 <= int(parent.data.params["search.population_size"]) <= AUTO_POPULATION
