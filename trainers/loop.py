"""The training loop: one trial = one config, trained on one split or on k folds in lockstep.

Data flow: ``Trial(cfg)`` loads the data once, moves train and validation to the device, and
``run(on_epoch)`` trains epoch by epoch, calling ``on_epoch(metrics, trial)`` after each so a
caller (the CLI, Ray Tune) can report and checkpoint. The test split stays on the host until
``evaluate(..., "test")``, the one final look.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from trainers.config import ConfigError, TrialConfig, trial_config
from trainers.data import Dataset, prepare
from trainers.losses import data_loss
from trainers.model import LinearClassifier
from trainers.regularizers import penalty
from trainers.schedule import build_optimizer, build_scheduler

CHECKPOINT_FILE = "trial.pt"
EpochCallback = Callable[[dict[str, Any], "Trial"], None]


def resolve_device(name: str) -> torch.device:
    """``auto`` takes the GPU when there is one; asking for a missing GPU is a user error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is cuda but no CUDA GPU is visible here; use auto or cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


class Trainer:
    """One linear classifier trained on one Dataset (one fold), everything on ``device``."""

    def __init__(self, cfg: TrialConfig, data: Dataset, device: torch.device) -> None:
        self.cfg, self.data, self.device = cfg, data, device
        self.X = torch.as_tensor(data.train.X, device=device)  # (N, D) stays on the device
        self.y = torch.as_tensor(data.train.y, device=device)  # (N,)
        self.X_val = torch.as_tensor(data.val.X, device=device)
        self.y_val = torch.as_tensor(data.val.y, device=device)
        init = torch.Generator().manual_seed(cfg.train.seed)
        self.model = LinearClassifier(self.X.shape[1], data.n_classes, init).to(device)
        self.optimizer = build_optimizer(self.model.parameters(), cfg.train)
        self.scheduler = build_scheduler(self.optimizer, cfg.train)
        self.order = torch.Generator(device=device).manual_seed(cfg.train.seed)

    def objective(self, scores: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(data loss, data loss + lambda * R(W)) of a batch's scores."""
        m, t = self.cfg.model, self.cfg.train
        loss = data_loss(m.loss, scores, y, m.margin)
        return loss, loss + t.lambda_ * penalty(t.reg, self.model.W, t.elastic_beta)

    def train_epoch(self) -> float:
        """One pass over a fresh device-side permutation; returns the lr it used."""
        lr = self.optimizer.param_groups[0]["lr"]
        n, bs = len(self.y), self.cfg.train.batch_size
        perm = torch.randperm(n, device=self.device, generator=self.order)
        for start in range(0, n, bs):
            idx = perm[start : start + bs]
            _, total = self.objective(self.model(self.X[idx]), self.y[idx])
            self.optimizer.zero_grad(set_to_none=True)
            total.backward()
            self.optimizer.step()
        self.scheduler.step()
        return lr

    @torch.no_grad()
    def measure(self, X: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Data loss, total loss and accuracy of the current weights on a whole split."""
        scores = self.model(X)  # (N, C)
        loss, total = self.objective(scores, y)
        acc = (scores.argmax(dim=1) == y).float().mean()
        return {"loss": loss.item(), "total_loss": total.item(), "acc": acc.item()}

    def split_tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        if split == "train":
            return self.X, self.y
        if split == "val":
            return self.X_val, self.y_val
        part = getattr(self.data, split)
        return torch.as_tensor(part.X, device=self.device), torch.as_tensor(
            part.y, device=self.device
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "order_rng": self.order.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.order.set_state(state["order_rng"].cpu())


def _mean(dicts: list[dict[str, float]]) -> dict[str, float]:
    return {k: sum(d[k] for d in dicts) / len(dicts) for k in dicts[0]}


class Trial:
    """One configuration: a Trainer per fold (one without cross-validation), in lockstep."""

    def __init__(self, cfg: TrialConfig, datasets: list[Dataset] | None = None) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg.train.device)
        datasets = datasets if datasets is not None else prepare(cfg.data)
        smallest = min(len(ds.train.y) for ds in datasets)
        if cfg.train.batch_size > smallest:
            raise ConfigError(
                f"train.batch_size must be <= the training split ({smallest} examples); "
                f"got {cfg.train.batch_size}"
            )
        self.trainers = [Trainer(cfg, ds, self.device) for ds in datasets]
        self.epoch = 0  # epochs completed
        self.diverged = False
        self.history: list[dict[str, Any]] = []
        self.last_finite = self.measure(
            lr=cfg.train.lr, seconds=0.0
        )  # fallback if epoch 1 diverges

    def measure(self, lr: float, seconds: float) -> dict[str, Any]:
        """The per-epoch metrics, averaged over folds."""
        train = _mean([t.measure(t.X, t.y) for t in self.trainers])
        val = _mean([t.measure(t.X_val, t.y_val) for t in self.trainers])
        return {
            "epoch": self.epoch,
            "train_loss": train["loss"],
            "train_total_loss": train["total_loss"],
            "train_acc": train["acc"],
            "val_loss": val["loss"],
            "val_acc": val["acc"],
            "lr": lr,
            "epoch_seconds": seconds,
            "diverged": False,
        }

    def step(self) -> dict[str, Any]:
        """Train one epoch on every fold and return its metrics.

        A non-finite loss or weight (lr too large) marks the trial diverged: the metrics
        returned are then the last finite ones, flagged ``diverged``, and training stops.
        """
        start = time.perf_counter()
        lr = 0.0
        for trainer in self.trainers:
            lr = trainer.train_epoch()
        self.epoch += 1
        metrics = self.measure(lr, 0.0)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        metrics["epoch_seconds"] = time.perf_counter() - start
        finite = all(math.isfinite(metrics[k]) for k in ("train_total_loss", "val_loss"))
        if not finite:
            self.diverged = True
            metrics = {**self.last_finite, "epoch": self.epoch, "diverged": True}
        else:
            self.last_finite = metrics
        self.history.append(metrics)
        return metrics

    @property
    def done(self) -> bool:
        return self.diverged or self.epoch >= self.cfg.train.epochs

    def run(self, on_epoch: EpochCallback | None = None) -> dict[str, Any]:
        """Train to the end (or divergence); returns the final metrics with ``epochs_run``."""
        while not self.done:
            metrics = self.step()
            if on_epoch is not None:
                on_epoch(metrics, self)
        return self.final()

    def final(self) -> dict[str, Any]:
        return {**self.last_finite, "epochs_run": self.epoch, "diverged": self.diverged}

    def evaluate(self, split: str) -> dict[str, float]:
        """Loss and accuracy on ``split`` (train, val or test), averaged over folds."""
        scores = _mean([t.measure(*t.split_tensors(split)) for t in self.trainers])
        return {f"{split}_loss": scores["loss"], f"{split}_acc": scores["acc"]}

    # ---------------------------------------------------------------- checkpoints
    def save(self, directory: str | Path) -> Path:
        """Write everything needed to continue exactly: weights, optimizer, scheduler, RNG."""
        path = Path(directory) / CHECKPOINT_FILE
        state = {
            "config": self.cfg.to_dict(),
            "epoch": self.epoch,
            "diverged": self.diverged,
            "history": self.history,
            "last_finite": self.last_finite,
            "trainers": [t.state_dict() for t in self.trainers],
        }
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(path)  # atomic: a kill mid-write leaves the previous checkpoint intact
        return path

    @classmethod
    def load(cls, directory: str | Path, datasets: list[Dataset] | None = None) -> Trial:
        """Rebuild a trial from ``save``; it continues as if never interrupted."""
        state = torch.load(Path(directory) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
        trial = cls(trial_config(state["config"]), datasets)
        for trainer, saved in zip(trial.trainers, state["trainers"]):
            trainer.load_state_dict(saved)
        trial.epoch, trial.diverged = state["epoch"], state["diverged"]
        trial.history, trial.last_finite = state["history"], state["last_finite"]
        return trial


def evaluate(checkpoint: str | Path, split: str = "test") -> dict[str, float]:
    """The final look: a saved trial's loss and accuracy on ``split``."""
    return Trial.load(checkpoint).evaluate(split)
