"""The adapter VLM: vision tower -> projector -> language model (and videos, audio: models/modalities.py).

This is where image tokens enter the LM. Text reaches the model with one `<|image|>` placeholder
per image already expanded to as many copies as the projector emits tokens (`expand_placeholders`),
so sequence lengths and positions are known before any pixel is seen. The model then embeds the
text and overwrites the placeholder slots with the projected image features, in order
(`merge_embeds`), and the LM runs on the merged embeddings as if they were words. With
`image_markers` each run of copies sits between `<|image_start|>` and `<|image_end|>`, which are plain
tokens to the LM: embedded like words, never overwritten.

Videos (`<|video|>`) and audio (`<|audio|>`) take the same road: `inputs` says how each modality the
model reads is prepared and how many tokens one item becomes, `encode` embeds a batch of them, and
`embed` merges every modality at its own placeholder's slots with the one `merge_embeds`.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from picovlm.audio.encoder import build_audio_tower
from picovlm.checkpoint import load_weights, read_config
from picovlm.config import VLMConfig
from picovlm.models.gpt import KVCache
from picovlm.models.lm import build_lm
from picovlm.models.modalities import MODALITIES, Input
from picovlm.models.projectors import build_projector
from picovlm.text.padding import IGNORE_INDEX
from picovlm.text.tokenizer import Tokenizer
from picovlm.video.temporal import TemporalPool, VideoProcessor
from picovlm.vision.towers import build_vision_tower

VLM_PARTS = {"tower": "tower.", "projector": "projector.", "lm": "lm."}  # checkpoint parts: name -> prefix
# and those of a model that reads more, where it has them (a mean temporal pool has no weights)
MEDIA_PARTS = ("temporal", "audio_tower", "audio_projector")


def _dtype(module: nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


def merge_embeds(text_embeds: torch.Tensor, ids: torch.Tensor, embeds: torch.Tensor, token_id: int) -> torch.Tensor:
    """Put one modality's embeddings into its placeholder slots of the text embeddings.

    text_embeds [B, T, D]; ids [B, T]; embeds [n_items, M, D], ordered by sample, then by position in
    the text. The k-th slot of `token_id` (row-major over the batch) gets the k-th embedding row, so
    several items per sample, anywhere in the text, need no special handling; each modality is merged
    by the same call, at its own placeholder's slots.
    """
    slots = ids == token_id
    n_slots, n_feats = int(slots.sum()), embeds.shape[0] * embeds.shape[1]
    if n_slots != n_feats:
        raise ValueError(
            f"{n_slots} placeholder slots (id {token_id}) in the text but {embeds.shape[0]} inputs x "
            f"{embeds.shape[1]} tokens = {n_feats} embeddings"
        )
    feats = embeds.reshape(-1, embeds.shape[-1]).to(text_embeds.dtype)
    return text_embeds.masked_scatter(slots[..., None], feats)


def reads(cfg: VLMConfig) -> tuple[str, ...]:
    """The modalities a model of `cfg` reads besides images (names of `MODALITIES`)."""
    return tuple(name for name, on in (("video", cfg.video.frames > 0), ("audio", bool(cfg.audio.kind))) if on)


def media_token_ids(cfg: VLMConfig, tok: Tokenizer) -> dict[str, int]:
    """The placeholder id of every modality `cfg` reads besides images, from `tok` (which must have them)."""
    return {name: tok.placeholder_id(MODALITIES[name].token) for name in reads(cfg)}


class VLM(nn.Module):
    """`media_token_ids`: the placeholder id of each modality besides images that `cfg` reads
    (`media_token_ids(cfg, tok)`); videos share the image tower and projector, with a `temporal`
    pool between them; audio has its own `audio_tower` and `audio_projector`."""

    def __init__(self, cfg: VLMConfig, image_token_id: int, media_token_ids: dict[str, int] | None = None):
        super().__init__()
        self.tower = build_vision_tower(cfg.vision)
        self.lm = build_lm(cfg)
        # the LM's own cfg: an HF LM knows its dims (the projector needs its width), keep the config truthful
        self.cfg, self.image_token_id = dataclasses.replace(cfg, lm=self.lm.cfg), image_token_id
        self.projector = build_projector(cfg.projector, self.tower.hidden_size, self.lm.cfg.n_embd, self.tower.grid)
        self.token_ids = {"image": image_token_id, **(media_token_ids or {})}
        missing = [name for name in reads(cfg) if name not in self.token_ids]
        if missing:
            raise ValueError(f"the model reads {', '.join(missing)} but got no placeholder id for them")
        self.temporal = TemporalPool(cfg.video, self.tower.hidden_size) if cfg.video.frames else None
        self.audio_tower = build_audio_tower(cfg.audio) if cfg.audio.kind else None
        self.audio_projector = self._audio_projector() if self.audio_tower is not None else None
        present = [p for p in MEDIA_PARTS if getattr(self, p) is not None and list(getattr(self, p).parameters())]
        self.parts = {**VLM_PARTS, **{p: f"{p}." for p in present}}  # checkpoint parts of this model

    def _audio_projector(self) -> nn.Module:
        name = self.cfg.audio.projector
        if not re.fullmatch(r"identity|linear|mlp\d+x_gelu", name):
            raise ValueError(f"audio projector {name!r}: audio has no patch grid (identity, linear, mlpNx_gelu)")
        return build_projector(name, self.audio_tower.hidden_size, self.lm.cfg.n_embd, 0)

    @property
    def tokens_per_image(self) -> int:
        return self.projector.num_tokens(self.tower.num_patches)

    @property
    def placeholder_ids(self) -> list[int]:
        """Every modality's placeholder id: inputs only, never generated."""
        return list(self.token_ids.values())

    @property
    def inputs(self) -> dict[str, Input]:
        """How this model takes each modality it reads: placeholder id, tokens per item, preprocessing."""
        out = {"image": Input(self.image_token_id, self.tokens_per_image, self.tower.processor)}
        if self.temporal is not None:
            video = VideoProcessor(self.cfg.video, self.tower.processor)
            out["video"] = Input(self.token_ids["video"], self.temporal.slots * self.tokens_per_image, video)
        if self.audio_tower is not None:
            n = self.audio_projector.num_tokens(self.audio_tower.num_patches)
            out["audio"] = Input(self.token_ids["audio"], n, self.audio_tower.processor)
        return out

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """[n, 3, H, W] pixels -> [n, tokens_per_image, lm dim] embeddings."""
        return self.projector(self.tower(pixels))

    def encode(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """One modality's batch tensor (`inputs[name].prepare`'s) -> [n, tokens per item, lm dim]."""
        if name == "image":
            return self.encode_images(x)
        if name == "video":  # [n, T, 3, H, W]: every frame through the tower at once, then over time
            n, T = x.shape[:2]
            frames = self.tower(x.flatten(0, 1).to(_dtype(self.tower)))
            pooled = self.temporal(frames.view(n, T, *frames.shape[1:]))
            return self.projector(pooled.flatten(0, 1)).view(n, -1, self.lm.cfg.n_embd)
        if name == "audio":
            return self.audio_projector(self.audio_tower(x.to(_dtype(self.audio_tower))))
        raise ValueError(f"unknown modality {name!r}; known: {', '.join(MODALITIES)}")

    def embed(
        self,
        ids: torch.Tensor,
        pixels: torch.Tensor | None,
        features: torch.Tensor | None = None,
        **media: torch.Tensor,
    ) -> torch.Tensor:
        """Text embeddings with every input merged in at its placeholders: images from `pixels` (or
        `features`, the tower's output, e.g. a frozen tower's cached features), the other modalities
        from `media` (name -> batch tensor)."""
        unknown = [name for name in media if name == "image" or name not in self.token_ids]  # images: pixels
        if unknown:
            raise ValueError(f"this model reads no {unknown[0]!r} input; it reads: {', '.join(self.token_ids)}")
        embeds = self.lm.embed(ids)
        given = {"image": pixels, **media}
        for name, token_id in self.token_ids.items():
            x = given.get(name)
            if name == "image" and features is not None:
                embeds = merge_embeds(embeds, ids, self.projector(features), token_id)
            elif x is not None and x.shape[0] > 0:
                embeds = merge_embeds(embeds, ids, self.encode(name, x), token_id)
            elif bool((ids == token_id).any()):
                m = MODALITIES[name]
                raise ValueError(f"text has {m.token} tokens but no {m.plural} were given")
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
        last_only: bool = False,
        **media: torch.Tensor,
    ) -> torch.Tensor:
        """Logits, or (with `labels`, IGNORE_INDEX where no loss) the mean next-token loss.
        `position_ids` and `segment_ids` come from `isolated_turns` (picovlm's GPT only); `media` holds
        the other modalities' batch tensors by name (`video=`, `audio=`); `last_only`: logits of the
        last position only (a prefill's, see `GPT.forward`)."""
        embeds = self.embed(ids, pixels, features, **media)
        # with labels, the head runs only where a next token is labelled (`labelled_positions`)
        keep = None if labels is None else labelled_positions(labels)
        logits = self.lm(
            inputs_embeds=embeds,
            key_padding_mask=key_padding_mask,
            kv_cache=kv_cache,
            position_ids=position_ids,
            segment_ids=segment_ids,
            last_only=last_only,
            keep=keep,
        )
        if labels is None:
            return logits
        return mean_loss(logits, labels[:, 1:][keep[:, :-1]])


def labelled_positions(labels: torch.Tensor) -> torch.Tensor:
    """bool [B, T]: the positions whose next token has a label, the only ones whose logits a loss reads."""
    return F.pad(labels[:, 1:] != IGNORE_INDEX, (0, 1), value=False)


def mean_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits [N, vocab] against their N targets (0, not NaN, for N = 0)."""
    return F.cross_entropy(logits.float(), targets, reduction="sum") / max(len(targets), 1)


def masked_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over labelled positions (0, not NaN, when none are labelled)."""
    targets = labels[:, 1:].flatten()
    total = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (targets != IGNORE_INDEX).sum().clamp(min=1)


def vlm_checkpoint_config(model: VLM) -> dict[str, Any]:
    """What a VLM checkpoint's config.json says about the model, for `load_vlm` to rebuild it."""
    media = {name: i for name, i in model.token_ids.items() if name != "image"}
    return {"task": "vlm", "model": model.cfg.to_dict(), "image_token_id": model.image_token_id} | (
        {"media_token_ids": media} if media else {}
    )


def load_vlm(path: str | Path) -> tuple[VLM, Tokenizer]:
    """A VLM checkpoint (float32, eval mode) and its tokenizer; other stages' checkpoints are refused."""
    path = Path(path)
    cfg = read_config(path)
    if cfg.get("task") != "vlm":
        raise ValueError(f"{path}: a {cfg.get('task')!r} checkpoint, not a VLM (use the last stage's model)")
    model = VLM(VLMConfig.from_dict(cfg["model"]), cfg["image_token_id"], cfg.get("media_token_ids"))
    load_weights(model, path)
    return model.eval(), Tokenizer.load(path / "tokenizer.json")
