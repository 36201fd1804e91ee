"""From a conversation with images to model inputs: the one place text and pixels meet before the
model does. Used identically by training (with a loss mask) and by generation (a prompt)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from picovlm.models.vlm import expand_image_tokens
from picovlm.text.chat import render_conversation, render_prompt
from picovlm.text.tokenizer import Tokenizer
from picovlm.vision.image import ImageProcessor


@dataclass
class Encoded:
    ids: list[int]
    loss_mask: list[int]
    pixels: torch.Tensor  # [n_images, 3, H, W]


class VLMProcessor:
    def __init__(self, tokenizer: Tokenizer, image_processor: ImageProcessor, tokens_per_image: int, max_len: int):
        self.tokenizer, self.image_processor = tokenizer, image_processor
        self.tokens_per_image, self.max_len = tokens_per_image, max_len

    def _finish(self, ids: list[int], mask: list[int], images: list, pixels: bool = True) -> Encoded:
        ids, mask = expand_image_tokens(ids, mask, len(images), self.tokenizer.image_id, self.tokens_per_image)
        if len(ids) > self.max_len:
            raise ValueError(
                f"input is {len(ids)} tokens ({len(images)} images x {self.tokens_per_image} tokens "
                f"included), longer than the context of {self.max_len}"
            )
        return Encoded(ids, mask, self.image_processor(images) if pixels else torch.empty(0))

    def encode_conversation(self, messages: list[dict], images: list, pixels: bool = True) -> Encoded:
        """Ids with every placeholder expanded, and the loss mask (1 on assistant tokens only).
        `pixels=False` skips preprocessing the images (whose features come from elsewhere): only
        their number is used then, so any stand-ins (their sources) will do."""
        ids, mask = render_conversation(self.tokenizer, messages)
        return self._finish(ids, mask, images, pixels)

    def encode_prompt(self, messages: list[dict], images: list[Image.Image], reserve: int = 0) -> Encoded:
        """A generation prompt; `reserve` tokens of context are kept free for the answer."""
        ids = render_prompt(self.tokenizer, messages)
        enc = self._finish(ids, [0] * len(ids), images)
        if len(enc.ids) + reserve > self.max_len:
            raise ValueError(
                f"prompt is {len(enc.ids)} tokens; with {reserve} new tokens it exceeds the context of {self.max_len}"
            )
        return enc
