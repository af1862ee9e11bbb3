"""The code Ray runs on its workers: a trial's trainable, and a fused population's.

A worker imports this module (Ray pickles the trainables by reference) and counts as started
once it has: so it imports only what a worker needs, never MLflow (the driver alone writes
the store) nor torch and scikit-learn, imported by the trainables themselves. Ray hands a
pending trial to the first actor that a finished trial frees, killing one still starting for
it; with trials shorter than a worker's start, a heavier import would run the sweep one trial
at a time.
"""

from __future__ import annotations

import functools
import json
import tempfile
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from ray import tune

from sweeps.engine import hold
from sweeps.engine.cadence import EARLIER, Cadence
from sweeps.spec.document import trial_config_with
from trainers.config import trial_config

if TYPE_CHECKING:
    from sweeps.engine.fused import PopulationPlan
    from trainers.data import Dataset


@functools.lru_cache(maxsize=4)
def _datasets(data_json: str, folder: str) -> list[Dataset]:
    """The prepared data, memory-mapped from the sweep folder's ``data/`` (trainers.prepared:
    one copy per node, prepared by the first trial to need it); mapped once per worker
    process: actors are reused, so later trials skip even that."""
    from trainers.prepared import shared

    return shared(trial_config({"data": json.loads(data_json)}).data, folder)


def trainable(
    config: dict[str, Any],
    sections: dict[str, Any],
    cpus: float,
    milestones: frozenset[int],
    data: str,
    pbt: bool = False,
) -> None:
    """One trial: train epoch by epoch; report and checkpoint when its Cadence says (at
    ``milestones``, its end, and every so often), each report carrying the epochs since the
    one before. ``data``: the sweep folder's prepared data (``_datasets``). ``pbt``: each epoch
    also reports the hyperparameters PBT perturbs."""
    import torch

    from trainers.loop import Trial
    from trainers.metrics import pbt_curves

    torch.set_num_threads(max(1, int(cpus)))
    cfg = trial_config_with(sections, config)
    datasets = _datasets(json.dumps(asdict(cfg.data), sort_keys=True), data)
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        trial = Trial(cfg, datasets)
    else:
        with checkpoint.as_directory() as folder:
            trial = Trial.load(folder, datasets)
        if trial.cfg != cfg:  # PBT: another's checkpoint, with this trial's explored config
            trial.reconfigure(cfg)
    cadence = Cadence(milestones, start=time.monotonic())
    earlier: list[dict[str, Any]] = []

    def on_epoch(metrics: dict[str, Any], current: Trial) -> None:
        hold.epoch(current.epoch)
        metrics = {**metrics, "time": int(time.time() * 1000)}
        if pbt:
            metrics |= pbt_curves(current.cfg.train)
        report, save = cadence.due(current.epoch, current.done, time.monotonic())
        if not report:
            earlier.append(metrics)
            return
        result = {**metrics, "epochs_run": current.epoch, EARLIER: earlier.copy()}
        earlier.clear()
        if not save:
            tune.report(result)
            return
        with tempfile.TemporaryDirectory() as folder:
            current.save(folder)
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(folder))

    trial.run(on_epoch)


class RemoteSampler:
    """The sweep's sampler actor (sweeps.search.tpe.Sampler) with the methods a population
    calls (sweeps.engine.fused.Asker), each call waited for: a population asks between epochs."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor

    def __getattr__(self, name: str) -> Any:
        import ray

        method = getattr(self.actor, name)
        return lambda *args: ray.get(method.remote(*args))


def population_trainable(
    config: dict[str, Any],
    populations: list[PopulationPlan],
    cpus: float,
    data: str,
    sampler: Any = None,
) -> None:
    """One population of a fused sweep: train it epoch by epoch; report its members' news and
    checkpoint it every so often (sweeps.engine.fused.next_report_after), and at its end.
    ``sampler``: tpe and bohb's actor, which an open population asks for its members."""
    import torch

    from sweeps.engine import fused

    torch.set_num_threads(max(1, int(cpus)))
    plan = populations[config[fused.POPULATION_KEY]]
    sampler = RemoteSampler(sampler) if sampler is not None else None
    datasets = _datasets(json.dumps(plan.data(), sort_keys=True), data)
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        run = fused.PopulationRun.start(plan, datasets, sampler)
    else:
        with checkpoint.as_directory() as folder:
            run = fused.PopulationRun.restore(plan, folder, datasets, sampler)
    wait, since = 0.0, time.monotonic()
    while not run.done:
        run.step()
        hold.epoch(max(run.population.epochs_run, default=0))
        if run.done or time.monotonic() - since >= fused.next_report_after(wait):
            with tempfile.TemporaryDirectory() as folder:
                run.save(folder)
                start = time.monotonic()
                result = fused.report_fields(run.take_news(), plan.metric, plan.mode)
                tune.report(result, checkpoint=tune.Checkpoint.from_directory(folder))
            since = time.monotonic()
            wait = since - start  # the driver's work on it: the report returns after
