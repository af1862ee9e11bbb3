"""The searched space: one table of the distributions a key can be searched with, and the
``Dimension`` each ``space`` entry is checked into.

A ``space`` entry is ``dotted key: {distribution: args}``. ``Dimension.parse`` checks it
against the table (the arguments' form, the key's type, a log scale's positive low, a step's
multiples) and against the key's own rule (trainers.config.RULES) for every value it can
produce; a mistake is a one-line ConfigError. ``Space`` holds a sweep's dimensions in the
config's order, and writes them back in that same form (``doc``) for MLflow's ``space`` param.
What is drawn from it is named here too: each configuration's id (``config_id``), each value
as plain Python (``plain``). Pure Python, like the rule tables: the Ray domains are drawn from
it in sweeps/search/draws.py.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from trainers.config import RULES, ConfigError
from trainers.rules import Rule, one_line, shown, unknown_key_error

STEP = Rule(float, low=0.0, low_open=True)  # the step of quniform and qloguniform


@dataclass(frozen=True)
class Distribution:
    """One way to search a key: what its arguments are, and what it draws."""

    name: str
    discrete: bool = False  # its arguments are the values themselves, for a key of any type
    kind: type | None = None  # a range's keys: int or float
    log: bool = False  # drawn on a log scale: its low must be > 0
    step: bool = False  # a third argument, the step every draw is rounded to
    doc: str = ""

    @property
    def form(self) -> str:
        """What its list of arguments holds, as docs and messages write it."""
        if self.discrete:
            return "[a, b, ...]"
        return "[low, high, step]" if self.step else "[low, high]"


DISTRIBUTIONS = {
    d.name: d
    for d in (
        Distribution("grid", discrete=True, doc="every value (the only form a grid search takes)"),
        Distribution("choice", discrete=True, doc="one of the values"),
        Distribution("uniform", kind=float, doc="a float"),
        Distribution("loguniform", kind=float, log=True, doc="a float, on a log scale (low > 0)"),
        Distribution("randint", kind=int, doc="an integer, both ends included"),
        Distribution(
            "quniform", kind=float, step=True, doc="a float rounded to a multiple of step"
        ),
        Distribution(
            "qloguniform",
            kind=float,
            log=True,
            step=True,
            doc="a float on a log scale (low > 0), rounded to a multiple of step",
        ),
    )
}


def distribution_of(key: str, given: Any) -> Distribution:
    """The distribution a ``space`` entry names: its key is a trainer key, it is one
    distribution, and that one is in the table. Its arguments are ``Dimension.parse``'s."""
    if key not in RULES:
        raise unknown_key_error(f"space.{key}", [f"space.{k}" for k in RULES])
    if not isinstance(given, dict) or len(given) != 1:
        raise ConfigError(
            f"space.{key} must be one distribution, e.g. {{choice: [a, b]}} or "
            f"{{loguniform: [1e-4, 1e-1]}}; got {shown(given)}"
        )
    name = next(iter(given))
    if name not in DISTRIBUTIONS:
        raise ConfigError(
            f"space.{key}: unknown distribution {one_line(str(name))}; use one of "
            f"{', '.join(DISTRIBUTIONS)}"
        )
    return DISTRIBUTIONS[name]


@dataclass(frozen=True)
class Dimension:
    """One searched key: its distribution and checked arguments (the listed values, or low,
    high and a step), each as the key's rule gives it (ints widened where a number is asked)."""

    key: str
    distribution: Distribution
    args: tuple[Any, ...]

    @classmethod
    def parse(cls, key: str, given: Any) -> Dimension:
        """A ``space`` entry checked: every value it can produce is one the key's rule accepts
        (each listed value; both ends of a range)."""
        dist, rule, label = distribution_of(key, given), RULES[key], f"space.{key}"
        args, at = given[dist.name], f"{label}.{dist.name}"
        if not isinstance(args, list) or not args:
            raise ConfigError(f"{at} must be a non-empty list; got {shown(args)}")
        if dist.discrete:
            return cls(key, dist, tuple(rule.check(label, v) for v in args))
        if len(args) != (3 if dist.step else 2) or rule.choices or rule.kind not in (int, float):
            raise ConfigError(f"{at} must be {dist.form} of a numeric key; got {shown(args)}")
        if dist.kind is not rule.kind:
            raise ConfigError(
                f"{label} takes integers: use randint or choice, not {dist.name}"
                if rule.kind is int
                else f"{label}: {dist.name} is for integer keys; use uniform or loguniform"
            )
        low, high = (rule.check(label, v) for v in args[:2])
        if not low < high:
            raise ConfigError(f"{at} needs low < high; got {shown(args)}")
        if dist.log and low <= 0:
            raise ConfigError(f"{at} needs low > 0 for a log scale; got {shown(low)}")
        if not dist.step:
            return cls(key, dist, (low, high))
        q = STEP.check(f"{at} step", args[2])
        if not all(math.isfinite(x / q) for x in (low, high)):
            raise ConfigError(f"{at} step {shown(args[2])} is too small: its multiples overflow")
        if not all(math.isclose(x / q, round(x / q)) for x in (low, high)):
            raise ConfigError(
                f"{at} needs low and high that are multiples of the step {q:g} "
                f"(draws are rounded to it); got {shown(args)}"
            )
        return cls(key, dist, (low, high, q))

    @property
    def values(self) -> tuple[Any, ...]:
        """A grid's or choice's values."""
        assert self.distribution.discrete, self
        return self.args

    @property
    def low(self) -> Any:
        assert not self.distribution.discrete, self
        return self.args[0]

    @property
    def high(self) -> Any:
        assert not self.distribution.discrete, self
        return self.args[1]

    @property
    def step(self) -> float | None:
        return self.args[2] if self.distribution.step else None

    @property
    def is_grid(self) -> bool:
        """Each value is taken, not drawn: every repeat of the sweep runs them all."""
        return self.distribution.name == "grid"

    @property
    def is_log(self) -> bool:
        return self.distribution.log

    def corners(self) -> list[Any]:
        """The values a rule over this key must hold for: each listed value, or both ends of
        the range (the rules are monotonic in each key), without repeats."""
        return list(dict.fromkeys(self.values if self.distribution.discrete else self.args[:2]))

    def doc(self) -> dict[str, list[Any]]:
        """The entry as a config writes it: ``{distribution: args}``."""
        return {self.distribution.name: list(self.args)}


class Space(Mapping[str, Dimension]):
    """A sweep's searched keys, each to its Dimension, in the config's order."""

    def __init__(self, dimensions: Iterable[Dimension] = ()) -> None:
        self._dimensions = {d.key: d for d in dimensions}

    @classmethod
    def read(cls, doc: Mapping[str, Mapping[str, list[Any]]]) -> Space:
        """A space as ``doc`` wrote it (a sweep's ``space`` param, checked when it started)."""
        return cls(
            Dimension(key, DISTRIBUTIONS[name], tuple(args))
            for key, entry in doc.items()
            for name, args in entry.items()
        )

    def __getitem__(self, key: str) -> Dimension:
        return self._dimensions[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._dimensions)

    def __len__(self) -> int:
        return len(self._dimensions)

    def __repr__(self) -> str:
        return f"Space({self.doc()!r})"

    def doc(self) -> dict[str, dict[str, list[Any]]]:
        """``{key: {distribution: args}}``: the config's form, and MLflow's ``space`` param."""
        return {key: d.doc() for key, d in self._dimensions.items()}

    def grid_points(self) -> int:
        """The points of the space's grid (1 without one): each repeat draws them all."""
        return math.prod(len(d.values) for d in self.values() if d.is_grid)


def config_id(number: int, count: int) -> str:
    """The id of configuration ``number`` (from 0, in sampling order) of a sweep's ``count``:
    c0000, c0001, ..., wider when ``count`` needs more digits."""
    return f"c{number:0{max(4, len(str(count - 1)))}d}"


def config_number(id_: str) -> int:
    """A configuration's number, from its id (c0012 -> 12)."""
    return int(id_[1:])


def plain(value: Any) -> Any:
    """A numpy scalar (Ray and Optuna draw some) as the Python value it is; any other value as
    given."""
    import numpy as np  # here: a numpy scalar exists only where numpy is loaded already

    return value.item() if isinstance(value, np.generic) else value
