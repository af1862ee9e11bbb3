"""Weight penalties R(W); the trainer adds lambda * R(W) to the data loss. The bias is never
penalized."""

from __future__ import annotations

import torch


def penalty(name: str, weights: torch.Tensor, elastic_beta: float = 0.5) -> torch.Tensor:
    """R(W) for ``train.reg``: l2 = sum W^2, l1 = sum |W|, elastic = sum(beta W^2 + |W|)."""
    if name == "l2":
        return (weights * weights).sum()
    if name == "l1":
        return weights.abs().sum()
    if name == "elastic":
        return (elastic_beta * weights * weights + weights.abs()).sum()
    return weights.new_zeros(())


def penalty_grad(name: str, weights: torch.Tensor, elastic_beta: float = 0.5) -> torch.Tensor:
    """dR/dW for ``penalty``, in closed form (the slope of |w| at 0 taken as 0, as autograd)."""
    if name == "l2":
        return 2.0 * weights
    if name == "l1":
        return weights.sign()
    if name == "elastic":
        return weights.sign().add_(weights, alpha=2.0 * elastic_beta)
    return torch.zeros_like(weights)


def scaled_penalty_grad(
    name: str, weights: torch.Tensor, elastic_beta: float = 0.5
) -> tuple[torch.Tensor, float]:
    """dR/dW as (tensor, factor), dR/dW = factor * tensor: for l2 the weights themselves and 2,
    so that a step folds the factor into its ``addmm``'s beta and launches no kernel for it."""
    if name == "l2":
        return weights, 2.0
    return penalty_grad(name, weights, elastic_beta), 1.0
