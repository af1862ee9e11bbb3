"""Losses and regularizers against values worked by hand, and the course's gradient check."""

import itertools
import math

import pytest
import torch

from trainers.losses import data_loss, multiclass_hinge, softmax_cross_entropy
from trainers.regularizers import penalty

# The course's worked example: three classes, scores of one cat, car and frog image.
SCORES = torch.tensor([[3.2, 5.1, -1.7], [1.3, 4.9, 2.0], [2.2, 2.5, -3.1]])
LABELS = torch.tensor([0, 1, 2])


def test_multiclass_hinge_sums_over_wrong_classes():
    # cat: max(0, 5.1-3.2+1) + max(0, -1.7-3.2+1) = 2.9; car: 0; frog: 12.9
    per_example = [2.9, 0.0, max(0, 2.2 + 3.1 + 1) + max(0, 2.5 + 3.1 + 1)]
    assert per_example[2] == pytest.approx(12.9)
    got = multiclass_hinge(SCORES, LABELS)
    assert got.item() == pytest.approx(sum(per_example) / 3, rel=1e-6)
    # torch's MultiMarginLoss divides by the number of classes: a different loss
    other = torch.nn.functional.multi_margin_loss(SCORES, LABELS)
    assert other.item() == pytest.approx(got.item() / 3, rel=1e-6)


def test_squared_hinge_squares_each_term():
    expected = (2.9**2 + 0.0 + 6.3**2 + 6.6**2) / 3
    assert multiclass_hinge(SCORES, LABELS, squared=True).item() == pytest.approx(
        expected, rel=1e-6
    )


def test_hinge_margin():
    # with margin 0 the cat's car term is 1.9 and the frog's terms are 5.3 and 5.6
    assert multiclass_hinge(SCORES, LABELS, margin=0.0).item() == pytest.approx(
        (1.9 + 5.3 + 5.6) / 3, rel=1e-6
    )


def test_softmax_cross_entropy_by_hand():
    def one(s, y):
        return -math.log(math.exp(s[y]) / sum(math.exp(v) for v in s))

    expected = sum(one(s, y) for s, y in zip(SCORES.tolist(), LABELS.tolist())) / 3
    assert softmax_cross_entropy(SCORES, LABELS).item() == pytest.approx(expected, rel=1e-6)


def test_softmax_cross_entropy_is_stable_for_huge_scores():
    scores = torch.tensor([[1000.0, 0.0], [0.0, 1000.0]])
    assert softmax_cross_entropy(scores, torch.tensor([0, 0])).item() == pytest.approx(500.0)


def test_regularizers_by_hand():
    w = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    assert penalty("l2", w).item() == pytest.approx(1 + 4 + 0.25)
    assert penalty("l1", w).item() == pytest.approx(1 + 2 + 0.5)
    assert penalty("elastic", w, elastic_beta=0.5).item() == pytest.approx(0.5 * 5.25 + 3.5)
    assert penalty("none", w).item() == 0.0


@pytest.mark.parametrize(
    ("loss", "reg"),
    list(itertools.product(["softmax", "hinge", "squared_hinge"], ["l2", "l1", "elastic", "none"])),
)
def test_gradient_check(loss, reg):
    """Autograd's gradient of data + lambda R(W) against centered differences, in float64."""
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(7, 5, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 4, (7,), generator=gen)
    # Weights away from the kinks of |w| and of the hinge, where no derivative exists.
    signs = torch.where(torch.rand(5, 4, generator=gen) < 0.5, -1.0, 1.0).double()
    W = (torch.rand(5, 4, generator=gen, dtype=torch.float64) + 0.1) * signs
    b = torch.randn(4, generator=gen, dtype=torch.float64)

    def objective(W, b):
        return data_loss(loss, X @ W + b, y, margin=1.0) + 0.3 * penalty(reg, W, 0.7)

    scores = X @ W + b
    gaps = (scores - scores.gather(1, y[:, None]) + 1.0).abs()
    assert gaps.min() > 1e-3, "test point sits on a hinge kink"
    assert torch.autograd.gradcheck(objective, (W.requires_grad_(), b.requires_grad_()), eps=1e-6)
