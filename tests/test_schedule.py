"""Learning-rate schedules at chosen epochs, and the optimizers' update rules."""

import math

import pytest
import torch

from tests.torch_reference import build_optimizer, build_scheduler
from trainers.config import TrainConfig
from trainers.schedule import FlatOptimizer, lr_factor


def lrs(cfg: TrainConfig) -> list[float]:
    """The lr used in each epoch, read from a real optimizer stepped by the real scheduler."""
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg)
    sched = build_scheduler(opt, cfg)
    out = []
    for _ in range(cfg.epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_constant():
    assert lrs(TrainConfig(schedule="constant", lr=0.3, epochs=5)) == pytest.approx([0.3] * 5)


def test_step_decay():
    got = lrs(TrainConfig(schedule="step", lr=1.0, step_size=3, gamma=0.5, epochs=8))
    assert got == pytest.approx([1, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25])


def test_cosine_follows_the_course_formula():
    T = 10
    got = lrs(TrainConfig(schedule="cosine", lr=0.2, epochs=T))
    assert got == pytest.approx([0.5 * 0.2 * (1 + math.cos(math.pi * t / T)) for t in range(T)])
    assert got[0] == pytest.approx(0.2)
    assert got[5] == pytest.approx(0.1)


def test_warmup_then_cosine():
    cfg = TrainConfig(schedule="cosine", lr=1.0, epochs=7, warmup_epochs=3)
    assert lr_factor(0, cfg) == pytest.approx(1 / 4)
    assert lr_factor(2, cfg) == pytest.approx(3 / 4)
    assert lr_factor(3, cfg) == pytest.approx(1.0)  # the schedule starts after warm-up
    assert lr_factor(5, cfg) == pytest.approx(0.5)  # halfway through the remaining 4 epochs


def test_momentum_update_matches_the_formula():
    """v <- rho v + g; w <- w - lr v, with a quadratic whose gradient we know: g = 2w."""
    rho, lr = 0.9, 0.1
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = build_optimizer([w], TrainConfig(optimizer="momentum", momentum=rho, lr=lr))
    ref_w, ref_v = torch.tensor([1.0, -2.0]), torch.zeros(2)
    for _ in range(4):
        opt.zero_grad()
        (w * w).sum().backward()
        opt.step()
        ref_v = rho * ref_v + 2 * ref_w
        ref_w = ref_w - lr * ref_v
        assert torch.allclose(w.detach(), ref_w, atol=1e-6)


def test_plain_sgd_ignores_momentum_and_nesterov_looks_ahead():
    sgd = build_optimizer([torch.nn.Parameter(torch.zeros(1))], TrainConfig(optimizer="sgd"))
    assert sgd.param_groups[0]["momentum"] == 0.0
    nag = build_optimizer([torch.nn.Parameter(torch.zeros(1))], TrainConfig(optimizer="nesterov"))
    assert nag.param_groups[0]["nesterov"] and nag.param_groups[0]["momentum"] == 0.9


@pytest.mark.parametrize("rule", ["sgd", "momentum", "nesterov", "adam"])
def test_flat_optimizer_steps_as_torch_optim(rule):
    """The trainer's FlatOptimizer against torch.optim on the same gradients, the lr changed
    between steps as the schedule changes it between epochs."""
    cfg = TrainConfig(optimizer=rule, lr=0.1, momentum=0.8)
    gen = torch.Generator().manual_seed(0)
    start = torch.randn(12, generator=gen, dtype=torch.float64)
    ref = torch.nn.Parameter(start.clone())
    torch_opt = build_optimizer([ref], cfg)
    flat = FlatOptimizer(start.clone(), cfg)
    for k in range(6):
        lr = 0.1 * lr_factor(k // 2, TrainConfig(schedule="step", step_size=1, gamma=0.5))
        torch_opt.param_groups[0]["lr"] = lr
        flat.lr.fill_(lr)
        grad = torch.randn(12, generator=gen, dtype=torch.float64)
        ref.grad = grad.clone()
        torch_opt.step()
        flat.step(grad)
        assert torch.allclose(flat.params, ref.detach(), rtol=1e-12, atol=1e-12), k
