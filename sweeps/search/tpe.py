"""Optuna's TPE as a sweep's one sampler (search.type tpe, and bohb's configurations).

A sweep has one Optuna study, kept in a journal file in its folder: each ask, report and tell
is a line appended there, so a sweep killed and started again reopens the same study and
continues its search. Populations ask for configurations in batches (TPE's constant liar keeps
a batch's members apart), report rung results (BOHB) and tell each member's end; a population
restored from a checkpoint takes back what it asked after that checkpoint (``orphans``).
Optuna only: no Ray, no MLflow; the engines call it.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.exceptions import ExperimentalWarning
from optuna.samplers import BaseSampler, PartialFixedSampler, TPESampler
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState

from sweeps.search.pbt import snap
from sweeps.spec.space import Dimension, Space, config_id, plain

DIRECTIONS = {"max": "maximize", "min": "minimize"}
STATES = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "fail": TrialState.FAIL}
POPULATION = "population"  # a trial's user attr: the population that asked it


def distributions(space: Space) -> dict[str, BaseDistribution]:
    """The space's dimensions as Optuna's distributions, in the space's order.

    A q-distribution is one of Optuna's stepped floats where it can be (quniform, when high -
    low is a multiple of the step, Optuna's own test); otherwise, and always for qloguniform
    (Optuna has no stepped log scale), it is the unrounded float, and ``params`` rounds what
    is drawn. A grid is refused: a TPE search draws every key.
    """
    return {key: _distribution(dim) for key, dim in space.items()}


def _distribution(dim: Dimension) -> BaseDistribution:
    if dim.is_grid:
        raise ValueError(f"space.{dim.key}: a TPE search draws every key; grid takes them all")
    if dim.distribution.discrete:
        return CategoricalDistribution(dim.values)
    if dim.distribution.kind is int:
        return IntDistribution(dim.low, dim.high)
    # Optuna steps a float on a linear scale only, over a range that is a multiple of the step
    # (its own test)
    stepped = (
        dim.step is not None
        and not dim.is_log
        and (_decimal(dim.high) - _decimal(dim.low)) % _decimal(dim.step) == 0
    )
    return FloatDistribution(dim.low, dim.high, log=dim.is_log, step=dim.step if stepped else None)


def _holds(dim: Dimension, value: Any) -> bool:
    if dim.distribution.discrete:
        return value in dim.values
    return dim.low <= value <= dim.high


def _decimal(x: float) -> Decimal:
    """As Optuna reads a float to check a step: its shortest decimal form."""
    return Decimal(str(x))


def params(space: Space, sampled: Mapping[str, Any]) -> dict[str, Any]:
    """A configuration's searched values, as the space means them: drawn floats rounded to a
    q-distribution's step and kept in [low, high], plain Python values (no numpy scalars).

    Optuna models the value it drew: for a qloguniform key (and a quniform one whose range is
    not a multiple of its step) that is the unrounded float, and the configuration trained is
    this rounded one.
    """
    out = {}
    for key, dim in space.items():
        value = sampled[key]
        if dim.distribution.discrete:
            out[key] = plain(value)
        else:
            out[key] = snap(dim, value)
    return out


class KnownSpaceTPE(TPESampler):
    """TPE over a search space given up front. Every configuration draws every key of the
    sweep's space, so the space TPE models is known; Optuna's own TPE infers it at each ask by
    intersecting the distributions of every trial so far, which is quadratic in the trials
    asked (14 of 32 s of 1,024 asks) and starts again from nothing with each new sampler."""

    def __init__(self, space: Mapping[str, BaseDistribution], **settings: Any) -> None:
        super().__init__(**settings)
        self._known = {key: d for key, d in space.items() if not d.single()}

    def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, BaseDistribution]:
        return dict(self._known)


def tpe_sampler(seed: int, trials: int, space: Mapping[str, BaseDistribution]) -> TPESampler:
    """Multivariate TPE with the constant liar over ``space``, seeded from the search's seed and
    the number of trials so far: the same history gives the same next asks, whether the
    journal was reopened in between or not."""
    entropy = int(np.random.SeedSequence([seed, trials]).generate_state(1)[0])
    with warnings.catch_warnings():  # experimental in some Optuna versions
        warnings.simplefilter("ignore", ExperimentalWarning)
        return KnownSpaceTPE(space, multivariate=True, constant_liar=True, seed=entropy)


@dataclass(frozen=True)
class Asked:
    """A configuration asked: its trial's number, its id (c0000, ...) and its values."""

    number: int
    id: str
    params: dict[str, Any]


class Sampler:
    """The sweep's one Optuna study, in its journal file, asked and told by populations.

    ``budget`` (search.num_samples) bounds the configurations ever asked, whatever became of
    them. Asks, reports and tells are made by one process (the driver) at a time.
    """

    def __init__(
        self,
        journal: Path,
        space: Space,
        mode: str,
        seed: int,
        budget: int,
        name: str,
        recorded: Collection[str] = (),
    ) -> None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # no line per trial
        self.space, self.seed, self.budget = space, seed, budget
        self._recorded = set(recorded)  # ids whose end the sweep's record holds
        self._distributions = distributions(space)
        self._seconds = [0.0, 0.0]  # wall, CPU (this thread's)
        self._storage = JournalStorage(JournalFileBackend(str(journal)))
        with self._timed():
            self._study = optuna.create_study(
                study_name=name,
                storage=self._storage,
                direction=DIRECTIONS[mode],
                sampler=tpe_sampler(seed, 0, self._distributions),  # replaced before each ask
                load_if_exists=True,
            )
            self._study_id = self._storage.get_study_id_from_name(name)

    def seconds(self) -> tuple[float, float]:
        """Wall and CPU seconds spent in Optuna so far (asks, reports, tells, reads of the
        journal); the wall time counts waits for a core that training processes hold. A
        method, so that the driver can ask the sampler's actor."""
        wall, cpu = self._seconds
        return wall, cpu

    def ask(self, n: int, population: int, fixed: dict[str, Any] | None = None) -> list[Asked]:
        """At most ``n`` new configurations for ``population``, fewer where the budget ends.
        ``fixed``: values for keys the population cannot mix (e.g. train.batch_size); TPE
        draws the others."""
        for key, value in (fixed or {}).items():  # checked before a trial is made
            if key not in self.space or not _holds(self.space[key], value):
                raise ValueError(f"fixed {key}={value!r} is not a value of the space")
        asked = []
        with self._timed():
            start = len(self._study.get_trials(deepcopy=False))  # one process asks at a time
            for trials in range(start, min(start + n, self.budget)):
                self._study.sampler = self._sampler(trials, fixed)
                trial = self._study.ask(self._distributions)
                trial.set_user_attr(POPULATION, population)
                asked.append(self._asked(trial.number, trial.params))
        return asked

    def report(self, number: int, epoch: int, value: float) -> None:
        """An intermediate value of a trial (a rung's result); ignored once it is finished."""
        with self._timed():
            trial_id = self._storage.get_trial_id_from_study_id_trial_number(self._study_id, number)
            if not self._storage.get_trial(trial_id).state.is_finished():
                self._storage.set_trial_intermediate_value(trial_id, epoch, float(value))

    def tell(self, number: int, value: float | None, state: str) -> None:
        """A trial's end: state complete (with its value; a non-finite one is told as fail),
        pruned (Optuna gives it its last reported value; ``value`` is not used) or fail.
        Telling a finished trial again does nothing (a restored population may end a member
        twice)."""
        if state not in STATES:
            raise ValueError(f"state must be one of {', '.join(STATES)}; got {state!r}")
        told = STATES[state]
        if told is TrialState.COMPLETE and (value is None or not math.isfinite(value)):
            told = TrialState.FAIL
        value = float(value) if told is TrialState.COMPLETE else None
        with self._timed():
            self._study.tell(number, value, state=told, skip_if_finished=True)

    def recorded(self, ids: Collection[str]) -> None:
        """These configurations' ends are in the sweep's record (the driver says so as it
        records them): they are never orphans."""
        self._recorded.update(ids)

    def orphans(self, population: int, held: Collection[str]) -> list[Asked]:
        """The trials ``population`` asked that it no longer holds and whose end the sweep's
        record lacks: asked after its last checkpoint, or ended (and told) after its last
        report, before a kill. A restarted population takes them back first, so that no
        configuration is asked twice or lost; a told one trains again and its second tell is
        ignored."""
        with self._timed():
            trials = self._study.get_trials(deepcopy=False)
        accounted = {*held, *self._recorded}
        return [
            self._asked(t.number, t.params)
            for t in trials
            if t.user_attrs.get(POPULATION) == population
            and config_id(t.number, self.budget) not in accounted
        ]

    def _sampler(self, trials: int, fixed: dict[str, Any] | None) -> BaseSampler:
        base = tpe_sampler(self.seed, trials, self._distributions)
        if not fixed:
            return base
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            return PartialFixedSampler(fixed, base)

    def _asked(self, number: int, sampled: Mapping[str, Any]) -> Asked:
        return Asked(number, config_id(number, self.budget), params(self.space, sampled))

    @contextmanager
    def _timed(self) -> Iterator[None]:
        start, cpu = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            self._seconds[0] += time.perf_counter() - start
            self._seconds[1] += time.thread_time() - cpu
