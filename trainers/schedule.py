"""Optimizers and per-epoch learning-rate schedules, built from ``train.*`` settings.

The schedule is a pure function of the epoch (``lr_factor``), driven by torch's LambdaLR, so
the formulas below hold exactly, warm-up included, and can be tested without a model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from trainers.config import TrainConfig


def lr_factor(epoch: int, cfg: TrainConfig) -> float:
    """Multiplier of the base lr during ``epoch`` (0-based).

    Warm-up: epochs 0..W-1 ramp linearly, (t + 1) / (W + 1). The schedule then runs on
    t' = t - W over T' = epochs - W: step decay gamma ** (t' // step_size); cosine
    0.5 * (1 + cos(pi * t' / T')), so lr_t = 0.5 * lr_0 * (1 + cos(pi t / T)) without warm-up.
    """
    warm = cfg.warmup_epochs
    if epoch < warm:
        return (epoch + 1) / (warm + 1)
    t, horizon = epoch - warm, cfg.epochs - warm
    if cfg.schedule == "step":
        return cfg.gamma ** (t // cfg.step_size)
    if cfg.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t / horizon))
    return 1.0


def build_optimizer(
    params: Iterable[torch.nn.Parameter], cfg: TrainConfig
) -> torch.optim.Optimizer:
    """sgd: w -= lr g; momentum: v = rho v + g, w -= lr v (dampening 0); nesterov; adam."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr)
    rho = 0.0 if cfg.optimizer == "sgd" else cfg.momentum
    return torch.optim.SGD(
        params, lr=cfg.lr, momentum=rho, dampening=0.0, nesterov=cfg.optimizer == "nesterov"
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    """Call ``.step()`` once at the end of every epoch."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: lr_factor(epoch, cfg))
