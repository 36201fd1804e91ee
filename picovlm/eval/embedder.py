"""A CLIP checkpoint (what the recipe's "clip" stage writes, runs/<x>/clip/model) as an encoder of
images and texts into one space, for retrieval and zero-shot classification."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from picovlm.data.batches import pad_right
from picovlm.models.clip import CLIPModel, load_clip
from picovlm.text.tokenizer import Tokenizer


class ClipEmbedder:
    def __init__(self, model: CLIPModel, tokenizer: Tokenizer, max_len: int):
        self.model, self.tokenizer, self.max_len = model.eval(), tokenizer, max_len

    @classmethod
    def load(cls, path: str | Path) -> ClipEmbedder:
        model, tokenizer, _ = load_clip(path)
        return cls(model, tokenizer, model.text.cfg.max_seq_len)

    @torch.inference_mode()
    def encode_images(self, images: list[Image.Image]) -> torch.Tensor:
        """[N, D] unit vectors."""
        return self.model.encode_image(self.model.tower.processor(images))

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """[N, D] unit vectors; each text is encoded as in training (ids, then <|end|>)."""
        rows = [self.tokenizer.encode(t)[: self.max_len - 1] + [self.tokenizer.end_id] for t in texts]
        ids = pad_right(rows, self.tokenizer.pad_id)
        return self.model.encode_text(ids, torch.tensor([len(r) for r in rows]))
