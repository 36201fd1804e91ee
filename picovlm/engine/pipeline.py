"""The inference API a notebook, the CLI and the server share: load a checkpoint, ask, stream.

pipe = Pipeline.load("runs/demo/instruct/model")
pipe.ask("scene.png", "What colour is the circle?")
pipe.draw(["a red circle above a blue square"])   # a native model's checkpoint: PIL images
pipe.generate([[{"role": "user", "content": "<|video|>\nWhich way does it move?"}]], [[]], media=[{"video": [clip]}])
for piece in pipe.stream([{"role": "user", "content": "<|image|>\\nDescribe it."}], [image]): ...
for part in pipe.stream_parts(messages, images): ...   # text pieces, and the images a native model draws

Every answer is decoded by the one engine, `DecodeBatch` (engine/batch.py), that the server's
scheduler runs too: same tokens, same text, same stop rules, whichever way an answer is asked for.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import torch
from PIL import Image

from picovlm.checkpoint import read_config
from picovlm.engine.batch import DecodeBatch, Sequence, Step
from picovlm.engine.draw import draw
from picovlm.engine.parts import AnswerParts, Part
from picovlm.engine.quantize import quantize_model
from picovlm.engine.sampling import SamplingParams
from picovlm.models.gpt import GPT
from picovlm.models.processor import Media, VLMProcessor
from picovlm.models.vlm import VLM, load_vlm
from picovlm.native.model import NativeModel, load_native
from picovlm.native.processor import NativeProcessor
from picovlm.text.tokenizer import Tokenizer
from picovlm.text.tokens import IMAGE
from picovlm.vision.image import load_image

Messages = list[dict[str, str]]


def compile_lm(model: VLM | NativeModel) -> None:
    """Compile the model's decode step, or say in one line why it cannot be."""
    if not isinstance(model.lm, GPT):
        raise ValueError("compile: only picovlm's own GPT has a compiled decode step (this LM is from transformers)")
    device = next(model.lm.parameters()).device
    if device.type == "cpu" and not any(shutil.which(cc) for cc in ("g++", "c++", "clang++")):
        raise ValueError("compile on a CPU needs a C++ compiler (g++) for torch.compile's inductor backend")
    model.lm.compile_decode()


class Pipeline:
    def __init__(self, model: VLM | NativeModel, tokenizer: Tokenizer):
        self.model, self.tokenizer = model.eval(), tokenizer
        native = isinstance(model, NativeModel)
        self.processor = NativeProcessor(tokenizer, model) if native else VLMProcessor.for_model(model, tokenizer)

    @classmethod
    def load(
        cls,
        path: str | Path,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        quantize: str | None = None,
        compile_decode: bool = False,
    ) -> Pipeline:
        """An adapter VLM's checkpoint, or a native model's (which also draws: `draw`). `quantize="int8"`:
        the Linear layers of the LM and projector in dynamic int8 (CPU only; see `picovlm.engine.quantize`).
        `compile_decode`: decode steps through torch.compile (see `GPT.compile_decode`)."""
        native = read_config(Path(path)).get("task") == "native"
        model, tokenizer = load_native(path) if native else load_vlm(path)
        model = model.to(device=device, dtype=dtype)
        if quantize and compile_decode:
            # measured (demo shape, one thread): 4.0 ms a step compiled against 2.9 eager; the dynamic int8
            # Linear layers split the compiled graph into pieces
            raise ValueError("quantize int8 and compile together decode slower than int8 alone: choose one")
        if quantize:
            model = quantize_model(model, quantize)
        if compile_decode:
            compile_lm(model)
        return cls(model, tokenizer)

    @property
    def draws(self) -> bool:
        """Whether the model can draw images (a native model)."""
        return isinstance(self.model, NativeModel)

    def draw(
        self, prompts: list[str], params: SamplingParams | None = None, guidance: float = 0.0
    ) -> list[Image.Image]:
        """One image per caption (engine/draw.py); only a native model draws."""
        if not self.draws:
            raise ValueError("this model does not draw images (a native model's checkpoint does)")
        return draw(self.model, self.tokenizer, prompts, params, guidance)

    def steps(
        self,
        batch: list[Messages],
        images: list[list[Image.Image]],
        params: SamplingParams | None = None,
        media: list[Media] | None = None,
    ) -> Iterator[list[Step]]:
        """Decode several conversations together and yield every step: each running row's new token,
        the text now safe to show, and on its last step why it ended (a `Step`, keyed by the row's index
        in `batch`). A row that has ended is absent from later steps. A row whose decoding raised
        raises here (the engine ends that row only, for the server; a caller of the Pipeline asked for
        every answer). `media[i]`: conversation i's videos and audio clips (decoded: `Modality.load`),
        by modality, in text order."""
        params = params or SamplingParams()
        encoded = [
            self.processor.encode_prompt(m, ims, reserve=params.max_tokens, media=md)
            for m, ims, md in zip(batch, images, media or [{}] * len(batch), strict=True)
        ]
        engine = DecodeBatch(self.model, self.tokenizer)
        engine.add([Sequence(row, e.ids, e.pixels, params, media=e.media) for row, e in enumerate(encoded)])
        while len(engine):
            steps = engine.step()
            failed = next((st.error for st in steps if st.error is not None), None)
            if failed is not None:
                raise failed
            yield steps

    def generate(
        self,
        batch: list[Messages],
        images: list[list[Image.Image]],
        params: SamplingParams | None = None,
        media: list[Media] | None = None,
    ) -> list[str]:
        """Answers to several conversations at once (batched decoding), each cut before a stop string."""
        answers = [""] * len(batch)
        for steps in self.steps(batch, images, params, media):
            for step in steps:
                answers[step.key] += step.text
        return answers

    def stream(
        self,
        messages: Messages,
        images: list[Image.Image],
        params: SamplingParams | None = None,
        media: Media | None = None,
    ) -> Iterator[str]:
        """Text pieces of one answer as they are decoded; it ends at a stop id (<|end|>, or the LM's own
        end of turn) or before a stop string, no part of which is ever yielded."""
        for (step,) in self.steps([messages], [images], params, [media or {}]):
            if step.text:
                yield step.text

    def stream_parts(
        self,
        messages: Messages,
        images: list[Image.Image],
        params: SamplingParams | None = None,
        media: Media | None = None,
    ) -> Iterator[Part]:
        """`stream`, with each image a native model draws in its answer (engine/parts.py) as a PIL
        image where it was drawn; an adapter VLM's parts are its text pieces."""
        parts = AnswerParts(self.model)
        for (step,) in self.steps([messages], [images], params, [media or {}]):
            yield from parts.push(step)

    def ask(self, image: str | Path | Image.Image, question: str, params: SamplingParams | None = None) -> str:
        """One question about one image."""
        im = image if isinstance(image, Image.Image) else load_image(image)
        return self.generate([[{"role": "user", "content": f"{IMAGE}\n{question}"}]], [[im]], params)[0]
