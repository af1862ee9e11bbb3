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
    A step launches each kernel here ~200 times an epoch and a GPU's epoch is bound by their
    number, not their size (docs/performance.md), hence the in-place and folded forms.
    """
    at_label = labels[:, None]  # (N, 1)
    if name == "softmax":
        return torch.softmax(scores, dim=1).scatter_(1, at_label, -1.0, reduce="add")
    if name == "squared_hinge":
        slope = (scores - scores.gather(1, at_label) + margin).clamp_(min=0.0).mul_(2.0)
    else:  # s_j - s_y >= -margin, written as 1.0 or 0.0 in place
        slope = (scores - scores.gather(1, at_label)).ge_(-margin)
    # The label's own term is the margin (> 0), with slope ``own``, and it is in the row's sum.
    own = 2.0 * margin if name == "squared_hinge" else 1.0
    return slope.scatter_(1, at_label, own - slope.sum(dim=1, keepdim=True))
