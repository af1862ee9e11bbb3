"""Ray Tune on the driver: the tuner (``fit``, ``new_tuner``), the per-trial engine's searcher
and scheduler, and the callbacks that record each trial's events.

Elsewhere: the trainables Ray runs on its workers, with their tune.report and
tune.get_checkpoint (sweeps/engine/trainable.py); the space's Ray domains and the up-front draws
(sweeps/search/draws.py); Ray's processes, started, stopped and killed
(sweeps/engine/ray_process.py). MLflow is written only through ``sweeps.tracking.writer``, from
the driver (this module's callbacks run there), so one process writes the store.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import ray
from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.basic_variant import BasicVariantGenerator
from ray.tune.search.optuna import OptunaSearch

from sweeps.engine import fused, ray_process, stopping
from sweeps.engine.cadence import EARLIER
from sweeps.engine.recorder import Recorder, TrialNews
from sweeps.engine.trainable import population_trainable, trainable
from sweeps.record import disk
from sweeps.record.layout import SweepFolder
from sweeps.record.outcomes import Outcome
from sweeps.record.results import outcome
from sweeps.search import pbt, tpe
from sweeps.search.asha import milestones
from sweeps.search.draws import DOMAINS, sample_params, search_space
from sweeps.spec.document import trial_config_with
from sweeps.spec.space import Space
from sweeps.spec.sweep import MODELLED, STOPS_EARLY, SweepSpec
from trainers.config import ConfigError


class _Unsaid(logging.Filter):
    """Drops Ray Tune's lines that start with ``said``: lines that would mislead a user."""

    def __init__(self, *said: str) -> None:
        super().__init__()
        self.said = said

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.said)


# On a stop, the driver says once in its own words what Ray's lines say: they point to
# ``Tuner.restore``, not ``sweep resume``, and list each trial that had not written results
# yet as "Failed to fetch metrics" (the folder's record, not Ray's, has the trials).
_STOP_WORDS = _Unsaid("Stop signal received", "Experiment has been interrupted",
                      "Failed to fetch metrics")  # fmt: skip
for _name in ("ray.tune.tune", "ray.tune.analysis.experiment_analysis"):
    logging.getLogger(_name).addFilter(_STOP_WORDS)
# A per-trial PBT member that starts again from its checkpoint: Ray's JSON and CSV loggers look
# for its result.json and progress.csv in the storage, which they have not reached yet, and
# warn; those files of Ray's may then lack the member's earlier reports. The sweep's record
# (history.jsonl) and MLflow have every one (tests/test_adaptive.py reads its curves back).
logging.getLogger("ray.tune.logger.logger").addFilter(_Unsaid("Remote file not found"))


def can_resume(files: SweepFolder) -> bool:
    return files.tuner_state.exists()


# ---------------------------------------------------------------- driver-side objects
# Ray pickles the callback and the search algorithm into tuner.pkl and, on resume, uses those
# copies: anything they kept from the first start (the folder's path, above all) would be
# stale once the folder moved. So they keep nothing, and read the run's own from ``_driver``,
# set by ``fit`` for the time of the run, in this (the driver's) process.
@dataclass
class _Run:
    recorder: Recorder
    spec: SweepSpec
    files: SweepFolder
    plan: fused.Plan | None = None  # a fused sweep's configurations and populations
    sampler: Any = None  # tpe and bohb, fused: the sampler's actor


@dataclass
class _Driver:
    """The driver's Ray Tune state, in one object at module level: the callbacks and the
    searcher that Ray unpickles find the run nowhere else."""

    run: _Run | None = None  # the run being fitted (``_running``)


_driver = _Driver()


def _run() -> _Run:
    if _driver.run is None:
        raise RuntimeError("used outside tune.fit()")
    return _driver.run


@contextlib.contextmanager
def _running(run: _Run) -> Iterator[None]:
    _driver.run = run
    try:
        yield
    finally:
        _driver.run = None


def trial_error(trial: Any) -> str:
    """A failed trial's error, as Ray wrote it to the trial's folder before calling back. A
    full disk (a checkpoint the trial could not write) stops the sweep (sweeps.record.disk) rather
    than failing the trial: once there is space, the trial goes on."""
    error = Path(trial.error_file).read_text() if trial.error_file else "unknown error"
    if disk.is_full_text(error):
        raise disk.DiskFull(f"{disk.why(Exception(error))} writing {trial.local_path}")
    return error


class TrackingCallback(tune.Callback):
    """Forwards trial events to the sweep's Recorder (folder, MLflow, the live view); stops
    the sweep, at each step of Ray Tune's loop, when its disks fill up (sweeps.record.disk)."""

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:  # tuner.pkl of an older version
        pass

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        stopping.hand_over()  # Tune's SIGINT handler is in place by now
        run = _run()
        if iteration == 0 and run.plan is None:  # a population's members are not Ray's trials
            withdraw_unknown(run.recorder, {t.trial_id for t in trials})
        if run.recorder.disks is not None:
            run.recorder.disks.check(len(run.recorder.history.trials))

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        trial_error(trial)  # Ray retries a failed trial: not when the disk is full

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """A trial's run keeps the params it started with: after a PBT exploit its config is
        another's, perturbed, and the run shows that as curves and an exploit record."""
        run = _run()
        known = run.recorder.history.trials.get(trial.trial_id)
        if known is not None:
            run.recorder.trial_started(trial.trial_id, known.params, known.config)
            return
        config = trial_config_with(run.spec.sections, trial.config).flat()
        run.recorder.trial_started(trial.trial_id, dict(trial.config), config)

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        _run().recorder.trial_results(trial.trial_id, [*result.get(EARLIER, []), result])

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run = _run()
        metrics = trial.last_result or {}
        epochs = trial.config.get("train.epochs", run.spec.trial.train.epochs)
        end = outcome(metrics, epochs, error=None)
        run.recorder.trial_ended(trial.trial_id, end, int(metrics.get("epoch", 0)))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        recorder = _run().recorder
        if trial.trial_id not in recorder.history.trials:  # its actor failed to start
            self.on_trial_start(iteration, trials, trial)
        error = trial_error(trial)
        epochs = int((trial.last_result or {}).get("epoch", 0))
        recorder.trial_ended(trial.trial_id, Outcome.ERROR, epochs, error=str(error))


def withdraw_unknown(recorder: Recorder, restored: set[str]) -> None:
    """A resume after a kill: Ray restores its last snapshot of the sweep, taken every 10 s at
    most and copied to the folder in the background, so trials that began after it are in the
    record but not in Ray, and Ray asks its searcher for their places again. They leave the
    record (and MLflow), so that no configuration counts twice."""
    unknown = [i for i in recorder.history.trials if i not in restored]
    if unknown:
        print(
            f"{len(unknown)} trials began after Ray's last snapshot of the sweep and are "
            f"asked for again: {', '.join(unknown)}",
            flush=True,
        )
        recorder.withdraw(unknown)


class Variants(BasicVariantGenerator):
    """Ray's generator of trials, restorable from a moved folder. Ray 2.60 moves the trials it
    restores to the folder it restores from, but the trials this generator has yet to make
    keep the storage of the folder it was saved in, and fail to write there."""

    def restore_from_dir(self, dirpath: str) -> None:
        super().restore_from_dir(dirpath)
        repoint_unmade_trials(self, _run().files.ray)


def repoint_unmade_trials(generator: BasicVariantGenerator, experiment: Path) -> None:
    """The one use of Ray's private generator state (the moved-folder test fails if it goes):
    each trial iterator's spec, and the specs of the variants it has drawn and not yet made
    into trials, hold the StorageContext those trials get; point each at ``experiment`` the
    way Ray's TuneController does for the trials it restores."""
    for iterator in generator._iterators:
        drawn = iterator.variants.iterable if iterator.variants is not None else []
        for spec in [iterator.unresolved_spec, *(spec for _, spec in drawn)]:
            storage = copy.copy(spec["storage"])
            storage.storage_fs_path = str(experiment.parent)
            storage.experiment_dir_name = experiment.name
            spec["storage"] = storage


ENDS = (Outcome.COMPLETED, Outcome.EARLY_STOPPED, Outcome.DIVERGED)  # a population's line counts


class PopulationCallback(TrackingCallback):
    """A fused sweep's callback: each Ray trial is a population; its members' news are
    recorded as if each configuration were a trial of its own (a run, curves, an outcome)."""

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        pass  # the members start with the population's first report

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        run = _run()
        index = trial.config[fused.POPULATION_KEY]
        news = json.loads(result[fused.NEWS_KEY])
        for id_, n in news.items():
            if "params" in n:  # asked of the sampler: the plan learns it now
                run.plan.params[id_] = n["params"]
                run.plan.configs[id_] = trial_config_with(run.spec.sections, n["params"]).flat()
        run.plan.members.setdefault(index, set()).update(news)
        run.recorder.trials_news([_member_news(run.plan, i, n) for i, n in news.items()])
        ended = [i for i, n in news.items() if n["end"] is not None]
        if run.sampler is not None and ended:
            run.sampler.recorded.remote(ended)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run = _run()
        index = trial.config[fused.POPULATION_KEY]
        ids = run.plan.members_of(index)
        ends = [run.recorder.history.trials[i].end for i in ids if i in run.recorder.history.trials]
        outcomes = {o: sum(e is not None and e["outcome"] == o for e in ends) for o in ENDS}
        shown = ", ".join(f"{n} {o}" for o, n in outcomes.items() if n)
        print(f"  population {index} ({len(ids)} configurations): {shown}", flush=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Every member that had not ended ends with the population's error."""
        run = _run()
        error = trial_error(trial)
        index, history = trial.config[fused.POPULATION_KEY], run.recorder.history.trials
        news = []
        for i in run.plan.members_of(index):
            if i not in history or history[i].end is None:  # never started, or not ended
                epochs = history[i].last_epoch if i in history else 0
                end = {"outcome": Outcome.ERROR, "epochs_run": epochs}
                n = {"started": i not in history, "results": [], "end": end}
                news.append(_member_news(run.plan, i, n, str(error)))
        run.recorder.trials_news(news)  # the live view says each member failed, and why


def _member_news(
    plan: fused.Plan, id_: str, news: dict[str, Any], error: str | None = None
) -> TrialNews:
    """One configuration's news (PopulationRun.news) as a trial's, with its params and config
    from the plan."""
    end = None if news["end"] is None else {**news["end"], "error": error}
    return TrialNews(
        id_,
        plan.params[id_],
        plan.configs[id_],
        news["started"],
        news["results"],
        end,
        news.get("exploits", []),
    )


# ---------------------------------------------------------------- driver
def checkpoints(grid: Any) -> dict[str, Path] | fused.MemberCheckpoints:
    """Each trial's latest checkpoint folder, by trial id, from the public Result fields; in a
    fused sweep, each configuration's, made on demand from its population's."""
    if any(fused.POPULATION_KEY in (result.config or {}) for result in grid):
        return fused.MemberCheckpoints(
            [Path(r.checkpoint.path) for r in grid if r.checkpoint is not None]
        )
    return {
        result.metrics["trial_id"]: Path(result.checkpoint.path)
        for result in grid
        if result.checkpoint is not None and "trial_id" in result.metrics
    }


def check_draws(spec: SweepSpec, files: SweepFolder, known: dict[str, Any]) -> None:
    """A resumed fused grid, random or asha sweep draws its configurations again from its
    saved config; refuse it, before anything runs, where they are not those its trials
    (``known``: the record's) started with, rather than train another under the same id."""
    if spec.search.engine != "fused" or spec.search.type in MODELLED or not known:
        return
    drawn = fused.plan(spec, sample_params(spec)).params
    for id_, trial in known.items():
        if id_ in drawn and drawn[id_] != trial.params:
            raise ConfigError(
                f"{files.config} draws {id_} as {drawn[id_]}, but the sweep started it as "
                f"{trial.params}: the order of the space's keys decides the draws; put them "
                "back in the order the sweep started with, or run it again under another --name"
            )


def fit(
    spec: SweepSpec,
    files: SweepFolder,
    recorder: Recorder,
    resources: dict[str, float],
    resume: bool,
) -> dict[str, Path] | fused.MemberCheckpoints:
    """Run (or resume) the sweep in ``files`` to its end, or until a stop signal; returns each
    trial's latest checkpoint folder (``checkpoints``).

    A resume restores Ray's state from the folder where it lies now (Ray takes its storage
    path and experiment name from the path it restores), so a moved folder goes on in place.
    """
    plan = sampler = None
    if spec.search.engine == "fused":  # a Ray trial per population (sweeps/engine/fused.py)
        if spec.search.type in MODELLED:  # open populations ask the sweep's one sampler
            plan = fused.open_plan(spec)
            known = recorder.history.trials  # a resume: asked before
            for id_, trial in known.items():
                plan.params[id_], plan.configs[id_] = trial.params, trial.config
            ended = [i for i, trial in known.items() if trial.end is not None]
            sampler = new_sampler(spec, files, ended)
        else:
            plan = fused.plan(spec, sample_params(spec))
        function = tune.with_parameters(
            population_trainable,
            populations=plan.populations,
            cpus=resources["cpu"],
            data=str(files.prepared),
            sampler=sampler,
        )
    else:
        function = tune.with_parameters(
            trainable,
            sections=spec.sections,
            cpus=resources["cpu"],
            milestones=milestones(spec),
            data=str(files.prepared),
            pbt=spec.search.type == "pbt",
        )
    wrapped = tune.with_resources(function, resources)
    if resume:
        tuner = tune.Tuner.restore(
            str(files.ray), trainable=wrapped, resume_unfinished=True, resume_errored=True
        )
    else:
        tuner = new_tuner(spec, files, wrapped, plan)
    with _running(_Run(recorder, spec, files, plan, sampler)), _own_signals():
        results = tuner.fit()
    ray_process.keep_until_stopped(results)
    if sampler is not None:  # the search's own cost, beside the training's (docs/search.md)
        wall, cpu = ray.get(sampler.seconds.remote())
        print(f"sampler: {wall:.2f} s in Optuna ({cpu:.2f} s of CPU)", flush=True)
    return checkpoints(results)


def new_sampler(spec: SweepSpec, files: SweepFolder, recorded: list[str]) -> Any:
    """tpe and bohb's sampler for a fused sweep: one Ray actor that every population asks, its
    study in the sweep's folder, so a resumed sweep's search goes on where it stopped.
    ``recorded``: the configurations whose end the record holds (the driver adds each end it
    records), so that a restarted population retrains the others."""
    s = spec.search
    actor = ray.remote(num_cpus=0)(tpe.Sampler)
    journal = files.search_journal
    return actor.remote(journal, spec.space, s.mode, s.seed, s.num_samples, spec.name, recorded)


@contextlib.contextmanager
def _own_signals() -> Iterator[None]:
    """Ray Tune leaves its SIGINT and SIGUSR1 handlers installed when it returns: the first
    Ctrl-C during the refit or the report after it would only print Tune's warning. The
    driver's own handlers come back once Tune is done."""
    kept = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGUSR1)}
    try:
        yield
    finally:
        for sig, handler in kept.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------- per trial: searcher, scheduler
class DefineByRun:
    """The space as Optuna's define-by-run for Ray's OptunaSearch: each key suggested from its
    Optuna distribution (sweeps.search.tpe), the config given the values as the space means
    them (rounded to a q-distribution's step). A class, not a closure: Ray pickles it."""

    def __init__(self, space: Space) -> None:
        self.space = space

    def __call__(self, trial: Any) -> dict[str, Any]:
        drawn = {k: suggest(trial, k, d) for k, d in tpe.distributions(self.space).items()}
        return tpe.params(self.space, drawn)


def suggest(trial: Any, key: str, dist: Any) -> Any:
    """One draw through Optuna's public suggest_* calls, the only ones Ray's captor passes on."""
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return trial.suggest_categorical(key, dist.choices)
    if isinstance(dist, optuna.distributions.IntDistribution):
        return trial.suggest_int(key, dist.low, dist.high, step=dist.step, log=dist.log)
    return trial.suggest_float(key, dist.low, dist.high, step=dist.step, log=dist.log)


class RecordingPBT(PopulationBasedTraining):
    """Ray's PBT, each exploit also recorded in the sweep's folder and MLflow run, and none at
    the last epoch (Ray would perturb there too and restart finished trials from another's
    checkpoint; a fused population perturbs only members still training)."""

    def __init__(self, policy: pbt.Pbt, epochs: int, **settings: Any) -> None:
        super().__init__(**settings)
        self.keys, self.epochs = list(policy.mutations), epochs

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if result.get("epoch", 0) >= self.epochs:
            return self.CONTINUE  # the trial ends on this result
        return super().on_trial_result(tune_controller, trial, result)

    def _exploit(self, tune_controller: Any, trial: Any, trial_to_clone: Any) -> None:
        super()._exploit(tune_controller, trial, trial_to_clone)
        # the epoch of the checkpoint cloned, which the trial goes on from
        epoch = int(self._trial_state[trial_to_clone].last_result.get("epoch", 0))
        new = {k: trial.config[k] for k in self.keys}
        _run().recorder.exploited(trial.trial_id, trial_to_clone.trial_id, epoch, new)


class TellingSearch(OptunaSearch):
    """Ray's OptunaSearch, telling Optuna how each trial ended as the fused engine's sampler
    does (sweeps/engine/fused.py): completed as complete, stopped by ASHA before its last epoch
    as pruned (its last reported value then ranks it), diverged or failed as failed. Ray's
    tells a stopped or diverged trial complete, with a value it never reached at the end."""

    def __init__(self, *args: Any, epochs: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.epochs = epochs  # train.epochs, unless a trial's config searches it

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        epochs = ((result or {}).get("config") or {}).get("train.epochs", self.epochs)
        end = Outcome.ERROR if error or not result else outcome(result, epochs, error=None)
        if end is Outcome.COMPLETED:
            super().on_trial_complete(trial_id, result)
        else:  # no value: pruned, or (error) failed
            super().on_trial_complete(trial_id, None, error=end is not Outcome.EARLY_STOPPED)


def searcher(spec: SweepSpec) -> Any:
    """Who draws the per-trial engine's configurations: Ray's variant generator (grid, random,
    asha, pbt's first draws), or Optuna's TPE through Ray's OptunaSearch (tpe, bohb)."""
    s = spec.search
    if s.type not in MODELLED:
        return Variants(random_state=s.seed, max_concurrent=s.max_concurrent)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    found = TellingSearch(
        space=DefineByRun(spec.space),
        metric=s.metric,
        mode=s.mode,
        sampler=tpe.tpe_sampler(s.seed, 0, tpe.distributions(spec.space)),
        epochs=spec.trial.train.epochs,
    )
    return ConcurrencyLimiter(found, s.max_concurrent) if s.max_concurrent else found


def scheduler(spec: SweepSpec) -> Any:
    """What stops or perturbs the per-trial engine's trials: ASHA (asha, bohb), PBT, or none."""
    s, epochs = spec.search, spec.trial.train.epochs
    if s.type in STOPS_EARLY:
        return ASHAScheduler(
            time_attr="epoch",  # our epoch count, kept across checkpoint restores
            max_t=epochs,
            grace_period=s.grace_period,
            reduction_factor=s.reduction_factor,
            brackets=s.brackets,
        )
    if s.type == "pbt":
        policy = pbt.Pbt.of(spec)
        return RecordingPBT(
            policy,
            epochs,
            time_attr="epoch",
            synch=True,  # all members at the epoch before any exploits: the fused engine's lockstep
            perturbation_interval=policy.interval,
            hyperparam_mutations={
                k: DOMAINS[d.distribution.name](d) for k, d in policy.mutations.items()
            },
            quantile_fraction=policy.quantile,
            resample_probability=policy.resample_probability,
            perturbation_factors=policy.factors,
            custom_explore_fn=policy.within,
        )
    return FIFOScheduler()


def new_tuner(
    spec: SweepSpec, files: SweepFolder, wrapped: Any, plan: fused.Plan | None = None
) -> tune.Tuner:
    """A Tuner for a new sweep, its state saved in ``files.ray``; with a fused ``plan``, a
    trial per population (FIFO: the search runs inside each population)."""
    s = spec.search
    space = {} if s.type in MODELLED else search_space(spec)  # OptunaSearch's own
    if plan is not None:
        space = {fused.POPULATION_KEY: tune.grid_search(list(range(len(plan.populations))))}
    return tune.Tuner(
        wrapped,
        param_space=space,
        tune_config=tune.TuneConfig(
            metric=s.metric,
            mode=s.mode,
            num_samples=s.num_samples if plan is None else 1,
            scheduler=FIFOScheduler() if plan is not None else scheduler(spec),
            search_alg=searcher(spec)
            if plan is None
            else Variants(random_state=s.seed, max_concurrent=s.max_concurrent),
            reuse_actors=True,  # ~0.2 s per trial instead of ~1 s, and the data stays loaded
        ),
        run_config=tune.RunConfig(
            name=files.ray.name,  # Ray syncs over files it finds beside its folder
            storage_path=str(files.root),
            callbacks=[
                TrackingCallback() if plan is None else PopulationCallback(),
                CSVLoggerCallback(),
                JsonLoggerCallback(),
            ],
            failure_config=tune.FailureConfig(max_failures=s.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=checkpoints_kept(spec)),
            verbose=0,
        ),
    )


def checkpoints_kept(spec: SweepSpec) -> int:
    """Ray's num_to_keep. Ray deletes a trial's checkpoints beyond it, and forces a snapshot of
    the whole experiment's state (its cost grows with the number of trials: ray issues 7718,
    11233) whenever a trial has saved num_to_keep checkpoints since the last snapshot. A trial
    saves one at each milestone and one per CHECKPOINT_S of training: keeping two more than
    the milestones, only a trial that trains long forces a snapshot, after several periods.
    Never fewer than two: Ray deletes the older before its next snapshot names the newer."""
    return len(milestones(spec)) + 2
