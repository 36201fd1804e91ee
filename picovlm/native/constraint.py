"""What the sampler may pick next in a native model's sequence: the grammar of image spans.

    outside a span        text tokens and <|image_start|>; no image code, no <|image_end|>
    after <|image_start|> image codes only, until the grid is full (tokens_per_image of them)
    grid full             <|image_end|>, forced

The engine (engine/batch.py) applies it to every row's logits before sampling, from the row's tokens
so far (prompt and generated), so one decoder serves text answers and drawings alike. It also gives
the span index of each token fed back, which the model's 2D embeddings need.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from picovlm.native.vocab import NativeVocab


class ImageSpans:
    def __init__(self, vocab: NativeVocab):
        self.vocab = vocab

    def codes_so_far(self, tokens: Sequence[int]) -> int | None:
        """How many codes the open image span of `tokens` has (0 right after <|image_start|>), or None
        when the tokens end outside a span. Only codes sit inside a span, so the walk back is short."""
        n = 0
        for t in reversed(tokens):
            if t == self.vocab.image_start:
                return n
            if t < self.vocab.text_vocab:
                return None
            n += 1
        return None

    def constrain(self, histories: list[Sequence[int]], logits: torch.Tensor) -> torch.Tensor:
        """`logits` [B, vocab] with what row i may not pick next set to -inf (in place)."""
        v, inf = self.vocab, float("-inf")
        for row, tokens in enumerate(histories):
            n = self.codes_so_far(tokens)
            if n is None:
                logits[row, v.text_vocab :] = inf
                logits[row, v.image_end] = inf
            elif n < v.tokens_per_image:
                logits[row, : v.text_vocab] = inf
            else:
                end = logits[row, v.image_end].clone()
                logits[row] = inf
                logits[row, v.image_end] = torch.where(end.isfinite(), end, torch.zeros_like(end))
        return logits

    def span_index(self, histories: list[Sequence[int]]) -> torch.Tensor:
        """[B, 1]: the index in its image span of each row's last token (-1 if it is not a code)."""
        index = []
        for tokens in histories:
            n = self.codes_so_far(tokens) if tokens and tokens[-1] >= self.vocab.text_vocab else None
            index.append(-1 if n is None else n - 1)
        return torch.tensor(index, dtype=torch.long)[:, None]
