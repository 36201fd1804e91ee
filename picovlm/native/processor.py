"""From conversations and images to the native model's token ids: each <|image|> placeholder becomes
the image's span (<|image_start|>, its codes, <|image_end|>), and a drawing is a prompt followed by
the span the model is to write. Used by training (with a loss mask) and by generation (a prompt).

    read:  <|bos|><|user|><|image_start|> c c ... c <|image_end|>\\nWhat colour ...?<|end|><|assistant|>red<|end|>
    draw:  <|bos|><|user|>a red circle at the top<|end|><|assistant|><|image_start|> c c ... c <|image_end|><|end|>
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from picovlm.models.processor import Encoded
from picovlm.native.model import NativeModel
from picovlm.text.chat import render_conversation, render_prompt
from picovlm.text.tokenizer import Tokenizer


class NativeProcessor:
    def __init__(self, tokenizer: Tokenizer, model: NativeModel):
        self.tokenizer, self.vocab = tokenizer, model.vocab
        self.image_tokenizer = model.image_tokenizer
        self.max_len = model.cfg.lm.max_seq_len
        self.other_inputs = set(model.placeholder_ids) - {tokenizer.image_id}
        self.media: dict = {}  # no other modality: images only (the server asks)

    @property
    def tokens_per_placeholder(self) -> int:
        """How many ids one <|image|> becomes: its span (the codes and the two markers)."""
        return self.vocab.tokens_per_image + 2

    def encode_images(self, images: Sequence[Image.Image]) -> list[torch.Tensor]:
        """Each image's code ids (the frozen VQ tokenizer's encoder)."""
        return list(self.image_tokenizer.encode(images)) if images else []

    def expand(self, ids: list[int], mask: list[int], codes: list[torch.Tensor]) -> tuple[list[int], list[int]]:
        """Each <|image|> in `ids` replaced by the span of the next image's `codes` (mask 0: an input)."""
        image_id = self.tokenizer.image_id
        if sum(i == image_id for i in ids) != len(codes) or self.other_inputs & set(ids):
            placeholders = ids.count(image_id)
            raise ValueError(f"{len(codes)} images for {placeholders} <|image|> placeholders (and no other inputs)")
        out_ids, out_mask, next_image = [], [], iter(codes)
        for i, m in zip(ids, mask, strict=True):
            span = self.vocab.span(next(next_image)) if i == image_id else [i]
            out_ids += span
            out_mask += [m] * len(span) if i != image_id else [0] * len(span)
        return out_ids, out_mask

    def encode_conversation(self, messages: list[dict], codes: list[torch.Tensor]) -> tuple[list[int], list[int]]:
        """Ids and loss mask (1 on the assistant's text) of a conversation about images given as codes."""
        return self.fit(*self.expand(*render_conversation(self.tokenizer, messages), codes))

    def draw_prompt(self, caption: str) -> list[int]:
        """The prompt of a drawing: the caption as the user's turn, then the assistant's <|image_start|>.
        An empty caption is the unconditional prompt of classifier-free guidance."""
        return render_prompt(self.tokenizer, [{"role": "user", "content": caption}]) + [self.vocab.image_start]

    def encode_drawing(self, caption: str, codes: torch.Tensor) -> tuple[list[int], list[int]]:
        """Ids and loss mask (1 on the codes, <|image_end|> and <|end|>) of caption -> image."""
        prompt = self.draw_prompt(caption)
        answer = [*self.vocab.code_tokens(codes), self.vocab.image_end, self.tokenizer.end_id]
        return self.fit(prompt + answer, [0] * len(prompt) + [1] * len(answer))

    def fit(self, ids: list[int], mask: list[int]) -> tuple[list[int], list[int]]:
        if len(ids) > self.max_len:
            raise ValueError(f"input is {len(ids)} tokens, longer than the context of {self.max_len}")
        return ids, mask

    def encode_prompt(
        self, messages: list[dict], images: list[Image.Image], reserve: int = 0, media: dict | None = None
    ) -> Encoded:
        """A generation prompt (what `Pipeline` asks of a processor); `reserve` tokens kept for the answer."""
        if media and any(media.values()):
            raise ValueError("a native model reads images only")
        return self.encode_prompt_codes(messages, self.encode_images(images), reserve)

    def encode_prompt_codes(self, messages: list[dict], codes: list[torch.Tensor], reserve: int = 0) -> Encoded:
        """`encode_prompt` of images given as their codes (the server encodes each image as soon as it
        is decoded). <|image|> may be in answers too: where the model drew an image."""
        prompt = render_prompt(self.tokenizer, messages, drawn_images=True)
        ids, mask = self.expand(prompt, [0] * len(prompt), codes)
        if len(ids) + reserve > self.max_len:
            what = f"prompt is {len(ids)} tokens; with {reserve} new tokens"
            raise ValueError(f"{what} it exceeds the context of {self.max_len}")
        return Encoded(ids, mask, None)
