"""A convolutional VQ-VAE: encoder -> codebook (vq/quantizer.py) -> decoder.

The encoder cuts the image into downsample x downsample patches (one strided convolution), then
residual blocks of 3x3 convolutions let each cell see its neighbours, and a 1x1 convolution gives
one small vector per cell, which the codebook replaces by its nearest code. The decoder mirrors it
and draws each cell's patch at once (1x1 convolution to its pixels, then PixelShuffle).

Why patches and not a pyramid of stride-2 convolutions with upsampling: the built-in scenes are
flat colours with hard edges, and 4x4 patches of them are few (about 1,400 distinct ones in 2,000
training images, 92% of them plain background). A code that stands for its patch, drawn exactly
by the decoder, keeps edges sharp, and all the computation runs at the codes' resolution: on the
demo data it reached 31 dB in 600 steps, where a stride-2 pyramid with nearest-neighbour
upsampling was at 24 dB after 200 steps (the patch model: 26 dB) and cost more per step. No
normalization layers: the model is small and trains in a few hundred steps without them, and eval
mode computes exactly what training did.

Pixels are in [-1, 1] (`processor`, the same preprocessing as picovlm's towers); codes are ids in
[0, codebook_size) on a grid x grid raster.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from picovlm.checkpoint import EVERYTHING_ELSE, load_weights, read_config
from picovlm.config import VQConfig, from_dict
from picovlm.vision.image import ImageProcessor
from picovlm.vq.quantizer import VectorQuantizer

VQ_PARTS = {"vq": EVERYTHING_ELSE}  # one part: the encoder's codes mean something only to its own decoder


def check_grid(cfg: VQConfig) -> None:
    """Whole codes per side (the ranges of single fields are `picovlm.config.CHECKS`)."""
    if cfg.downsample < 1 or cfg.image_size % cfg.downsample:
        raise ValueError(f"VQConfig.downsample {cfg.downsample} does not divide image_size {cfg.image_size}")


class ResBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


class Encoder(nn.Module):
    """Patches of downsample x downsample pixels -> one vector each, then residual blocks that let a
    code see its neighbours, then the code vectors [B, code_dim, grid, grid]."""

    def __init__(self, cfg: VQConfig):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, cfg.channels, cfg.downsample, stride=cfg.downsample)]
        layers += [ResBlock(cfg.channels) for _ in range(cfg.res_blocks)]
        layers += [nn.SiLU(), nn.Conv2d(cfg.channels, cfg.code_dim, 1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.layers(pixels)


class Decoder(nn.Module):
    """Codes -> residual blocks -> each cell's downsample x downsample pixels at once (a 1x1
    convolution to 3 * downsample^2 channels, then PixelShuffle)."""

    def __init__(self, cfg: VQConfig):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(cfg.code_dim, cfg.channels, 3, padding=1)]
        layers += [ResBlock(cfg.channels) for _ in range(cfg.res_blocks)]
        layers += [nn.SiLU(), nn.Conv2d(cfg.channels, 3 * cfg.downsample**2, 1), nn.PixelShuffle(cfg.downsample)]
        self.layers = nn.Sequential(*layers)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.layers(codes)


class VQVAE(nn.Module):
    """Images [B, 3, S, S] in [-1, 1] <-> code ids [B, grid, grid]; `forward` is the training loss."""

    def __init__(self, cfg: VQConfig):
        super().__init__()
        check_grid(cfg)
        self.cfg = cfg
        self.encoder, self.decoder = Encoder(cfg), Decoder(cfg)
        self.quantizer = VectorQuantizer(cfg.codebook_size, cfg.code_dim, cfg.ema_decay, cfg.dead_below)
        self.processor = ImageProcessor(cfg.image_size)

    @property
    def grid(self) -> int:
        """Codes per side: an image is grid x grid codes."""
        return self.cfg.image_size // self.cfg.downsample

    def reconstruct(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstructed pixels, code ids, commitment loss); gradients reach the encoder straight through
        the codebook lookup."""
        q, ids, commitment = self.quantizer(self.encoder(pixels))
        return self.decoder(q), ids, commitment

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """The training loss: reconstruction (MSE + l1_weight * L1) + commitment * ||z - sg(code)||^2."""
        out, _, commitment = self.reconstruct(pixels)
        loss = F.mse_loss(out.float(), pixels)
        if self.cfg.l1_weight:
            loss = loss + self.cfg.l1_weight * F.l1_loss(out.float(), pixels)
        return loss + self.cfg.commitment * commitment

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels [B, 3, S, S] -> code ids [B, grid, grid]."""
        return self.quantizer.nearest(self.encoder(pixels))

    @torch.no_grad()
    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """Code ids [B, grid, grid] -> pixels [B, 3, S, S], clamped to [-1, 1]."""
        return self.decoder(self.quantizer.lookup(ids)).clamp(-1, 1)


def vq_checkpoint_config(model: VQVAE) -> dict[str, Any]:
    """What a `vq` stage's config.json says about its model, for `load_vqvae` to rebuild it."""
    return {"task": "vq", "model": dataclasses.asdict(model.cfg)}


def load_vqvae(path: str | Path) -> VQVAE:
    """A `vq` stage's checkpoint, in eval mode."""
    cfg = read_config(Path(path))
    if cfg.get("task") != "vq":
        raise ValueError(f"{path}: a {cfg.get('task')!r} checkpoint, not a VQ tokenizer (use runs/<x>/vq/model)")
    model = VQVAE(from_dict(VQConfig, cfg["model"]))
    load_weights(model, Path(path))
    return model.eval()
