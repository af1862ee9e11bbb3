"""The training loop: one trial = one config, trained on one split or on k folds in lockstep.

Data flow: ``Trial(cfg)`` loads the data once, moves train and validation to the device, and
``run(on_epoch)`` trains epoch by epoch, calling ``on_epoch(metrics, trial)`` after each so a
caller (the CLI, Ray Tune) can report and checkpoint. The test split stays on the host until
``evaluate(..., "test")``, the one final look.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainers.config import ConfigError, TrialConfig, trial_config
from trainers.data import Dataset, prepare, refit_dataset
from trainers.losses import data_loss, data_loss_grad
from trainers.metrics import fold_key
from trainers.model import (
    init_params,
    measure_rows,
    multiprocessors,
    scores,
    split_k,
    unflatten,
)
from trainers.regularizers import penalty, scaled_penalty_grad
from trainers.schedule import FlatOptimizer, lr_factor

CHECKPOINT_FILE = "trial.pt"
EpochCallback = Callable[[dict[str, Any], "Trial"], None]
# what a running configuration may change (Population Based Training's explore): values the
# state's layout does not depend on
RECONFIGURABLE = (
    "train.lr",
    "train.lambda",
    "train.momentum",
    "train.elastic_beta",
    "model.margin",
)


def resolve_device(name: str) -> torch.device:
    """``auto`` takes the GPU when there is one; asking for a missing GPU is a user error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is cuda but no CUDA GPU is visible here; use auto or cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def set_matmul(precision: str) -> None:
    """``train.matmul`` for this process's CUDA products (a cuBLAS setting of the process, so
    each trainer sets it as it is made): TensorFloat-32 inputs, or exact float32. A CPU's
    products are float32 either way."""
    tf32 = precision == "tf32"
    try:  # torch >= 2.9
        torch.backends.cuda.matmul.fp32_precision = "tf32" if tf32 else "ieee"
    except AttributeError:
        torch.backends.cuda.matmul.allow_tf32 = tf32


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def features(X: np.ndarray, device: torch.device, dtype: str) -> torch.Tensor:
    """A split's features on ``device`` as ``data.dtype`` keeps them: float32 as they are (on
    the CPU, the shared copy's own pages), else converted on the host, then moved. A value
    float16 cannot hold is refused: it would read as inf, and the trial as diverged."""
    if dtype == "float32":
        return torch.as_tensor(X, device=device)
    kept = torch.as_tensor(X).to(DTYPES[dtype])
    if not bool(torch.isfinite(kept).all()):
        most = float(np.abs(X).max())
        raise ConfigError(
            f"data.dtype: {dtype} cannot hold these features (|x| up to {most:.3g}); use "
            "bfloat16 (float32's range), or data.standardize: true"
        )
    return kept.to(device)


def split_tensors(
    data: Dataset,
    split: str,
    device: torch.device,
    on_device: dict[str, tuple[torch.Tensor, torch.Tensor]],
    dtype: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A split's (X, y) on ``device``: those kept there (train, val) as they are, any other
    (test, for the one final look) copied there when asked for, in ``dtype`` as the splits
    the configuration was chosen on."""
    if split in on_device:
        return on_device[split]
    part = getattr(data, split)
    return features(part.X, device, dtype), torch.as_tensor(part.y, device=device)


def check_reconfigurable(old: TrialConfig, new: TrialConfig) -> None:
    """ValueError naming the first key other than RECONFIGURABLE's where ``new`` differs."""
    before = old.flat()
    for key, value in new.flat().items():
        if key not in RECONFIGURABLE and value != before[key]:
            raise ValueError(
                f"{key} cannot change during training (only {', '.join(RECONFIGURABLE)}); "
                f"{before[key]!r} -> {value!r}"
            )


def capture_epoch(
    device: torch.device,
    state: Sequence[torch.Tensor],
    steps: Callable[[Sequence[int]], Any],
    starts: Sequence[int],
) -> torch.cuda.CUDAGraph:
    """``steps(starts)`` (an epoch's minibatch steps) recorded as one CUDA graph.

    Capture needs one eager run of each step shape first (cuBLAS and the allocator set up
    on a side stream): a full batch and the last one; that run's effect on ``state`` (every
    tensor a step changes) is undone.
    """
    saved = [t.clone() for t in state]
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        steps(sorted({starts[0], starts[-1]}))
    torch.cuda.current_stream(device).wait_stream(side)
    for t, before in zip(state, saved, strict=True):
        t.copy_(before)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        steps(starts)
    return graph


class Trainer:
    """One linear classifier trained on one Dataset (one fold), everything on ``device``.

    The fast path (docs/performance.md): the splits stay on the device; each epoch draws one
    device permutation, gathers each batch with index_select, and steps with the closed-form
    gradient and a FlatOptimizer, so an epoch never waits for the host. On CUDA the epoch's
    steps are captured once in a CUDA graph and replayed every epoch; the lr, a device tensor,
    is set between epochs. Metrics are device tensors, read by the caller once per epoch.
    """

    def __init__(self, cfg: TrialConfig, data: Dataset, device: torch.device) -> None:
        self.cfg, self.data, self.device = cfg, data, device
        set_matmul(cfg.train.matmul)
        self.X = features(data.train.X, device, cfg.data.dtype)  # (N, D) stays on the device
        self.y = torch.as_tensor(data.train.y, device=device)  # (N,)
        self.X_val = features(data.val.X, device, cfg.data.dtype)
        self.y_val = torch.as_tensor(data.val.y, device=device)
        init = torch.Generator().manual_seed(cfg.train.seed)
        self.params = init_params(self.X.shape[1], data.n_classes, init).to(device)  # flat
        self.grad = torch.zeros_like(self.params)
        self.W, self.b = unflatten(self.params, self.X.shape[1])  # views: (D, C), (C,)
        D, C, processors = self.X.shape[1], data.n_classes, multiprocessors(device)
        self.parts = split_k(D, cfg.train.batch_size, C, processors)  # slices of x @ W (GPU)
        self.grad_W, self.grad_b = unflatten(self.grad, self.X.shape[1])
        self.optimizer = FlatOptimizer(self.params, cfg.train)
        self.order = torch.Generator(device=device).manual_seed(cfg.train.seed)
        self.perm = torch.empty(len(self.y), dtype=torch.long, device=device)  # read by the graph
        self.epoch = 0  # epochs trained; the schedule's position
        self.use_graph = device.type == "cuda"  # False: eager steps (to compare, or debug)
        self.graph: torch.cuda.CUDAGraph | None = None

    def train_epoch(self) -> float:
        """One pass over a fresh device-side permutation; returns the lr it used."""
        t = self.cfg.train
        lr = t.lr * lr_factor(self.epoch, t)
        self.optimizer.lr.fill_(lr)
        self._shuffle()
        if self.use_graph:
            if self.graph is None:
                self.graph = capture_epoch(
                    self.device, self._state(), self._steps, self._batch_starts()
                )
            self.graph.replay()
        else:
            self._steps(self._batch_starts())
        self.epoch += 1
        return lr

    def reconfigure(self, cfg: TrialConfig) -> None:
        """Train on with ``cfg`` (Trial.reconfigure checks it): the schedule's base lr, lambda,
        elastic beta and margin are read from it at each step; rho is the optimizer's, set here
        as FlatOptimizer sets it. A captured graph baked the old values in: it is made again."""
        self.cfg, self.graph = cfg, None
        self.optimizer.rho = 0.0 if cfg.train.optimizer == "sgd" else cfg.train.momentum

    def _shuffle(self) -> None:
        """This epoch's order into ``perm``: drawn on the device from the trainer's generator,
        outside the graph, so the generator's state is what a checkpoint saves."""
        torch.randperm(len(self.y), generator=self.order, out=self.perm)

    def _batch_starts(self) -> range:
        return range(0, len(self.y), self.cfg.train.batch_size)

    def _steps(self, starts: Sequence[int]) -> None:
        """The minibatch steps starting at ``starts`` of the current permutation: all the work
        of an epoch, on the device only (what the CUDA graph records)."""
        m, t = self.cfg.model, self.cfg.train
        bs, W = t.batch_size, self.W
        penalized = t.reg != "none" and t.lambda_ > 0
        y = self.y.index_select(0, self.perm)  # (N,) labels in this epoch's order
        for start in starts:
            idx = self.perm[start : start + bs]
            x, labels = self.X.index_select(0, idx).float(), y[start : start + bs]  # (B, D), (B,)
            # d(data loss)/d scores, times B: the 1/B goes into alpha and the mean below
            s = scores(W, self.b, x, self.parts)  # (B, C)
            dscores = data_loss_grad(m.loss, s, labels, m.margin)  # (B, C)
            reg, factor = scaled_penalty_grad(t.reg, W, t.elastic_beta) if penalized else (W, 0.0)
            beta = t.lambda_ * factor  # beta 0: addmm ignores its input
            # grad W^T = lambda R'(W)^T + dscores^T x / B, written in the (C, D) layout
            torch.addmm(reg.T, dscores.T, x, beta=beta, alpha=1.0 / len(idx), out=self.grad_W.T)
            torch.mean(dscores, dim=0, out=self.grad_b)  # the bias: never penalized
            self.optimizer.step(self.grad)

    def _state(self) -> list[torch.Tensor]:
        """Every tensor a step changes."""
        return [self.params, self.grad, *self.optimizer.state.values()]

    @torch.no_grad()
    def metrics(self, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(data loss, total loss, accuracy) on a whole split, scored measure_rows rows at a
        time, as a device tensor of 3: the caller reads all of an epoch's metrics in one
        transfer."""
        m, t = self.cfg.model, self.cfg.train
        rows = measure_rows(self.device, self.b.numel())
        loss = torch.zeros((), device=self.device)
        hits = torch.zeros((), device=self.device)
        for start in range(0, len(y), rows):  # (rows, C) scores at a time
            s, part = scores(self.W, self.b, X[start : start + rows]), y[start : start + rows]
            loss += data_loss(m.loss, s, part, m.margin) * len(part)
            hits += (s.argmax(dim=1) == part).sum()
        loss /= len(y)
        total = loss + t.lambda_ * penalty(t.reg, self.W, t.elastic_beta)
        return torch.stack([loss, total, hits / len(y)])

    def split_tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        on_device = {"train": (self.X, self.y), "val": (self.X_val, self.y_val)}
        return split_tensors(self.data, split, self.device, on_device, self.cfg.data.dtype)

    def state_dict(self) -> dict[str, Any]:
        """In the layout torch.optim and LambdaLR write (W and b as parameters 0 and 1), so
        that a checkpoint written by torch.optim's SGD or Adam resumes here too."""
        d = self.X.shape[1]
        per_param = [{} for _ in range(2)]
        for name, value in self.optimizer.state.items():
            for i, part in enumerate(unflatten(value, d) if name != "step" else (value, value)):
                per_param[i][name] = part.clone(memory_format=torch.contiguous_format)
        return {
            "model": {"W": self.W.contiguous(), "b": self.b.clone()},
            "optimizer": {"state": dict(enumerate(per_param))},
            "scheduler": {"last_epoch": self.epoch},
            "order_rng": self.order.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.W.copy_(state["model"]["W"])
        self.b.copy_(state["model"]["b"])
        # torch.optim keeps no buffer before the first step: zero is the same state
        saved = state["optimizer"]["state"]
        for name, value in self.optimizer.state.items():
            value.zero_()
            if name == "step":
                if 0 in saved:
                    value.copy_(saved[0]["step"])
                continue
            for i, part in enumerate(unflatten(value, self.X.shape[1])):
                if saved.get(i, {}).get(name) is not None:
                    part.copy_(saved[i][name])
        self.epoch = state["scheduler"]["last_epoch"]
        restore_order(self.order, state["order_rng"])


def restore_order(order: torch.Generator, saved: torch.Tensor) -> None:
    """Set the data-order generator to a checkpoint's state, where it can be.

    A CPU generator's state and a CUDA one's differ in size: a checkpoint moved to the other
    kind of device (a GPU trial evaluated on a laptop) keeps this generator's seed, and its
    later permutations are not those of the device it was trained on.
    """
    saved = saved.cpu()
    if saved.numel() == order.get_state().numel():
        order.set_state(saved)


class Trial:
    """One configuration: a Trainer per fold (one without cross-validation), in lockstep.

    ``refit``: trained on train+validation together (``trainers.data.refit_dataset``), as a
    sweep retrains its chosen config; saved with the checkpoint, so that a loaded refit model
    is measured on the test split standardized as it was trained.
    """

    def __init__(
        self, cfg: TrialConfig, datasets: list[Dataset] | None = None, refit: bool = False
    ) -> None:
        self.cfg, self.refit = cfg, refit
        self.device = resolve_device(cfg.train.device)
        if datasets is None:
            datasets = [refit_dataset(cfg.data)] if refit else prepare(cfg.data)
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
        # fallback if epoch 1 diverges
        self.last_finite = self.measure(lr=cfg.train.lr * lr_factor(0, cfg.train), seconds=0.0)

    def measure(self, lr: float, seconds: float) -> dict[str, Any]:
        """The per-epoch metrics, averaged over folds, and with k > 1 folds each fold's
        validation accuracy (``val_acc_fold<i>``): one read from the device for all."""
        folds = self._per_fold(["train", "val"])  # (k, 2, 3)
        k = len(self.trainers)
        values = torch.cat([folds.mean(dim=0).flatten(), folds[:, 1, 2]]).tolist()
        train, val, per_fold = values[0:3], values[3:6], values[6:] if k > 1 else []
        return {
            "epoch": self.epoch,
            "train_loss": train[0],
            "train_total_loss": train[1],
            "train_acc": train[2],
            "val_loss": val[0],
            "val_acc": val[2],
            "lr": lr,
            "epoch_seconds": seconds,
            "diverged": False,
        } | {fold_key(i): acc for i, acc in enumerate(per_fold)}

    def _per_fold(self, splits: list[str]) -> torch.Tensor:
        """(loss, total loss, accuracy) of each split on each fold: (folds, splits, 3), on the
        device."""
        return torch.stack(
            [torch.stack([t.metrics(*t.split_tensors(s)) for s in splits]) for t in self.trainers]
        )

    def _mean_over_folds(self, splits: list[str]) -> list[list[float]]:
        """(loss, total loss, accuracy) of each split, averaged over folds, in one transfer."""
        return self._per_fold(splits).mean(dim=0).tolist()

    def step(self) -> dict[str, Any]:
        """Train one epoch on every fold and return its metrics.

        A non-finite total training loss (it holds lambda R(W), so a non-finite weight shows
        there too) or validation loss marks the trial diverged (lr too large): the metrics
        returned are then the last finite ones, flagged ``diverged``, and training stops.
        """
        start = time.perf_counter()
        lr = 0.0
        for trainer in self.trainers:
            lr = trainer.train_epoch()
        self.epoch += 1
        metrics = self.measure(lr, 0.0)  # waits for the device: the epoch's one read
        metrics["epoch_seconds"] = time.perf_counter() - start
        finite = all(math.isfinite(metrics[k]) for k in ("train_total_loss", "val_loss"))
        if not finite:
            self.diverged = True
            metrics = {**self.last_finite, "epoch": self.epoch, "diverged": True}
        else:
            self.last_finite = metrics
        self.history.append(metrics)
        return metrics

    def reconfigure(self, cfg: TrialConfig) -> None:
        """Train on with ``cfg``, which may differ from the current config only in
        RECONFIGURABLE's keys (else ValueError); the lr schedule goes on from this epoch with
        the new base lr. What Population.reconfigure does for one of its members."""
        check_reconfigurable(self.cfg, cfg)
        self.cfg = cfg
        for trainer in self.trainers:
            trainer.reconfigure(cfg)

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
        loss, _, acc = self._mean_over_folds([split])[0]
        return {f"{split}_loss": loss, f"{split}_acc": acc}

    # ---------------------------------------------------------------- checkpoints
    def save(self, directory: str | Path) -> Path:
        """Write everything needed to continue exactly: weights, optimizer, scheduler, RNG."""
        path = Path(directory) / CHECKPOINT_FILE
        state = {
            "config": self.cfg.to_dict(),
            "refit": self.refit,
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
    def load(
        cls,
        directory: str | Path,
        datasets: list[Dataset] | None = None,
        device: str | None = None,
    ) -> Trial:
        """Rebuild a trial from ``save``; it continues as if never interrupted. ``device``
        overrides the saved train.device (``auto``: look at a GPU trial where there is none)."""
        state = torch.load(Path(directory) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
        config = state["config"]
        if device is not None:
            config = {**config, "train": {**config["train"], "device": device}}
        trial = cls(trial_config(config), datasets, refit=state.get("refit", False))
        for trainer, saved in zip(trial.trainers, state["trainers"]):
            trainer.load_state_dict(saved)
        trial.epoch, trial.diverged = state["epoch"], state["diverged"]
        trial.history, trial.last_finite = state["history"], state["last_finite"]
        return trial


def evaluate(checkpoint: str | Path, split: str = "test") -> dict[str, float]:
    """The final look: a saved trial's loss and accuracy on ``split``, on the GPU if there is
    one and on the CPU otherwise, whatever device trained it."""
    return Trial.load(checkpoint, device="auto").evaluate(split)
