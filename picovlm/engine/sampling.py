"""Choosing the next token from logits: greedy, temperature, top-k, top-p."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SamplingParams:
    max_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    stop: tuple[str, ...] = ()  # stop strings, checked on the decoded text
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if not (0 <= self.temperature < float("inf")):  # NaN fails this too
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")


def sample_next(logits: torch.Tensor, p: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    """[B, V] logits -> [B] token ids."""
    if p.temperature == 0:
        return logits.argmax(dim=-1)
    # shifted so that the largest is 0 (softmax is the same): a tiny temperature then makes the others -inf
    # or huge and negative, never inf - inf; one under float32's smallest (5e-324 was sent) would be 0
    logits = logits.float()
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / max(p.temperature, torch.finfo(torch.float32).tiny)
    if p.top_k > 0:
        kth = torch.topk(logits, min(p.top_k, logits.size(-1)), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if p.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token when the tokens ranked above it already cover top_p; the first always stays (a
        # top_p below float32's smallest, 5e-324, is 0 to the comparison and would drop every token)
        drop = probs.cumsum(dim=-1) - probs >= p.top_p
        drop[:, 0] = False
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
