"""From a conversation with images (videos, audio) to model inputs: the one place text and inputs meet
before the model does. Used identically by training (with a loss mask) and by generation (a prompt)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from picovlm.models.modalities import MEDIA, MODALITIES, Input, Slots, expand_placeholders
from picovlm.models.vlm import VLM
from picovlm.text.chat import render_conversation, render_prompt
from picovlm.text.tokenizer import Tokenizer
from picovlm.vision.image import ImageProcessor

Media = dict[str, list[Any]]  # modality name -> its decoded items (`Modality.load`'s), in text order


@dataclass
class Encoded:
    ids: list[int]
    loss_mask: list[int]
    pixels: torch.Tensor | None  # [n_images, 3, H, W]; None from `encode_conversation_ids`
    media: dict[str, torch.Tensor] = field(default_factory=dict)  # the other modalities' batch tensors


class VLMProcessor:
    def __init__(
        self,
        tokenizer: Tokenizer,
        image_processor: ImageProcessor,
        tokens_per_image: int,
        max_len: int,
        image_markers: bool = False,
        media: dict[str, Input] | None = None,
    ):
        """`image_markers`: each image's tokens between <|image_start|> and <|image_end|> (the tokenizer
        must have them: one made before they existed raises here, not at the first sample). `media`:
        how the model takes each other modality it reads (`VLM.inputs`)."""
        self.tokenizer, self.image_processor = tokenizer, image_processor
        self.tokens_per_image, self.max_len = tokens_per_image, max_len
        self.markers = tokenizer.image_marker_ids if image_markers else None
        self.media = media or {}
        # placeholders of modalities the model does not read: refused by name, never passed on as text
        self.unread = {
            tokenizer.placeholder_id(MODALITIES[name].token): name
            for name in MEDIA
            if name not in self.media and MODALITIES[name].token in tokenizer.special_tokens
        }

    @classmethod
    def for_model(cls, model: VLM, tokenizer: Tokenizer) -> VLMProcessor:
        """The processor that prepares inputs for `model`: its tower's preprocessing, its number of
        tokens per image (video, audio clip), its context and its image markers."""
        cfg, media = model.cfg, {k: v for k, v in model.inputs.items() if k != "image"}
        tokens = model.tokens_per_image
        return cls(tokenizer, model.tower.processor, tokens, cfg.lm.max_seq_len, cfg.image_markers, media)

    def tokens_per(self, name: str) -> int:
        """How many ids one placeholder of modality `name` becomes: its tokens and the two markers."""
        tokens = self.tokens_per_image if name == "image" else self.media[name].num_tokens
        return tokens + (2 if self.markers else 0)

    @property
    def tokens_per_placeholder(self) -> int:
        """How many ids one `<|image|>` placeholder becomes: the image's tokens and its two markers."""
        return self.tokens_per("image")

    def _expand(
        self, ids: list[int], mask: list[int], n_images: int, counts: dict[str, int]
    ) -> tuple[list[int], list[int]]:
        stray = next((name for i, name in self.unread.items() if i in ids), None)
        name = stray or next((n for n, count in counts.items() if count and n not in self.media), None)
        if name:
            raise ValueError(
                f"this model reads no {MODALITIES[name].plural}; it reads: {', '.join(['image', *self.media])}"
            )
        slots = [Slots(self.tokenizer.image_id, "image", n_images, self.tokens_per_image)]
        slots += [Slots(m.token_id, name, counts.get(name, 0), m.num_tokens) for name, m in self.media.items()]
        ids, mask = expand_placeholders(ids, mask, slots, self.markers)
        if len(ids) > self.max_len:
            given = ", ".join(
                f"{s.count} {MODALITIES[s.name].plural} x {self.tokens_per(s.name)}" for s in slots if s.count
            )
            raise ValueError(
                f"input is {len(ids)} tokens ({given} tokens included), longer than the context of {self.max_len}"
            )
        return ids, mask

    def prepare(self, media: Media) -> dict[str, torch.Tensor]:
        """Each modality's decoded items -> its batch tensor (what `VLM.forward(**media)` reads)."""
        unknown = next((name for name, items in media.items() if items and name not in self.media), None)
        if unknown:
            raise ValueError(f"this model reads no {unknown}")
        return {name: self.media[name].prepare(items) for name, items in media.items() if items}

    def encode_conversation(
        self, messages: list[dict], images: list[Image.Image], media: Media | None = None
    ) -> Encoded:
        """Ids with every placeholder expanded, the loss mask (1 on assistant tokens only), the images'
        pixels and the other inputs' tensors."""
        media = media or {}
        enc = self.encode_conversation_ids(messages, len(images), {k: len(v) for k, v in media.items()})
        return Encoded(enc.ids, enc.loss_mask, self.image_processor(images), self.prepare(media))

    def encode_conversation_ids(
        self, messages: list[dict], n_images: int, counts: dict[str, int] | None = None
    ) -> Encoded:
        """The ids and loss mask of `encode_conversation`, without pixels: for a model that gets its
        images' features (or any input's tensor) from elsewhere (a frozen tower's cached output, a cache
        of decoded clips), where only their number (`counts`: modality -> items) matters."""
        ids, mask = self._expand(*render_conversation(self.tokenizer, messages), n_images, counts or {})
        return Encoded(ids, mask, None)

    def encode_prompt(
        self, messages: list[dict], images: list[Image.Image], reserve: int = 0, media: Media | None = None
    ) -> Encoded:
        """A generation prompt; `reserve` tokens of context are kept free for the answer."""
        media = media or {}
        enc = self.encode_prompt_ids(messages, len(images), reserve, {k: len(v) for k, v in media.items()})
        return Encoded(enc.ids, enc.loss_mask, self.image_processor(images), self.prepare(media))

    def encode_prompt_ids(
        self, messages: list[dict], n_images: int, reserve: int = 0, counts: dict[str, int] | None = None
    ) -> Encoded:
        """The ids of `encode_prompt`, without pixels: for a caller that preprocesses each image as soon
        as it is decoded (the server: one full-size image in memory at a time); `counts`: the other
        inputs, by modality."""
        prompt = render_prompt(self.tokenizer, messages)
        ids, mask = self._expand(prompt, [0] * len(prompt), n_images, counts or {})
        if len(ids) + reserve > self.max_len:
            raise ValueError(
                f"prompt is {len(ids)} tokens; with {reserve} new tokens it exceeds the context of {self.max_len}"
            )
        return Encoded(ids, mask, None)
