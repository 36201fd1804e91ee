"""An answer as parts: its text pieces and the images a native model draws in it, in answer order.

A native model may write an image span (<|image_start|>, codes, <|image_end|>) anywhere in its reply;
the span's tokens are not text (the engine gives them no text), so they are read here from the steps'
tokens, and each span becomes one image at its <|image_end|>, decoded by the model's frozen VQ
decoder. The chat session, `Pipeline.stream_parts` and the server's scheduler all read answers
through `AnswerParts`, so they place an image at the same point of the text. (Text that a stop string
held back when a span began comes after the image: a stop string's possible start is never shown early.)
"""

from __future__ import annotations

from PIL import Image

from picovlm.engine.batch import Step
from picovlm.native.model import NativeModel

Part = str | Image.Image


class SpanReader:
    """Follows one answer's tokens and gives the code tokens of each image span when it closes."""

    def __init__(self, model: NativeModel):
        self.vocab = model.vocab
        self.codes: list[int] | None = None  # the open span's code tokens; None outside a span

    def push(self, token: int) -> list[int] | None:
        """Add one token; the span's code tokens if `token` ends one, else None."""
        v = self.vocab
        if token == v.image_start:
            self.codes = []
        elif self.codes is not None and token == v.image_end:
            codes, self.codes = self.codes, None
            return codes
        elif self.codes is not None and v.text_vocab <= token < v.size:
            self.codes.append(token)
        return None


class AnswerParts:
    """One answer's steps -> its parts. An adapter VLM draws nothing: its parts are its text pieces."""

    def __init__(self, model: object):
        self.model = model if isinstance(model, NativeModel) else None
        self.reader = SpanReader(self.model) if self.model is not None else None

    def push(self, step: Step) -> list[Part]:
        """The parts `step` completes: its text, then the image it ends, if any."""
        parts: list[Part] = [step.text] if step.text else []
        if self.reader is not None and step.token is not None:
            codes = self.reader.push(step.token)
            if codes is not None:
                parts.append(self.decode(codes))
        return parts

    def decode(self, codes: list[int]) -> Image.Image:
        """A whole span's code tokens -> the image (a span cut short by max_tokens never gets here)."""
        model = self.model
        if len(codes) != model.vocab.tokens_per_image:
            raise RuntimeError(f"an image span must hold {model.vocab.tokens_per_image} codes, got {len(codes)}")
        return model.image_tokenizer.decode(model.vocab.codes_of(codes))[0]
