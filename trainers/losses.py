"""Data losses of a linear classifier, as the course defines them.

Both take raw scores s (N, C) and integer labels y (N,) and return the mean over the batch.
"""

from __future__ import annotations

import torch


def softmax_cross_entropy(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """L_i = -log(exp(s_{y_i}) / sum_j exp(s_j)) = logsumexp(s_i) - s_{y_i}, computed stably."""
    correct = scores.gather(1, labels[:, None]).squeeze(1)  # (N,)
    return (torch.logsumexp(scores, dim=1) - correct).mean()


def multiclass_hinge(
    scores: torch.Tensor, labels: torch.Tensor, margin: float = 1.0, squared: bool = False
) -> torch.Tensor:
    """L_i = sum_{j != y_i} max(0, s_j - s_{y_i} + margin), optionally squared term by term.

    The terms are SUMMED over the wrong classes (torch's MultiMarginLoss averages them over
    all classes, which is a different loss).
    """
    correct = scores.gather(1, labels[:, None])  # (N, 1)
    terms = torch.clamp(scores - correct + margin, min=0.0)  # (N, C)
    if squared:
        terms = terms * terms
    terms = terms.scatter(1, labels[:, None], 0.0)  # the correct class contributes nothing
    return terms.sum(dim=1).mean()


def data_loss(name: str, scores: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """The loss named by ``model.loss``."""
    if name == "softmax":
        return softmax_cross_entropy(scores, labels)
    return multiclass_hinge(scores, labels, margin=margin, squared=name == "squared_hinge")


def data_loss_grad(
    name: str, scores: torch.Tensor, labels: torch.Tensor, margin: float
) -> torch.Tensor:
    """d(sum_i L_i)/d scores, (N, C): the gradient of ``data_loss`` times N, in closed form.

    No autograd graph and no host synchronisation, so a trainer's step is a few kernels and can
    be captured in a CUDA graph. Softmax: p - onehot(y). Hinge: each wrong class j with
    s_j - s_y + margin >= 0 gets its term's slope (1, or 2 * term when squared) and the correct
    class minus their sum; at a term of exactly 0 the slope is taken as autograd's clamp does.
    """
    at_label = labels[:, None]  # (N, 1)
    if name == "softmax":
        grad = torch.softmax(scores, dim=1)
        return grad.scatter_add_(1, at_label, grad.new_full(at_label.shape, -1.0))
    terms = scores - scores.gather(1, at_label) + margin  # (N, C)
    slope = 2.0 * terms.clamp_(min=0.0) if name == "squared_hinge" else (terms >= 0).to(terms)
    slope.scatter_(1, at_label, 0.0)
    return slope.scatter_(1, at_label, -slope.sum(dim=1, keepdim=True))
