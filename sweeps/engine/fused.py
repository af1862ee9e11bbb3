"""The fused engine (``search.engine: fused``): configurations trained as populations.

Every configuration is sampled up front (sweeps/search/draws.py draws them with Ray's own variant
generator, so they are the per-trial engine's), named ``c0000``, ``c0001``, ... and grouped by
what a population cannot mix (the data settings, ``train.batch_size``, ``train.device``); each
group is cut into populations of at most ``search.population_size``. Each population is one
Ray trial (sweeps/engine/ray_tune.py) that runs ``PopulationRun`` epoch by epoch: it trains, applies
Ray's ASHA rung rule inside the population (sweeps/search/asha.py ``Rungs``), takes ended
configurations out, and collects each configuration's news (started, its epochs, how it ended)
for the driver, which records every configuration as a trial of its own. Pure Python, numpy
and trainers/: no Ray, no MLflow. docs/fused.md says how this differs from one Ray trial per
configuration.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import weakref
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sweeps.record.outcomes import Outcome
from sweeps.search.asha import Asha, Rungs
from sweeps.spec.document import apply_sets
from sweeps.spec.sweep import SweepSpec
from trainers.config import trial_config
from trainers.data import Dataset
from trainers.population import Population

POPULATION_KEY = "population"  # a fused sweep's Ray trials search this one key: their index
NEWS_KEY = "members"  # a population's report: its members' news, one JSON string
STATE_FILE = "fused.json"  # beside the population's own checkpoint: ids, rung records
ARCHIVE_FILE = "ended.zip"  # checkpoints of members that ended while others went on
MIN_REPORT_S = 1.0  # a population reports at most about once a second...
REPORT_RATIO = 4.0  # ...and trains at least 4x as long as the driver took on its last report


def config_ids(count: int) -> list[str]:
    """Stable names of a sweep's configurations, in sampling order: c0000, c0001, ..."""
    width = max(4, len(str(count - 1)))
    return [f"c{i:0{width}d}" for i in range(count)]


# ---------------------------------------------------------------- the plan (driver)
@dataclass(frozen=True)
class PopulationPlan:
    """What one population trains: its members' ids, configs and (asha) brackets."""

    ids: list[str]
    configs: list[dict[str, Any]]  # TrialConfig.to_dict() of each
    brackets: list[int]  # each member's ASHA bracket; all 0 without asha
    asha: Asha | None
    metric: str  # the sweep's: each report carries the best member's, for Ray
    mode: str


@dataclass
class Plan:
    """Every configuration of a fused sweep and the populations they are trained in."""

    params: dict[str, dict[str, Any]]  # id -> the sampled values of the searched keys
    configs: dict[str, dict[str, Any]]  # id -> the full config, flat dotted keys
    populations: list[PopulationPlan] = field(default_factory=list)


def plan(spec: SweepSpec, sampled: list[dict[str, Any]]) -> Plan:
    """Name the sampled configurations, group them by what cannot be fused and cut each group
    into populations of at most ``search.population_size``, as even as they can be."""
    s = spec.search
    ids = config_ids(len(sampled))
    params = [{k: _plain(v) for k, v in p.items()} for p in sampled]
    cfgs = [trial_config(apply_sets(spec.sections, p)) for p in params]
    asha = None
    brackets = [0] * len(cfgs)
    if s.type == "asha":
        asha = Asha.of(spec)
        rng = np.random.default_rng(s.seed)
        odds = asha.bracket_odds()
        brackets = [int(rng.choice(len(odds), p=odds)) for _ in cfgs]
    groups: dict[str, list[int]] = {}
    for i, cfg in enumerate(cfgs):
        shared = [asdict(cfg.data), cfg.train.batch_size, cfg.train.device]
        groups.setdefault(json.dumps(shared, sort_keys=True), []).append(i)
    populations = [
        PopulationPlan(
            [ids[i] for i in chunk],
            [cfgs[i].to_dict() for i in chunk],
            [brackets[i] for i in chunk],
            asha,
            s.metric,
            s.mode,
        )
        for members in groups.values()
        for chunk in np.array_split(members, math.ceil(len(members) / s.population_size))
    ]
    return Plan(
        params=dict(zip(ids, params)),
        configs={i: cfg.flat() for i, cfg in zip(ids, cfgs)},
        populations=populations,
    )


def _plain(value: Any) -> Any:
    """A numpy scalar (Ray samples some) as the Python number it is."""
    return value.item() if isinstance(value, np.generic) else value


# ---------------------------------------------------------------- one population (worker)
class PopulationRun:
    """One population of a fused sweep, epoch by epoch, and the news of its members since the
    last report: ``{id: {"started", "results", "end"}}``, end ``{"outcome", "epochs_run"}``.

    Between epochs the population holds only members still training: one that ends while
    others go on leaves it (Population.remove), its Trial checkpoint archived first unless it
    diverged (a diverged configuration is never a sweep's best). Those still in it at the end
    are in the population's own checkpoint; ``MemberCheckpoints`` exports them from there.
    """

    def __init__(
        self, spec: PopulationPlan, population: Population, rungs: Rungs | None, archive: dict
    ) -> None:
        self.spec, self.population, self.rungs = spec, population, rungs
        self.archive: dict[str, dict[str, bytes]] = archive  # id -> its checkpoint's files
        self.epochs = dict(zip(spec.ids, (c["train"]["epochs"] for c in spec.configs)))
        self.done = population.done
        # (re)started: each member still here gets (or gets back) its run
        self.news: dict[str, dict[str, Any]] = {
            i: {"started": True, "results": [], "end": None} for i in population.ids
        }

    @classmethod
    def start(cls, spec: PopulationPlan, datasets: list[Dataset] | None = None) -> PopulationRun:
        cfgs = [trial_config(c) for c in spec.configs]
        return cls(spec, Population(cfgs, datasets, ids=spec.ids), _rungs(spec), {})

    @classmethod
    def restore(
        cls, spec: PopulationPlan, folder: str | Path, datasets: list[Dataset] | None = None
    ) -> PopulationRun:
        """Continue from ``save``: the population, its rung records and its archive."""
        folder = Path(folder)
        state = json.loads((folder / STATE_FILE).read_text())
        archive = _read_archive(folder / ARCHIVE_FILE)
        return cls(spec, Population.load(folder, datasets), _rungs(spec, state["rungs"]), archive)

    def step(self) -> None:
        """Train one epoch, apply the rung rule, and end the members that are done."""
        results = self.population.step()
        stopped = self.rungs.stopped(results) if self.rungs else {}
        ended: dict[str, Outcome] = {}
        for id_, metrics in results.items():
            epoch = int(metrics["epoch"])
            if metrics.get("diverged"):
                ended[id_] = Outcome.DIVERGED
            elif id_ in stopped:
                ended[id_] = Outcome.EARLY_STOPPED
            elif epoch >= self.epochs[id_]:
                ended[id_] = Outcome.COMPLETED
            news = self.news.setdefault(id_, {"started": False, "results": [], "end": None})
            news["results"].append(metrics)
            if id_ in ended:
                news["end"] = {"outcome": ended[id_], "epochs_run": epoch}
        self.done = all(i in ended for i in self.population.ids)
        if ended and not self.done:
            for id_, outcome in ended.items():
                if outcome is not Outcome.DIVERGED:
                    self.archive[id_] = _exported(self.population, id_)
            self.population.remove(list(ended))

    def take_news(self) -> dict[str, dict[str, Any]]:
        """The members' news since the last call (then forgotten)."""
        news, self.news = self.news, {}
        return news

    def save(self, folder: str | Path) -> None:
        """Everything ``restore`` needs, in ``folder``."""
        folder = Path(folder)
        self.population.save(folder)
        rungs = self.rungs.recorded if self.rungs else {}
        (folder / STATE_FILE).write_text(json.dumps({"ids": self.spec.ids, "rungs": rungs}))
        if self.archive:
            with zipfile.ZipFile(folder / ARCHIVE_FILE, "w") as z:
                for id_, files in self.archive.items():
                    for name, data in files.items():
                        z.writestr(f"{id_}/{name}", data)


def _rungs(spec: PopulationPlan, recorded: dict | None = None) -> Rungs | None:
    if spec.asha is None:
        return None
    return Rungs(spec.asha, dict(zip(spec.ids, spec.brackets)), recorded)


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
