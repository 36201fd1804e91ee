"""Optimizer and learning-rate schedule, shared by every stage."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from picovlm.config import StageConfig


def make_optimizer(model: nn.Module, cfg: StageConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; weight decay only on matrices (not on norms, biases,
    CLS/position vectors or the temperature), which is what decay is meant to regularize."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"stage {cfg.name!r}: nothing to train (trainable={list(cfg.trainable)})")
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))


def lr_at(step: int, cfg: StageConfig) -> float:
    """Linear warmup to cfg.lr, then cosine decay to cfg.lr * cfg.min_lr_ratio at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)
