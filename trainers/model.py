"""The linear classifier: scores s = xW + b with W of shape (D, C)."""

from __future__ import annotations

import torch


class LinearClassifier(torch.nn.Module):
    def __init__(self, n_features: int, n_classes: int, generator: torch.Generator) -> None:
        super().__init__()
        # Small random weights, as the course's linear classifier starts (0.001 * randn):
        # large enough to break the hinge's ties, small enough not to saturate softmax.
        w = 0.001 * torch.randn(n_features, n_classes, generator=generator)
        self.W = torch.nn.Parameter(w)  # (D, C)
        self.b = torch.nn.Parameter(torch.zeros(n_classes))  # (C,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.b, x, self.W)  # (N, C)
