"""The native model's one vocabulary: the text tokenizer's ids, then the image codes after them.

    id:   0 ............ text_vocab-1 | text_vocab ........ text_vocab+codebook_size-1
          text BPE and special tokens   image code 0 ...... image code codebook_size-1

An image in a sequence is <|image_start|>, exactly `tokens_per_image` code tokens (its grid's rows one
after another), <|image_end|>; both markers are special tokens of the text tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class NativeVocab:
    text_vocab: int  # the text tokenizer's size: the first code's id
    codebook_size: int
    rows: int
    columns: int
    image_start: int
    image_end: int

    @property
    def size(self) -> int:
        return self.text_vocab + self.codebook_size

    @property
    def tokens_per_image(self) -> int:
        return self.rows * self.columns

    def code_tokens(self, codes: torch.Tensor | list[int]) -> list[int]:
        """An image's code ids -> its tokens (offset after the text)."""
        return [self.text_vocab + int(c) for c in codes]

    def span(self, codes: torch.Tensor | list[int]) -> list[int]:
        """The whole image span of one image's codes: start marker, code tokens, end marker."""
        return [self.image_start, *self.code_tokens(codes), self.image_end]

    def codes_of(self, tokens: torch.Tensor | list[int]) -> torch.Tensor:
        """Code tokens -> code ids; a token that is not an image code is a one-line error."""
        t = torch.as_tensor(tokens, dtype=torch.long)
        if ((t < self.text_vocab) | (t >= self.size)).any():
            raise ValueError(f"not image code tokens: ids must be in [{self.text_vocab}, {self.size})")
        return t - self.text_vocab

    def is_code(self, ids: torch.Tensor) -> torch.Tensor:
        return ids >= self.text_vocab

    def span_index(self, ids: torch.Tensor) -> torch.Tensor:
        """[B, T] -> each code token's index in its image span (row-major), -1 for every other token.
        The count of codes restarts at each <|image_start|>; `ids` must begin outside a span (or at its
        start), as every prompt and training sequence does."""
        code = self.is_code(ids).long()
        seen = code.cumsum(-1)  # codes up to and including each token
        at_start = torch.where(ids == self.image_start, seen, torch.zeros_like(seen))
        before_span = at_start.cummax(-1).values  # codes seen before the current span began
        return torch.where(code.bool(), seen - before_span - 1, torch.full_like(seen, -1))
