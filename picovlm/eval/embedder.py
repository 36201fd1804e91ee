"""A CLIP checkpoint (what the recipe's "clip" stage writes, runs/<x>/clip/model) as an encoder of
images and texts into one space, for retrieval and zero-shot classification."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from picovlm.checkpoint import load_weights, read_config
from picovlm.config import GPTConfig, ViTConfig, from_dict
from picovlm.data.batches import pad_right
from picovlm.models.clip import CLIPModel
from picovlm.text.tokenizer import Tokenizer


class ClipEmbedder:
    def __init__(self, model: CLIPModel, tokenizer: Tokenizer, max_len: int):
        self.model, self.tokenizer, self.max_len = model.eval(), tokenizer, max_len

    @classmethod
    def load(cls, path: str | Path) -> ClipEmbedder:
        path = Path(path)
        cfg = read_config(path)
        if cfg.get("task") != "clip":
            raise ValueError(f"{path}: a {cfg.get('task')!r} checkpoint, not a CLIP model (use runs/<x>/clip/model)")
        text = from_dict(GPTConfig, cfg["text"])
        model = CLIPModel(from_dict(ViTConfig, cfg["vit"]), text, cfg["embed_dim"])
        load_weights(model, path)
        return cls(model, Tokenizer.load(path / "tokenizer.json"), text.max_seq_len)

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
