"""A population's sgd / momentum / nesterov step as one Triton kernel, on a GPU with Triton.

The same math as ``population.add_penalty_gradient`` then ``population.optimizer_step``:

    g = grad + quad_grad * W + abs_grad * sign(W)        (lambda R'(W); the bias has none)
    v = rho * v + g                                      (torch.optim.SGD, dampening 0)
    W = W - lr * (keep_v * v + keep_g * g)               (heavy ball (1, 0), nesterov (rho, 1))

with the hyperparameters per configuration (``Columns``, (K, 1)). torch's ops make three to
five passes over the (D, K, C) tensors, each reading two or three of them: at K = 256 on an
H200 they took a quarter of a step (bench/kernels.py). This kernel reads W, grad and v once and
writes W and v once; the bias's step is one kernel too. Adam is left to torch's ops. Without
Triton (a CPU build of torch) the population uses torch's ops; ``available`` says which.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from trainers.population import Columns

try:
    import triton
    import triton.language as tl
except ImportError:  # torch's CPU builds come without Triton
    triton = None

BLOCK = 1024  # elements per Triton program


@functools.cache
def available(device: torch.device) -> bool:
    """Whether the kernel runs here: a CUDA device, Triton installed, and its first compile
    working (Triton builds its launcher with the machine's C compiler, which a GPU node may
    lack); else the population uses torch's ops, the same math."""
    if device.type != "cuda" or triton is None:
        return False
    try:  # a one-element step: compiles the kernel (cached on disk) or fails here, not mid-sweep
        one = torch.ones(1, 1, 1, device=device)
        ones = SimpleNamespace(
            **{k: one[0] for k in ("rho", "keep_v", "keep_g", "quad_grad", "abs_grad")}
        )
        sgd_family_step(one.clone(), one.clone(), one.clone(), ones, one[0], penalized=True)
        torch.cuda.synchronize(device)
    except Exception:  # any failure to build or launch it means: use torch's ops
        return False
    return True


if triton is not None:

    @triton.jit
    def _sgd_family_step(
        W, G, V, RHO, KEEP_V, KEEP_G, QUAD, ABS, LR, n, KC, C,
        PENALIZED: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        k = (offs % KC) // C  # the configuration owning this element of (..., K, C)
        w = tl.load(W + offs, mask=mask)
        v = tl.load(V + offs, mask=mask)
        g = tl.load(G + offs, mask=mask)
        if PENALIZED:  # the weights; the bias has no penalty
            sign = tl.where(w > 0, 1.0, tl.where(w < 0, -1.0, 0.0))
            g = g + w * tl.load(QUAD + k, mask=mask) + sign * tl.load(ABS + k, mask=mask)
        v = g + v * tl.load(RHO + k, mask=mask)
        d = v * tl.load(KEEP_V + k, mask=mask) + g * tl.load(KEEP_G + k, mask=mask)
        tl.store(V + offs, v, mask=mask)
        tl.store(W + offs, w - d * tl.load(LR + k, mask=mask), mask=mask)


def sgd_family_step(
    W: torch.Tensor,
    grad: torch.Tensor,
    v: torch.Tensor,
    cols: Columns,
    lr: torch.Tensor,
    penalized: bool,
) -> None:
    """One step of every configuration, in place on W and v (all (..., K, C), contiguous: the
    weights, penalized, or the bias); ``cols`` a population.Columns, lr (K, 1)."""
    n, (K, C) = W.numel(), W.shape[-2:]
    _sgd_family_step[(triton.cdiv(n, BLOCK),)](
        W, grad, v, cols.rho, cols.keep_v, cols.keep_g, cols.quad_grad, cols.abs_grad, lr,
        n, K * C, C, PENALIZED=penalized, BLOCK=BLOCK,
    )  # fmt: skip
