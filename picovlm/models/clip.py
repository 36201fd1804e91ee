"""CLIP-style dual encoder: an image tower and a text encoder trained so matching image/caption
pairs have similar embeddings (symmetric InfoNCE with a learned temperature).

In picovlm this is how a vision tower is pretrained when no pretrained tower is at hand: the
trained `tower` then becomes a VLM's vision tower. It also serves zero-shot classification and
retrieval (both sides embed into one space).

The text encoder comes in two layouts (`text_layout`): "gpt" is our GPT (RoPE, RMSNorm, SwiGLU, no
biases), "clip" is HF `CLIPTextModel`'s (learned positions, LayerNorm, biased attention, quick_gelu
MLP: our ViT's blocks under a causal mask). Both pool at the caption's closing <|end|> token, as
CLIP pools at its EOS token; only the "clip" layout exports as an HF `CLIPModel`.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from picovlm.checkpoint import load_weights, read_config
from picovlm.config import GPTConfig, ViTConfig, from_dict
from picovlm.models.gpt import GPT
from picovlm.text.tokenizer import Tokenizer
from picovlm.vision.vit import Block, ViT

TEXT_LAYOUTS = ("gpt", "clip")


class CLIPTextEncoder(nn.Module):
    """HF `CLIPTextModel`'s layout, sized by a GPTConfig (n_embd, n_head, n_layer, mlp_hidden,
    max_seq_len, norm_eps): token + learned position embeddings -> causal pre-LN blocks -> LayerNorm."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        block_cfg = ViTConfig(
            n_embd=cfg.n_embd, n_head=cfg.n_head, mlp_ratio=cfg.mlp_hidden / cfg.n_embd, act="quick_gelu",
            norm_eps=cfg.norm_eps,
        )  # fmt: skip
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.position_embedding = nn.Parameter(torch.randn(cfg.max_seq_len, cfg.n_embd) * 0.01)
        self.blocks = nn.ModuleList(Block(block_cfg, causal=True) for _ in range(cfg.n_layer))
        self.final_norm = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps)
        nn.init.normal_(self.token_embedding.weight, std=0.02)

    def forward(self, ids: torch.Tensor, return_hidden: bool = True) -> torch.Tensor:
        """Final normed hidden states [B, T, D] (a text encoder has no logits)."""
        if ids.size(1) > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {ids.size(1)} tokens exceeds the context of {self.cfg.max_seq_len}")
        x = self.token_embedding(ids) + self.position_embedding[: ids.size(1)]
        for block in self.blocks:
            x = block(x)
        return self.final_norm(x)


class CLIPModel(nn.Module):
    def __init__(self, vit: ViTConfig, text: GPTConfig, embed_dim: int, text_layout: str = "gpt"):
        super().__init__()
        if text_layout not in TEXT_LAYOUTS:
            raise ValueError(f"unknown CLIP text layout {text_layout!r}; known: {', '.join(TEXT_LAYOUTS)}")
        self.tower = ViT(vit)
        # causal, pooled at the last real token (as CLIP pools at its EOT token)
        self.text = GPT(text) if text_layout == "gpt" else CLIPTextEncoder(text)
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


def load_clip(path: str | Path) -> tuple[CLIPModel, Tokenizer, str]:
    """A CLIP-stage checkpoint (eval mode), its tokenizer and its text-encoder layout."""
    path = Path(path)
    cfg = read_config(path)
    if cfg.get("task") != "clip":
        raise ValueError(f"{path}: a {cfg.get('task')!r} checkpoint, not a CLIP model (use runs/<x>/clip/model)")
    layout = cfg.get("text_layout", "gpt")
    model = CLIPModel(from_dict(ViTConfig, cfg["vit"]), from_dict(GPTConfig, cfg["text"]), cfg["embed_dim"], layout)
    load_weights(model, path)
    return model.eval(), Tokenizer.load(path / "tokenizer.json"), layout
