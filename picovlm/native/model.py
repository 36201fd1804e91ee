"""The native (Chameleon-style) model: picovlm's GPT over text ids and image codes, and the frozen VQ
tokenizer that turns images into those codes and codes back into images.

Nothing here is a second transformer: `lm` is `picovlm.models.gpt.GPT` with the unified vocabulary
(native/vocab.py), fed `inputs_embeds` so that two optional additions reach image tokens:

  modality_embed  one learned vector added to every code token
  pos2d           a learned row and a learned column embedding added to each code, by its grid cell

The engine (engine/batch.py) runs it as it runs an adapter VLM; `decode_hook` is what it asks for the
constraint on image spans (native/constraint.py) and the span index of each fed token.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from picovlm.checkpoint import EVERYTHING_ELSE, load_weights, read_config
from picovlm.config import NativeConfig, VQConfig, from_dict
from picovlm.models.gpt import GPT, KVCache
from picovlm.native.constraint import ImageSpans
from picovlm.native.vocab import NativeVocab
from picovlm.text.padding import IGNORE_INDEX
from picovlm.text.tokenizer import Tokenizer
from picovlm.text.tokens import PLACEHOLDERS
from picovlm.vq.model import VQVAE
from picovlm.vq.tokenizer import ImageTokenizer

# the VQ-VAE is its own part (frozen, inherited from the vq stage); the LM and the embeddings are the rest
NATIVE_PARTS = {"vq": "vq.", "lm": EVERYTHING_ELSE}


def native_vocab(tok: Tokenizer, vq: VQVAE) -> NativeVocab:
    """The unified vocabulary of a text tokenizer (which must have the image markers) and a VQ tokenizer."""
    start, end = tok.image_marker_ids
    return NativeVocab(tok.vocab_size, vq.cfg.codebook_size, vq.grid, vq.grid, start, end)


def placeholder_ids(tok: Tokenizer) -> list[int]:
    """The tokenizer's input placeholders (<|image|>, ...): never fed to the native model, never sampled."""
    return [tok.placeholder_id(t) for t in PLACEHOLDERS if t in tok.special_tokens]


class NativeModel(nn.Module):
    def __init__(self, cfg: NativeConfig, vocab: NativeVocab, vq: VQVAE, placeholders: list[int]):
        super().__init__()
        self.cfg = dataclasses.replace(cfg, lm=dataclasses.replace(cfg.lm, vocab_size=vocab.size))
        self.vocab, self.placeholder_ids = vocab, list(placeholders)
        self.vq = vq.eval()
        self.lm = GPT(self.cfg.lm)
        d = self.cfg.lm.n_embd
        self.modality = nn.Parameter(torch.zeros(d)) if cfg.modality_embed else None
        self.rows = nn.Embedding(vocab.rows, d) if cfg.pos2d else None
        self.columns = nn.Embedding(vocab.columns, d) if cfg.pos2d else None
        for table in (self.rows, self.columns):
            if table is not None:
                nn.init.normal_(table.weight, std=0.02)
        self.decode_hook = ImageSpans(vocab)

    @property
    def parts(self) -> dict[str, str]:
        return NATIVE_PARTS

    @property
    def image_tokenizer(self) -> ImageTokenizer:
        return ImageTokenizer(self.vq)

    def train(self, mode: bool = True) -> NativeModel:
        """The VQ-VAE stays in eval mode: in train mode its codebook would move (EMA) on every encode."""
        super().train(mode)
        self.vq.eval()
        return self

    def embed(self, ids: torch.Tensor, span_index: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings plus the modality and 2D embeddings of the code tokens. `span_index` [B, T]:
        each token's index in its image span (-1 outside one); computed from `ids` when not given
        (a decoding step of one token cannot see where its span began: the engine passes it)."""
        x = self.lm.embed(ids)
        if self.modality is None and self.rows is None:
            return x
        index = self.vocab.span_index(ids) if span_index is None else span_index
        code = (index >= 0).unsqueeze(-1).to(x.dtype)
        if self.modality is not None:
            x = x + code * self.modality
        if self.rows is not None:
            cell = index.clamp(min=0)
            x = x + code * (self.rows(cell // self.vocab.columns) + self.columns(cell % self.vocab.columns))
        return x

    def forward(
        self,
        ids: torch.Tensor,
        pixels: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        span_index: torch.Tensor | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Logits [B, T, vocab.size] ([B, 1, ...] with `last_only`, what a prefill needs). `pixels` is
        there for the engine's call and must be None: images come in as code tokens (`NativeProcessor`)."""
        if pixels is not None:
            raise ValueError("a native model reads images as code tokens, not pixels")
        x = self.embed(ids, span_index)
        return self.lm(inputs_embeds=x, key_padding_mask=key_padding_mask, kv_cache=kv_cache, last_only=last_only)


def native_loss(logits: torch.Tensor, labels: torch.Tensor, vocab: NativeVocab, cfg: NativeConfig) -> torch.Tensor:
    """Next-token cross-entropy over the labelled positions, each weighted by its target's modality
    (`image_weight` for codes and <|image_end|>, `text_weight` for the rest), over their number."""
    targets = labels[:, 1:].flatten()
    losses = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets, ignore_index=IGNORE_INDEX, reduction="none")
    image = vocab.is_code(targets) | (targets == vocab.image_end)
    weights = torch.where(image, cfg.image_weight, cfg.text_weight)
    return (losses * weights).sum() / (targets != IGNORE_INDEX).sum().clamp(min=1)


def native_checkpoint_config(model: NativeModel) -> dict[str, Any]:
    """What a native checkpoint's config.json says, for `load_native` to rebuild the model."""
    return {
        "task": "native",
        "model": dataclasses.asdict(model.cfg),
        "vocab": dataclasses.asdict(model.vocab),
        "vq": dataclasses.asdict(model.vq.cfg),
        "placeholder_ids": model.placeholder_ids,
    }


def load_native(path: str | Path) -> tuple[NativeModel, Tokenizer]:
    """A native checkpoint (float32, eval mode) and its text tokenizer."""
    path = Path(path)
    cfg = read_config(path)
    if cfg.get("task") != "native":
        raise ValueError(f"{path}: a {cfg.get('task')!r} checkpoint, not a native model")
    vq = VQVAE(from_dict(VQConfig, cfg["vq"]))
    model = NativeModel(from_dict(NativeConfig, cfg["model"]), NativeVocab(**cfg["vocab"]), vq, cfg["placeholder_ids"])
    load_weights(model, path)
    return model.eval(), Tokenizer.load(path / "tokenizer.json")
