"""The audio tower registry and picovlm's own audio encoder (Whisper's layout, small).

    log-mel [B, n_mels, frames] -> conv stem (3-wide convs, GELU; log2(stride) of them stride 2)
    -> + sinusoidal positions -> pre-LN transformer blocks (the ViT's) -> LayerNorm
    -> average each run of `pool` tokens -> [B, frames / stride / pool, n_embd]

A tower has the interface of the vision towers (vision/towers.py): `forward(mels) -> [B, N, D]`,
`processor` (Audio clips -> mels), `num_patches` (N) and `hidden_size` (D), so the projector
registry, the VLM's merge and the contrastive `clap` stage (train/stage_tasks.py) take it as they
take an image tower. A new kind of audio tower is an entry of `AUDIO_TOWERS`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from picovlm.audio.mel import MelProcessor
from picovlm.config import AudioConfig, ViTConfig
from picovlm.vision.vit import Block


def sinusoids(length: int, dim: int) -> torch.Tensor:
    """Whisper's fixed positions [length, dim]: sines, then cosines, of geometric timescales."""
    scales = torch.exp(-math.log(10000) * torch.arange(dim // 2) / (dim // 2 - 1))
    t = torch.arange(length)[:, None] * scales[None, :]
    return torch.cat([torch.sin(t), torch.cos(t)], dim=1)


class AudioEncoder(nn.Module):
    def __init__(self, cfg: AudioConfig):
        super().__init__()
        depth = cfg.stride.bit_length() - 1
        if cfg.stride != 2**depth or cfg.pool < 1 or cfg.n_embd % 2:
            raise ValueError(f"audio: stride must be a power of two, pool >= 1, n_embd even; got {cfg}")
        self.cfg, self.processor = cfg, MelProcessor(cfg)
        tokens = self.processor.frames
        for _ in range(depth):  # a 3-wide stride-2 conv padded by 1 halves a length, rounding up
            tokens = (tokens + 1) // 2
        if tokens < cfg.pool or tokens % cfg.pool:
            raise ValueError(f"audio: {tokens} encoder tokens ({cfg.seconds:g} s) do not split into runs of {cfg.pool}")
        convs: list[nn.Module] = [nn.Conv1d(cfg.n_mels, cfg.n_embd, 3, padding=1), nn.GELU()]
        for _ in range(depth):
            convs += [nn.Conv1d(cfg.n_embd, cfg.n_embd, 3, stride=2, padding=1), nn.GELU()]
        self.stem = nn.Sequential(*convs)
        self.register_buffer("positions", sinusoids(tokens, cfg.n_embd), persistent=False)
        block = ViTConfig(n_embd=cfg.n_embd, n_head=cfg.n_head, mlp_ratio=cfg.mlp_ratio)
        self.blocks = nn.ModuleList(Block(block) for _ in range(cfg.n_layer))
        self.norm = nn.LayerNorm(cfg.n_embd)
        self.num_patches, self.hidden_size = tokens // cfg.pool, cfg.n_embd

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        """[B, n_mels, frames] -> [B, num_patches, n_embd]."""
        x = self.stem(mels).transpose(1, 2)
        x = x + self.positions.to(x.dtype)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return F.avg_pool1d(x.transpose(1, 2), self.cfg.pool).transpose(1, 2) if self.cfg.pool > 1 else x


AUDIO_TOWERS: dict[str, Callable[[AudioConfig], nn.Module]] = {"whisper": AudioEncoder}


def build_audio_tower(cfg: AudioConfig) -> nn.Module:
    if cfg.kind not in AUDIO_TOWERS:
        raise ValueError(f"unknown audio tower {cfg.kind!r}; known: {', '.join(AUDIO_TOWERS)}")
    return AUDIO_TOWERS[cfg.kind](cfg)
