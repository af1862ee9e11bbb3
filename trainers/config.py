"""The trial configuration: one place for every trainer setting, its default and its rule.

A trial is described by three sections, ``data``, ``model`` and ``train``. Users write them
in YAML as nested mappings; code refers to a setting by its dotted key (``train.lr``).
Validation is a table of rules with one message template, so every user mistake gets the
same kind of one-line answer naming the key and what is allowed.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import asdict, dataclass, field
from typing import Any

SOURCES = ("digits", "npz", "csv", "parquet", "cifar10", "synthetic")
LOSSES = ("softmax", "hinge", "squared_hinge")
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam")
REGULARIZERS = ("l2", "l1", "elastic", "none")
SCHEDULES = ("constant", "step", "cosine")
DEVICES = ("auto", "cpu", "cuda")


class ConfigError(ValueError):
    """A user mistake in a config, an override or an input file; the message is one line."""


@dataclass
class DataConfig:
    source: str = "digits"  # one of SOURCES
    path: str | None = None  # file (npz, csv, parquet) or folder (cifar10)
    label_column: str = "label"  # csv / parquet column holding the labels 0..C-1
    val_fraction: float = 0.2  # of all examples, unless the file gives its splits
    test_fraction: float = 0.2
    folds: int = 1  # k > 1: k-fold cross-validation over train+val, metric = mean over folds
    seed: int = 0  # seeds the split and synthetic data, not the training
    standardize: bool = True  # zero mean, unit variance, statistics from the training split only
    n_samples: int = 2000  # synthetic only: examples, features, classes
    n_features: int = 20
    n_classes: int = 5


@dataclass
class ModelConfig:
    loss: str = "softmax"  # softmax cross-entropy, multiclass hinge, or its square
    margin: float = 1.0  # hinge margin (the course's delta)


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.05
    optimizer: str = "momentum"  # sgd | momentum (v = rho*v + g) | nesterov | adam
    momentum: float = 0.9  # rho, for momentum and nesterov
    reg: str = "l2"  # R(W) on the weights only, never the bias
    lambda_: float = 1e-4  # written `lambda` in configs; the loss is data + lambda * R(W)
    elastic_beta: float = 0.5  # elastic net: R(W) = sum(beta * W^2 + |W|)
    schedule: str = "cosine"  # constant | step | cosine, applied per epoch
    step_size: int = 10  # step: lr *= gamma every step_size epochs
    gamma: float = 0.1
    warmup_epochs: int = 0  # linear warm-up before the schedule starts
    seed: int = 0  # seeds the initial weights and the minibatch order
    device: str = "auto"  # auto picks the GPU when there is one


@dataclass
class TrialConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Nested plain dict with the user's key names (``lambda``, not ``lambda_``)."""
        return {
            name: {_key(k): v for k, v in asdict(sec).items()}
            for name, sec in (("data", self.data), ("model", self.model), ("train", self.train))
        }

    def flat(self) -> dict[str, Any]:
        """Dotted keys to values, e.g. ``{"train.lr": 0.05, ...}``."""
        return {f"{s}.{k}": v for s, sec in self.to_dict().items() for k, v in sec.items()}


SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}


def _key(attr: str) -> str:
    return attr.rstrip("_")


def _attr(key: str) -> str:
    return "lambda_" if key == "lambda" else key


# ---------------------------------------------------------------- rules
@dataclass(frozen=True)
class Rule:
    """What one key accepts: a type, optionally a set of names or an interval."""

    kind: type
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    optional: bool = False

    def describe(self) -> str:
        if self.choices:
            return "one of " + ", ".join(self.choices)
        what = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[
            self.kind
        ]
        if self.low is not None and self.high is not None:
            lo, hi = "(" if self.low_open else "[", ")" if self.high_open else "]"
            what += f" in {lo}{self.low:g}, {self.high:g}{hi}"
        elif self.low is not None:
            what += f" {'>' if self.low_open else '>='} {self.low:g}"
        return what

    def check(self, key: str, value: Any) -> Any:
        """Return the value (ints widened to float where a number is asked) or raise."""
        if value is None and self.optional:
            return None
        ok_type = isinstance(value, self.kind) and not (
            self.kind is not bool and isinstance(value, bool)
        )
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok_type = float(value), True
        if ok_type and self.kind is float and not math.isfinite(value):
            ok_type = False
        if ok_type and self.choices and value not in self.choices:
            ok_type = False
        if ok_type and self.low is not None:
            ok_type = value > self.low if self.low_open else value >= self.low
        if ok_type and self.high is not None:
            ok_type = ok_type and (value < self.high if self.high_open else value <= self.high)
        if not ok_type:
            raise ConfigError(f"{key} must be {self.describe()}; got {value!r}")
        return value


def _choice(names: tuple[str, ...]) -> Rule:
    return Rule(str, choices=names)


FRACTION = Rule(float, low=0.0, high=1.0, low_open=True, high_open=True)
POSITIVE_INT = Rule(int, low=1)

RULES: dict[str, Rule] = {
    "data.source": _choice(SOURCES),
    "data.path": Rule(str, optional=True),
    "data.label_column": Rule(str),
    "data.val_fraction": FRACTION,
    "data.test_fraction": FRACTION,
    "data.folds": POSITIVE_INT,
    "data.seed": Rule(int, low=0),
    "data.standardize": Rule(bool),
    "data.n_samples": Rule(int, low=2),
    "data.n_features": POSITIVE_INT,
    "data.n_classes": Rule(int, low=2),
    "model.loss": _choice(LOSSES),
    "model.margin": Rule(float, low=0.0, low_open=True),
    "train.epochs": POSITIVE_INT,
    "train.batch_size": POSITIVE_INT,
    "train.lr": Rule(float, low=0.0, low_open=True),
    "train.optimizer": _choice(OPTIMIZERS),
    "train.momentum": Rule(float, low=0.0, high=1.0, high_open=True),
    "train.reg": _choice(REGULARIZERS),
    "train.lambda": Rule(float, low=0.0),
    "train.elastic_beta": Rule(float, low=0.0),
    "train.schedule": _choice(SCHEDULES),
    "train.step_size": POSITIVE_INT,
    "train.gamma": Rule(float, low=0.0, high=1.0, low_open=True),
    "train.warmup_epochs": Rule(int, low=0),
    "train.seed": Rule(int, low=0),
    "train.device": _choice(DEVICES),
}


def unknown_key_error(key: str, known: list[str] | tuple[str, ...]) -> ConfigError:
    """One line for a misspelt key, suggesting the nearest known one."""
    near = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"; did you mean {near[0]}?" if near else f"; known keys: {', '.join(known)}"
    return ConfigError(f"unknown key {key}{hint}")


def trial_config(sections: dict[str, Any]) -> TrialConfig:
    """Build and validate a TrialConfig from nested ``{"data": {...}, "model": ..., ...}``."""
    if not isinstance(sections, dict):
        raise ConfigError("a config must be a mapping with sections data, model and train")
    built = {}
    for name, cls in SECTIONS.items():
        given = sections.get(name) or {}
        if not isinstance(given, dict):
            raise ConfigError(f"{name} must be a mapping of keys to values; got {given!r}")
        values = {}
        for key, value in given.items():
            dotted = f"{name}.{key}"
            if dotted not in RULES:
                raise unknown_key_error(dotted, list(RULES))
            values[_attr(str(key))] = RULES[dotted].check(dotted, value)
        built[name] = cls(**values)
    for name in sections:
        if name not in SECTIONS:
            raise unknown_key_error(str(name), list(SECTIONS))
    cfg = TrialConfig(**built)
    _check_together(cfg)
    return cfg


def _check_together(cfg: TrialConfig) -> None:
    """Rules that tie several keys together."""
    d = cfg.data
    if d.val_fraction + d.test_fraction >= 1.0:
        raise ConfigError(
            "data.val_fraction + data.test_fraction must be < 1 to leave a training split; "
            f"got {d.val_fraction:g} + {d.test_fraction:g}"
        )
    if d.source in ("npz", "csv", "parquet", "cifar10") and not d.path:
        raise ConfigError(f"data.path is required for data.source {d.source}")
    if cfg.train.optimizer == "nesterov" and cfg.train.momentum == 0:
        raise ConfigError("train.momentum must be > 0 for train.optimizer nesterov; got 0")
    if cfg.train.warmup_epochs >= cfg.train.epochs:
        raise ConfigError(
            f"train.warmup_epochs must be < train.epochs ({cfg.train.epochs}); "
            f"got {cfg.train.warmup_epochs}"
        )
