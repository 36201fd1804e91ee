"""The adapter VLM: vision tower -> projector -> language model.

This is where image tokens enter the LM. Text reaches the model with one `<|image|>` placeholder
per image already expanded to as many copies as the projector emits tokens (`expand_image_tokens`),
so sequence lengths and positions are known before any pixel is seen. The model then embeds the
text and overwrites the placeholder slots with the projected image features, in order
(`merge_image_embeds`), and the LM runs on the merged embeddings as if they were words. With
`image_markers` each run of copies sits between `<|image_start|>` and `<|image_end|>`, which are plain
tokens to the LM: embedded like words, never overwritten.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from picovlm.checkpoint import load_weights, read_config
from picovlm.config import VLMConfig
from picovlm.models.gpt import KVCache
from picovlm.models.lm import build_lm
from picovlm.models.projectors import build_projector
from picovlm.text.padding import IGNORE_INDEX
from picovlm.text.tokenizer import Tokenizer
from picovlm.vision.towers import build_vision_tower

VLM_PARTS = {"tower": "tower.", "projector": "projector.", "lm": "lm."}  # checkpoint parts: name -> prefix


def expand_image_tokens(
    ids: list[int],
    loss_mask: list[int],
    n_images: int,
    image_token_id: int,
    tokens_per_image: int,
    markers: tuple[int, int] | None = None,
) -> tuple[list[int], list[int]]:
    """Replace each `<|image|>` id by `tokens_per_image` copies, between the (start, end) `markers` ids
    when given (`VLMConfig.image_markers`); mask 0 on all of them: no loss on images."""
    found = ids.count(image_token_id)
    if found != n_images:
        raise ValueError(f"text has {found} <|image|> placeholders but {n_images} images were given")
    start, end = ([markers[0]], [markers[1]]) if markers is not None else ([], [])
    span = start + [image_token_id] * tokens_per_image + end
    out_ids: list[int] = []
    out_mask: list[int] = []
    for i, m in zip(ids, loss_mask, strict=True):
        if i == image_token_id:
            out_ids += span
            out_mask += [0] * len(span)
        else:
            out_ids.append(i)
            out_mask.append(m)
    return out_ids, out_mask


def merge_image_embeds(
    text_embeds: torch.Tensor, ids: torch.Tensor, image_embeds: torch.Tensor, image_token_id: int
) -> torch.Tensor:
    """Put the image features into the image-token slots of the text embeddings.

    text_embeds [B, T, D]; ids [B, T]; image_embeds [n_images, M, D], ordered by sample, then by
    position in the text. The k-th image-token slot (row-major over the batch) gets the k-th feature
    row, so several images per sample, anywhere in the text, need no special handling.
    """
    slots = ids == image_token_id
    n_slots, n_feats = int(slots.sum()), image_embeds.shape[0] * image_embeds.shape[1]
    if n_slots != n_feats:
        raise ValueError(
            f"{n_slots} image-token slots in the text but {image_embeds.shape[0]} images x "
            f"{image_embeds.shape[1]} tokens = {n_feats} image features"
        )
    feats = image_embeds.reshape(-1, image_embeds.shape[-1]).to(text_embeds.dtype)
    return text_embeds.masked_scatter(slots[..., None], feats)


class VLM(nn.Module):
    def __init__(self, cfg: VLMConfig, image_token_id: int):
        super().__init__()
        self.tower = build_vision_tower(cfg.vision)
        self.lm = build_lm(cfg)
        # the LM's own cfg: an HF LM knows its dims (the projector needs its width), keep the config truthful
        self.cfg, self.image_token_id = dataclasses.replace(cfg, lm=self.lm.cfg), image_token_id
        self.projector = build_projector(cfg.projector, self.tower.hidden_size, self.lm.cfg.n_embd, self.tower.grid)

    @property
    def tokens_per_image(self) -> int:
        return self.projector.num_tokens(self.tower.num_patches)

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """[n, 3, H, W] pixels -> [n, tokens_per_image, lm dim] embeddings."""
        return self.projector(self.tower(pixels))

    def embed(
        self, ids: torch.Tensor, pixels: torch.Tensor | None, features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Text embeddings with the images merged in; `features` (the tower's output, e.g. a frozen
        tower's cached features) stand in for `pixels`."""
        embeds = self.lm.embed(ids)
        if features is not None:
            embeds = merge_image_embeds(embeds, ids, self.projector(features), self.image_token_id)
        elif pixels is not None and pixels.shape[0] > 0:
            embeds = merge_image_embeds(embeds, ids, self.encode_images(pixels), self.image_token_id)
        elif bool((ids == self.image_token_id).any()):
            raise ValueError("text has <|image|> tokens but no images were given")
        return embeds

    def forward(
        self,
        ids: torch.Tensor,
        pixels: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        features: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits, or (with `labels`, IGNORE_INDEX where no loss) the mean next-token loss.
        `position_ids` and `segment_ids` come from `isolated_turns` (picovlm's GPT only)."""
        embeds = self.embed(ids, pixels, features)
        logits = self.lm(
            inputs_embeds=embeds,
            key_padding_mask=key_padding_mask,
            kv_cache=kv_cache,
            position_ids=position_ids,
            segment_ids=segment_ids,
        )
        if labels is None:
            return logits
        return masked_lm_loss(logits, labels)


def masked_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over labelled positions (0, not NaN, when none are labelled)."""
    targets = labels[:, 1:].flatten()
    total = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (targets != IGNORE_INDEX).sum().clamp(min=1)


def vlm_checkpoint_config(model: VLM) -> dict[str, Any]:
    """What a VLM checkpoint's config.json says about the model, for `load_vlm` to rebuild it."""
    return {"task": "vlm", "model": model.cfg.to_dict(), "image_token_id": model.image_token_id}


def load_vlm(path: str | Path) -> tuple[VLM, Tokenizer]:
    """A VLM checkpoint (float32, eval mode) and its tokenizer; other stages' checkpoints are refused."""
    path = Path(path)
    cfg = read_config(path)
    if cfg.get("task") != "vlm":
        raise ValueError(f"{path}: a {cfg.get('task')!r} checkpoint, not a VLM (use the last stage's model)")
    model = VLM(VLMConfig.from_dict(cfg["model"]), cfg["image_token_id"])
    load_weights(model, path)
    return model.eval(), Tokenizer.load(path / "tokenizer.json")
