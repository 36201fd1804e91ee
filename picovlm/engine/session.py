"""A conversation in progress, for a REPL (`picovlm chat`) or a notebook.

The model has no memory between calls: every turn sends the whole history, messages and the images
they refer to. The session keeps that history, holds images attached for the next message, and
saves a conversation as a LLaVA `.json` file, so a chat can be read back with
`picovlm.data.formats.load_samples` (and used as data, or to replay it).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from picovlm.data.formats import Sample, write_llava_json
from picovlm.engine.pipeline import Pipeline
from picovlm.engine.sampling import SamplingParams
from picovlm.text.tokens import IMAGE
from picovlm.vision.image import load_image


class ChatSession:
    def __init__(self, pipe: Pipeline, params: SamplingParams | None = None):
        self.pipe, self.params = pipe, params or SamplingParams()
        self.reset()

    def reset(self) -> None:
        self.messages: list[dict[str, str]] = []
        self.images: list[Image.Image] = []  # the images the messages refer to, in order
        self.paths: list[Path] = []  # where they came from (for save)
        self.pending: list[tuple[Path, Image.Image]] = []  # attached, not yet sent with a message

    def attach(self, path: str | Path) -> int:
        """Add an image to the next message (raises ImageError); returns the images in the conversation."""
        path = Path(path)
        self.pending.append((path, load_image(path)))
        return len(self.images) + len(self.pending)

    def send(self, text: str) -> Iterator[str]:
        """Stream the answer to `text` (with the pending images); the turn joins the history once the
        answer is complete, so a failed turn (e.g. the context is full) leaves the history as it was."""
        content = f"{IMAGE * len(self.pending)}\n{text}" if self.pending else text
        turn = [*self.messages, {"role": "user", "content": content}]
        images = self.images + [im for _, im in self.pending]
        pieces = []
        for piece in self.pipe.stream(turn, images, self.params):
            pieces.append(piece)
            yield piece
        self.messages = [*turn, {"role": "assistant", "content": "".join(pieces)}]
        self.images, self.paths = images, self.paths + [p for p, _ in self.pending]
        self.pending = []

    def save(self, path: str | Path) -> Path:
        """Write the conversation so far as a one-record LLaVA `.json` file (image paths relative to it)."""
        if not self.messages:
            raise ValueError("nothing to save yet: the conversation is empty")
        path = Path(path)
        if path.suffix != ".json":
            raise ValueError(f"{path}: save to a .json file")
        write_llava_json([Sample(images=list(self.paths), messages=self.messages, meta={"id": "chat"})], path)
        return path
