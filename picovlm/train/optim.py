"""Optimizer and learning-rate schedule, shared by every stage."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from picovlm.checkpoint import part_of
from picovlm.config import StageConfig
from picovlm.train.muon import MuonAdamW

OPTIMIZERS = ("adamw", "muon")
OUTPUT_HEADS = ("lm_head",)  # linear layers that produce logits: Muon is for the matrices inside


def hidden_matrices(model: nn.Module) -> set[int]:
    """ids of the weights Muon should train: linear and conv layers inside the network, not the
    output head and not a weight shared with an embedding (a tied head)."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    return {
        id(m.weight)
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d)
        and name.rsplit(".", 1)[-1] not in OUTPUT_HEADS
        and id(m.weight) not in embeddings
    }


def make_optimizer(model: nn.Module, cfg: StageConfig, parts: dict[str, str]) -> torch.optim.Optimizer:
    """AdamW (or, with `cfg.optimizer="muon"`, Muon for the hidden matrices and AdamW for the rest)
    over the trainable parameters. Weight decay only on matrices (not on norms, biases, CLS/position
    vectors or the temperature), which is what decay is meant to regularize; each part's learning rate
    is `lr` times its `lr_scale` (1 by default), kept in the group as "lr_scale" (Muon groups:
    `muon_lr` times it, so one schedule drives both)."""
    if cfg.optimizer not in OPTIMIZERS:
        raise ValueError(f"stage {cfg.name!r}: unknown optimizer {cfg.optimizer!r}; known: {', '.join(OPTIMIZERS)}")
    muon = hidden_matrices(model) if cfg.optimizer == "muon" else set()
    groups: dict[tuple[str, bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((part_of(name, parts), p.ndim >= 2, id(p) in muon), []).append(p)
    if not groups:
        raise ValueError(f"stage {cfg.name!r}: nothing to train (trainable={list(cfg.trainable)})")
    param_groups = [
        {
            "params": ps,
            "weight_decay": cfg.weight_decay if matrix else 0.0,
            "lr_scale": cfg.lr_scale.get(part, 1.0) * (cfg.muon_lr / cfg.lr if is_muon else 1.0),
            **({"muon": is_muon} if muon else {}),
        }
        for (part, matrix, is_muon), ps in groups.items()
    ]
    if muon:
        return MuonAdamW(param_groups, lr=cfg.lr, betas=tuple(cfg.betas))
    return torch.optim.AdamW(param_groups, lr=cfg.lr, betas=tuple(cfg.betas))


def lr_at(step: int, cfg: StageConfig) -> float:
    """Linear warmup to cfg.lr over `cfg.warmup_steps`, then cosine decay to cfg.lr * cfg.min_lr_ratio at
    the last step."""
    warmup = cfg.warmup_steps
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, cfg.steps - warmup)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)
