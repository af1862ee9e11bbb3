"""Population Based Training's rules, as Ray Tune's PopulationBasedTraining applies them: every
``interval`` epochs the bottom quantile of a population copies a member of the top quantile
(``exploits``), then perturbs the copied hyperparameters (``explore``).

Written once for both engines: the per-trial engine's scheduler and a fused population follow
the same rules, documented and tested here. They follow ray.tune.schedulers.pbt
(``_quantiles``, ``_checkpoint_or_exploit``, ``_explore``) with two differences, each said
where it applies: a non-finite score ranks worst, and an explored value stays in the space.
Randomness comes from a numpy Generator, whose state (``rng.bit_generator.state``) a fused
population keeps in its checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, ClassVar

import numpy as np

from sweeps.spec.space import Dimension
from sweeps.spec.sweep import PBT_MUTABLE, SweepSpec


@dataclass(frozen=True)
class Pbt:
    """PBT's settings, as PopulationBasedTraining takes them (time: epochs)."""

    interval: int  # epochs between two exploits
    quantile: float  # the share of members copied from, and copied over
    resample_probability: float  # of a fresh draw rather than a perturbation, per key
    mutations: dict[str, Dimension]  # the perturbed keys
    factors: ClassVar[tuple[float, float]] = (1.2, 0.8)  # a perturbation multiplies by one

    @classmethod
    def of(cls, spec: SweepSpec) -> Pbt:
        s = spec.search
        mutations = {  # the rule (sweeps.spec.sweep): PBT_MUTABLE keys searched with a range
            key: dim
            for key, dim in spec.space.items()
            if key in PBT_MUTABLE and dim.distribution.kind is float
        }
        return cls(s.perturbation_interval, s.quantile_fraction, s.resample_probability, mutations)

    def exploits(
        self, scores: Mapping[str, float], mode: str, rng: np.random.Generator
    ) -> list[tuple[str, str]]:
        """(dst, src) pairs: each member of the bottom quantile copies one of the top quantile,
        drawn at random. Each quantile has ceil(n * quantile) members, at most n // 2, so none
        is in both. Ties keep the order of ``scores``.

        Ray leaves a NaN score out of the ranking, so a diverged trial keeps training; here a
        non-finite score ranks worst, and the member takes a working configuration instead.
        """
        sign = 1.0 if mode == "max" else -1.0

        def score(id_: str) -> float:
            value = sign * float(scores[id_])
            return value if math.isfinite(value) else -math.inf

        ranked = sorted(scores, key=score)  # worst first
        n = len(ranked)
        k = min(math.ceil(n * self.quantile), n // 2)
        bottom, top = ranked[:k], ranked[n - k :]
        return [(dst, top[int(rng.integers(len(top)))]) for dst in bottom]

    def explore(self, params: Mapping[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        """``params`` with each mutation key changed: with ``resample_probability`` a fresh
        draw from its dimension, else its value times a factor drawn from ``factors``.

        Ray stops there; here the value is then kept in the space (``snap``): clipped to
        [low, high] and rounded to a q-distribution's step. Ray's unbounded product could
        leave the rules' range (train.momentum must stay below 1: a perturbed 0.9 * 1.2 would
        be a configuration the trainer refuses), and the space's bounds were checked against
        those rules.
        """
        out = dict(params)
        for key, dim in self.mutations.items():
            if rng.random() < self.resample_probability:
                out[key] = draw(dim, rng)
            else:
                out[key] = snap(dim, params[key] * self.factors[int(rng.integers(2))])
        return out

    def within(self, config: dict[str, Any]) -> dict[str, Any]:
        """Ray's explored config kept in the space (``snap``), as ``explore`` keeps ours: Ray
        Tune's custom_explore_fn."""
        return config | {k: snap(dim, config[k]) for k, dim in self.mutations.items()}


def draw(dim: Dimension, rng: np.random.Generator) -> Any:
    """One value of ``dim``, drawn as its distribution says: a listed value; an integer of
    [low, high]; a float, uniform or on a log scale, then rounded to the step if it has one."""
    if dim.distribution.discrete:
        return dim.values[int(rng.integers(len(dim.values)))]
    if dim.distribution.kind is int:
        return int(rng.integers(dim.low, dim.high + 1))
    if dim.is_log:
        return snap(dim, math.exp(rng.uniform(math.log(dim.low), math.log(dim.high))))
    return snap(dim, rng.uniform(dim.low, dim.high))


def snap(dim: Dimension, value: float) -> Any:
    """``value`` as ``dim``'s range holds it, a plain Python number: within [low, high]; for a
    q-distribution, the multiple of the step nearest to it (0.3, not 3 * 0.1's
    0.30000000000000004); for an integer key, the nearest integer."""
    low, high, value = dim.low, dim.high, float(value)
    if dim.distribution.kind is int:
        return int(min(max(round(value), low), high))
    if dim.step is not None:
        q = dim.step
        k = min(max(round(value / q), round(low / q)), round(high / q))
        value = float(k * Decimal(repr(q)))
    return float(min(max(value, low), high))
