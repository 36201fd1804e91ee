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
    pixels: torch.Tensor | None  # [n_images, 3, H, W]; None from `encode_conversation_ids`


class VLMProcessor:
    def __init__(self, tokenizer: Tokenizer, image_processor: ImageProcessor, tokens_per_image: int, max_len: int):
        self.tokenizer, self.image_processor = tokenizer, image_processor
        self.tokens_per_image, self.max_len = tokens_per_image, max_len

    def _expand(self, ids: list[int], mask: list[int], n_images: int) -> tuple[list[int], list[int]]:
        ids, mask = expand_image_tokens(ids, mask, n_images, self.tokenizer.image_id, self.tokens_per_image)
        if len(ids) > self.max_len:
            raise ValueError(
                f"input is {len(ids)} tokens ({n_images} images x {self.tokens_per_image} tokens "
                f"included), longer than the context of {self.max_len}"
            )
        return ids, mask

    def encode_conversation(self, messages: list[dict], images: list[Image.Image]) -> Encoded:
        """Ids with every placeholder expanded, the loss mask (1 on assistant tokens only) and the
        images' pixels."""
        enc = self.encode_conversation_ids(messages, len(images))
        return Encoded(enc.ids, enc.loss_mask, self.image_processor(images))

    def encode_conversation_ids(self, messages: list[dict], n_images: int) -> Encoded:
        """The ids and loss mask of `encode_conversation`, without pixels: for a model that gets its
        images' features from elsewhere (a frozen tower's cached output), where only their number
        matters, so no image needs decoding."""
        ids, mask = self._expand(*render_conversation(self.tokenizer, messages), n_images)
        return Encoded(ids, mask, None)

    def encode_prompt(self, messages: list[dict], images: list[Image.Image], reserve: int = 0) -> Encoded:
        """A generation prompt; `reserve` tokens of context are kept free for the answer."""
        enc = self.encode_prompt_ids(messages, len(images), reserve)
        return Encoded(enc.ids, enc.loss_mask, self.image_processor(images))

    def encode_prompt_ids(self, messages: list[dict], n_images: int, reserve: int = 0) -> Encoded:
        """The ids of `encode_prompt`, without pixels: for a caller that preprocesses each image as soon
        as it is decoded (the server: one full-size image in memory at a time)."""
        prompt = render_prompt(self.tokenizer, messages)
        ids, mask = self._expand(prompt, [0] * len(prompt), n_images)
        if len(ids) + reserve > self.max_len:
            raise ValueError(
                f"prompt is {len(ids)} tokens; with {reserve} new tokens it exceeds the context of {self.max_len}"
            )
        return Encoded(ids, mask, None)
