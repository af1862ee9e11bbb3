"""The fast trainer against the plain one it replaced: same metrics, epoch by epoch.

The reference below is the straightforward loop (autograd through the model's addmm, data loss
+ lambda * R(W), torch.optim via build_optimizer, LambdaLR stepped per epoch) drawing the same
permutations from the same generator. Every loss, regularizer, optimizer and schedule is
compared, with a last batch smaller than the others.

The reference runs in float64, the exact value of the float32 loop: with Adam, a gradient that
is 0 in exact arithmetic (a hinge bias whose active terms cancel) but holds float32 rounding
noise of 1e-8 takes a step of about 0.8 lr (noise / (noise + eps)), so two float32 loops
summing in different orders can differ by a whole step. The fast trainer computes those zeros
exactly; both float32 loops are within rounding of the float64 one otherwise.
"""

from __future__ import annotations

import functools
import itertools
from typing import Any

import pytest
import torch

from tests.torch_reference import build_optimizer, build_scheduler
from trainers.config import LOSSES, OPTIMIZERS, REGULARIZERS, SCHEDULES, TrialConfig, trial_config
from trainers.data import Dataset, prepare
from trainers.loop import CHECKPOINT_FILE, Trial
from trainers.losses import data_loss, data_loss_grad
from trainers.model import LinearClassifier, scores, split_k
from trainers.regularizers import penalty, penalty_grad

DATA = {"source": "synthetic", "n_samples": 500, "n_features": 12, "n_classes": 4}
COMPARED = ("train_loss", "train_total_loss", "train_acc", "val_loss", "val_acc", "lr")


def config(**sections: dict[str, Any]) -> TrialConfig:
    train = {"epochs": 5, "batch_size": 48, "lambda": 0.01, "lr": 0.05, "device": "cpu"}
    return trial_config(
        {
            "data": {**DATA, **sections.get("data", {})},
            "model": sections.get("model", {}),
            "train": {**train, **sections.get("train", {})},
        }
    )


@functools.cache
def one_split() -> Dataset:
    (data,) = prepare(config().data)
    return data


class Reference:
    """One fold trained the plain way, as trainers/loop.py did before its fast path."""

    def __init__(self, cfg: TrialConfig, data: Dataset) -> None:
        self.cfg = cfg
        self.X, self.y = torch.as_tensor(data.train.X).double(), torch.as_tensor(data.train.y)
        self.X_val = torch.as_tensor(data.val.X).double()
        self.y_val = torch.as_tensor(data.val.y)
        init = torch.Generator().manual_seed(cfg.train.seed)
        self.model = LinearClassifier(self.X.shape[1], data.n_classes, init).double()
        self.optimizer = build_optimizer(self.model.parameters(), cfg.train)
        self.scheduler = build_scheduler(self.optimizer, cfg.train)
        self.order = torch.Generator().manual_seed(cfg.train.seed)

    def objective(self, X: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m, t = self.cfg.model, self.cfg.train
        scores = self.model(X)
        loss = data_loss(m.loss, scores, y, m.margin)
        return loss, loss + t.lambda_ * penalty(t.reg, self.model.W, t.elastic_beta)

    def epoch(self) -> dict[str, float]:
        lr = self.optimizer.param_groups[0]["lr"]
        n, bs = len(self.y), self.cfg.train.batch_size
        perm = torch.randperm(n, generator=self.order)
        for start in range(0, n, bs):
            idx = perm[start : start + bs]
            _, total = self.objective(self.X[idx], self.y[idx])
            self.optimizer.zero_grad(set_to_none=True)
            total.backward()
            self.optimizer.step()
        self.scheduler.step()
        with torch.no_grad():
            train_loss, train_total = self.objective(self.X, self.y)
            val_loss, _ = self.objective(self.X_val, self.y_val)
            return {
                "train_loss": train_loss.item(),
                "train_total_loss": train_total.item(),
                "train_acc": self.accuracy(self.X, self.y),
                "val_loss": val_loss.item(),
                "val_acc": self.accuracy(self.X_val, self.y_val),
                "lr": lr,
            }

    def accuracy(self, X: torch.Tensor, y: torch.Tensor) -> float:
        return (self.model(X).argmax(dim=1) == y).float().mean().item()

    def state(self) -> dict[str, Any]:
        """A checkpoint's per-fold state as the torch.optim trainer wrote it."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "order_rng": self.order.get_state(),
        }


def assert_same_curves(fast: list[dict[str, Any]], ref: list[dict[str, float]]) -> None:
    assert len(fast) == len(ref)
    for epoch, (got, want) in enumerate(zip(fast, ref), start=1):
        for key in COMPARED:
            # accuracy may differ by one example whose two top scores tie within rounding
            tol = {"abs": 2.5e-3} if key.endswith("acc") else {"rel": 2e-4, "abs": 1e-6}
            assert got[key] == pytest.approx(want[key], **tol), f"epoch {epoch} {key}"


CASES = list(itertools.product(LOSSES, REGULARIZERS, OPTIMIZERS, SCHEDULES))


@pytest.mark.parametrize(("loss", "reg", "optimizer", "schedule"), CASES)
def test_fast_trainer_matches_the_plain_loop(loss, reg, optimizer, schedule):
    cfg = config(
        model={"loss": loss, "margin": 0.5 if loss == "hinge" else 1.0},
        train={"reg": reg, "optimizer": optimizer, "schedule": schedule, "step_size": 2,
               "warmup_epochs": 1 if schedule == "cosine" else 0,
               "lr": 0.005 if optimizer == "adam" else 0.05},
    )  # fmt: skip
    data = one_split()
    assert len(data.train.y) % cfg.train.batch_size != 0  # a smaller last batch is covered
    trial, ref = Trial(cfg, [data]), Reference(cfg, data)
    trial.run()
    assert_same_curves(trial.history, [ref.epoch() for _ in range(cfg.train.epochs)])


def test_folds_match_the_plain_loop_averaged():
    cfg = config(data={"folds": 3}, train={"optimizer": "nesterov", "reg": "elastic"})
    folds = prepare(cfg.data)
    trial, refs = Trial(cfg, folds), [Reference(cfg, ds) for ds in folds]
    trial.run()
    per_epoch = [[r.epoch() for r in refs] for _ in range(cfg.train.epochs)]
    mean = [{k: sum(m[k] for m in ms) / len(ms) for k in COMPARED} for ms in per_epoch]
    assert_same_curves(trial.history, mean)


@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
def test_a_checkpoint_of_the_torch_optim_trainer_resumes_exactly(tmp_path, optimizer):
    """The checkpoint layout is torch.optim's and LambdaLR's: earlier checkpoints still load."""
    cfg = config(train={"optimizer": optimizer, "schedule": "step", "step_size": 2, "epochs": 6})
    data = one_split()
    ref = Reference(cfg, data)
    done = [ref.epoch() for _ in range(3)]
    state = {
        "config": cfg.to_dict(),
        "epoch": 3,
        "diverged": False,
        "history": [{**m, "epoch": e} for e, m in enumerate(done, start=1)],
        "last_finite": done[-1],
        "trainers": [ref.state()],
    }
    torch.save(state, tmp_path / CHECKPOINT_FILE)
    resumed = Trial.load(tmp_path, [data])
    resumed.run()
    assert_same_curves(resumed.history[3:], [ref.epoch() for _ in range(3)])


@pytest.mark.parametrize(("loss", "reg"), itertools.product(LOSSES, REGULARIZERS))
def test_closed_form_gradients_equal_autograd(loss, reg):
    gen = torch.Generator().manual_seed(1)
    scores = torch.randn(9, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    W = torch.randn(6, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 5, (9,), generator=gen)
    (data_loss(loss, scores, labels, 0.7) * len(labels)).backward()
    (penalty(reg, W, 0.3) + 0.0 * W.sum()).backward()  # reg none: a zero gradient, not None
    assert torch.allclose(data_loss_grad(loss, scores.detach(), labels, 0.7), scores.grad)
    assert torch.allclose(penalty_grad(reg, W.detach(), 0.3), W.grad)


@pytest.mark.parametrize("loss", LOSSES)
def test_scores_summed_in_feature_slices_match_the_plain_loop(loss):
    """On a GPU a step sums a batch's scores over slices of the features side by side
    (model.split_k); forced here on the CPU, the curves are the plain loop's."""
    cfg = config(model={"loss": loss}, train={"optimizer": "momentum"})
    data = one_split()  # 12 features: 3 slices of 4
    trial, ref = Trial(cfg, [data]), Reference(cfg, data)
    trial.trainers[0].parts = 3
    trial.run()
    assert_same_curves(trial.history, [ref.epoch() for _ in range(cfg.train.epochs)])


@pytest.mark.parametrize("parts", [2, 3, 12])
def test_scores_in_slices_equal_one_product_in_both_weight_layouts(parts):
    gen = torch.Generator().manual_seed(2)
    x, b = torch.randn(7, 12, generator=gen), torch.randn(4, generator=gen)
    trainer_layout = torch.randn(4, 12, generator=gen).T  # (D, C) view of C rows of D
    population_layout = torch.randn(12, 4, generator=gen)  # (D, K*C), contiguous
    for W in (trainer_layout, population_layout):
        assert torch.allclose(scores(W, b, x, parts), torch.addmm(b, x, W), atol=1e-6)


def test_split_k_splits_only_products_too_thin_to_fill_a_gpu():
    """The slices chosen for a batch of 256 on an H200 (132 multiprocessors) at D = 3,072:
    the best or within 10 % of the best in bench/kernels.py's measured table; never on a CPU,
    never for fewer than 256 features."""
    chosen = {cols: split_k(3072, 256, cols, 132) for cols in (10, 160, 640, 2560, 10240)}
    assert chosen == {10: 24, 160: 16, 640: 6, 2560: 3, 10240: 1}
    assert split_k(3072, 256, 10, 0) == 1  # a CPU
    assert split_k(40, 256, 10, 132) == split_k(200, 256, 10, 132) == 1
    assert split_k(784, 256, 10, 132) in (2, 4)  # MNIST's 784 = 2^4 x 7^2: slices of 196
