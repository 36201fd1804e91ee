"""From a conversation with images to model inputs: the one place text and pixels meet before the
model does. Used identically by training (with a loss mask) and by generation (a prompt)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from picovlm.models.vlm import VLM, expand_image_tokens
from picovlm.text.chat import render_conversation, render_prompt
from picovlm.text.tokenizer import Tokenizer
from picovlm.vision.image import ImageProcessor


@dataclass
class Encoded:
    ids: list[int]
    loss_mask: list[int]
    pixels: torch.Tensor | None  # [n_images, 3, H, W]; None from `encode_conversation_ids`


class VLMProcessor:
    def __init__(
        self,
        tokenizer: Tokenizer,
        image_processor: ImageProcessor,
        tokens_per_image: int,
        max_len: int,
        image_markers: bool = False,
    ):
        """`image_markers`: each image's tokens between <|image_start|> and <|image_end|> (the tokenizer
        must have them: one made before they existed raises here, not at the first sample)."""
        self.tokenizer, self.image_processor = tokenizer, image_processor
        self.tokens_per_image, self.max_len = tokens_per_image, max_len
        self.markers = tokenizer.image_marker_ids if image_markers else None

    @classmethod
    def for_model(cls, model: VLM, tokenizer: Tokenizer) -> VLMProcessor:
        """The processor that prepares inputs for `model`: its tower's preprocessing, its number of
        tokens per image, its context and its image markers."""
        cfg = model.cfg
        return cls(tokenizer, model.tower.processor, model.tokens_per_image, cfg.lm.max_seq_len, cfg.image_markers)

    @property
    def tokens_per_placeholder(self) -> int:
        """How many ids one `<|image|>` placeholder becomes: the image's tokens and its two markers."""
        return self.tokens_per_image + (2 if self.markers else 0)

    def _expand(self, ids: list[int], mask: list[int], n_images: int) -> tuple[list[int], list[int]]:
        tok = self.tokenizer
        ids, mask = expand_image_tokens(ids, mask, n_images, tok.image_id, self.tokens_per_image, self.markers)
        if len(ids) > self.max_len:
            raise ValueError(
                f"input is {len(ids)} tokens ({n_images} images x {self.tokens_per_placeholder} tokens "
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
