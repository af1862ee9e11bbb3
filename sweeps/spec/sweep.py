"""The sweep's own settings (search, space, resources, mlflow), validated before anything runs.

``sweep_spec(doc)`` turns a config document into a ``SweepSpec``; it raises ConfigError for
every mistake, so that a bad config stops before Ray starts or MLflow is touched.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from sweeps.record.layout import DEFAULT_STORAGE, SweepFolder, unwritable
from sweeps.spec.document import SAVED, load_document, trainer_config, trial_config_with
from sweeps.spec.space import Dimension, Space, distribution_of
from trainers.config import TOGETHER, ConfigError, TrialConfig, unfusable
from trainers.rules import Rule, check_mapping, expanded

SEARCH_TYPES = ("grid", "random", "asha", "tpe", "bohb", "pbt")
SEED_KEY = "train.seed"  # a repeated grid's configurations each draw one (sweeps/search/draws.py)
ADAPTIVE = ("tpe", "bohb", "pbt")  # each draw learns from the results before it (sweeps/search/)
AUTO_POPULATION = 256  # the most configurations search.population_size auto puts together
MODELLED = ("tpe", "bohb")  # Optuna's TPE draws each configuration (sweeps/search/tpe.py)
STOPS_EARLY = ("asha", "bohb")  # ASHA's rungs stop configurations early
# What pbt perturbs, where the space searches it with a range (sweeps/search/pbt.py).
PBT_MUTABLE = ("train.lr", "train.lambda", "train.momentum")
ENGINES = (
    "trial",
    "fused",
)  # one Ray trial per configuration, or populations (sweeps/engine/fused.py)
METRICS = {"val_acc": "max", "val_loss": "min"}
ALL_CHILD_RUNS = "all"  # mlflow.child_runs: every trial a child run of its own (else best:N)
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"  # a folder, an MLflow experiment, a job name
# The stores MLflow 3 can track to (it refuses file:// stores); a server is http(s)://.
_PORT = r"(6553[0-5]|655[0-2]\d|65[0-4]\d\d|6[0-4]\d{3}|[1-5]\d{4}|[1-9]\d{0,3})"
TRACKING_URI_PATTERN = (
    r"sqlite:///\S+|(postgresql|mysql|mssql)(\+\w+)?://\S+|databricks\S*"
    rf"|https?://[^\s/:]+(:{_PORT})?(/\S*)?"
    r"|[^:\s]+\.(db|sqlite3?)"  # a bare path: a SQLite file
)
TRACKING_URI_WHAT = (
    "an MLflow store URI: http(s)://HOST:PORT, sqlite:///FILE, postgresql://..., "
    "or a path ending in .db"
)
# A store URI given as a value (--tracking-uri, $MLFLOW_TRACKING_URI): what the config's
# mlflow.tracking_uri takes, but null, which means nothing there (sweeps.tracking.uri).
TRACKING_URI = Rule(str, pattern=TRACKING_URI_PATTERN, what=TRACKING_URI_WHAT)
# The most configurations one sweep may have (draws, or repeats x grid points): far beyond any
# real search of a linear model, and refused before anything is drawn (a fused sweep draws
# every configuration up front: a billion would take minutes before any training).
MAX_CONFIGS = 10**6

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
    type: str = "random"  # grid | random | asha | tpe | bohb | pbt
    num_samples: int | None = None  # configurations (default 10); grid: repeats (default 1)
    metric: str = "val_acc"  # val_acc (max) or val_loss (min), measured on the validation split
    max_concurrent: int = 0  # 0: as many trials at once as the resources allow
    grace_period: int = 2  # asha, bohb: epochs every trial gets before it can be stopped
    reduction_factor: int = 3  # asha, bohb: keep the best 1/reduction_factor at each rung
    brackets: int = 1  # asha, bohb
    perturbation_interval: int = 4  # pbt: epochs between exploits
    quantile_fraction: float = 0.25  # pbt: the bottom quantile copies the top one
    resample_probability: float = 0.25  # pbt: explore draws afresh, else scales by 0.8 or 1.2
    max_failures: int = 1  # retries of a trial that raises, before it is recorded FAILED
    seed: int = 0  # seeds the draws of the search
    refit: bool = True  # retrain the chosen config on train+validation for the test look
    engine: str = "trial"  # trial: a Ray trial per configuration; fused: per population
    population_size: int | str = "auto"  # fused: most configurations trained in one step

    @property
    def mode(self) -> str:
        return METRICS[self.metric]

    @property
    def population_limit(self) -> int:
        """population_size as a number: auto's bound until the driver sizes it to the device
        (sweeps.engine.fused.sized)."""
        return AUTO_POPULATION if self.population_size == "auto" else int(self.population_size)


@dataclass
class Resources:
    cpu: float = 1.0  # per trial
    gpu: float = 0.0  # per trial; a fraction packs several trials on one GPU


@dataclass
class SweepSpec:
    name: str
    trial: TrialConfig  # the fixed part: every trial starts from it
    sections: dict[str, Any]  # the same, as the user's data/model/train mappings
    space: Space  # the searched keys, each with its distribution
    search: Search = field(default_factory=Search)
    resources: Resources = field(default_factory=Resources)
    storage: Path = Path(DEFAULT_STORAGE)
    tracking_uri: str | None = None
    child_runs: str = ALL_CHILD_RUNS  # or best:N (mlflow.child_runs)

    @property
    def folder(self) -> Path:
        """The sweep's one output folder: results, Ray's trials and checkpoints."""
        return self.files.root

    @property
    def files(self) -> SweepFolder:
        """The named paths inside ``folder``."""
        return SweepFolder.of(self.storage, self.name)

    def num_trials(self) -> int:
        return self.space.grid_points() * self.search.num_samples


SWEEP_RULES: dict[str, Rule] = {
    "name": Rule(
        str,
        pattern=NAME_PATTERN,
        what="letters, digits, '_', '.' or '-' (at most 64, the first a letter or digit; set "
        "name: in the config or pass --name)",
        doc="the sweep's name: its folder and MLflow experiment",
    ),
    "storage": Rule(
        str,
        optional=True,
        pattern=r"[^\x00]+",
        what="a folder path or null",
        doc="the sweep's folder is `<storage>/<name>/` (a shared path on a cluster)",
    ),
    "search.type": Rule(
        str,
        choices=SEARCH_TYPES,
        doc="grid: every grid point; random: draws; asha: draws stopped early by ASHA; tpe: "
        "Optuna's TPE, each draw modelled on the results before it; bohb: tpe stopped early by "
        "ASHA, the model fed with the rungs' results; pbt: Population Based Training "
        "(docs/search.md)",
    ),
    "search.num_samples": Rule(
        int,
        low=1,
        high=MAX_CONFIGS,
        optional=True,
        doc="draws; for grid, repeats of the grid, each configuration with a train.seed of its "
        "own; none: 1 for grid, else "
        f"10. A sweep has num_samples x the grid's points configurations, at most {MAX_CONFIGS}",
    ),
    "search.metric": Rule(
        str,
        choices=tuple(METRICS),
        doc="what ranks trials, at a trial's last epoch: val_acc (max) or val_loss (min)",
    ),
    "search.max_concurrent": Rule(
        int, low=0, doc="trials at once; 0: as many as the resources allow"
    ),
    "search.grace_period": Rule(
        int, low=1, doc="asha, bohb: epochs every trial gets, <= train.epochs (bohb: <)"
    ),
    "search.reduction_factor": Rule(
        int, low=2, doc="asha, bohb: keeps the best 1/reduction_factor at each rung"
    ),
    "search.brackets": Rule(int, low=1, doc="asha, bohb"),
    "search.perturbation_interval": Rule(
        int, low=1, doc="pbt: epochs between exploits, < train.epochs"
    ),
    "search.quantile_fraction": Rule(
        float,
        low=0.0,
        low_open=True,
        high=0.5,
        doc="pbt: the bottom quantile copies a member of the top one (Ray Tune's default)",
    ),
    "search.resample_probability": Rule(
        float,
        low=0.0,
        high=1.0,
        doc="pbt: explore draws a hyperparameter afresh with this probability, else scales it "
        "by 0.8 or 1.2 (Ray Tune's default)",
    ),
    "search.max_failures": Rule(int, low=0, doc="retries of a trial that raises"),
    "search.seed": Rule(int, low=0, high=2**32 - 1, doc="seeds the draws"),
    "search.refit": Rule(
        bool,
        doc="true: after selection, the chosen config (and the best of each searched loss) is "
        "retrained with its hyperparameters, seed and train.epochs on train+validation "
        "together (all folds), on the driver, and that model gets the one look at test; "
        "false (and always with pbt, whose members learn a schedule): the chosen trial's "
        "checkpoint does",
    ),
    "search.engine": Rule(
        str,
        choices=ENGINES,
        doc="trial: one Ray trial per configuration; fused: configurations that share the data "
        "and batch size trained together as populations, one Ray trial each (docs/fused.md)",
    ),
    "search.population_size": Rule(
        int,
        low=1,
        words=("auto",),
        doc="fused: at most this many configurations per population; resources, "
        "max_concurrent and max_failures then count populations. auto: as many as fit in the "
        f"device's free memory, at most {AUTO_POPULATION} (docs/fused.md). tpe and bohb train "
        "fewer at once (docs/search.md); pbt's population is num_samples",
    ),
    "resources.cpu": Rule(float, low=0.0, low_open=True, doc="CPUs per trial"),
    "resources.gpu": Rule(
        float,
        low=0.0,
        doc="GPUs per trial; 0.25 packs four trials on a GPU. Without a GPU, trials run on the CPU",
    ),
    "mlflow.tracking_uri": Rule(
        str,
        optional=True,
        pattern=TRACKING_URI_PATTERN,
        what=TRACKING_URI_WHAT + " or null",
        doc="none: `$MLFLOW_TRACKING_URI`, else the store a resumed sweep's runs are in, "
        "else `sqlite:///mlflow.db` in the working directory",
    ),
    "mlflow.child_runs": Rule(
        str,
        pattern=r"all|best:[1-9][0-9]*",
        what="all or best:N, N >= 1",
        doc="all: every configuration is a child run of its own, written as it trains; best:N: "
        "the N best by search.metric only, written when the sweep ends or stops (the MLflow "
        "UI pages 100 runs and charts 10). Every configuration stays in history.jsonl, "
        "results.csv and the report",
    ),
}


def sweep_defaults() -> dict[str, Any]:
    """Each SWEEP_RULES key's default, for docs/config.md."""
    out = {"name": None, "storage": DEFAULT_STORAGE, "mlflow.tracking_uri": None}
    out["mlflow.child_runs"] = ALL_CHILD_RUNS
    for name, cls in (("search", Search), ("resources", Resources)):
        out |= {f"{name}.{f.name}": f.default for f in fields(cls)}
    return out


def _dimension(key: str, given: Any, search_type: str) -> Dimension:
    """One ``space`` entry, with the checks that belong to the search type made before its
    arguments are."""
    dist = distribution_of(key, given)
    if search_type == "grid" and dist.name != "grid":
        raise ConfigError(
            f"space.{key}: a grid search needs explicit values ({{grid: [...]}}), not "
            f"{dist.name}; use search.type random or asha to sample"
        )
    if search_type in ADAPTIVE and dist.name == "grid":
        raise ConfigError(
            f"space.{key}: {search_type} draws from distributions; a grid is search.type grid's: "
            "write {choice: [...]} for a set of values"
        )
    if key == "train.epochs" and search_type in (*STOPS_EARLY, "pbt"):
        raise ConfigError(
            f"space.train.epochs cannot be searched with {search_type}: "
            + ("its population trains in lockstep" if search_type == "pbt" else "its max_t")
            + " is train.epochs"
        )
    return Dimension.parse(key, given)


def _check_search(search: Search, trial: TrialConfig, space: Space) -> None:
    """The rules of the adaptive searches, each refusal naming its key and what to change."""
    n, kind = search.num_samples, search.type
    drawn = [d for d in space.values() if d.distribution.name != "grid" and len(set(d.args)) > 1]
    if n > 1 and not drawn and kind not in ("grid", "pbt"):
        # (a grid's configurations each draw a train.seed: sweeps/search/draws.py; pbt says
        # what it searches below)
        said = (
            f"is empty: the {n} configurations of this {kind} search would all be the same"
            if not space
            else f"draws nothing at random (grid values, one-value lists): the {n} passes of "
            f"this {kind} search over it would repeat the same configurations"
        )
        raise ConfigError(
            f"space {said}; add keys under space (e.g. train.lr: {{loguniform: [1e-3, 0.3]}}), "
            "or set search.num_samples: 1"
        )
    if n > 1 and kind == "grid" and SEED_KEY in space:
        raise ConfigError(
            f"space.{SEED_KEY} is on the grid: its {n} repeats would be the same configurations; "
            f"take {SEED_KEY} out of space (each configuration then draws its own), or set "
            "search.num_samples: 1"
        )
    epochs = trial.train.epochs
    if search.type in STOPS_EARLY and search.grace_period > epochs:
        raise ConfigError(
            f"search.grace_period must be <= train.epochs ({epochs}); got {search.grace_period}"
        )
    if search.type == "bohb" and search.grace_period == epochs:
        raise ConfigError(
            f"search.grace_period must be < train.epochs ({epochs}) for bohb: its first rung is "
            "at grace_period, and a rung at the last epoch stops nothing; lower it, or use tpe"
        )
    if search.type == "pbt":
        if not any(k in space and space[k].distribution.kind is float for k in PBT_MUTABLE):
            raise ConfigError(
                f"search.type pbt perturbs {', '.join(PBT_MUTABLE)}: search at least one of them "
                "with a range (uniform, loguniform, quniform, qloguniform)"
            )
        if others := [k for k in space if k not in PBT_MUTABLE]:
            raise ConfigError(
                f"space.{others[0]}: pbt searches only {', '.join(PBT_MUTABLE)} (its members "
                "take each other's weights and optimizer state, so they share the rest); fix it "
                "in the config, or use search.type tpe"
            )
        if search.perturbation_interval >= epochs:
            raise ConfigError(
                f"search.perturbation_interval must be < train.epochs ({epochs}); "
                f"got {search.perturbation_interval}"
            )
        if search.num_samples < 2:
            raise ConfigError(
                "search.num_samples must be >= 2 for pbt: its members copy each other's "
                f"weights, and one has nobody to copy; got {search.num_samples}"
            )
    if search.engine != "fused":
        return
    for key, dim in space.items():
        if search.type in MODELLED and unfusable(key) and not dim.distribution.discrete:
            raise ConfigError(
                f"space.{key}: with search.engine fused, {search.type} gives each of its values "
                "populations of their own; search it with {choice: [...]}, or use search.engine "
                "trial"
            )
    if search.type == "pbt" and search.num_samples > search.population_limit:
        raise ConfigError(
            f"search.num_samples ({search.num_samples}) is pbt's population, trained together "
            f"by the fused engine: set search.population_size >= {search.num_samples}"
        )


def reachable(key: str, trial: TrialConfig, space: Space) -> list[Any]:
    """The values of ``key`` a rule must hold for: a searched key's corners, or the fixed
    value."""
    return space[key].corners() if key in space else [trial.flat()[key]]


def _check_corners(trial: TrialConfig, space: Space) -> None:
    """The rules over several keys (trainers.config.TOGETHER), on every corner of the space."""
    flat = trial.flat()
    for rule in TOGETHER:
        if any(k in space for k in rule.keys):
            for values in itertools.product(*(reachable(k, trial, space) for k in rule.keys)):
                rule.check({**flat, **dict(zip(rule.keys, values))}, " (a corner of space)")


def asks_cuda(trial: TrialConfig, space: Space) -> tuple[str, str] | None:
    """Whether the trials are told train.device cuda (fixed, or among its searched values),
    which fails in a trial that gets no GPU: (what a refusal says of it, the fix that keeps no
    GPU), or None."""
    if "train.device" in space:
        if "cuda" in space["train.device"].corners():
            return "space.train.device includes cuda", "take cuda out of space.train.device"
    elif trial.train.device == "cuda":
        return "train.device is cuda", "set train.device to auto (a GPU where there is one) or cpu"
    return None


def _check_device(trial: TrialConfig, space: Space, resources: Resources) -> None:
    if resources.gpu == 0 and (cuda := asks_cuda(trial, space)):
        said, fix = cuda
        raise ConfigError(
            f"{said} but resources.gpu is 0, so no trial gets a GPU; set resources.gpu (1: a "
            f"GPU per trial, 0.25: four trials to a GPU), or {fix}"
        )


def _check_dependencies(trial: TrialConfig, space: Space) -> None:
    for key, (parent, needs) in DEPENDS_ON.items():
        if key in space and not set(reachable(parent, trial, space)) & set(needs):
            raise ConfigError(
                f"space.{key} is searched but {parent} is never {' or '.join(needs)}; "
                f"set {parent} to {needs[0]} or search it too"
            )


def sweep_spec(doc: dict[str, Any], name: str | None = None) -> SweepSpec:
    """Validate a whole sweep config document; raise ConfigError at the first mistake."""
    trial = trainer_config(doc)
    search = Search(**check_mapping("search", doc.get("search"), SWEEP_RULES))
    search.num_samples = search.num_samples or (1 if search.type == "grid" else 10)
    resources = Resources(**check_mapping("resources", doc.get("resources"), SWEEP_RULES))
    mlflow = check_mapping("mlflow", doc.get("mlflow"), SWEEP_RULES)
    space_doc = {} if doc.get("space") is None else doc["space"]
    if not isinstance(space_doc, dict):
        raise ConfigError(
            "space must map trainer keys to distributions, e.g. train.lr: {loguniform: [1e-4, 1]}"
        )
    space = Space(_dimension(str(k), v, search.type) for k, v in space_doc.items())
    _check_dependencies(trial, space)
    _check_corners(trial, space)
    _check_search(search, trial, space)
    _check_device(trial, space, resources)
    if (configs := space.grid_points() * search.num_samples) > MAX_CONFIGS:
        raise ConfigError(
            f"search.num_samples x the grid's points must be <= {MAX_CONFIGS} configurations; "
            f"got {search.num_samples} x {space.grid_points()} = {configs}"
        )
    name = SWEEP_RULES["name"].check("name", name or doc.get("name"))
    storage = SWEEP_RULES["storage"].check("storage", doc.get("storage")) or DEFAULT_STORAGE
    sections = {k: doc.get(k) or {} for k in ("data", "model", "train")}
    return SweepSpec(
        name=name,
        trial=trial,
        sections=sections,
        space=space,
        search=search,
        resources=resources,
        storage=expanded(storage, "storage"),
        tracking_uri=mlflow.get("tracking_uri"),
        child_runs=mlflow.get("child_runs", ALL_CHILD_RUNS),
    )


@dataclass(frozen=True)
class DataSize:
    """The largest data a trial holds, over the corners of the searched data keys."""

    rows: int  # training and validation examples of a fold
    features: int
    classes: int


def check_data(spec: SweepSpec) -> DataSize:
    """Every check that reads the data, for each corner of the searched data keys: the data
    loads and splits, and the largest batch size fits the smallest training split. Reads,
    writes nothing: call it before the sweep's first write. Returns the largest data's size,
    which sizes the fused engine's populations."""
    from trainers.data import fold_selections  # numpy, pandas, sklearn

    searched = [k for k in spec.space if k.startswith("data.")]
    corners = {}  # the distinct data configs at the corners, each loaded once
    for values in itertools.product(*(reachable(k, spec.trial, spec.space) for k in searched)):
        data = trial_config_with(spec.sections, dict(zip(searched, values))).data
        corners[json.dumps(asdict(data), sort_keys=True)] = data
    smallest, size = math.inf, DataSize(0, 0, 0)
    for data in corners.values():  # rows chosen, none copied
        for fold in fold_selections(data):
            smallest = min(smallest, len(fold.train))
            size = DataSize(
                max(size.rows, len(fold.train) + len(fold.val)),
                max(size.features, fold.pool.features),
                max(size.classes, fold.n_classes),
            )
    largest = max(reachable("train.batch_size", spec.trial, spec.space))
    if largest > smallest:
        key = "space.train.batch_size" if "train.batch_size" in spec.space else "train.batch_size"
        raise ConfigError(
            f"{key} must be <= the training split ({smallest} examples); got {largest}"
        )
    return size


def check_storage(spec: SweepSpec) -> None:
    """The sweep's new folder can be made under ``storage``; nothing is left behind."""
    if why := unwritable(spec.files.root):
        raise ConfigError(f"storage: {why}; set storage to a folder you can write")


# What a resumed sweep may be given anew: where it runs and what its trials get, not what they are.
RESUMABLE = ("search.max_failures",)


def saved_spec(doc: dict[str, Any], config: Path) -> SweepSpec:
    """The spec of the config a sweep was started with (``doc``, read from ``config``, its
    sweep.yaml): a mistake in it, a hand edit's, names that file, not the command's config."""
    try:
        return sweep_spec(doc)
    except ConfigError as err:
        raise ConfigError(f"{config}: {err}; {SAVED}") from None


def folder_exists(spec: SweepSpec) -> bool:
    """Whether the sweep's folder is there; a file in its place is a ConfigError."""
    root = spec.files.root
    if root.exists() and not root.is_dir():
        raise ConfigError(
            f"{root} is a file, not a sweep's folder; move it, or pick another --name"
        )
    return root.exists()


def folder_taken(spec: SweepSpec) -> ConfigError:
    """The refusal of a new sweep whose folder exists (``sweep run`` without --resume)."""
    return ConfigError(
        f"{spec.files.root} already exists; continue it with --resume, or pick another --name"
    )


def check_same_sweep(spec: SweepSpec) -> None:
    """Refuse to resume the sweep in ``spec``'s folder with another config: its trials so far
    were trained on the saved one, and a mix would compare configurations on different data or
    rules. Resources, storage, mlflow and search.max_failures may change (a requeued SLURM job
    gets other nodes)."""
    files = spec.files
    if not files.config.exists():
        return
    saved = saved_spec({**load_document(files.config), "name": spec.name}, files.config)
    was, now = _defining(saved), _defining(spec)
    changed = [k for k in sorted(was.keys() | now.keys()) if was.get(k) != now.get(k)]
    if changed:
        said = "; ".join(
            f"{k} {_shown(was.get(k))} there, {_shown(now.get(k))} here" for k in changed[:3]
        )
        more = f" (and {len(changed) - 3} more)" if len(changed) > 3 else ""
        raise ConfigError(
            f"{files.config} holds sweep {spec.name} with another config: {said}{more}; "
            f"continue it as it was with `sweep resume {spec.name}`, or pick another --name"
        )


def _defining(spec: SweepSpec) -> dict[str, Any]:
    """The keys that decide a sweep's configurations and how they train, dotted."""
    keys = spec.trial.flat()
    keys |= {f"search.{k}": v for k, v in asdict(spec.search).items()}
    keys |= {f"space.{k}": dim.doc() for k, dim in spec.space.items()}
    return {k: v for k, v in keys.items() if k not in RESUMABLE}


def _shown(value: Any) -> str:
    return "unset" if value is None else json.dumps(value, default=str)
