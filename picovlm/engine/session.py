"""A conversation in progress, for a REPL (`picovlm chat`) or a notebook.

The model has no memory between calls: every turn sends the whole history, messages and the inputs
(images, videos, audio clips) they refer to. The session keeps that history, holds inputs attached
for the next message, and saves a conversation as a LLaVA `.json` file, so a chat can be read back
with `picovlm.data.formats.load_samples` (and used as data, or to replay it).

With a native model the session also draws: an image span the model writes in its answer, or a
`draw` request (the caption alone, as the model learnt to draw), is saved as a PNG in `save_dir` and
yielded as a `Drawn` where it appears. It joins the history as an <|image|> of the assistant's
message, so later turns see it as the model sees any image (its codes, encoded again).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from picovlm.data.formats import Sample, write_llava_json
from picovlm.engine.pipeline import Pipeline
from picovlm.engine.sampling import SamplingParams
from picovlm.models.modalities import MODALITIES
from picovlm.text.tokens import IMAGE

DEFAULT_SAVE_DIR = Path("runs/chat")


@dataclass
class Drawn:
    """An image the model drew, and the PNG it was saved to."""

    image: Image.Image
    path: Path


class ChatSession:
    def __init__(self, pipe: Pipeline, params: SamplingParams | None = None, save_dir: Path = DEFAULT_SAVE_DIR):
        """`save_dir`: where drawn images go (made when the first one is drawn)."""
        self.pipe, self.params, self.save_dir = pipe, params or SamplingParams(), Path(save_dir)
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

    def send(self, text: str) -> Iterator[str | Drawn]:
        """Stream the answer to `text` (with the pending inputs): text pieces, and each image drawn (a
        native model), saved, where it appears. The turn joins the history once the answer is complete,
        so a failed turn (e.g. the context is full) leaves the history as it was."""
        placeholders = "".join(MODALITIES[m].token for m, _, _ in self.pending)
        content = f"{placeholders}\n{text}" if self.pending else text
        turn = [*self.messages, {"role": "user", "content": content}]
        inputs = {name: items + [i for m, _, i in self.pending if m == name] for name, items in self.inputs.items()}
        media = {name: items for name, items in inputs.items() if name != "image" and items}
        pieces, drawn = [], []
        for part in self.pipe.stream_parts(turn, inputs["image"], self.params, media):
            if isinstance(part, Image.Image):
                drawn.append(self._keep(part))
                part = drawn[-1]
            pieces.append(part if isinstance(part, str) else IMAGE)
            yield part
        self.inputs = inputs
        for modality, path, _ in self.pending:
            self.paths[modality].append(path)
        self.pending = []
        self._answered(turn, "".join(pieces), drawn)

    def draw(self, caption: str, guidance: float = 0.0) -> Drawn:
        """Draw `caption` (a native model; the caption alone, whatever came before) and keep the turn:
        the caption as the user's message, the image as the answer. Pending inputs wait for the next
        message."""
        [image] = self.pipe.draw([caption], self.params, guidance)
        drawn = self._keep(image)
        self._answered([*self.messages, {"role": "user", "content": caption}], IMAGE, [drawn])
        return drawn

    def _answered(self, turn: list[dict[str, str]], answer: str, drawn: list[Drawn]) -> None:
        """The turn joins the history; the images drawn in the answer come after the user's inputs."""
        self.messages = [*turn, {"role": "assistant", "content": answer}]
        self.inputs["image"] = self.inputs["image"] + [d.image for d in drawn]
        self.paths["image"] = self.paths["image"] + [d.path for d in drawn]

    def _keep(self, image: Image.Image) -> Drawn:
        """Save a drawn image as the next free drawn_NNN.png of `save_dir` (earlier chats' are kept)."""
        self.save_dir.mkdir(parents=True, exist_ok=True)
        n = 1
        while (self.save_dir / f"drawn_{n:03d}.png").exists():
            n += 1
        path = self.save_dir / f"drawn_{n:03d}.png"
        image.save(path)
        return Drawn(image, path)

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
