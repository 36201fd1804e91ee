"""Muon for a model's hidden matrices, AdamW for everything else, in one optimizer.

Muon (Jordan et al. 2024, the optimizer of the nanoGPT speedrun and nanochat) keeps a momentum of
each weight matrix's gradient and steps along its nearest semi-orthogonal matrix: every direction
of the update gets the same size, so the rare directions that Adam's per-entry scaling leaves
small (a feature seen in few tokens) learn as fast as the common ones. On the demo's instruction
stage it reached in 600 steps the loss AdamW reached in 1000 (docs/experiments.md). It is meant for the matrices
inside the network: embeddings, the output head, position tables, norms and biases stay on AdamW,
which is why one optimizer holds both kinds of parameter group (flag `muon` in the group).

One optimizer object, not two, so that the training loop, its schedule (`lr` per group) and
checkpoint resume (`state_dict`) treat it like any other torch optimizer.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

# Newton-Schulz quintic whose coefficients push every singular value of a matrix with norm <= 1
# towards 1 in a few steps (Jordan et al.); it only needs matmuls, so it runs on any device
NS_COEFFS = (3.4445, -4.7750, 2.0315)


def orthogonalize(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Approximately U V^T of g = U S V^T (singular values land in about [0.7, 1.2], which is enough).
    g is one matrix [m, n] or a stack of them [k, m, n] (orthogonalized each on its own, in one go)."""
    if g.ndim == 2:
        return orthogonalize(g[None], steps)[0]
    a, b, c = NS_COEFFS
    x = g / (torch.linalg.matrix_norm(g, keepdim=True) + 1e-7)
    wide = x.size(-2) <= x.size(-1)
    if not wide:  # iterate on the smaller Gram matrix
        x = x.mT
    for _ in range(steps):
        gram = x @ x.mT
        # x <- a x + (b gram + c gram^2) x, each product fused with its sum (~30% faster on a CPU)
        poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.baddbmm(x, poly, x, beta=a)
    return x if wide else x.mT


class MuonAdamW(torch.optim.Optimizer):
    """Groups with `muon=True` take Muon steps (Nesterov momentum, orthogonalized, scaled by
    sqrt(max(1, rows / cols)) so tall matrices move their outputs as much as wide ones); the other
    groups take AdamW steps. Weight decay is decoupled in both (`weight_decay` per group)."""

    def __init__(
        self,
        groups: Iterable[dict[str, Any]],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        momentum: float = 0.95,
        ns_steps: int = 5,
    ):
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, momentum=momentum, ns_steps=ns_steps)
        super().__init__(list(groups), {**defaults, "weight_decay": 0.0, "muon": False})

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch's signature
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if group["weight_decay"]:
                for p in params:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
            if group["muon"]:
                self._muon(params, group)
            else:
                for p in params:
                    self._adamw(p, group)

    def _muon(self, params: list[torch.Tensor], group: dict[str, Any]) -> None:
        mu, by_shape = group["momentum"], {}
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p)
            buf = state["momentum_buffer"].mul_(mu).add_(p.grad)
            update = p.grad.add(buf, alpha=mu).reshape(p.size(0), -1)  # a conv kernel as out x (in*k*k)
            by_shape.setdefault(update.shape, []).append((p, update))
        # matrices of one shape are orthogonalized as one batch: a few large matmuls, not many small ones
        for (rows, cols), pairs in by_shape.items():
            updates = orthogonalize(torch.stack([u for _, u in pairs]).float(), group["ns_steps"])
            scale = max(1.0, rows / cols) ** 0.5
            for (p, _), u in zip(pairs, updates, strict=True):
                p.add_(u.view_as(p).to(p.dtype), alpha=-group["lr"] * scale)

    def _adamw(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        state = self.state[p]
        if "step" not in state:
            state["step"] = 0
            state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
        state["step"] += 1
        (b1, b2), t = group["betas"], state["step"]
        state["exp_avg"].lerp_(p.grad, 1 - b1)
        state["exp_avg_sq"].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
        denom = (state["exp_avg_sq"] / (1 - b2**t)).sqrt_().add_(group["eps"])
        p.addcdiv_(state["exp_avg"], denom, value=-group["lr"] / (1 - b1**t))
