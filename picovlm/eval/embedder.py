"""A CLIP checkpoint (what the recipe's "clip" stage writes, runs/<x>/clip/model) as an encoder of
images and texts into one space, for retrieval and zero-shot classification."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from picovlm.models.clip import Captions, CLIPModel, load_clip


class ClipEmbedder:
    def __init__(self, model: CLIPModel, captions: Captions):
        self.model, self.captions = model.eval(), captions

    @classmethod
    def load(cls, path: str | Path) -> ClipEmbedder:
        model, tokenizer, _ = load_clip(path)
        return cls(model, model.captions(tokenizer))

    @torch.inference_mode()
    def encode_images(self, images: list[Image.Image]) -> torch.Tensor:
        """[N, D] unit vectors."""
        return self.model.encode_image(self.model.tower.processor(images))

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """[N, D] unit vectors; each text is tokenized as in training (`CLIPModel.captions`: picovlm's BPE
        ids then <|end|>, or an HF text encoder's own tokenizer)."""
        return self.model.encode_text(*self.captions(texts))
