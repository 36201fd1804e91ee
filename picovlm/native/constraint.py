"""What the sampler may pick next in a native model's sequence: the grammar of image spans.

    outside a span        text tokens and <|image_start|>; no image code, no <|image_end|>
    after <|image_start|> image codes only, until the grid is full (tokens_per_image of them)
    grid full             <|image_end|>, forced

The engine (engine/batch.py) applies it to every row's logits before sampling, from the row's tokens
so far (prompt and generated), so one decoder serves text answers and drawings alike. It also gives
the span index of each token fed back, which the model's 2D embeddings need.

The three states' banned ids are boolean masks built once: a step costs one `masked_fill_` for all
rows, not a Python loop of slice writes per row (drawing is one step per code, so this runs often).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from picovlm.native.vocab import NativeVocab

OUTSIDE, CODES, FULL = 0, 1, 2  # the row indices of `ImageSpans.banned`


def banned_masks(vocab: NativeVocab) -> torch.Tensor:
    """bool [3, vocab.size]: True where a row in state OUTSIDE, CODES or FULL may not pick."""
    banned = torch.zeros(3, vocab.size, dtype=torch.bool)
    banned[OUTSIDE, vocab.text_vocab :] = True
    banned[OUTSIDE, vocab.image_end] = True
    banned[CODES, : vocab.text_vocab] = True
    banned[FULL] = True
    banned[FULL, vocab.image_end] = False
    return banned


class ImageSpans:
    def __init__(self, vocab: NativeVocab):
        self.vocab = vocab
        self.banned = banned_masks(vocab)

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

    def state(self, tokens: Sequence[int]) -> int:
        """OUTSIDE, CODES (the grid not yet full) or FULL: which of `banned`'s rows applies next."""
        n = self.codes_so_far(tokens)
        return OUTSIDE if n is None else CODES if n < self.vocab.tokens_per_image else FULL

    def constrain(self, histories: list[Sequence[int]], logits: torch.Tensor) -> torch.Tensor:
        """`logits` [B, vocab] with what row i may not pick next set to -inf (in place)."""
        states = [self.state(tokens) for tokens in histories]
        if self.banned.device != logits.device:
            self.banned = self.banned.to(logits.device)
        # one state for every row (a drawing, guided twins) broadcasts one mask row, no gather
        banned = self.banned[states[0]] if len(set(states)) == 1 else self.banned[states]
        logits.masked_fill_(banned, float("-inf"))
        for row in (r for r, s in enumerate(states) if s == FULL):  # once an image: <|image_end|> forced
            end = logits[row, self.vocab.image_end]
            if not end.isfinite():  # banned by an earlier hook: still the only choice
                logits[row, self.vocab.image_end] = 0.0
        return logits

    def span_index(self, histories: list[Sequence[int]]) -> torch.Tensor:
        """[B, 1]: the index in its image span of each row's last token (-1 if it is not a code)."""
        index = []
        for tokens in histories:
            n = self.codes_so_far(tokens) if tokens and tokens[-1] >= self.vocab.text_vocab else None
            index.append(-1 if n is None else n - 1)
        return torch.tensor(index, dtype=torch.long)[:, None]
