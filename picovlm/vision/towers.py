"""The vision tower registry: a config's `kind` picks how images become patch features.

Every tower is an nn.Module with `forward(pixels) -> [B, N, D]` features and the attributes
`processor` (PIL images -> pixels), `num_patches` (N), `hidden_size` (D) and `grid` (sqrt of the
patch count, which grid-aware projectors such as pixel shuffle need).
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

from picovlm.config import VisionConfig
from picovlm.vision.vit import ViT


def _build_vit(cfg: VisionConfig) -> nn.Module:
    return ViT(cfg.vit)


def _build_hf(cfg: VisionConfig) -> nn.Module:
    from picovlm.vision.hf_tower import HFVisionTower

    if not cfg.pretrained_path:
        raise ValueError("vision kind 'hf' needs pretrained_path: a local folder with a CLIP or SigLIP vision model")
    return HFVisionTower(cfg.pretrained_path, cfg.pretrained_feature_layer, cfg.pretrained_use_cls)


def _build_open_clip(cfg: VisionConfig) -> nn.Module:
    from picovlm.vision.open_clip_tower import OpenCLIPTower

    if not cfg.pretrained_path:
        raise ValueError(
            "vision kind 'open_clip' needs pretrained_path: a local folder with open_clip_config.json and weights"
        )
    return OpenCLIPTower(cfg.pretrained_path, cfg.pretrained_feature_layer, cfg.pretrained_use_cls)


def _build_efficientnet(cfg: VisionConfig) -> nn.Module:
    from picovlm.vision.efficientnet import EfficientNetTower

    return EfficientNetTower(cfg.cnn_image_size, cfg.cnn_pretrained)


TOWERS: dict[str, Callable[[VisionConfig], nn.Module]] = {
    "vit": _build_vit,
    "hf": _build_hf,
    "open_clip": _build_open_clip,
    "efficientnet": _build_efficientnet,
}


def build_vision_tower(cfg: VisionConfig) -> nn.Module:
    if cfg.kind not in TOWERS:
        raise ValueError(f"unknown vision tower {cfg.kind!r}; known: {', '.join(TOWERS)}")
    return TOWERS[cfg.kind](cfg)
