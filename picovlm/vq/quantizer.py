"""The codebook of a VQ-VAE: nearest-code lookup, straight-through gradients, EMA updates, restarts.

Why EMA instead of a codebook loss: each code moves to the running mean of the encoder outputs it
is nearest to (k-means, one small step per batch), which is faster and steadier than learning the
codebook by gradient, and leaves the optimizer only the encoder and decoder.

Why restarts: a code that no encoder output is nearest to gets no updates and stays unused for
good, which wastes vocabulary. Every training step, codes whose running use fell below
`dead_below` of a fair share (1 / codebook_size) move to encoder outputs of the batch, picked as
k-means++ picks its seeds: each with probability proportional to its squared distance from the
nearest code (then from the codes picked so far). They land where the codebook fits worst (in the
scenes: the rare edge pieces, not the plentiful background), rather than on another copy of the
commonest code. The first training step restarts every code: the codebook starts as k-means++
seeds of the first batch (a data-dependent init) instead of random vectors that fit nothing.

The codebook and its statistics are buffers: they are saved with the weights (exact resume), and
the optimizer never sees them. They change only in training mode.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def squared_distances(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """[N, K] squared Euclidean distances between rows of x [N, D] and codebook [K, D]."""
    return (x.pow(2).sum(1, keepdim=True) - 2 * x @ codebook.T + codebook.pow(2).sum(1)).clamp_min(0)


def kmeans_plus_plus(x: torch.Tensor, n: int, d2: torch.Tensor) -> torch.Tensor:
    """n rows of x [N, D] picked as k-means++ seeds, given each row's squared distance `d2` [N] from
    the centres that stay; once every row is a centre (fewer distinct rows than n), uniformly."""
    picks = torch.empty(n, x.shape[1], dtype=x.dtype, device=x.device)
    d2 = d2.clone()
    for i in range(n):
        weights = torch.where(d2.sum() > 0, d2, torch.ones_like(d2))  # no branch: no device sync per pick
        picks[i] = x[torch.multinomial(weights, 1)[0]]
        d2 = torch.minimum(d2, (x - picks[i]).pow(2).sum(1))
    return picks


def rows(z: torch.Tensor) -> torch.Tensor:
    """Encoder output [B, D, h, w] -> its vectors [B * h * w, D], row by row of each image."""
    return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])


class VectorQuantizer(nn.Module):
    """z [B, D, h, w] -> (the nearest codes, straight-through [B, D, h, w]; their ids [B, h, w];
    the commitment loss)."""

    def __init__(self, codebook_size: int, dim: int, decay: float = 0.99, dead_below: float = 0.03):
        super().__init__()
        if codebook_size < 2 or dim < 1:
            raise ValueError(f"a codebook needs at least 2 codes of at least 1 dimension, got {codebook_size}x{dim}")
        self.codebook_size, self.decay, self.dead_below = codebook_size, decay, dead_below
        self.register_buffer("codebook", torch.randn(codebook_size, dim))
        # running (EMA) share of the batch's vectors that each code takes, and of their sum
        self.register_buffer("usage", torch.zeros(codebook_size))
        self.register_buffer("vector_sum", torch.zeros(codebook_size, dim))

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """Code ids [B, h, w] -> code vectors [B, D, h, w]."""
        return self.codebook[ids].permute(0, 3, 1, 2)

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Encoder outputs [B, D, h, w] -> ids [B, h, w] of their nearest codes."""
        return squared_distances(rows(z.detach()), self.codebook).argmin(1).view(z.shape[0], *z.shape[2:])

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with torch.autocast(z.device.type, enabled=False):  # distances and EMA statistics in float32
            z = z.float()
            flat = rows(z.detach())
            d2 = squared_distances(flat, self.codebook)
            ids = d2.argmin(1)
            q = self.lookup(ids.view(z.shape[0], *z.shape[2:]))
            commitment = F.mse_loss(z, q)
            if self.training:  # after the lookup: this batch is quantized by the codebook as it was
                self.update(flat, ids, d2)
        return z + (q - z).detach(), ids.view(z.shape[0], *z.shape[2:]), commitment

    @torch.no_grad()
    def update(self, flat: torch.Tensor, ids: torch.Tensor, d2: torch.Tensor) -> None:
        """One EMA step of every code towards the mean of the vectors `flat` [N, D] nearest to it (`ids`
        [N]), then the restarts (`d2` [N, K]: the vectors' squared distances from the codes). A codebook
        that has seen no data yet (no use at all) is seeded instead: every code restarts."""
        threshold = self.dead_below / self.codebook_size
        if not self.usage.any():
            self.restart(flat, d2, torch.ones_like(self.usage, dtype=torch.bool), threshold)
            return
        n = flat.shape[0]
        self.usage.lerp_(torch.bincount(ids, minlength=self.codebook_size).to(flat.dtype) / n, 1 - self.decay)
        sums = torch.zeros_like(self.vector_sum).index_add_(0, ids, flat)
        self.vector_sum.lerp_(sums / n, 1 - self.decay)
        self.codebook.copy_(self.vector_sum / self.usage[:, None])  # no use is 0: below the threshold, a code restarts
        dead = self.usage < threshold
        if dead.any():
            self.restart(flat, d2, dead, threshold)

    @torch.no_grad()
    def restart(self, flat: torch.Tensor, d2: torch.Tensor, dead: torch.Tensor, usage: float) -> None:
        """Move the `dead` codes onto k-means++ picks among `flat` [N, D], weighted by the squared
        distance from the nearest code that stays (`d2` [N, K], from before this step's update); they
        start with this `usage`."""
        nearest_kept = d2[:, ~dead].amin(1) if not dead.all() else torch.ones_like(d2[:, 0])
        self.codebook[dead] = kmeans_plus_plus(flat, int(dead.sum()), nearest_kept)
        self.usage[dead] = usage
        self.vector_sum[dead] = self.codebook[dead] * usage
