"""The trial configuration: one place for every trainer setting, its default and its rule.

A trial is described by three sections, ``data``, ``model`` and ``train``. Users write them
in YAML as nested mappings; code refers to a setting by its dotted key (``train.lr``).
Validation is a table of rules with one message template, so every user mistake gets the
same kind of one-line answer naming the key and what is allowed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from trainers.rules import (  # noqa: F401  (ConfigError, unknown_key_error: imported from here)
    ConfigError,
    Rule,
    Together,
    check_mapping,
    unknown_key_error,
)

SOURCES = ("digits", "npz", "npy", "csv", "parquet", "cifar10", "synthetic")
LOSSES = ("softmax", "hinge", "squared_hinge")
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam")
REGULARIZERS = ("l2", "l1", "elastic", "none")
SCHEDULES = ("constant", "step", "cosine")
DEVICES = ("auto", "cpu", "cuda")
MATMULS = ("float32", "tf32")


@dataclass
class DataConfig:
    source: str = "digits"  # one of SOURCES
    path: str | None = None  # file (npz, csv, parquet) or folder (npy, cifar10)
    label_column: str = "label"  # csv / parquet column holding the labels 0..C-1
    val_fraction: float = 0.2  # of all examples, unless the file gives its splits
    test_fraction: float = 0.2
    folds: int = 1  # k > 1: k-fold cross-validation over train+val, metric = mean over folds
    seed: int = 0  # seeds the split and synthetic data, not the training
    standardize: bool = True  # zero mean, unit variance, statistics from the training split only
    dtype: str = "float32"  # the features on the device: bfloat16 or float16 halve them
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
    matmul: str = "float32"  # tf32: a GPU's products in TensorFloat-32, at a faster rate


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


def unfusable(key: str) -> bool:
    """Whether configurations that differ in ``key`` cannot share a population
    (trainers.population): its members share each batch, the device and its products."""
    return key.startswith("data.") or key in ("train.batch_size", "train.device", "train.matmul")


def _key(attr: str) -> str:
    return attr.rstrip("_")


def _attr(key: str) -> str:
    return "lambda_" if key == "lambda" else key


# ---------------------------------------------------------------- rules
SEED = Rule(int, low=0, high=2**32 - 1)  # what numpy's and scikit-learn's seeds take
FRACTION = Rule(float, low=0.0, high=1.0, low_open=True, high_open=True)
POSITIVE_INT = Rule(int, low=1)
POSITIVE = Rule(float, low=0.0, low_open=True)
MAX_EPOCHS = 10**6  # far beyond any linear model's need; a typo's 10^12 is refused, not run
FILE_SOURCES = ("npz", "npy", "csv", "parquet", "cifar10")

RULES: dict[str, Rule] = {
    "data.source": Rule(str, choices=SOURCES, doc="where the examples come from"),
    "data.path": Rule(
        str,
        optional=True,
        what="a path",
        doc="the file (npz, csv, parquet) or folder (npy: X.npy and y.npy, memory-mapped; cifar10)",
    ),
    "data.label_column": Rule(
        str,
        what="a column name",
        doc="csv/parquet: the column with labels 0..C-1; every other column is a feature",
    ),
    "data.val_fraction": replace(
        FRACTION,
        doc="share of the examples in the validation split (cifar10: of its 50,000 training "
        "images; data with all three splits given: unused)",
    ),
    "data.test_fraction": replace(
        FRACTION,
        doc="share in the test split; val + test < 1 (unused where the data gives its test split)",
    ),
    "data.folds": replace(
        POSITIVE_INT,
        doc="k > 1: k-fold cross-validation over train+val; a trial's metric is the mean "
        "over folds",
    ),
    "data.seed": replace(SEED, doc="seeds the split and synthetic data"),
    "data.standardize": Rule(
        bool, doc="zero mean, unit variance, with statistics of the training split only"
    ),
    "data.dtype": Rule(
        str,
        choices=("float32", "bfloat16", "float16"),
        doc="how a trial keeps the features on its device: bfloat16 or float16 halve their "
        "memory, each batch read back as float32; the weights, gradients and optimizer state "
        "stay float32. For large data on a GPU (docs/data.md)",
    ),
    "data.n_samples": Rule(int, low=2, high=10**7, doc="synthetic: examples"),
    "data.n_features": Rule(int, low=1, high=10**5, doc="synthetic: features"),
    "data.n_classes": Rule(int, low=2, high=10**4, doc="synthetic: classes"),
    "model.loss": Rule(
        str,
        choices=LOSSES,
        doc="L_i = -log softmax(s)_{y_i}; or sum over j != y_i of max(0, s_j - s_{y_i} + "
        "margin) (squared term by term)",
    ),
    "model.margin": replace(POSITIVE, doc="the hinge margin"),
    "train.epochs": Rule(int, low=1, high=MAX_EPOCHS, doc="passes over the training split"),
    "train.batch_size": replace(
        POSITIVE_INT, doc="minibatch size; at most the size of the training split"
    ),
    "train.lr": replace(POSITIVE, doc="base learning rate"),
    "train.optimizer": Rule(
        str,
        choices=OPTIMIZERS,
        doc="sgd: w -= lr g; momentum: v = rho v + g, w -= lr v; nesterov; adam",
    ),
    "train.momentum": Rule(
        float,
        low=0.0,
        high=1.0,
        high_open=True,
        doc="rho, for momentum and nesterov (nesterov needs rho > 0)",
    ),
    "train.reg": Rule(
        str,
        choices=REGULARIZERS,
        doc="R(W): sum W^2; sum abs(W); sum(beta W^2 + abs(W)); nothing. Never the bias",
    ),
    "train.lambda": Rule(
        float, low=0.0, doc="regularization strength: loss = data loss + lambda R(W)"
    ),
    "train.elastic_beta": Rule(float, low=0.0, doc="beta of the elastic net"),
    "train.schedule": Rule(
        str,
        choices=SCHEDULES,
        doc="per-epoch decay: step lr_0 gamma^floor(t / step_size); cosine 0.5 lr_0 "
        "(1 + cos(pi t / T))",
    ),
    "train.step_size": replace(POSITIVE_INT, doc="step: epochs between decays"),
    "train.gamma": Rule(float, low=0.0, high=1.0, low_open=True, doc="step: decay factor"),
    "train.warmup_epochs": Rule(
        int,
        low=0,
        doc="linear warm-up, lr_0 (t + 1) / (W + 1), shorter than train.epochs; the schedule "
        "then runs over the remaining epochs",
    ),
    "train.seed": replace(SEED, doc="seeds the initial weights and the minibatch order"),
    "train.device": Rule(str, choices=DEVICES, doc="auto takes the GPU when there is one"),
    "train.matmul": Rule(
        str,
        choices=MATMULS,
        doc="float32: exact float32 products; tf32: on an NVIDIA GPU from Ampere on, the "
        "products read their inputs as TensorFloat-32 (a 10-bit mantissa) and sum in float32, "
        "at up to 7 times float32's rate (an H100's datasheet); the weights and updates stay "
        "float32. For large data on a GPU (docs/data.md). A CPU computes float32 either way",
    ),
}

# Rules that tie keys together; a sweep checks them on every corner of its space too.
TOGETHER = (
    Together(
        ("data.val_fraction", "data.test_fraction"),
        lambda val, test: val + test < 1.0,
        "data.val_fraction + data.test_fraction must be < 1 to leave a training split; "
        "got {0:g} + {1:g}",
        doc="`data.val_fraction` + `data.test_fraction` < 1, to leave a training split",
    ),
    Together(
        ("data.source", "data.path"),
        lambda source, path: source not in FILE_SOURCES or bool(path),
        "data.path is required for data.source {0}",
        doc="`data.path` is set for the sources read from files: " + ", ".join(FILE_SOURCES),
    ),
    Together(
        ("train.optimizer", "train.momentum"),
        lambda optimizer, momentum: optimizer != "nesterov" or momentum > 0,
        "train.momentum must be > 0 for train.optimizer nesterov; got {1:g}",
        doc="`train.momentum` > 0 when `train.optimizer` is nesterov",
    ),
    Together(
        ("train.warmup_epochs", "train.epochs"),
        lambda warmup, epochs: warmup < epochs,
        "train.warmup_epochs must be < train.epochs ({1}); got {0}",
        doc="`train.warmup_epochs` < `train.epochs`",
    ),
)


def trial_config(sections: dict[str, Any]) -> TrialConfig:
    """Build and validate a TrialConfig from nested ``{"data": {...}, "model": ..., ...}``."""
    if not isinstance(sections, dict):
        raise ConfigError("a config must be a mapping with sections data, model and train")
    for name in sections:
        if name not in SECTIONS:
            raise unknown_key_error(str(name), list(SECTIONS))
    built = {}
    for name, cls in SECTIONS.items():
        values = check_mapping(name, sections.get(name), RULES)
        built[name] = cls(**{_attr(k): v for k, v in values.items()})
    cfg = TrialConfig(**built)
    flat = cfg.flat()
    for rule in TOGETHER:
        rule.check(flat)
    return cfg
