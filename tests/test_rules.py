"""The rule tables drive these tests: each rule makes one invalid value per constraint, and the
real entry point (a trainer config, a sweep config, a cluster profile, a searched space) must
answer it with the one-line message of the one template."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sweeps.cli import PORT
from sweeps.slurm import submit
from sweeps.spec.sweep import SWEEP_RULES, sweep_spec
from trainers.config import RULES, ConfigError, trial_config
from trainers.rules import Rule, shown

ROOT = Path(__file__).resolve().parents[1]
BASE = {  # draws differ only where something is searched (an empty space is refused)
    "name": "t",
    "search": {"type": "random", "num_samples": 2},
    "space": {"train.lr": {"loguniform": [1e-3, 0.3]}},
}


def message(key: str, rule: Rule, value: object) -> str:
    return f"{key} must be {rule.describe()}; got {shown(value)}"


def cases(table: dict[str, Rule], means_default: tuple = ()) -> list:
    """(key, rule, invalid value) for every rule of a table; ``means_default``: values that
    stand for the default in that table's file (an empty profile value means "")."""
    return [
        pytest.param(key, rule, value, id=f"{key}={value!r}")
        for key, rule in table.items()
        for value in rule.invalid_values()
        if not any(value is d or value == d for d in means_default)
    ]


def nested(dotted: str, value: object) -> dict:
    head, _, rest = dotted.partition(".")
    return {head: {rest: value}} if rest else {head: value}


def refused(call, *args) -> str:
    with pytest.raises(ConfigError) as err:
        call(*args)
    text = str(err.value)
    assert "\n" not in text
    return text


def test_every_rule_makes_invalid_values():
    tables = [RULES, SWEEP_RULES, submit.RULES, {"--port": PORT}]
    empty = [key for table in tables for key, rule in table.items() if not rule.invalid_values()]
    assert empty == []


@pytest.mark.parametrize(("key", "rule", "value"), cases(RULES))
def test_trainer_keys(key, rule, value):
    assert refused(trial_config, nested(key, value)) == message(key, rule, value)


@pytest.mark.parametrize(("key", "rule", "value"), cases(SWEEP_RULES))
def test_sweep_keys(key, rule, value):
    doc = {**BASE, **nested(key, value)}
    assert refused(sweep_spec, doc) == message(key, rule, value)


@pytest.mark.parametrize(("key", "rule", "value"), cases(submit.RULES, means_default=(None,)))
def test_profile_keys(tmp_path, key, rule, value):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({key: value}))
    assert refused(submit.load_profile, str(path)) == message(f"profile p: {key}", rule, value)


def searched(rule: Rule, bad: object) -> list[dict]:
    """Distributions over a key that can produce ``bad``: as a listed value, or as the low
    bound of a range."""
    dists = [{"choice": [bad]}, {"grid": [bad]}]
    numeric = isinstance(bad, (int, float)) and not isinstance(bad, bool)
    if rule.kind in (int, float) and numeric and math.isfinite(bad):
        dists += [{"randint" if rule.kind is int else "uniform": [bad, bad + 1]}]
    return dists


SPACE_CASES = [
    pytest.param(key, rule, bad, dist, id=f"{key}:{dist}")
    for key, rule in RULES.items()
    for bad in rule.invalid_values()
    for dist in searched(rule, bad)
]


@pytest.mark.parametrize(("key", "rule", "bad", "dist"), SPACE_CASES)
def test_every_value_a_distribution_can_produce(key, rule, bad, dist):
    """Both bounds of a range, each value of a grid or choice, by the key's own rule."""
    search = {"type": "grid"} if "grid" in dist else BASE["search"]
    doc = {**BASE, "search": search, "space": {key: dist}}
    assert refused(sweep_spec, doc) == message(f"space.{key}", rule, bad)


def test_trainers_import_neither_ray_nor_mlflow_nor_sweeps():
    modules = sorted(p.stem for p in (ROOT / "trainers").glob("*.py") if p.stem != "__init__")
    code = (
        f"import sys; import {', '.join(f'trainers.{m}' for m in modules)}; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'mlflow', 'sweeps'));"
        " assert not bad, bad"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
