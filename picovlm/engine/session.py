"""A conversation in progress, for a REPL (`picovlm chat`) or a notebook.

The model has no memory between calls: every turn sends the whole history, messages and the inputs
(images, videos, audio clips) they refer to. The session keeps that history, holds inputs attached
for the next message, and saves a conversation as a LLaVA `.json` file, so a chat can be read back
with `picovlm.data.formats.load_samples` (and used as data, or to replay it).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from picovlm.data.formats import Sample, write_llava_json
from picovlm.engine.pipeline import Pipeline
from picovlm.engine.sampling import SamplingParams
from picovlm.models.modalities import MODALITIES


class ChatSession:
    def __init__(self, pipe: Pipeline, params: SamplingParams | None = None):
        self.pipe, self.params = pipe, params or SamplingParams()
        self.reset()

    def reset(self) -> None:
        self.messages: list[dict[str, str]] = []
        self.inputs: dict[str, list[Any]] = {name: [] for name in MODALITIES}  # what the messages refer to
        self.paths: dict[str, list[Path]] = {name: [] for name in MODALITIES}  # where they came from (for save)
        self.pending: list[tuple[str, Path, Any]] = []  # (modality, path, item) not yet sent with a message

    @property
    def images(self) -> list[Any]:
        return self.inputs["image"]

    def attach(self, path: str | Path, modality: str = "image") -> int:
        """Add an image (video, audio clip) to the next message (raises ImageError, VideoError,
        AudioError); returns how many of that modality the conversation then has."""
        if modality not in MODALITIES:
            raise ValueError(f"unknown modality {modality!r}; known: {', '.join(MODALITIES)}")
        path = Path(path)
        self.pending.append((modality, path, MODALITIES[modality].load(path)))
        return len(self.inputs[modality]) + sum(m == modality for m, _, _ in self.pending)

    def send(self, text: str) -> Iterator[str]:
        """Stream the answer to `text` (with the pending inputs); the turn joins the history once the
        answer is complete, so a failed turn (e.g. the context is full) leaves the history as it was."""
        placeholders = "".join(MODALITIES[m].token for m, _, _ in self.pending)
        content = f"{placeholders}\n{text}" if self.pending else text
        turn = [*self.messages, {"role": "user", "content": content}]
        inputs = {name: items + [i for m, _, i in self.pending if m == name] for name, items in self.inputs.items()}
        media = {name: items for name, items in inputs.items() if name != "image" and items}
        pieces = []
        for piece in self.pipe.stream(turn, inputs["image"], self.params, media):
            pieces.append(piece)
            yield piece
        self.messages = [*turn, {"role": "assistant", "content": "".join(pieces)}]
        self.inputs = inputs
        for modality, path, _ in self.pending:
            self.paths[modality].append(path)
        self.pending = []

    def save(self, path: str | Path) -> Path:
        """Write the conversation so far as a one-record LLaVA `.json` file (input paths relative to it)."""
        if not self.messages:
            raise ValueError("nothing to save yet: the conversation is empty")
        path = Path(path)
        if path.suffix != ".json":
            raise ValueError(f"{path}: save to a .json file")
        media = {name: paths for name, paths in self.paths.items() if name != "image" and paths}
        sample = Sample(images=list(self.paths["image"]), messages=self.messages, meta={"id": "chat"}, media=media)
        write_llava_json([sample], path)
        return path
