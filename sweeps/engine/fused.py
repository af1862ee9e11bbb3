"""The fused engine (``search.engine: fused``): configurations trained as populations.

Configurations are grouped by what a population cannot mix (the data settings,
``train.batch_size``, ``train.device``), and each population is one Ray trial
(sweeps/engine/ray_tune.py) that runs ``PopulationRun`` epoch by epoch: it trains, applies the
search's rules inside the population, takes ended configurations out, and collects each
configuration's news (started, its epochs, how it ended) for the driver, which records every
configuration as a trial of its own. Configurations are named ``c0000``, ``c0001``, ...

Where the configurations come from depends on the search:
- grid, random, asha, pbt: all drawn up front (sweeps/search/draws.py, with Ray's own variant
  generator, so they are the per-trial engine's) and cut into populations of at most
  ``search.population_size``. asha applies Ray's rung rule inside each population
  (sweeps/search/asha.py ``Rungs``); pbt exploits and explores inside its one population
  (sweeps/search/pbt.py).
- tpe, bohb: open populations. Each holds ``slots`` configurations in flight; as members end
  (finished, stopped at a rung, diverged) it tells the sweep's one sampler how they did and asks
  it for as many new ones (sweeps/search/tpe.py, in a Ray actor), until the sampler's budget of
  ``search.num_samples`` is spent.

Pure Python, numpy and trainers/: no Ray, no MLflow (the sampler comes in as an object with the
``Asker`` methods). docs/fused.md says how this differs from one Ray trial per configuration.
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
import tempfile
import weakref
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from sweeps.record.outcomes import Outcome
from sweeps.record.results import outcome
from sweeps.search.asha import Asha, Rungs
from sweeps.search.pbt import Pbt
from sweeps.spec.document import trial_config_with
from sweeps.spec.space import config_id, config_number, plain
from sweeps.spec.sweep import AUTO_POPULATION, DataSize, SweepSpec, reachable
from trainers.config import ConfigError, TrialConfig, trial_config, unfusable
from trainers.data import Dataset, memory_size
from trainers.loop import DTYPES
from trainers.metrics import pbt_curves
from trainers.population import MEASURE_BYTES, Population, free_bytes, member_bytes

if TYPE_CHECKING:  # Optuna is imported by tpe and bohb sweeps only
    from sweeps.search.tpe import Asked

POPULATION_KEY = "population"  # a fused sweep's Ray trials search this one key: their index
NEWS_KEY = "members"  # a population's report: its members' news, one JSON string
STATE_FILE = "fused.json"  # beside the population's own checkpoint: ids, rung records
ARCHIVE_FILE = "ended.zip"  # checkpoints of members that ended while others went on
MIN_REPORT_S = 1.0  # a population reports at most about once a second...
HEADROOM = 0.8  # of a device's free memory, what population_size auto fills at most
REPORT_RATIO = 4.0  # ...and trains at least 4x as long as the driver took on its last report


def config_ids(count: int) -> list[str]:
    """Stable names of a sweep's configurations, in sampling order: c0000, c0001, ..."""
    return [config_id(i, count) for i in range(count)]


def sized(
    spec: SweepSpec,
    data: DataSize,
    resources: dict[str, float],
    cluster_cpus: float,
    kept: int | None = None,
) -> SweepSpec:
    """The spec with ``search.population_size: auto`` made a number: ``kept``, the size a
    resumed sweep started with (its populations are Ray's trials), else the most members
    whose weights, optimizer buffers and step tensors fit a population's share of the
    device's free memory beside the data, with headroom, at most AUTO_POPULATION. Whatever
    the engine, a ConfigError before anything is written when not one configuration fits a
    trial's share (or not pbt's population)."""
    if kept is not None:
        return replace(spec, search=replace(spec.search, population_size=kept))
    fit = fitting(spec, data, resources, cluster_cpus)
    if spec.search.engine != "fused" or spec.search.population_size != "auto":
        return spec
    return replace(spec, search=replace(spec.search, population_size=fit))


def fitting(
    spec: SweepSpec,
    data: DataSize,
    resources: dict[str, float],
    cluster_cpus: float,
    free: int | None = None,
) -> int:
    """How many members fit a population, or a trial's one configuration (``sized``); ``free``:
    the device's free memory, measured when not given."""
    gpu = resources["gpu"] > 0 and torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    free = free_bytes(device) if free is None else free
    if free is None:  # not Linux: nothing to go by
        return AUTO_POPULATION
    itemsize = max(DTYPES[d].itemsize for d in reachable("data.dtype", spec.trial, spec.space))
    data_bytes = data.rows * (itemsize * data.features + 8)  # X as data.dtype, y as int64
    if gpu:  # every population (or trial) holds its own copy of the data on its GPU
        share = min(1.0, resources["gpu"])
        budget = free * share * HEADROOM - data_bytes - MEASURE_BYTES
    else:  # populations on a node map one float32 copy (and hold a smaller dtype's own)
        share = 1 / max(1, int(cluster_cpus // resources["cpu"]))
        mapped = data.rows * (4 * data.features + 8)
        own = data_bytes if itemsize < 4 else 0
        budget = (free * HEADROOM - mapped) * share - own - MEASURE_BYTES
    optimizers = reachable("train.optimizer", spec.trial, spec.space)
    batch = max(reachable("train.batch_size", spec.trial, spec.space))
    member = member_bytes(data.features, data.classes, batch, optimizers)
    fit = int(max(0.0, budget) // member)
    pbt = spec.search.type == "pbt" and spec.search.engine == "fused"
    need = spec.search.num_samples if pbt else 1
    if fit < need:
        what, verb = "one configuration", "takes"
        if need > 1:
            what, verb = f"pbt's {need} members", "take"
        if spec.search.engine == "fused":
            key, holder = "search.population_size auto", "a population"
        else:
            kind = "gpu" if gpu else "cpu"
            key, holder = f"resources.{kind} {resources[kind]:g}", "a trial"
        raise ConfigError(
            f"{key}: {what} of {data.classes} classes x {data.features} features (batch "
            f"{batch}) {verb} {memory_size(need * member)} of {device.type} memory beside the "
            f"data's {memory_size(data_bytes)}, and {holder} has "
            f"{memory_size(int(free * share))} free; use a smaller "
            "train.batch_size, fewer features (e.g. a PCA), more resources per trial, or "
            "another device"
        )
    return min(AUTO_POPULATION, fit)


def in_flight(spec: SweepSpec) -> int:
    """tpe and bohb: how many configurations train at once, over all populations. The sampler
    learns only from configurations that ended before it is asked, so a search that asked for
    all of them at once would be random search: an eighth of the budget at a time refills each
    slot about 8 times (at least 4 slots, at most search.population_size)."""
    s = spec.search
    return max(1, min(s.population_limit, max(4, math.ceil(s.num_samples / 8))))


class Asker(Protocol):
    """The sweep's sampler as a population sees it (sweeps.search.tpe.Sampler, through Ray)."""

    def ask(self, n: int, population: int, fixed: dict[str, Any] | None = None) -> list[Asked]:
        """At most n new configurations."""

    def report(self, number: int, epoch: int, value: float) -> None:
        """A configuration's value at a rung."""

    def tell(self, number: int, value: float | None, state: str) -> None:
        """How a configuration ended: complete, pruned or fail."""

    def orphans(self, population: int, held: list[str]) -> list[Asked]:
        """What the population asked for and no longer holds (asked after its checkpoint)."""


# ---------------------------------------------------------------- the plan (driver)
@dataclass(frozen=True)
class PopulationPlan:
    """What one population trains: its members' ids, configs and (asha) brackets; or, for an
    open population (tpe, bohb), how many it holds at once and what it asks with."""

    ids: list[str]
    configs: list[dict[str, Any]]  # TrialConfig.to_dict() of each
    brackets: list[int]  # each member's ASHA bracket; all 0 without asha
    asha: Asha | None
    metric: str  # the sweep's: each report carries the best member's, for Ray
    mode: str
    index: int = 0  # its Ray trial's POPULATION_KEY
    slots: int = 0  # open: configurations in flight; 0: the members above, all it trains
    fixed: dict[str, Any] = field(default_factory=dict)  # open: its values of unfusable keys
    sections: dict[str, Any] = field(default_factory=dict)  # open: an asked member's base
    pbt: Pbt | None = None
    seed: int = 0  # brackets of asked members, pbt's draws

    def data(self) -> dict[str, Any]:
        """The data settings its members share (TrialConfig.to_dict()'s data section)."""
        if self.configs:
            return self.configs[0]["data"]
        return trial_config_with(self.sections, self.fixed).to_dict()["data"]


@dataclass
class Plan:
    """Every configuration of a fused sweep and the populations they are trained in."""

    params: dict[str, dict[str, Any]]  # id -> the sampled values of the searched keys
    configs: dict[str, dict[str, Any]]  # id -> the full config, flat dotted keys
    populations: list[PopulationPlan] = field(default_factory=list)
    members: dict[int, set[str]] = field(default_factory=dict)  # open: the ids each reported

    def members_of(self, index: int) -> list[str]:
        """A population's configurations: planned, or (open) asked and reported so far."""
        return sorted({*self.populations[index].ids, *self.members.get(index, ())})


def plan(spec: SweepSpec, sampled: list[dict[str, Any]]) -> Plan:
    """Name the sampled configurations, group them by what cannot be fused and cut each group
    into populations of at most ``search.population_size``, as even as they can be."""
    s = spec.search
    ids = config_ids(len(sampled))
    params = [{k: plain(v) for k, v in p.items()} for p in sampled]
    cfgs = [trial_config_with(spec.sections, p) for p in params]
    asha = None
    brackets = [0] * len(cfgs)
    if s.type == "asha":
        asha = Asha.of(spec)
        rng = np.random.default_rng(s.seed)
        odds = asha.bracket_odds()
        brackets = [int(rng.choice(len(odds), p=odds)) for _ in cfgs]
    flats = [cfg.flat() for cfg in cfgs]
    groups: dict[str, list[int]] = {}
    for i, flat in enumerate(flats):
        shared = {k: v for k, v in flat.items() if unfusable(k)}
        groups.setdefault(json.dumps(shared, sort_keys=True), []).append(i)
    chunks = [
        chunk
        for members in groups.values()
        for chunk in np.array_split(members, math.ceil(len(members) / s.population_limit))
    ]
    pbt = Pbt.of(spec) if s.type == "pbt" else None
    populations = [
        PopulationPlan(
            [ids[i] for i in chunk],
            [cfgs[i].to_dict() for i in chunk],
            [brackets[i] for i in chunk],
            asha,
            s.metric,
            s.mode,
            index=index,
            pbt=pbt,
            seed=s.seed,
        )
        for index, chunk in enumerate(chunks)
    ]
    return Plan(
        params=dict(zip(ids, params)),
        configs=dict(zip(ids, flats)),
        populations=populations,
    )


def open_plan(spec: SweepSpec) -> Plan:
    """tpe, bohb: a population for each combination of the values of the searched keys that a
    population cannot mix (none searched: one), the slots in flight shared out among them."""
    s = spec.search
    keys = [k for k in spec.space if unfusable(k)]
    combos = [
        dict(zip(keys, values))
        for values in itertools.product(*(spec.space[k].values for k in keys))
    ]
    slots = max(1, in_flight(spec) // len(combos))
    asha = Asha.of(spec) if s.type == "bohb" else None
    return Plan(
        params={},
        configs={},
        populations=[
            PopulationPlan(
                [],
                [],
                [],
                asha,
                s.metric,
                s.mode,
                index=index,
                slots=slots,
                fixed=fixed,
                sections=spec.sections,
                seed=s.seed,
            )
            for index, fixed in enumerate(combos)
        ],
    )


# ---------------------------------------------------------------- one population (worker)
class PopulationRun:
    """One population of a fused sweep, epoch by epoch, and the news of its members since the
    last report: ``{id: {"started", "results", "end", "exploits"}}`` (``params`` too for a
    member asked of the sampler), end ``{"outcome", "epochs_run"}``.

    Between epochs the population holds only members still training: one that ends while
    others go on leaves it (Population.remove), its Trial checkpoint archived first unless it
    diverged (a diverged configuration is never a sweep's best). Those still in it at the end
    are in the population's own checkpoint; ``MemberCheckpoints`` exports them from there.
    """

    def __init__(
        self,
        plan: PopulationPlan,
        population: Population | None,
        rungs: Rungs | None,
        archive: dict,
        sampler: Asker | None = None,
        rng: np.random.Generator | None = None,
    ) -> None:
        self.plan, self.population, self.rungs = plan, population, rungs
        self.archive: dict[str, dict[str, bytes]] = archive  # id -> its checkpoint's files
        self.sampler = sampler
        self.rng = rng or np.random.default_rng([plan.seed, plan.index])
        self.epochs = {i: c.train.epochs for i, c in self._members()}
        self.done = population is None or population.done
        # (re)started: each member still here gets (or gets back) its run
        self.news: dict[str, dict[str, Any]] = {}
        for id_, _ in self._members():
            self._news(id_)["started"] = True

    def _members(self) -> list[tuple[str, TrialConfig]]:
        p = self.population
        return [] if p is None else list(zip(p.ids, p.cfgs))

    def _news(self, id_: str) -> dict[str, Any]:
        empty = {"started": False, "results": [], "end": None, "exploits": []}
        return self.news.setdefault(id_, empty)

    @classmethod
    def start(
        cls,
        plan: PopulationPlan,
        datasets: list[Dataset] | None = None,
        sampler: Asker | None = None,
    ) -> PopulationRun:
        if not plan.slots:
            cfgs = [trial_config(c) for c in plan.configs]
            return cls(plan, Population(cfgs, datasets, ids=plan.ids), _rungs(plan), {})
        run = cls(plan, None, _rungs(plan), {}, sampler)
        run._join(sampler.orphans(plan.index, []), datasets)  # asked before a kill, if any
        run._join(sampler.ask(plan.slots - len(run._members()), plan.index, plan.fixed), datasets)
        return run

    @classmethod
    def restore(
        cls,
        plan: PopulationPlan,
        folder: str | Path,
        datasets: list[Dataset] | None = None,
        sampler: Asker | None = None,
    ) -> PopulationRun:
        """Continue from ``save``: the population, its rung records, draws and archive; an open
        population takes back first what it asked for after that checkpoint."""
        folder = Path(folder)
        state = json.loads((folder / STATE_FILE).read_text())
        archive = _read_archive(folder / ARCHIVE_FILE)
        rng = np.random.default_rng([plan.seed, plan.index])
        if "rng" in state:
            rng.bit_generator.state = state["rng"]
        population = Population.load(folder, datasets)
        rungs = _rungs(plan, state.get("rungs"), state.get("brackets"))
        run = cls(plan, population, rungs, archive, sampler, rng)
        if plan.slots:
            run._join(sampler.orphans(plan.index, population.ids), datasets)
        return run

    def _join(self, asked: list[Asked], datasets: list[Dataset] | None = None) -> None:
        """Asked configurations join the population (or start it), each in a bracket."""
        if not asked:
            return
        cfgs = [trial_config_with(self.plan.sections, a.params) for a in asked]
        ids = [a.id for a in asked]
        if self.population is None:
            self.population = Population(cfgs, datasets, ids=ids)
        else:
            self.population.add(cfgs, ids)
        if self.rungs is not None:
            odds = self.plan.asha.bracket_odds()
            self.rungs.brackets |= {i: int(self.rng.choice(len(odds), p=odds)) for i in ids}
        for a, cfg in zip(asked, cfgs):
            self.epochs[a.id] = cfg.train.epochs
            self._news(a.id).update(started=True, params=a.params)
        self.done = False

    def step(self) -> None:
        """Train one epoch, apply the search's rules, end the members that are done and, in an
        open population, refill their slots."""
        population = self.population
        results = population.step()
        if self.plan.pbt is not None:  # the hyperparameters it perturbs, as curves
            for id_, metrics in results.items():
                metrics |= pbt_curves(population.cfgs[population.ids.index(id_)].train)
        stopped = self.rungs.stopped(results) if self.rungs else {}
        ended: dict[str, Outcome] = {}
        for id_, metrics in results.items():
            epoch = int(metrics["epoch"])
            if metrics.get("diverged") or id_ in stopped or epoch >= self.epochs[id_]:
                ended[id_] = outcome(metrics, self.epochs[id_], error=None)  # as a Ray trial's
            news = self._news(id_)
            news["results"].append(metrics)
            if id_ in ended:
                news["end"] = {"outcome": ended[id_], "epochs_run": epoch}
        if self.sampler is not None:
            self._tell(results, ended)
        running = [i for i in population.ids if i not in ended]
        if self.plan.pbt is not None and running:
            self._perturb(results, running)
        asked = []
        if self.sampler is not None:
            free = self.plan.slots - len(running)
            asked = self.sampler.ask(free, self.plan.index, self.plan.fixed) if free > 0 else []
        self.done = not running and not asked
        if ended and not self.done:
            for id_, end in ended.items():
                if end is not Outcome.DIVERGED:
                    self.archive[id_] = _exported(population, id_)
        self._join(asked)  # before the removal: a population is never empty
        if ended and not self.done:
            population.remove(list(ended))

    def _tell(self, results: dict[str, dict[str, Any]], ended: dict[str, Outcome]) -> None:
        """The sampler hears each rung's values (bohb) and how each member ended."""
        metric = self.plan.metric
        for id_, metrics in results.items():
            epoch = int(metrics["epoch"])
            at_rung = self.rungs is not None and epoch in self.rungs.at(id_)
            if at_rung and not metrics.get("diverged"):
                self.sampler.report(config_number(id_), epoch, float(metrics[metric]))
        for id_, end in ended.items():
            value = float(results[id_][metric])
            state = {Outcome.COMPLETED: "complete", Outcome.EARLY_STOPPED: "pruned"}
            self.sampler.tell(config_number(id_), value, state.get(end, "fail"))

    def _perturb(self, results: dict[str, dict[str, Any]], running: list[str]) -> None:
        """pbt, every perturbation_interval epochs: the bottom quantile takes a top member's
        weights and optimizer state (exploit), then its hyperparameters, perturbed (explore)."""
        policy, population = self.plan.pbt, self.population
        epoch = int(results[running[0]]["epoch"])
        if epoch % policy.interval:
            return
        scores = {i: float(results[i][self.plan.metric]) for i in running}
        for dst, src in policy.exploits(scores, self.plan.mode, self.rng):
            source = population.cfgs[population.ids.index(src)]
            values = policy.explore({k: source.flat()[k] for k in policy.mutations}, self.rng)
            target = population.cfgs[population.ids.index(dst)]
            population.copy_member(src, dst)
            population.reconfigure(dst, trial_config_with(target.to_dict(), values))
            exploit = {"epoch": epoch, "source": src, "params": values}
            self._news(dst)["exploits"].append(exploit)

    def take_news(self) -> dict[str, dict[str, Any]]:
        """The members' news since the last call (then forgotten)."""
        news, self.news = self.news, {}
        return news

    def save(self, folder: str | Path) -> None:
        """Everything ``restore`` needs, in ``folder``."""
        folder = Path(folder)
        self.population.save(folder)
        ids = list(dict.fromkeys([*self.plan.ids, *self.archive, *self.population.ids]))
        state = {"ids": ids, "rng": self.rng.bit_generator.state}
        if self.rungs is not None:
            state |= {"rungs": self.rungs.recorded, "brackets": self.rungs.brackets}
        (folder / STATE_FILE).write_text(json.dumps(state))
        if self.archive:
            with zipfile.ZipFile(folder / ARCHIVE_FILE, "w") as z:
                for id_, files in self.archive.items():
                    for name, data in files.items():
                        z.writestr(f"{id_}/{name}", data)


def _rungs(
    plan: PopulationPlan, recorded: dict | None = None, brackets: dict | None = None
) -> Rungs | None:
    if plan.asha is None:
        return None
    return Rungs(plan.asha, brackets or dict(zip(plan.ids, plan.brackets)), recorded)


def _exported(population: Population, id_: str) -> dict[str, bytes]:
    """One member's Trial checkpoint (Population.export), as its files' bytes."""
    with tempfile.TemporaryDirectory() as folder:
        population.export(id_, folder)
        return {p.name: p.read_bytes() for p in Path(folder).iterdir() if p.is_file()}


def _read_archive(path: Path) -> dict[str, dict[str, bytes]]:
    archive: dict[str, dict[str, bytes]] = {}
    if path.exists():
        with zipfile.ZipFile(path) as z:
            for name in z.namelist():
                id_, _, file = name.partition("/")
                archive.setdefault(id_, {})[file] = z.read(name)
    return archive


def report_fields(news: dict[str, dict[str, Any]], metric: str, mode: str) -> dict[str, Any]:
    """A population's report to Ray: its members' news as one JSON string (Ray would flatten
    a mapping into thousands of columns), the epoch reached and the best member's metric."""
    values = [m[metric] for n in news.values() for m in n["results"] if not m.get("diverged")]
    values = [v for v in values if math.isfinite(v)]
    best = (max if mode == "max" else min)(values) if values else math.nan
    epochs = [int(m["epoch"]) for n in news.values() for m in n["results"]]
    return {NEWS_KEY: json.dumps(news), "epoch": max(epochs, default=0), metric: best}


def next_report_after(blocked_s: float) -> float:
    """Seconds of training before a population reports again: the driver's work on a report
    (recording and MLflow writes; the worker waits meanwhile) stays at most 1/REPORT_RATIO of
    the population's time."""
    return max(MIN_REPORT_S, REPORT_RATIO * blocked_s)


# ---------------------------------------------------------------- members' checkpoints (driver)
class MemberCheckpoints(Mapping[str, Path]):
    """Each configuration's Trial checkpoint folder, made when first asked for (the driver
    asks only for the chosen ones): from its population's archive, else exported from the
    population's last checkpoint. ``folders``: each population's last checkpoint."""

    def __init__(self, folders: list[Path]) -> None:
        self.where: dict[str, Path] = {}
        for folder in folders:
            for id_ in json.loads((folder / STATE_FILE).read_text())["ids"]:
                self.where[id_] = folder
        self.out = Path(tempfile.mkdtemp(prefix="sweeps-fused-"))
        weakref.finalize(self, shutil.rmtree, self.out, True)
        self._loaded: tuple[Path, Population] | None = None

    def __getitem__(self, id_: str) -> Path:
        folder, target = self.where[id_], self.out / id_
        if target.exists():
            return target
        archive = _read_archive(folder / ARCHIVE_FILE)
        if id_ in archive:
            target.mkdir()
            for name, data in archive[id_].items():
                (target / name).write_bytes(data)
            return target
        if self._loaded is None or self._loaded[0] != folder:
            self._loaded = (folder, Population.load(folder))
        population = self._loaded[1]
        if id_ not in population.ids:  # diverged: it left without a checkpoint
            raise KeyError(id_)
        target.mkdir()
        population.export(id_, target)
        return target

    def __iter__(self) -> Iterator[str]:
        return iter(self.where)

    def __len__(self) -> int:
        return len(self.where)
