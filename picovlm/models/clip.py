"""CLIP-style dual encoder: an image tower and a text encoder trained so matching image/caption
pairs have similar embeddings (symmetric InfoNCE with a learned temperature).

In picovlm this is how a vision tower is pretrained when no pretrained tower is at hand: the
trained `tower` then becomes a VLM's vision tower. It also serves zero-shot classification and
retrieval (both sides embed into one space).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from picovlm.config import GPTConfig, ViTConfig
from picovlm.models.gpt import GPT
from picovlm.vision.vit import ViT


class CLIPModel(nn.Module):
    def __init__(self, vit: ViTConfig, text: GPTConfig, embed_dim: int):
        super().__init__()
        self.tower = ViT(vit)
        self.text = GPT(text)  # causal, pooled at the last real token (as CLIP pools at its EOT token)
        self.image_proj = nn.Linear(vit.n_embd, embed_dim, bias=False)
        self.text_proj = nn.Linear(text.n_embd, embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_proj(self.tower.pooled(pixels)), dim=-1)

    def encode_text(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """ids [B, T] right-padded; lengths [B] real tokens per row."""
        h = self.text(ids, return_hidden=True)
        last = h[torch.arange(ids.size(0), device=ids.device), lengths - 1]
        return F.normalize(self.text_proj(last), dim=-1)

    def forward(self, pixels: torch.Tensor, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Symmetric InfoNCE loss over the batch: image i's caption is text i, the rest negatives."""
        img, txt = self.encode_image(pixels), self.encode_text(ids, lengths)
        logits = self.logit_scale.exp().clamp(max=100) * img @ txt.T
        target = torch.arange(len(img), device=img.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
