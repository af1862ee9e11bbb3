"""The sweep's own settings (search, space, resources, mlflow), validated before anything runs.

``sweep_spec(doc)`` turns a config document into a ``SweepSpec``; it raises ConfigError for
every mistake, so that a bad config stops before Ray starts or MLflow is touched.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweeps.config import trainer_config
from sweeps.layout import DEFAULT_STORAGE, SweepFolder
from trainers.config import RULES, ConfigError, TrialConfig, unknown_key_error

SEARCH_TYPES = ("grid", "random", "asha")
METRICS = {"val_acc": "max", "val_loss": "min"}
DISTRIBUTIONS = ("grid", "choice", "uniform", "loguniform", "randint", "quniform", "qloguniform")
DISCRETE = ("grid", "choice")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

# A searched key that only matters when another key takes one of these values.
DEPENDS_ON = {
    "train.momentum": ("train.optimizer", ("momentum", "nesterov")),
    "train.step_size": ("train.schedule", ("step",)),
    "train.gamma": ("train.schedule", ("step",)),
    "train.elastic_beta": ("train.reg", ("elastic",)),
    "model.margin": ("model.loss", ("hinge", "squared_hinge")),
}


@dataclass
class Search:
    type: str = "random"  # grid | random | asha
    num_samples: int = 0  # random/asha: draws (default 10); grid: repeats (default 1), new seeds
    metric: str = "val_acc"  # val_acc (max) or val_loss (min), measured on the validation split
    max_concurrent: int = 0  # 0: as many trials at once as the resources allow
    grace_period: int = 2  # asha: epochs every trial gets before it can be stopped
    reduction_factor: int = 3  # asha: keep the best 1/reduction_factor at each rung
    brackets: int = 1  # asha
    max_failures: int = 1  # retries of a trial that raises, before it is recorded FAILED
    seed: int = 0  # seeds the draws of the search

    @property
    def mode(self) -> str:
        return METRICS[self.metric]


@dataclass
class Resources:
    cpu: float = 1.0  # per trial
    gpu: float = 0.0  # per trial; a fraction packs several trials on one GPU


@dataclass
class SweepSpec:
    name: str
    trial: TrialConfig  # the fixed part: every trial starts from it
    sections: dict[str, Any]  # the same, as the user's data/model/train mappings
    space: dict[str, dict[str, Any]]  # dotted key -> {distribution: args}
    search: Search = field(default_factory=Search)
    resources: Resources = field(default_factory=Resources)
    storage: Path = Path(DEFAULT_STORAGE)
    tracking_uri: str | None = None

    @property
    def folder(self) -> Path:
        """The sweep's one output folder: results, Ray's trials and checkpoints."""
        return self.files.root

    @property
    def files(self) -> SweepFolder:
        """The named paths inside ``folder``."""
        return SweepFolder.of(self.storage, self.name)

    def num_trials(self) -> int:
        grid = math.prod(len(next(iter(d.values()))) for d in self.space.values() if "grid" in d)
        return grid * self.search.num_samples


SEARCH_RULES = {
    "type": ("one of " + ", ".join(SEARCH_TYPES), lambda v: v in SEARCH_TYPES),
    "num_samples": ("an integer >= 1", lambda v: is_int(v) and v >= 1),
    "metric": ("one of " + ", ".join(METRICS), lambda v: v in METRICS),
    "max_concurrent": ("an integer >= 0", lambda v: is_int(v) and v >= 0),
    "grace_period": ("an integer >= 1", lambda v: is_int(v) and v >= 1),
    "reduction_factor": ("an integer >= 2", lambda v: is_int(v) and v >= 2),
    "brackets": ("an integer >= 1", lambda v: is_int(v) and v >= 1),
    "max_failures": ("an integer >= 0", lambda v: is_int(v) and v >= 0),
    "seed": ("an integer >= 0", lambda v: is_int(v) and v >= 0),
}
RESOURCE_RULES = {
    "cpu": ("a number > 0", lambda v: _num(v) and v > 0),
    "gpu": ("a number >= 0 (a fraction shares a GPU)", lambda v: _num(v) and v >= 0),
}


def is_int(v: Any) -> bool:
    """An integer that is not a bool (YAML's true is an int to Python)."""
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _section(doc: dict[str, Any], name: str, rules: dict, cls: type) -> Any:
    given = doc.get(name) or {}
    if not isinstance(given, dict):
        raise ConfigError(f"{name} must be a mapping; got {given!r}")
    for key, value in given.items():
        if key not in rules:
            raise unknown_key_error(f"{name}.{key}", [f"{name}.{k}" for k in rules])
        allowed, ok = rules[key]
        if not ok(value):
            raise ConfigError(f"{name}.{key} must be {allowed}; got {value!r}")
    return cls(**given)


def _check_distribution(key: str, spec: Any, search_type: str) -> dict[str, Any]:
    """One ``space`` entry: exactly one distribution whose values the key's rule accepts."""
    if key not in RULES:
        raise unknown_key_error(f"space.{key}", [f"space.{k}" for k in RULES])
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigError(
            f"space.{key} must be one distribution, e.g. {{choice: [a, b]}} or "
            f"{{loguniform: [1e-4, 1e-1]}}; got {spec!r}"
        )
    (kind, args), rule = next(iter(spec.items())), RULES[key]
    if kind not in DISTRIBUTIONS:
        raise ConfigError(
            f"space.{key}: unknown distribution {kind}; use one of {', '.join(DISTRIBUTIONS)}"
        )
    if search_type == "grid" and kind != "grid":
        raise ConfigError(
            f"space.{key}: a grid search needs explicit values ({{grid: [...]}}), not {kind}; "
            "use search.type random or asha to sample"
        )
    if key == "train.epochs" and search_type == "asha":
        raise ConfigError(
            "space.train.epochs cannot be searched with asha: its max_t is train.epochs"
        )
    if not isinstance(args, list) or not args:
        raise ConfigError(f"space.{key}.{kind} must be a non-empty list; got {args!r}")
    if kind in DISCRETE:
        return {kind: [rule.check(f"space.{key}", v) for v in args]}
    n_args = 3 if kind.startswith("q") else 2
    if len(args) != n_args or rule.choices or rule.kind is bool:
        form = "[low, high, step]" if n_args == 3 else "[low, high]"
        raise ConfigError(f"space.{key}.{kind} must be {form} of a numeric key; got {args!r}")
    if kind == "randint" and rule.kind is not int:
        raise ConfigError(f"space.{key}: randint is for integer keys; use uniform or loguniform")
    if kind != "randint" and rule.kind is int:
        raise ConfigError(f"space.{key} takes integers: use randint or choice, not {kind}")
    low, high = (rule.check(f"space.{key}", v) for v in args[:2])
    if not low < high:
        raise ConfigError(f"space.{key}.{kind} needs low < high; got {args!r}")
    if "log" in kind and low <= 0:
        raise ConfigError(f"space.{key}.{kind} needs low > 0 for a log scale; got {low!r}")
    if n_args == 3 and not (_num(args[2]) and args[2] > 0):
        raise ConfigError(f"space.{key}.{kind}: the step must be a number > 0; got {args[2]!r}")
    return {kind: [low, high, *args[2:]]}


def _possible(key: str, trial: TrialConfig, space: dict[str, dict[str, Any]]) -> set[Any]:
    """Every value ``key`` can take in this sweep."""
    if key in space:
        return set(next(iter(space[key].values())))
    return {trial.flat()[key]}


def _check_together(trial: TrialConfig, space: dict[str, dict[str, Any]]) -> None:
    for key, (parent, needs) in DEPENDS_ON.items():
        if key in space and not _possible(parent, trial, space) & set(needs):
            raise ConfigError(
                f"space.{key} is searched but {parent} is never {' or '.join(needs)}; "
                f"set {parent} to {needs[0]} or search it too"
            )


def sweep_spec(doc: dict[str, Any], name: str | None = None) -> SweepSpec:
    """Validate a whole sweep config document; raise ConfigError at the first mistake."""
    trial = trainer_config(doc)
    search = _section(doc, "search", SEARCH_RULES, Search)
    search.num_samples = search.num_samples or (1 if search.type == "grid" else 10)
    resources = _section(doc, "resources", RESOURCE_RULES, Resources)
    space_doc = doc.get("space") or {}
    if not isinstance(space_doc, dict):
        raise ConfigError(
            "space must map trainer keys to distributions, e.g. train.lr: {loguniform: [1e-4, 1]}"
        )
    space = {str(k): _check_distribution(str(k), v, search.type) for k, v in space_doc.items()}
    _check_together(trial, space)
    name = name or doc.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ConfigError(
            f"name must be letters, digits, '_', '.' or '-' (at most 64); got {name!r}; "
            "set name: in the config or pass --name"
        )
    storage = doc.get("storage") or DEFAULT_STORAGE
    mlflow = doc.get("mlflow") or {}
    if not isinstance(storage, str):
        raise ConfigError(f"storage must be a folder path; got {storage!r}")
    if not isinstance(mlflow, dict) or set(mlflow) - {"tracking_uri"}:
        raise ConfigError(f"mlflow takes one key, tracking_uri; got {mlflow!r}")
    if search.type == "asha" and search.grace_period > trial.train.epochs:
        raise ConfigError(
            f"search.grace_period must be <= train.epochs ({trial.train.epochs}); "
            f"got {search.grace_period}"
        )
    sections = {k: doc.get(k) or {} for k in ("data", "model", "train")}
    return SweepSpec(
        name=name,
        trial=trial,
        sections=sections,
        space=space,
        search=search,
        resources=resources,
        storage=Path(storage).expanduser(),
        tracking_uri=mlflow.get("tracking_uri"),
    )
