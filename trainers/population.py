"""A population: K configurations trained together on one device as one batched step.

A linear classifier is one matrix product, so K configurations that share the data and the
batch size can share every read of it: their weights are stacked into one (D, K*C) matrix and
the forward pass and the weight gradient of all K become one matrix product each over the
shared batch. Everything else stays per configuration, as (K, 1) columns that broadcast
against (..., K, C) tensors: the loss and its margin, the regularizer, lambda and elastic beta,
the optimizer (sgd, momentum, nesterov, adam; mixed freely) with its rho, the learning rate and
its schedule, the seed of the initial weights, the number of epochs.

The math is the single trainer's (``trainers.loop.Trial``), with analytic gradients in place of
autograd; tests/test_population.py checks each configuration against a Trial, epoch by epoch.
What the configurations share:
- the data (``data.*``) and ``train.batch_size`` and ``train.device``, else ConfigError;
- the minibatch order: one permutation per epoch drawn exactly as a Trial draws it, from the
  population's ``order_seed`` (by default the first configuration's ``train.seed``). A
  configuration whose ``train.seed`` equals the order seed sees exactly the batches its Trial
  would; the others keep their own initial weights but see the population's order.

Configurations end on their own: one that diverges (non-finite loss) is frozen, its columns
zeroed so that nothing non-finite lingers, and reports its last finite metrics flagged
``diverged``, as Trial.step does; one that has run its ``train.epochs`` is frozen too. Frozen
configurations still ride along in the matrix products until ``remove`` compacts them away.

For adaptive search the population also changes while it trains: ``add`` starts new members
(a sampler's refills), ``copy_member`` and ``reconfigure`` are Population Based Training's
exploit (a member takes another's weights and optimizer state) and explore (a member's
lr, lambda, momentum, elastic beta or margin change). Each member counts its own optimizer
steps, so a member that joined later is bias-corrected by Adam as its own Trial would be.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from trainers import triton_step
from trainers.config import ConfigError, TrialConfig, trial_config, unfusable
from trainers.data import Dataset, free_memory, prepare
from trainers.loop import (
    Trial,
    capture_epoch,
    check_reconfigurable,
    features,
    resolve_device,
    restore_order,
    set_matmul,
    split_tensors,
)
from trainers.metrics import fold_key
from trainers.model import (
    MEASURE_ELEMENTS,
    LinearClassifier,
    measure_rows,
    multiprocessors,
    scores,
    split_k,
)
from trainers.schedule import ADAM_BETAS, ADAM_EPS, lr_factor

CHECKPOINT_FILE = "population.pt"
# lists, an entry a member; step_epochs: the epochs of optimizer steps in a member's state
PER_MEMBER = ("epochs_run", "step_epochs", "diverged", "history", "last_finite")


# ---------------------------------------------------------------- per-configuration columns
@dataclass(frozen=True)
class Columns:
    """Each configuration's hyperparameters as a (K, 1) tensor, so that it broadcasts against
    (..., K, C); and which code paths the population needs at all (host booleans, so that a
    population of softmax-only momentum configurations computes no hinge and no Adam)."""

    softmax: torch.Tensor  # bool: softmax cross-entropy, else multiclass hinge
    squared: torch.Tensor  # bool: squared hinge
    margin: torch.Tensor
    lam: torch.Tensor  # lambda
    quad: torch.Tensor  # R(W) = quad * sum W^2 + absw * sum |W|
    absw: torch.Tensor
    quad_grad: torch.Tensor  # lambda dR/dW = quad_grad * W + abs_grad * sign(W)
    abs_grad: torch.Tensor
    rho: torch.Tensor  # momentum; 0 for sgd and adam
    # the step's direction is keep_v * v + keep_g * g: (1, 0) heavy ball, (rho, 1) nesterov
    keep_v: torch.Tensor
    keep_g: torch.Tensor
    adam: torch.Tensor  # bool
    any_softmax: bool
    any_hinge: bool
    any_squared: bool
    any_quad: bool
    any_abs: bool
    any_sgd: bool
    any_nesterov: bool
    any_adam: bool


def columns(cfgs: Sequence[TrialConfig], device: torch.device) -> Columns:
    """The Columns of ``cfgs``, in their order."""

    def col(values: list, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype, device=device).reshape(-1, 1)  # (K, 1)

    m = [c.model for c in cfgs]
    t = [c.train for c in cfgs]
    rho = [0.0 if x.optimizer in ("sgd", "adam") else x.momentum for x in t]
    nesterov = [x.optimizer == "nesterov" for x in t]
    quad = [{"l2": 1.0, "elastic": x.elastic_beta}.get(x.reg, 0.0) for x in t]
    absw = [1.0 if x.reg in ("l1", "elastic") else 0.0 for x in t]
    adam = [x.optimizer == "adam" for x in t]
    lam = [x.lambda_ for x in t]
    return Columns(
        softmax=col([x.loss == "softmax" for x in m], torch.bool),
        squared=col([x.loss == "squared_hinge" for x in m], torch.bool),
        margin=col([x.margin for x in m]),
        lam=col(lam),
        quad=col(quad),
        absw=col(absw),
        quad_grad=col([2.0 * x * q for x, q in zip(lam, quad)]),
        abs_grad=col([x * a for x, a in zip(lam, absw)]),
        rho=col(rho),
        keep_v=col([r if n else 1.0 for r, n in zip(rho, nesterov)]),
        keep_g=col([1.0 if n else 0.0 for n in nesterov]),
        adam=col(adam, torch.bool),
        any_softmax=any(x.loss == "softmax" for x in m),
        any_hinge=any(x.loss != "softmax" for x in m),
        any_squared=any(x.loss == "squared_hinge" for x in m),
        any_quad=any(q != 0 for q, x in zip(quad, t) if x.lambda_ != 0),
        any_abs=any(a != 0 for a, x in zip(absw, t) if x.lambda_ != 0),
        any_sgd=not all(adam),
        any_nesterov=any(nesterov),
        any_adam=any(adam),
    )


def _pick(a: torch.Tensor | None, b: torch.Tensor | None, use_a: torch.Tensor) -> torch.Tensor:
    """Each configuration's value from computation a or b, of which only the needed ran."""
    if a is None or b is None:
        return a if b is None else b
    return torch.where(use_a, a, b)


# ---------------------------------------------------------------- losses and their gradients
def example_losses(scores: torch.Tensor, y: torch.Tensor, cols: Columns) -> torch.Tensor:
    """Each example's data loss under each configuration's loss, as trainers/losses.py defines
    them (the hinge SUMS over the wrong classes). scores (N, K, C), y (N,) -> (N, K)."""
    label = y[:, None, None].expand(-1, scores.shape[1], 1)  # (N, K, 1)
    correct = scores.gather(2, label)  # (N, K, 1)
    soft = hinge = None
    if cols.any_softmax:
        soft = torch.logsumexp(scores, dim=2) - correct.squeeze(2)  # (N, K)
    if cols.any_hinge:
        terms = torch.clamp(scores - correct + cols.margin, min=0.0)  # (N, K, C)
        if cols.any_squared:
            terms = torch.where(cols.squared, terms * terms, terms)
        hinge = terms.scatter(2, label, 0.0).sum(dim=2)  # the correct class adds nothing
    return _pick(soft, hinge, cols.softmax[:, 0])


def scores_gradient(scores: torch.Tensor, y: torch.Tensor, cols: Columns) -> torch.Tensor:
    """d(sum over the batch of the data loss)/d scores, per configuration: (N, K, C), times N
    as losses.data_loss_grad (the step folds the 1/N into its products).

    softmax: p - onehot. hinge: 1 for each wrong class with s_j - s_y + margin >= 0 (torch's
    clamp passes the gradient at 0), 2 * max(0, s_j - s_y + margin) when squared; the correct
    class gets minus the sum of the wrong classes' terms.
    """
    label = y[:, None, None].expand(-1, scores.shape[1], 1)  # (N, K, 1)
    soft = hinge = None
    if cols.any_softmax:
        soft = torch.softmax(scores, dim=2).scatter_(2, label, -1.0, reduce="add")
    if cols.any_hinge:
        violation = scores - scores.gather(2, label) + cols.margin  # (N, K, C)
        g = (violation >= 0).to(scores.dtype)
        if cols.any_squared:
            g = torch.where(cols.squared, 2.0 * torch.clamp(violation, min=0.0), g)
        g.scatter_(2, label, 0.0)  # wrong classes only
        hinge = g.scatter_(2, label, -g.sum(dim=2, keepdim=True))
    return _pick(soft, hinge, cols.softmax)


def first_lrs(cfgs: list[TrialConfig]) -> list[float]:
    """Each configuration's lr in its first epoch (warm-up included), as its Trial reports it
    before it has trained."""
    return [c.train.lr * lr_factor(0, c.train) for c in cfgs]


def penalty(W: torch.Tensor, cols: Columns) -> torch.Tensor:
    """R(W) of each configuration (trainers/regularizers.py): W (D, K, C) -> (K,). A term a
    configuration does not use is 0, as in its Trial, not 0 times a sum past float32's range."""
    quad, absw = cols.quad[:, 0], cols.absw[:, 0]
    squares = torch.where(quad != 0, quad * (W * W).sum(dim=(0, 2)), 0.0)
    return squares + torch.where(absw != 0, absw * W.abs().sum(dim=(0, 2)), 0.0)


def add_penalty_gradient(grad: torch.Tensor, W: torch.Tensor, cols: Columns) -> None:
    """grad += lambda * dR/dW, in place; W and grad (D, K, C). The bias is never penalized."""
    if cols.any_quad:
        grad.addcmul_(W, cols.quad_grad)
    if cols.any_abs:
        grad.addcmul_(W.sign(), cols.abs_grad)


# ---------------------------------------------------------------- memory
BATCH_COPIES = 4  # (B, K, C) tensors a step holds at once: scores, margins or p, their gradient
MEASURE_BYTES = 3 * 4 * MEASURE_ELEMENTS  # measuring a split (at most): scores, margins, losses


def member_bytes(features: int, classes: int, batch_size: int, optimizers: Sequence[str]) -> int:
    """Device memory (fp32) one more member costs a population: its weights and bias, their
    gradient and optimizer buffers (a population with sgd and adam keeps both kinds for all),
    and its columns of a step's (B, K, C) scores and their gradient."""
    buffers = (1 if set(optimizers) - {"adam"} else 0) + (2 if "adam" in optimizers else 0)
    return 4 * (classes * (features + 1) * (2 + buffers) + BATCH_COPIES * batch_size * classes)


def free_bytes(device: torch.device) -> int | None:
    """What ``device`` can still give: a GPU's free memory, or the host's (MemAvailable);
    None where that is unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return free_memory()


# ---------------------------------------------------------------- optimizers
def new_state(param: torch.Tensor, cols: Columns) -> dict[str, torch.Tensor]:
    """Zeroed optimizer buffers shaped like ``param``: what the population's optimizers need."""
    names = (["v"] if cols.any_sgd else []) + (["m", "s"] if cols.any_adam else [])
    return {name: torch.zeros_like(param) for name in names}


def adam_corrections(
    step_epochs: Sequence[int], batches: int, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Adam's bias corrections for each step of an epoch of ``batches`` steps, per member:
    1 - b1^t and sqrt(1 - b2^t), each (batches, K, 1), where t = step_epochs[k] * batches + i
    at the epoch's step i = 1..batches is member k's own step count, as torch.optim.Adam keeps
    it. Made in float64, as the powers are, then cast to the parameters' dtype."""
    done = torch.tensor(step_epochs, dtype=torch.float64, device=device) * batches  # (K,)
    steps = torch.arange(1, batches + 1, dtype=torch.float64, device=device)  # (S,)
    t = (done + steps[:, None])[..., None]  # (S, K, 1)
    b1, b2 = ADAM_BETAS
    return (1 - b1**t).to(dtype), (1 - b2**t).sqrt().to(dtype)


def optimizer_step(
    param: torch.Tensor,
    grad: torch.Tensor,
    state: dict[str, torch.Tensor],
    cols: Columns,
    lr: torch.Tensor,
    corrections: tuple[torch.Tensor, torch.Tensor] | None,
) -> None:
    """One step of each configuration's optimizer, in place; param, grad (..., K, C), lr (K, 1).

    sgd / momentum / nesterov as torch.optim.SGD with dampening 0: v = rho v + g, then
    w -= lr v, or w -= lr (g + rho v) for nesterov (sgd is rho = 0, so v = g).
    adam as torch.optim.Adam: m, s moving averages of g and g^2, bias-corrected by this step's
    ``corrections`` (1 - b1^t, sqrt(1 - b2^t)), each (K, 1): see adam_corrections.
    """
    # each family gives a direction d and a (K, 1) step size a; then w -= a d, in one pass
    sgd = adam = None
    if cols.any_sgd:
        v = torch.addcmul(grad, state["v"], cols.rho, out=state["v"])  # one pass: g + rho v
        sgd = torch.addcmul(v * cols.keep_v, grad, cols.keep_g) if cols.any_nesterov else v
    if cols.any_adam:
        (b1, b2), m, s = ADAM_BETAS, state["m"], state["s"]
        bias1, bias2 = corrections
        m.lerp_(grad, 1 - b1)
        s.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        denom = (s.sqrt() / bias2).add_(ADAM_EPS)
        adam = m / denom
    size = _pick(lr / bias1, lr, cols.adam) if cols.any_adam else lr
    param.addcmul_(_pick(adam, sgd, cols.adam), size, value=-1.0)


# ---------------------------------------------------------------- one fold
def initial_weights(cfgs: Sequence[TrialConfig], D: int, C: int) -> torch.Tensor:
    """(D, K, C) on the CPU: each configuration's W exactly as its own LinearClassifier starts."""
    inits = [
        LinearClassifier(D, C, torch.Generator().manual_seed(c.train.seed)).W.detach() for c in cfgs
    ]
    return torch.stack(inits, dim=1)


class Fold:
    """One data set (one fold) on the device, with the population's weights for it.

    W (D, K, C) is one contiguous (D, K*C) matrix: configuration k owns columns k*C..k*C+C-1.
    """

    def __init__(
        self,
        data: Dataset,
        cfgs: Sequence[TrialConfig],
        cols: Columns,
        device: torch.device,
        order_seed: int,
    ) -> None:
        self.data, self.device = data, device
        self.dtype = dtype = cfgs[0].data.dtype  # shared, as all of data.* is
        self.X = features(data.train.X, device, dtype)  # (N, D)
        self.y = torch.as_tensor(data.train.y, device=device)  # (N,)
        self.X_val = features(data.val.X, device, dtype)
        self.y_val = torch.as_tensor(data.val.y, device=device)
        D, C = self.X.shape[1], data.n_classes
        self.W = initial_weights(cfgs, D, C).to(device).contiguous()  # (D, K, C)
        self.b = torch.zeros(len(cfgs), C, device=device)  # (K, C)
        self.state = {"W": new_state(self.W, cols), "b": new_state(self.b, cols)}
        self.order = torch.Generator(device=device).manual_seed(order_seed)
        self.perm = torch.empty(len(self.y), dtype=torch.long, device=device)  # read by the graph
        self.use_graph = True  # on CUDA; False: eager steps (to compare, or debug)
        self.use_triton = triton_step.available(device)  # False: torch's ops (to compare)
        self.graph: torch.cuda.CUDAGraph | None = None  # made again when the tensors change

    def scores(self, X: torch.Tensor, parts: int = 1) -> torch.Tensor:
        """(N, D) -> (N, K, C): one matrix product for the whole population (model.scores)."""
        K, C = self.b.shape
        return scores(self.W.view(-1, K * C), self.b.view(-1), X, parts).view(-1, K, C)

    def batches(self, batch_size: int) -> range:
        """Where an epoch's minibatches start: its number of steps is their number."""
        return range(0, len(self.y), batch_size)

    def train_epoch(
        self, cols: Columns, lr: torch.Tensor, batch_size: int, step_epochs: Sequence[int]
    ) -> None:
        """One pass over a fresh permutation; ``step_epochs``: each member's epochs of steps
        before it (Adam's step counts, see adam_corrections).

        On CUDA, for a population without Adam, the epoch's steps are captured once in a CUDA
        graph and replayed every epoch, as ``loop.Trainer`` does: an eager epoch is thousands of
        small kernel launches. The graph reads the columns' tensors and lr, so new values
        written into them take effect. A population with Adam runs eagerly."""
        torch.randperm(len(self.y), generator=self.order, out=self.perm)
        starts = self.batches(batch_size)
        if self.device.type != "cuda" or cols.any_adam or not self.use_graph:
            corrections = None
            if cols.any_adam:
                corrections = adam_corrections(step_epochs, len(starts), self.W.dtype, self.device)
            self._steps(cols, lr, batch_size, corrections, starts)
            return
        if self.graph is None:
            self.lr = lr.clone()  # read by the graph; set before each replay
            state = [self.W, self.b, *(t for s in self.state.values() for t in s.values())]
            steps = functools.partial(self._steps, cols, self.lr, batch_size, None)
            self.graph = capture_epoch(self.device, state, steps, starts)
        self.lr.copy_(lr)
        self.graph.replay()

    def _steps(
        self,
        cols: Columns,
        lr: torch.Tensor,
        batch_size: int,
        corrections: tuple[torch.Tensor, torch.Tensor] | None,
        starts: Sequence[int],
    ) -> None:
        """The minibatch steps starting at ``starts`` of ``perm``: device work only, in as few
        kernels as the math allows (on a GPU a small step is bound by their number).
        ``corrections``: Adam's for every step of the epoch, None without Adam."""
        W, b = self.W.view(self.W.shape[0], -1), self.b.view(-1)  # (D, K*C), (K*C,)
        parts = split_k(W.shape[0], batch_size, W.shape[1], multiprocessors(self.device))
        labels = self.y.index_select(0, self.perm)  # (N,) in this epoch's order
        ones = torch.ones(batch_size, device=self.device)
        for start in starts:
            idx = self.perm[start : start + batch_size]
            X = self.X.index_select(0, idx).float()  # (B, D): float32 whatever data.dtype keeps
            y = labels[start : start + batch_size]  # (B,)
            n = len(y)
            dscores = scores_gradient(self.scores(X, parts), y, cols).view(n, -1)  # times B
            # the means over the batch as products (beta 0: addmm and addmv ignore their input);
            # a column mean as a reduction is 3 times as slow on a GPU. The bias's sum of hinge
            # slopes (integers) is exact before the 1/B, so a sum of 0 stays 0, as in Trainer:
            # Adam turns rounding noise in a zero gradient into a step of about 0.8 lr.
            grad_W = torch.addmm(W, X.T, dscores, beta=0.0, alpha=1.0 / n).view_as(self.W)
            grad_b = torch.addmv(b, dscores.T, ones[:n], beta=0.0).div_(n).view_as(self.b)
            if self.use_triton and not cols.any_adam:  # the same math, one pass each
                sgd_step = triton_step.sgd_family_step
                sgd_step(self.W, grad_W, self.state["W"]["v"], cols, lr, penalized=True)
                sgd_step(self.b, grad_b, self.state["b"]["v"], cols, lr, penalized=False)
            else:
                step = start // batch_size
                bias = None if corrections is None else (corrections[0][step], corrections[1][step])
                add_penalty_gradient(grad_W, self.W, cols)
                optimizer_step(self.W, grad_W, self.state["W"], cols, lr, bias)
                optimizer_step(self.b, grad_b, self.state["b"], cols, lr, bias)

    def measure(self, X: torch.Tensor, y: torch.Tensor, cols: Columns) -> dict[str, torch.Tensor]:
        """Data loss, total loss and accuracy of every configuration on a split: each (K,)."""
        K, C = self.b.shape
        rows = measure_rows(self.device, K * C)
        loss = torch.zeros(K, device=self.device)
        hits = torch.zeros(K, device=self.device)
        for start in range(0, len(y), rows):
            s, t = self.scores(X[start : start + rows]), y[start : start + rows]  # (n, K, C)
            loss += example_losses(s, t, cols).sum(dim=0)
            hits += (s.argmax(dim=2) == t[:, None]).sum(dim=0)
        loss /= len(y)
        total = loss + cols.lam[:, 0] * penalty(self.W, cols)
        return {"loss": loss, "total_loss": total, "acc": hits / len(y)}

    def split_tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        on_device = {"train": (self.X, self.y), "val": (self.X_val, self.y_val)}
        return split_tensors(self.data, split, self.device, on_device, self.dtype)

    def compact(self, keep: torch.Tensor) -> None:
        """Keep only the configurations at positions ``keep`` (K',)."""
        self.graph = None
        self.W = self.W.index_select(1, keep)
        self.b = self.b.index_select(0, keep)
        self.state = {
            p: {k: t.index_select(-2, keep) for k, t in s.items()} for p, s in self.state.items()
        }

    def add(self, cfgs: Sequence[TrialConfig], cols: Columns) -> None:
        """Append these configurations as they would start (``cols``: the grown population's).
        Their optimizer buffers start at zero; a family the population did not need yet (its
        first Adam member) starts at zero for every configuration, exact for those that never
        read it; a family no configuration needs any longer is dropped."""
        K, C = self.b.shape
        self.graph = None
        new_W = initial_weights(cfgs, self.W.shape[0], C).to(self.device)
        self.W = torch.cat([self.W, new_W], dim=1)
        self.b = torch.cat([self.b, self.b.new_zeros(len(cfgs), C)])
        grown = {"W": new_state(self.W, cols), "b": new_state(self.b, cols)}
        for p, buffers in grown.items():
            for name, t in buffers.items():
                if name in self.state[p]:
                    t[..., :K, :] = self.state[p][name]
        self.state = grown

    def copy(self, src: int, dst: int) -> None:
        """Configuration dst takes src's weights and optimizer buffers, in place (a captured
        graph reads these tensors and stays valid)."""
        self.W[:, dst] = self.W[:, src]
        self.b[dst] = self.b[src]
        for s in self.state.values():
            for t in s.values():
                t[..., dst, :] = t[..., src, :]

    def zero(self, k: int) -> None:
        """Frozen for good: zero configuration k's weights and buffers so nothing non-finite
        stays in the shared products (its lr is 0 from now on)."""
        self.W[:, k] = 0.0
        self.b[k] = 0.0
        for s in self.state.values():
            for t in s.values():
                t[..., k, :] = 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"W": self.W, "b": self.b, "state": self.state, "order_rng": self.order.get_state()}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.graph = None
        self.W = saved["W"].to(self.device)
        self.b = saved["b"].to(self.device)
        self.state = {
            p: {k: t.to(self.device) for k, t in s.items()} for p, s in saved["state"].items()
        }
        restore_order(self.order, saved["order_rng"])


# ---------------------------------------------------------------- the population
def _check_shared(cfgs: Sequence[TrialConfig]) -> None:
    """What the configurations of one population must share, one line per mistake."""
    if not cfgs:
        raise ConfigError("a population needs at least one configuration")
    first = cfgs[0].flat()
    for i, cfg in enumerate(cfgs[1:], start=1):
        for key, value in cfg.flat().items():
            if unfusable(key) and value != first[key]:
                raise ConfigError(
                    f"{key} must be the same for every configuration of a population (they "
                    f"share each batch); configuration {i} has {value!r}, the first "
                    f"{first[key]!r}"
                )


class Population:
    """K configurations trained in lockstep: ``step()`` trains one epoch of every configuration
    still running and returns each one's metrics, keyed by its id, as Trial.step would.

    ids: the caller's names for the configurations (str or int; default 0..K-1), stable
    across ``add`` and ``remove``. order_seed: seeds the shared minibatch order (default: the
    first configuration's train.seed).
    """

    def __init__(
        self,
        cfgs: Sequence[TrialConfig],
        datasets: list[Dataset] | None = None,
        ids: Sequence[Hashable] | None = None,
        order_seed: int | None = None,
    ) -> None:
        _check_shared(cfgs)
        self.cfgs = list(cfgs)
        self.cfg_dicts = [c.to_dict() for c in self.cfgs]  # for save: once, not every save
        self.ids = list(range(len(cfgs)) if ids is None else ids)
        if len(self.ids) != len(self.cfgs) or len(set(self.ids)) != len(self.ids):
            raise ValueError(f"ids must be {len(cfgs)} distinct names; got {self.ids!r}")
        self.device = resolve_device(cfgs[0].train.device)
        set_matmul(cfgs[0].train.matmul)
        self.order_seed = cfgs[0].train.seed if order_seed is None else order_seed
        self.datasets = datasets if datasets is not None else prepare(cfgs[0].data)
        self.batch_size = cfgs[0].train.batch_size
        smallest = min(len(ds.train.y) for ds in self.datasets)
        if self.batch_size > smallest:
            raise ConfigError(
                f"train.batch_size must be <= the training split ({smallest} examples); "
                f"got {self.batch_size}"
            )
        self.cols = columns(self.cfgs, self.device)
        self.folds = [
            Fold(ds, self.cfgs, self.cols, self.device, self.order_seed) for ds in self.datasets
        ]
        self.epochs_run = [0] * len(cfgs)
        self.step_epochs = [0] * len(cfgs)  # as epochs_run, but moves with copy_member
        self.diverged = [False] * len(cfgs)
        self.history: list[list[dict[str, Any]]] = [[] for _ in cfgs]
        # fallback if epoch 1 diverges, as in Trial
        self.last_finite = self._measure(first_lrs(cfgs), [0] * len(cfgs), 0.0)

    # ------------------------------------------------------------ training
    def running(self, k: int) -> bool:
        return not self.diverged[k] and self.epochs_run[k] < self.cfgs[k].train.epochs

    @property
    def done(self) -> bool:
        return not any(self.running(k) for k in range(len(self.ids)))

    def finished(self) -> list[Hashable]:
        """Ids of the configurations that will not train again (all epochs run, or diverged)."""
        return [i for k, i in enumerate(self.ids) if not self.running(k)]

    def train_epoch(self) -> tuple[list[int], list[float]]:
        """Train one epoch of every running configuration (training only, no metrics); returns
        their positions and every configuration's lr. The others ride along with lr 0."""
        active = [k for k in range(len(self.ids)) if self.running(k)]
        lrs = [0.0] * len(self.ids)
        for k in active:
            cfg = self.cfgs[k].train
            lrs[k] = cfg.lr * lr_factor(self.epochs_run[k], cfg)
        if active:
            lr = torch.tensor(lrs, device=self.device).reshape(-1, 1)  # (K, 1)
            for fold in self.folds:
                fold.train_epoch(self.cols, lr, self.batch_size, self.step_epochs)
        for k in active:
            self.epochs_run[k] += 1
            self.step_epochs[k] += 1
        return active, lrs

    def step(self) -> dict[Hashable, dict[str, Any]]:
        """Train one epoch; the metrics of each configuration that trained, by id.

        A configuration whose loss turns non-finite is frozen and returns its last finite
        metrics flagged ``diverged`` (Trial.step's rule). ``epoch_seconds`` is the epoch's
        wall time shared out over the configurations that trained.
        """
        start = time.perf_counter()
        active, lrs = self.train_epoch()
        if not active:
            return {}
        measured = self._measure(lrs, self.epochs_run, 0.0)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / len(active)
        out = {}
        for k in active:
            metrics = {**measured[k], "epoch_seconds": seconds}
            if not all(math.isfinite(metrics[key]) for key in ("train_total_loss", "val_loss")):
                self.diverged[k] = True
                for fold in self.folds:
                    fold.zero(k)
                metrics = {**self.last_finite[k], "epoch": self.epochs_run[k], "diverged": True}
            else:
                self.last_finite[k] = metrics
            self.history[k].append(metrics)
            out[self.ids[k]] = metrics
        return out

    def _measure(self, lrs: list[float], epochs: list[int], seconds: float) -> list[dict]:
        """Trial.measure's metrics for every configuration, averaged over folds, and with
        k > 1 folds each fold's validation accuracy (``val_acc_fold<i>``)."""
        per_fold = [
            (f.measure(f.X, f.y, self.cols), f.measure(f.X_val, f.y_val, self.cols))
            for f in self.folds
        ]
        keys = [("train", "loss"), ("train", "total_loss"), ("train", "acc")]
        keys += [("val", "loss"), ("val", "acc")]
        rows = [
            torch.stack([(tr if split == "train" else va)[key] for tr, va in per_fold])
            .to(torch.float64)  # a Trial averages Python floats
            .mean(dim=0)
            for split, key in keys
        ]
        if len(self.folds) > 1:
            rows += [va["acc"].to(torch.float64) for _, va in per_fold]
        table = torch.stack(rows).tolist()  # one transfer: (5 [+ folds], K)
        folds = range(len(self.folds) if len(self.folds) > 1 else 0)
        return [
            {
                "epoch": epochs[k],
                **{f"{split}_{key}": table[j][k] for j, (split, key) in enumerate(keys)},
                "lr": lrs[k],
                "epoch_seconds": seconds,
                "diverged": False,
            }
            | {fold_key(i): table[len(keys) + i][k] for i in folds}
            for k in range(len(self.ids))
        ]

    def final(self, id_: Hashable) -> dict[str, Any]:
        """Trial.final for one configuration: its last finite metrics, epochs run, diverged."""
        k = self._position(id_)
        return {
            **self.last_finite[k],
            "epochs_run": self.epochs_run[k],
            "diverged": self.diverged[k],
        }

    def evaluate(self, split: str, id_: Hashable) -> dict[str, float]:
        """Trial.evaluate for one configuration: loss and accuracy on train, val or test."""
        k = self._position(id_)
        scores = [f.measure(*f.split_tensors(split), self.cols) for f in self.folds]
        loss = sum(s["loss"][k].item() for s in scores) / len(scores)
        acc = sum(s["acc"][k].item() for s in scores) / len(scores)
        return {f"{split}_loss": loss, f"{split}_acc": acc}

    # ------------------------------------------------------------ growing and changing
    def add(self, cfgs: Sequence[TrialConfig], ids: Sequence[Hashable]) -> None:
        """New configurations join at epoch 0, each as it would start in a new population; from
        now on they see the population's minibatch order. They must share the data, batch size
        and device (ConfigError) and their ids must be new (ValueError)."""
        cfgs, ids = list(cfgs), list(ids)
        _check_shared(self.cfgs + cfgs)
        if len(ids) != len(cfgs) or len(set(self.ids + ids)) != len(self.ids) + len(ids):
            raise ValueError(
                f"ids must be {len(cfgs)} distinct names not in the population; got {ids!r}"
            )
        K = len(self.ids)
        self.cfgs += cfgs
        self.cfg_dicts += [c.to_dict() for c in cfgs]
        self.ids += ids
        self.cols = columns(self.cfgs, self.device)
        for fold in self.folds:  # each captures its graph again
            fold.add(cfgs, self.cols)
        for name, start in (("epochs_run", 0), ("step_epochs", 0), ("diverged", False)):
            getattr(self, name).extend([start] * len(cfgs))
        self.history += [[] for _ in cfgs]
        self.last_finite += self._measure(first_lrs(self.cfgs), [0] * len(self.ids), 0.0)[K:]

    def copy_member(self, src: Hashable, dst: Hashable) -> None:
        """dst takes src's weights, optimizer buffers and step count, in every fold (Population
        Based Training's exploit), and src's diverged flag, which is a property of the weights.
        dst keeps its id, config, epochs run and metrics."""
        s, d = self._position(src), self._position(dst)
        for fold in self.folds:
            fold.copy(s, d)
        self.step_epochs[d], self.diverged[d] = self.step_epochs[s], self.diverged[s]

    def reconfigure(self, id_: Hashable, cfg: TrialConfig) -> None:
        """Train one configuration on with ``cfg`` (Population Based Training's explore), which
        may differ from its config only in loop.RECONFIGURABLE's keys, else ValueError: lr,
        lambda, momentum, elastic beta, margin. Its schedule goes on from its epochs run with
        the new base lr, as Trial.reconfigure's."""
        k = self._position(id_)
        check_reconfigurable(self.cfgs[k], cfg)
        self.cfgs[k], self.cfg_dicts[k] = cfg, cfg.to_dict()
        # A CUDA graph reads the columns' tensors, and runs the code paths their host flags
        # chose when it was captured: with the same flags, the new values go into those
        # tensors and the graph stays valid; else the columns are new and it is captured again.
        new = {f.name: getattr(columns(self.cfgs, self.device), f.name) for f in fields(Columns)}
        tensors = {n: t for n, t in new.items() if isinstance(t, torch.Tensor)}
        if all(getattr(self.cols, n) == flag for n, flag in new.items() if n not in tensors):
            for n, t in tensors.items():
                getattr(self.cols, n).copy_(t)
            return
        self.cols = Columns(**new)
        for fold in self.folds:
            fold.graph = None

    # ------------------------------------------------------------ stopping
    def _position(self, id_: Hashable) -> int:
        try:
            return self.ids.index(id_)
        except ValueError:
            raise KeyError(f"no configuration {id_!r} in this population") from None

    def keep(self, ids: Sequence[Hashable]) -> None:
        """Keep only these configurations (in the population's order); the others' weights,
        optimizer state and hyperparameters are dropped, so they cost nothing from now on."""
        positions = sorted(self._position(i) for i in set(ids))
        index = torch.tensor(positions, dtype=torch.long, device=self.device)
        for fold in self.folds:
            fold.compact(index)
        for name in ("cfgs", "cfg_dicts", "ids", *PER_MEMBER):
            values = getattr(self, name)
            setattr(self, name, [values[k] for k in positions])
        self.cols = columns(self.cfgs, self.device)

    def remove(self, ids: Sequence[Hashable]) -> None:
        """Drop these configurations (stopped early, finished or diverged)."""
        gone = {self.ids[self._position(i)] for i in ids}
        self.keep([i for i in self.ids if i not in gone])

    # ------------------------------------------------------------ checkpoints
    def save(self, directory: str | Path) -> Path:
        """Everything needed to continue exactly, in one file written atomically. The plain
        state (configs, ids, every epoch's metrics) goes in as one JSON string: torch.save
        pickles object by object, which took most of a save with a thousand members."""
        path = Path(directory) / CHECKPOINT_FILE
        plain = {"configs": self.cfg_dicts, "ids": self.ids, "order_seed": self.order_seed}
        plain |= {k: getattr(self, k) for k in PER_MEMBER}
        state = {"plain": json.dumps(plain), "folds": [f.state_dict() for f in self.folds]}
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(path)  # a kill mid-write leaves the previous checkpoint intact
        return path

    @classmethod
    def load(cls, directory: str | Path, datasets: list[Dataset] | None = None) -> Population:
        """Rebuild a population from ``save``; it continues as if never interrupted."""
        state = torch.load(Path(directory) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
        plain = json.loads(state["plain"])
        # a checkpoint without step_epochs: every member has trained from epoch 0 on
        plain.setdefault("step_epochs", plain["epochs_run"])
        cfgs = [trial_config(c) for c in plain["configs"]]
        pop = cls(cfgs, datasets, ids=plain["ids"], order_seed=plain["order_seed"])
        for fold, saved in zip(pop.folds, state["folds"]):
            fold.load_state_dict(saved)
        for name in PER_MEMBER:
            setattr(pop, name, plain[name])
        return pop

    def export(self, id_: Hashable, directory: str | Path) -> Path:
        """Write one configuration as a single-trial checkpoint (trainers.loop.Trial.save), so
        that Trial.load and trainers.loop.evaluate read it. Export a configuration in the
        epoch it finishes: frozen ones keep still, but their momentum / Adam buffers go on
        moving with the population. A diverged configuration's weights were zeroed when it
        diverged; its checkpoint says diverged."""
        k = self._position(id_)
        cfg = self.cfgs[k]
        names = {"m": "exp_avg", "s": "exp_avg_sq", "v": "momentum_buffer"}
        trial = Trial(cfg, self.datasets)
        for fold, trainer in zip(self.folds, trial.trainers):
            per_param = []  # the torch.optim layout Trainer.load_state_dict reads: W, then b
            for name in ("W", "b"):
                buffers = {names[n]: t[..., k, :].clone() for n, t in fold.state[name].items()}
                if cfg.train.optimizer == "adam":
                    steps = self.step_epochs[k] * len(fold.batches(self.batch_size))
                    buffers["step"] = torch.tensor(float(steps))
                per_param.append(buffers if self.step_epochs[k] else {})
            trainer.load_state_dict(
                {
                    "model": {"W": fold.W[:, k], "b": fold.b[k]},
                    "optimizer": {"state": dict(enumerate(per_param))},
                    "scheduler": {"last_epoch": self.epochs_run[k]},
                    "order_rng": fold.order.get_state(),
                }
            )
        trial.epoch, trial.diverged = self.epochs_run[k], self.diverged[k]
        trial.history, trial.last_finite = list(self.history[k]), self.last_finite[k]
        return trial.save(directory)
