"""Optimizer and learning-rate schedule, shared by every stage."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from picovlm.checkpoint import part_of
from picovlm.config import StageConfig


def make_optimizer(model: nn.Module, cfg: StageConfig, parts: dict[str, str]) -> torch.optim.AdamW:
    """AdamW over the trainable parameters. Weight decay only on matrices (not on norms, biases,
    CLS/position vectors or the temperature), which is what decay is meant to regularize; each part's
    learning rate is `lr` times its `lr_scale` (1 by default), kept in the group as "lr_scale"."""
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((part_of(name, parts), p.ndim >= 2), []).append(p)
    if not groups:
        raise ValueError(f"stage {cfg.name!r}: nothing to train (trainable={list(cfg.trainable)})")
    return torch.optim.AdamW(
        [
            {"params": ps, "weight_decay": cfg.weight_decay if matrix else 0.0, "lr_scale": cfg.lr_scale.get(part, 1.0)}
            for (part, matrix), ps in groups.items()
        ],
        lr=cfg.lr,
        betas=tuple(cfg.betas),
    )


def lr_at(step: int, cfg: StageConfig) -> float:
    """Linear warmup to cfg.lr, then cosine decay to cfg.lr * cfg.min_lr_ratio at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)
