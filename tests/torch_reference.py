"""torch.optim and LambdaLR set up from ``train.*``: the reference the trainer's own
``FlatOptimizer`` and ``lr_factor`` are tested against."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from trainers.config import TrainConfig
from trainers.schedule import lr_factor


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
