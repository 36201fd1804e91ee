"""Helpers for tests of what a native model draws: a model made to draw at the start of every answer."""

from __future__ import annotations

import torch

from picovlm.engine.pipeline import Pipeline
from picovlm.native.constraint import ImageSpans


class DrawsFirst(ImageSpans):
    """The image-span grammar, and right after <|assistant|> only <|image_start|>: every answer opens
    with a drawing, as a native model trained on more than seconds of data does when asked to draw
    (the tiny test model rarely opens a span of its own)."""

    def __init__(self, spans: ImageSpans, assistant_id: int):
        super().__init__(spans.vocab)
        self.assistant_id = assistant_id

    def constrain(self, histories: list, logits: torch.Tensor) -> torch.Tensor:
        logits = super().constrain(histories, logits)
        for row, tokens in enumerate(histories):
            if tokens[-1] == self.assistant_id:
                start = logits[row, self.vocab.image_start].clone()
                logits[row] = float("-inf")
                logits[row, self.vocab.image_start] = start if start.isfinite() else 0.0
        return logits


def drawing_pipeline(model_dir) -> Pipeline:
    """A native checkpoint's pipeline whose model opens every answer with an image span (set before any
    `DecodeBatch` is made: each reads the model's hook when it is made)."""
    pipe = Pipeline.load(model_dir)
    pipe.model.decode_hook = DrawsFirst(pipe.model.decode_hook, pipe.tokenizer.assistant_id)
    return pipe
