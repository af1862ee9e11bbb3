"""ASHA (asynchronous successive halving), as Ray's ASHAScheduler runs it: its settings
(``Asha``), the epochs at which it compares trials (its rungs, per bracket), the odds of a trial
joining each bracket, and its rung rule applied inside a fused population (``Rungs``).

Per trial, Ray's scheduler decides, on the result reported at a rung: each trial must report
there (``milestones``). A fused population runs the same rule itself, in lockstep. Both follow
ray.tune.schedulers.async_hyperband._Bracket, which the tests check them against.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from sweeps.spec.sweep import STOPS_EARLY, SweepSpec


@dataclass(frozen=True)
class Asha:
    """The rung rule's settings, as ASHAScheduler takes them (time: epochs)."""

    grace_period: int
    reduction_factor: int
    brackets: int
    max_t: int  # train.epochs
    metric: str
    mode: str  # max | min

    @classmethod
    def of(cls, spec: SweepSpec) -> Asha:
        s, epochs = spec.search, spec.trial.train.epochs
        return cls(s.grace_period, s.reduction_factor, s.brackets, epochs, s.metric, s.mode)

    def milestones(self, bracket: int) -> list[int]:
        """Ray's _Bracket rungs for bracket s, ascending: grace * rf**(k + s)."""
        rf, s = self.reduction_factor, bracket
        count = int(np.log(self.max_t / self.grace_period) / np.log(rf) - s + 1)
        return [self.grace_period * rf ** (k + s) for k in range(count)]

    def rungs(self) -> set[int]:
        """The epochs at which Ray compares trials, over all its brackets (a trial is put in
        one at random)."""
        return {m for s in range(self.brackets) for m in self.milestones(s)}

    def bracket_odds(self) -> np.ndarray:
        """Ray's odds of a new trial joining each bracket: e**(rungs - most rungs), normalized."""
        sizes = np.array([len(self.milestones(s)) for s in range(self.brackets)])
        odds = np.e ** (sizes - sizes.max())
        return odds / odds.sum()


def milestones(spec: SweepSpec) -> frozenset[int]:
    """Epochs every trial reports and checkpoints at: ASHA's rungs (it decides on the result
    reported at each; an early-stopped trial's model is its rung's), PBT's perturbations (an
    exploit copies the checkpoint saved there) and the last epoch."""
    s, epochs = spec.search, spec.trial.train.epochs
    rungs = Asha.of(spec).rungs() if s.type in STOPS_EARLY else set()
    if s.type == "pbt":
        rungs = set(range(s.perturbation_interval, epochs, s.perturbation_interval))
    return frozenset({*rungs, epochs})


class Rungs:
    """Ray's ASHA rung rule (ray.tune.schedulers.async_hyperband._Bracket), in lockstep.

    A configuration that reaches a milestone of its bracket (below max_t) records its metric
    there and is stopped if that is below the (1 - 1/rf) quantile (numpy's nanpercentile, as
    Ray) of the values recorded at that rung. Ray compares each trial with those that reached
    the rung before it; here every member reaches it in the same epoch, so all are recorded
    first and each is compared with the whole cohort of its population.
    """

    def __init__(self, asha: Asha, brackets: dict[str, int], recorded: dict | None = None) -> None:
        self.asha = asha
        self.brackets = brackets  # member -> its bracket; members may join later (bohb)
        self.milestones = {b: set(asha.milestones(b)) for b in range(asha.brackets)}
        self.recorded: dict[str, dict[str, float]] = recorded or {}  # "bracket/epoch" -> values

    def at(self, id_: str) -> set[int]:
        """The epochs at which a member is compared: its bracket's rungs below max_t."""
        return {m for m in self.milestones[self.brackets[id_]] if m < self.asha.max_t}

    def cutoff(self, values: list[float]) -> float | None:
        if not values:
            return None
        with warnings.catch_warnings():  # all NaN: no cutoff, as nanpercentile's NaN compares
            warnings.simplefilter("ignore", RuntimeWarning)
            return float(np.nanpercentile(values, (1 - 1 / self.asha.reduction_factor) * 100))

    def stopped(self, results: dict[str, dict[str, Any]]) -> dict[str, int]:
        """Record one epoch's results at their rungs; the stopped ids and the rung of each."""
        sign = 1.0 if self.asha.mode == "max" else -1.0
        cohorts: dict[str, list[str]] = {}
        for id_, m in results.items():
            epoch = int(m["epoch"])
            if epoch in self.at(id_):
                cohorts.setdefault(f"{self.brackets[id_]}/{epoch}", []).append(id_)
        stopped = {}
        for rung, members in cohorts.items():
            recorded = self.recorded.setdefault(rung, {})
            recorded |= {i: sign * float(results[i][self.asha.metric]) for i in members}
            cut = self.cutoff(list(recorded.values()))
            for i in members:  # a diverged member ends as diverged: the rule leaves it be
                if cut is not None and recorded[i] < cut and not results[i].get("diverged"):
                    stopped[i] = int(results[i]["epoch"])
        return stopped
