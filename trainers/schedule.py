"""Optimizers and per-epoch learning-rate schedules, built from ``train.*`` settings.

The schedule is a pure function of the epoch (``lr_factor``), so the formulas below hold
exactly, warm-up included, and can be tested without a model. The trainer steps with
``FlatOptimizer``, torch.optim's four rules written for one flat tensor (tests/torch_reference.py
holds the torch.optim and LambdaLR reference it is tested against).
"""

from __future__ import annotations

import math

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


ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults
# The optimizer state each rule keeps, named as torch.optim names it (checkpoints use the names).
STATE = {
    "sgd": (),
    "momentum": ("momentum_buffer",),
    "nesterov": ("momentum_buffer",),
    "adam": ("step", "exp_avg", "exp_avg_sq"),
}


class FlatOptimizer:
    """torch.optim's SGD (plain, momentum, Nesterov) and Adam, in place on one parameter
    tensor, with the lr on the device.

    One tensor holds every parameter, so a rule is one to a few kernels; the lr is a device
    tensor that the caller sets between epochs and Adam counts its steps on the device, so a
    step never waits for the host and a whole epoch of steps can be captured in a CUDA graph.
    The state starts at zero, which gives torch.optim's first step exactly (v = 0 * rho + g).
    """

    def __init__(self, params: torch.Tensor, cfg: TrainConfig) -> None:
        self.params, self.rule = params, cfg.optimizer
        self.rho = 0.0 if cfg.optimizer == "sgd" else cfg.momentum
        self.lr = torch.tensor(cfg.lr, dtype=params.dtype, device=params.device)
        self.state = {
            name: torch.zeros((), dtype=torch.float64, device=params.device)
            if name == "step"
            else torch.zeros_like(params)
            for name in STATE[cfg.optimizer]
        }

    def step(self, grad: torch.Tensor) -> None:
        """One update of ``params`` by ``grad`` (same shape), as torch.optim's rule does."""
        p, s = self.params, self.state
        if self.rule == "sgd":
            p.addcmul_(grad, self.lr, value=-1.0)  # w -= lr g
        elif self.rule in ("momentum", "nesterov"):
            v = torch.add(grad, s["momentum_buffer"], alpha=self.rho, out=s["momentum_buffer"])
            if self.rule == "nesterov":  # w -= lr (g + rho v)
                v = torch.add(grad, v, alpha=self.rho)
            p.addcmul_(v, self.lr, value=-1.0)  # w -= lr v
        else:
            (b1, b2), t = ADAM_BETAS, s["step"].add_(1.0)
            s["exp_avg"].lerp_(grad, 1.0 - b1)
            s["exp_avg_sq"].mul_(b2).addcmul_(grad, grad, value=1.0 - b2)
            bias2 = (1.0 - torch.pow(b2, t)).sqrt_()
            size = self.lr / (1.0 - torch.pow(b1, t))  # lr / (1 - b1^t)
            denom = s["exp_avg_sq"].sqrt().div_(bias2).add_(ADAM_EPS)
            p.sub_(s["exp_avg"].div(denom).mul_(size))
