"""The linear classifier: scores s = xW + b with W of shape (D, C).

The trainer keeps W and b in one tensor of shape (D + 1, C), W in rows 0..D-1 and b in row D,
so that an optimizer step is one kernel over one tensor rather than a loop over parameters.
"""

from __future__ import annotations

import torch


def init_params(n_features: int, n_classes: int, generator: torch.Generator) -> torch.Tensor:
    """(D + 1, C): W small and random, as the course's classifier starts (0.001 * randn), large
    enough to break the hinge's ties, small enough not to saturate softmax; b zero."""
    params = torch.zeros(n_features + 1, n_classes)
    params[:n_features] = 0.001 * torch.randn(n_features, n_classes, generator=generator)
    return params


def scores(params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """s = xW + b for a batch x (N, D); returns (N, C)."""
    return torch.addmm(params[-1], x, params[:-1])


class LinearClassifier(torch.nn.Module):
    """The same model as an nn.Module with parameters W and b: the form torch.optim trains,
    kept as the reference the fast trainer is tested against."""

    def __init__(self, n_features: int, n_classes: int, generator: torch.Generator) -> None:
        super().__init__()
        params = init_params(n_features, n_classes, generator)
        self.W = torch.nn.Parameter(params[:-1].clone())  # (D, C)
        self.b = torch.nn.Parameter(params[-1].clone())  # (C,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.b, x, self.W)  # (N, C)
