"""The linear classifier: scores s = xW + b with W of shape (D, C).

The trainer keeps W and b in one flat tensor, W transposed (C rows of D) then b, so that an
optimizer step is one kernel over one tensor, and so that both of a step's matrix products
read W and write its gradient in the layout BLAS is fastest with for C much smaller than D
(on 2 CPU cores, x @ W from a (C, D) W is about twice as fast as from a (D, C) one, and the
gradient's product about five times).
"""

from __future__ import annotations

import torch

TILE = (128, 64)  # the output tile of one multiprocessor in cuBLAS's fp32 products (split_k)
TILE_FIXED = 128  # a tile's cost beyond its sum's terms, in features' worth (split_k)
# scores held at once when measuring a split: on a GPU 64 MB in fp32 (few launches); on a CPU
# 4 MB, since malloc keeps what larger temporaries took once they are freed (in each trial)
MEASURE_ELEMENTS = 2**24
MEASURE_ELEMENTS_CPU = 2**20


def init_params(n_features: int, n_classes: int, generator: torch.Generator) -> torch.Tensor:
    """Flat (C * D + C,): W small and random, as the course's classifier starts (0.001 * randn),
    large enough to break the hinge's ties, small enough not to saturate softmax; b zero."""
    params = torch.zeros(n_classes * (n_features + 1))
    W, _ = unflatten(params, n_features)
    W.copy_(0.001 * torch.randn(n_features, n_classes, generator=generator))
    return params


def unflatten(params: torch.Tensor, n_features: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Views (W (D, C), b (C,)) into flat parameters, or into anything of their layout (the
    gradient, the optimizer's buffers). ``W.T`` is contiguous."""
    n_classes = params.numel() // (n_features + 1)
    split = n_classes * n_features
    return params[:split].view(n_classes, n_features).T, params[split:]


def multiprocessors(device: torch.device) -> int:
    """The GPU's multiprocessors, for ``split_k``; 0 on a CPU, where BLAS splits sums itself."""
    return (
        torch.cuda.get_device_properties(device).multi_processor_count
        if device.type == "cuda"
        else 0
    )


def split_k(n_features: int, rows: int, cols: int, processors: int) -> int:
    """Into how many slices of the features ``scores`` splits a (rows, D) @ (D, cols) product
    on a GPU with that many multiprocessors (0: a CPU, no split).

    cuBLAS gives each tile of a product's output to one multiprocessor, so a batch's thin
    product (256 x 10 outputs, each a sum of 3,072 terms) kept a few of an H200's 132 busy for
    21 us, two-fifths of a trainer's step (bench/kernels.py). S slices of the features computed
    side by side in one bmm, then summed, spread the work. Where the tiles do not fill one wave
    of multiprocessors, S is the divisor of D (each slice keeping at least 128 features) that
    minimises waves of tiles x features summed per tile (plus a tile's fixed cost), the
    smallest on ties; a product that fills them (K >= 512 configurations of 10 classes) is
    not split, as measured on an H200 (splitting it gained 3 % at best and lost up to 14 %).
    """
    tiles = -(-rows // TILE[0]) * -(-cols // TILE[1])
    if tiles >= processors:
        return 1

    def cost(s: int) -> float:
        return -(-tiles * s // processors) * (n_features / s + TILE_FIXED)

    most = max(1, n_features // 128)
    return min((s for s in range(1, most + 1) if n_features % s == 0), key=cost)


def scores(W: torch.Tensor, b: torch.Tensor, x: torch.Tensor, parts: int = 1) -> torch.Tensor:
    """s = xW + b for a batch x (N, D); returns (N, C). ``parts`` > 1: the sum over D taken in
    that many slices side by side (``split_k``); the same scores up to float rounding. An x
    kept in a smaller dtype (data.dtype) is read as W's."""
    x = x.to(W.dtype)
    if parts == 1:
        return torch.addmm(b, x, W)
    slices = torch.bmm(x.unflatten(1, (parts, -1)).transpose(0, 1), W.unflatten(0, (parts, -1)))
    return slices.sum(dim=0).add_(b)  # (parts, N, C) -> (N, C)


def measure_rows(device: torch.device, row_elements: int) -> int:
    """How many rows of a split to score at once, each ``row_elements`` scores: a split of any
    size is measured in bounded memory."""
    most = MEASURE_ELEMENTS_CPU if device.type == "cpu" else MEASURE_ELEMENTS
    return max(1, most // max(1, row_elements))


class LinearClassifier(torch.nn.Module):
    """The same model as an nn.Module with parameters W and b: the form torch.optim trains,
    kept as the reference the fast trainer is tested against."""

    def __init__(self, n_features: int, n_classes: int, generator: torch.Generator) -> None:
        super().__init__()
        W, b = unflatten(init_params(n_features, n_classes, generator), n_features)
        self.W = torch.nn.Parameter(W.contiguous())  # (D, C)
        self.b = torch.nn.Parameter(b.clone())  # (C,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return scores(self.W, self.b, x)  # (N, C)
