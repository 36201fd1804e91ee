"""The inference API a notebook, the CLI and the server share: load a checkpoint, ask, stream.

pipe = Pipeline.load("runs/demo/instruct/model")
pipe.ask("scene.png", "What colour is the circle?")
for piece in pipe.stream([{"role": "user", "content": "<|image|>\\nDescribe it."}], [image]): ...
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from PIL import Image

from picovlm.engine.generate import generate_tokens
from picovlm.engine.sampling import SamplingParams
from picovlm.models.processor import VLMProcessor
from picovlm.models.vlm import VLM, load_vlm
from picovlm.text.stream import StreamDecoder
from picovlm.text.tokenizer import Tokenizer
from picovlm.text.tokens import IMAGE
from picovlm.vision.image import load_image

Messages = list[dict[str, str]]


class Pipeline:
    def __init__(self, model: VLM, tokenizer: Tokenizer):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.processor = VLMProcessor(
            tokenizer, model.tower.processor, model.tokens_per_image, model.cfg.lm.max_seq_len
        )

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Pipeline:
        model, tokenizer = load_vlm(path)
        return cls(model.to(device=device, dtype=dtype), tokenizer)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _stream_ids(self, batch: list[Messages], images: list[list[Image.Image]], params: SamplingParams):
        encoded = [
            self.processor.encode_prompt(m, ims, reserve=params.max_tokens)
            for m, ims in zip(batch, images, strict=True)
        ]
        pixels = torch.cat([e.pixels for e in encoded]).to(self.device, next(self.model.parameters()).dtype)
        yield from generate_tokens(
            self.model, [e.ids for e in encoded], pixels, params, self.tokenizer.stop_ids, self.tokenizer.pad_id
        )

    def generate(
        self, batch: list[Messages], images: list[list[Image.Image]], params: SamplingParams | None = None
    ) -> list[str]:
        """Answers to several conversations at once (batched decoding), each cut at a stop string."""
        params = params or SamplingParams()
        answers: list[list[int]] = [[] for _ in batch]
        for step in self._stream_ids(batch, images, params):
            for row, token in enumerate(step):
                if token is not None and token not in self.tokenizer.stop_ids:
                    answers[row].append(token)
        texts = [self.tokenizer.decode(ids) for ids in answers]
        return [t[: _first_stop(t, params.stop)] for t in texts]

    def stream(
        self, messages: Messages, images: list[Image.Image], params: SamplingParams | None = None
    ) -> Iterator[str]:
        """Text pieces of one answer as they are decoded; stops at a stop id (<|end|>, or the LM's own
        end of turn) or a stop string."""
        params = params or SamplingParams()
        decoder, text = StreamDecoder(self.tokenizer), ""
        for (token,) in self._stream_ids([messages], [images], params):
            if token is None or token in self.tokenizer.stop_ids:
                break
            piece = decoder.push(token)
            hit = _first_stop(text + piece, params.stop)
            if hit is not None:
                if hit > len(text):
                    yield (text + piece)[len(text) : hit]
                return
            text += piece
            if piece:
                yield piece
        tail = decoder.flush()
        if tail:
            yield tail

    def ask(self, image: str | Path | Image.Image, question: str, params: SamplingParams | None = None) -> str:
        """One question about one image."""
        im = image if isinstance(image, Image.Image) else load_image(image)
        return self.generate([[{"role": "user", "content": f"{IMAGE}\n{question}"}]], [[im]], params)[0]


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    """Where the earliest stop string starts, or None (so `text[:None]` keeps it all)."""
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(hits) if hits else None
