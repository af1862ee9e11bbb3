"""How configurations are drawn from a sweep's space: as Ray Tune domains (``search_space``),
which Ray's variant generator draws from per trial, and the same draws made up front
(``sample_params``) for the fused engine, which plans its populations before any trial runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from ray import tune
from ray.tune.search.variant_generator import generate_variants

from sweeps.spec.space import Dimension
from sweeps.spec.sweep import SEED_KEY, SweepSpec

# Each distribution of sweeps.spec.space's table as a Ray Tune domain.
DOMAINS: dict[str, Callable[[Dimension], Any]] = {
    "grid": lambda d: tune.grid_search(list(d.values)),
    "choice": lambda d: tune.choice(list(d.values)),
    "uniform": lambda d: tune.uniform(d.low, d.high),
    "loguniform": lambda d: tune.loguniform(d.low, d.high),
    "randint": lambda d: tune.randint(d.low, d.high + 1),  # [low, high], both included
    "quniform": lambda d: tune.quniform(d.low, d.high, d.step),
    "qloguniform": lambda d: tune.qloguniform(d.low, d.high, d.step),
}


def search_space(spec: SweepSpec) -> dict[str, Any]:
    """Dotted trainer keys to Ray Tune domains."""
    space = {key: DOMAINS[d.distribution.name](d) for key, d in spec.space.items()}
    if spec.search.type == "grid" and spec.search.num_samples > 1 and SEED_KEY not in space:
        space[SEED_KEY] = tune.randint(0, 2**31 - 1)  # each configuration of the repeats, its own
    return space


def sample_params(spec: SweepSpec) -> list[dict[str, Any]]:
    """Every configuration of the sweep, drawn up front as the per-trial engine draws them:
    Ray's variant generator with the search's seed, num_samples passes over the space."""
    rng = np.random.default_rng(spec.search.seed)
    space = {"config": search_space(spec)}
    return [
        resolved["config"]
        for _ in range(spec.search.num_samples)
        for _, resolved in generate_variants(space, random_state=rng)
    ]
