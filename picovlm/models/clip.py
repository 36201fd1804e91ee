"""CLIP-style dual encoder: an image tower and a text encoder trained so matching image/caption
pairs have similar embeddings (symmetric InfoNCE with a learned temperature).

In picovlm this is how a vision tower is pretrained when no pretrained tower is at hand: the
tower is built from the model's `VisionConfig` by the tower registry, so the trained `tower` is
exactly a VLM's vision tower. It also serves zero-shot classification and retrieval (both sides
embed into one space).

The text encoder comes in three layouts (`text_layout`, listed in `TEXT_LAYOUTS`):
  gpt   our GPT (RoPE, RMSNorm, SwiGLU, no biases), trained from scratch with the tower
  clip  HF `CLIPTextModel`'s layout (learned positions, LayerNorm, biased attention, quick_gelu MLP:
        our ViT's blocks under a causal mask), trained from scratch; the only one that exports as an
        HF `CLIPModel`
  hf    a pretrained HF sentence encoder from a folder (`text_hf_path`; all-MiniLM-L6-v2 is packaged),
        locked: the tower learns to meet it (models/hf_encoder.py says why)
"gpt" and "clip" read picovlm's BPE ids and pool at the caption's closing <|end|> token, as CLIP
pools at its EOS token; "hf" reads its own tokenizer's ids and mean-pools over the real tokens. Either
way a batch of captions is (ids [B, T] right-padded, lengths [B]), made by `CLIPModel.captions`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from picovlm.audio.encoder import build_audio_tower
from picovlm.checkpoint import EVERYTHING_ELSE, load_weights, read_config
from picovlm.config import AudioConfig, CLIPConfig, GPTConfig, VisionConfig, ViTConfig, from_dict
from picovlm.models.gpt import GPT
from picovlm.models.hf_encoder import HFTextEncoder
from picovlm.text.padding import pad_right
from picovlm.text.tokenizer import Tokenizer
from picovlm.vision.towers import build_vision_tower
from picovlm.vision.vit import Block, ViT

TEXT_LAYOUTS = ("gpt", "clip", "hf")
# checkpoint parts (name -> parameter prefix): the tower, and the rest (projections, temperature, text)
CLIP_PARTS = {"tower": "tower.", "clip": EVERYTHING_ELSE}
# a pretrained HF text encoder (layout "hf") is a part of its own: locked unless a stage names "text"
# among its trainable parts, and then not stored (the checkpoint names its folder)
CLIP_HF_PARTS = {"tower": "tower.", "text": "text.", "clip": EVERYTHING_ELSE}

# captions -> (ids [B, T] right-padded, lengths [B]): what `CLIPModel.encode_text` reads
Captions = Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]]


def padded(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Id rows -> (ids right-padded with `pad_id`, lengths)."""
    return pad_right(rows, pad_id), torch.tensor([len(r) for r in rows])


def end_pooled_captions(tok: Tokenizer, max_len: int) -> Captions:
    """The "gpt" and "clip" layouts' captions: picovlm's BPE ids, then <|end|>, where they pool."""
    return lambda texts: padded([tok.encode(t)[: max_len - 1] + [tok.end_id] for t in texts], tok.pad_id)


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


def build_text_encoder(layout: str, text: GPTConfig, hf_path: str | Path = "") -> nn.Module:
    """The text tower of a layout; for "hf" only `text.max_seq_len` is read (the folder has the rest)."""
    if layout == "gpt":
        return GPT(text)
    if layout == "clip":
        return CLIPTextEncoder(text)
    if layout == "hf":
        if not str(hf_path):
            raise ValueError("CLIP text layout 'hf' needs clip.text_hf_path: a local HF encoder folder")
        return HFTextEncoder(hf_path, text.max_seq_len)
    raise ValueError(f"unknown CLIP text layout {layout!r}; known: {', '.join(TEXT_LAYOUTS)}")


class CLIPModel(nn.Module):
    """`vision` builds the image tower (any kind of the tower registry), or, an AudioConfig, the audio
    tower (the `clap` stage: audio/caption pairs, CLAP); `cfg` the text encoder and the shared space,
    with `cfg.text.vocab_size` the tokenizer's."""

    def __init__(self, vision: VisionConfig | AudioConfig, cfg: CLIPConfig):
        super().__init__()
        if cfg.text_layout not in TEXT_LAYOUTS:  # before the tower is built: a typo should not cost its init
            raise ValueError(f"unknown CLIP text layout {cfg.text_layout!r}; known: {', '.join(TEXT_LAYOUTS)}")
        self.vision_cfg, self.cfg = vision, cfg
        self.tower = build_audio_tower(vision) if isinstance(vision, AudioConfig) else build_vision_tower(vision)
        self.text = build_text_encoder(cfg.text_layout, cfg.text, cfg.text_hf_path)
        text_width = self.text.n_embd if cfg.text_layout == "hf" else cfg.text.n_embd
        self.image_proj = nn.Linear(self.tower.hidden_size, cfg.embed_dim, bias=False)
        self.text_proj = nn.Linear(text_width, cfg.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    @property
    def text_layout(self) -> str:
        return self.cfg.text_layout

    def captions(self, tok: Tokenizer) -> Captions:
        """How captions become this model's text input: the HF encoder's own tokenizer for "hf" (`tok`,
        picovlm's BPE, is not read), else `tok`'s ids ending in <|end|>."""
        if isinstance(self.text, HFTextEncoder):
            encoder = self.text
            return lambda texts: padded([encoder.encode(t) for t in texts], encoder.pad_id)
        return end_pooled_captions(tok, self.text.cfg.max_seq_len)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_proj(pooled_image(self.tower, pixels)), dim=-1)

    def encode_text(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """ids [B, T] right-padded; lengths [B] real tokens per row."""
        if isinstance(self.text, HFTextEncoder):
            pooled = self.text(ids, lengths)  # mean over the real tokens
        else:  # causal: the last real token (<|end|>) has read the whole caption
            h = self.text(ids, return_hidden=True)
            pooled = h[torch.arange(ids.size(0), device=ids.device), lengths - 1]
        return F.normalize(self.text_proj(pooled), dim=-1)

    def forward(self, pixels: torch.Tensor, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Symmetric InfoNCE loss over the batch: image i's caption is text i, the rest negatives."""
        img, txt = self.encode_image(pixels), self.encode_text(ids, lengths)
        logits = self.logit_scale.exp().clamp(max=100) * img @ txt.T
        target = torch.arange(len(img), device=img.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def pooled_image(tower: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """One vector per image: our ViT's CLIP embedding (the post-LayerNormed CLS after every block);
    the registry's other towers (HF, open_clip, CNN) give patch features only, so their mean."""
    if isinstance(tower, ViT):
        return tower.pooled(pixels)
    return tower(pixels).mean(dim=1)


def clip_checkpoint_config(model: CLIPModel) -> dict[str, Any]:
    """What a CLIP (or CLAP: an audio tower) checkpoint's config.json says about the model, for
    `load_clip` to rebuild it."""
    tower = "audio" if isinstance(model.vision_cfg, AudioConfig) else "vision"
    task = "clap" if tower == "audio" else "clip"
    return {"task": task, tower: dataclasses.asdict(model.vision_cfg), "clip": dataclasses.asdict(model.cfg)}


def _upgrade(cfg: dict[str, Any]) -> dict[str, Any]:
    """A config.json from before CLIP read its tower from a VisionConfig (it was always a ViT, whose
    parameter names have not changed) and its settings from a CLIPConfig, in today's layout."""
    if "vision" in cfg or "audio" in cfg:
        return cfg
    clip = {"text": cfg["text"], "embed_dim": cfg["embed_dim"], "text_layout": cfg.get("text_layout", "gpt")}
    clip["text_hf_path"] = cfg.get("text_hf_path", "")
    return {**cfg, "vision": {"kind": "vit", "vit": cfg["vit"]}, "clip": clip}


def load_clip(path: str | Path) -> tuple[CLIPModel, Tokenizer, str]:
    """A CLIP- (or CLAP-) stage checkpoint (eval mode), its tokenizer and its text-encoder layout."""
    path = Path(path)
    cfg = read_config(path)
    if cfg.get("task") not in ("clip", "clap"):
        raise ValueError(f"{path}: a {cfg.get('task')!r} checkpoint, not a CLIP model (use runs/<x>/clip/model)")
    cfg = _upgrade(cfg)
    tower = from_dict(AudioConfig, cfg["audio"]) if "audio" in cfg else from_dict(VisionConfig, cfg["vision"])
    # a locked "hf" text encoder is not in the checkpoint: it is rebuilt from the folder (or packaged name) stored here
    model = CLIPModel(tower, from_dict(CLIPConfig, cfg["clip"]))
    load_weights(model, path)
    return model.eval(), Tokenizer.load(path / "tokenizer.json"), model.text_layout
