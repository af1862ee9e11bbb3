"""Readable names for trials, built from their searched values (``hinge lr=0.031 lam=4.5e-05``).

MLflow's charts and legends show run names; an opaque trial id tells a reader nothing, so a
trial's run is named after what makes it different. The trial id stays a tag.
"""

from __future__ import annotations

import math
import numbers
from pathlib import PurePath
from typing import Any

SHORT = {  # dotted key -> the short label used in names, legends and axis titles
    "train.lr": "lr",
    "train.lambda": "lam",
    "train.batch_size": "bs",
    "train.momentum": "mom",
    "train.optimizer": "opt",
    "train.schedule": "sched",
    "train.epochs": "ep",
    "train.seed": "seed",
    "train.reg": "reg",
    "train.step_size": "step",
    "train.gamma": "gamma",
    "train.elastic_beta": "beta",
    "model.margin": "margin",
    "data.path": "data",
}
BARE = ("model.loss",)  # keys whose value names itself: "hinge", not "loss=hinge"
FIRST = ("model.loss", "train.lr", "train.lambda", "train.batch_size")  # then the rest


def short_key(key: str) -> str:
    """``train.lambda`` -> ``lam``; an unknown key -> its last part."""
    return SHORT.get(key, key.rsplit(".", 1)[-1])


def format_value(value: Any) -> str:
    """Two significant digits for floats (whole from 100 up), scientific below 0.01 or from
    10,000 up."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        text = str(value)
        return PurePath(text).name if "/" in text else text  # a data path: its file name
    if isinstance(value, numbers.Integral):
        return str(int(value))
    value = float(value)
    if not math.isfinite(value) or value == 0:
        return f"{value:g}"
    if 100 <= abs(value) < 1e4:
        return str(round(value))
    if 0.01 <= abs(value) < 100:
        return f"{value:.2g}"
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa.removesuffix('.0')}e{int(exponent)}"


def run_name(params: dict[str, Any]) -> str:
    """A trial's run name from its searched values: loss first, then lr, lambda, batch size."""
    keys = [k for k in FIRST if k in params] + [k for k in params if k not in FIRST]
    parts = [
        format_value(params[k]) if k in BARE else f"{short_key(k)}={format_value(params[k])}"
        for k in keys
    ]
    return " ".join(parts) or "base config"
