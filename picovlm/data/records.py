"""What a dataset record becomes, and the rules every format shares.

A record of any format (a line of a JSON file, a tar shard's key, a dataset row) becomes a
`Sample`: its images, as paths or `ImageRef`s into an archive, its videos and audio clips (paths, in
`media`), and its user/assistant messages, with one IMAGE_TOKEN ("<|image|>") per image and one
placeholder of each other modality per item ("<|video|>", "<|audio|>": models/modalities.py).
`parse_record` reads the JSON record layouts (see `picovlm.data.formats`), which JSON files and tar
shards both hold; `chat_messages` checks a conversation for every format that has one.

A problem with a record is a `BadRecord` inside a reader, with a `reason` it is counted under;
`picovlm.data.formats.load_samples` turns it into a `DataError` or a skip (one warning line, a
count in a `DataReport`) naming the file and the record. A `DamagedFile` is worse: the file cannot
be read past it, so the records after it are lost.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from picovlm.models.modalities import MEDIA, MODALITIES
from picovlm.text.tokens import IMAGE as IMAGE_TOKEN  # noqa: F401 (the name data readers and tests use)
from picovlm.text.tokens import PLACEHOLDERS
from picovlm.vision.image import MAX_IMAGE_PIXELS, ImageError, load_image

LLAVA_PLACEHOLDER = "<image>"
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": None}


# why a record is left out: the keys of a `DataReport`'s counts
BAD_RECORD, BAD_IMAGE, TOO_LONG, DAMAGED_FILE = "bad record", "bad image", "too long", "damaged file"


class DataError(ValueError):
    """A malformed record; the message is "{path}{record}: {what is wrong}", where the record is
    "#index" (a JSON list), ":line" (JSONL), ":row N" (a dataset) or ":key" (a tar shard)."""


class BadRecord(Exception):
    """Raised inside the parsers; turned into a DataError or a counted skip with file and record.
    `record` is the record as read (when it could be read), for the rejects file."""

    reason = BAD_RECORD

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason or self.reason
        self.record: Any = None


class DamagedFile(BadRecord):
    """The file cannot be read past this point (invalid JSON mid-file, a damaged shard)."""

    reason = DAMAGED_FILE


def require(condition: bool, message: str, reason: str = BAD_RECORD) -> None:
    """The check every parser makes: a BadRecord saying `message` unless `condition` holds."""
    if not condition:
        raise BadRecord(message, reason)


def check_image(source: Path | bytes, name: str | Path) -> None:
    """The cheap check of an image at load time: it exists, and its header (nothing is decoded) is an
    image's, of no more than MAX_IMAGE_PIXELS. A file damaged further in is caught when a batch
    decodes it (`picovlm.data.batches.ImageCache`)."""
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            w, h = im.size
    except FileNotFoundError:
        raise BadRecord(f"image not found: {name}", BAD_IMAGE) from None
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as e:
        raise BadRecord(f"not a readable image: {name} ({type(e).__name__})", BAD_IMAGE) from None
    require(w * h <= MAX_IMAGE_PIXELS, f"image {name} is {w}x{h}, more than {MAX_IMAGE_PIXELS} pixels", BAD_IMAGE)


@dataclass(frozen=True)
class ImageRef:
    """An image inside something else (a tar member, a dataset cell), read when needed.

    `name` says where it is: it is the cache key and what an unreadable image's error names.
    `read` returns the encoded bytes (or a path, or a PIL image); decoding goes through
    `load_image`, so archived images get the same size limit as files.
    """

    name: str
    read: Callable[[], bytes | Path | Image.Image] = field(compare=False, repr=False)

    def load(self) -> Image.Image:
        try:
            data = self.read()
        except (OSError, KeyError, IndexError, ValueError) as e:
            raise ImageError(f"{self.name}: cannot read the image ({type(e).__name__}: {e})") from None
        return load_image(data, name=self.name)


ImageSource = Path | ImageRef


def open_image(source: ImageSource) -> Image.Image:
    """An RGB PIL image from a path or an `ImageRef`."""
    return source.load() if isinstance(source, ImageRef) else load_image(source)


@dataclass
class Sample:
    images: list[ImageSource]
    messages: list[dict[str, str]]  # {"role": "user" | "assistant", "content": str}
    meta: dict[str, Any] = field(default_factory=dict)  # kind, source ("file:record"), id, question_types
    media: dict[str, list[Path]] = field(default_factory=dict)  # "video" / "audio" -> files, in text order

    def inputs(self, name: str) -> list:
        """The items of modality `name` (images too), in text order."""
        return self.images if name == "image" else self.media.get(name, [])

    @property
    def modalities(self) -> str:
        """What the sample shows, e.g. "video" or "image+audio" ("text" for none): how results are grouped."""
        return "+".join(name for name in MODALITIES if self.inputs(name)) or "text"

    @property
    def image(self) -> ImageSource | None:
        """The first image, for the common one-image case."""
        return self.images[0] if self.images else None


# A reader yields (source, parse): `source` names the record ("{file}#3 (id x)" in a JSON list, "{file}:4"
# in JSONL, "{file}:row N" in a dataset, "{file}:key" in a shard), and `parse()` returns its Sample or
# raises BadRecord. Parsing is left to the caller so that one loop turns every problem of every format
# into the same message.
Records = Iterator[tuple[str, Callable[[], Sample]]]


def bad_record(error: BadRecord) -> Sample:
    """The `parse` of a record a reader already knows to be bad (broken JSON, a damaged shard)."""
    raise error


def _image_paths(record: dict, root: Path, check_images: bool) -> list[ImageSource]:
    require(not ("image" in record and "images" in record), "use 'image' or 'images', not both")
    key = "images" if "images" in record else "image"
    value = record.get(key)
    names = [] if value is None else [value] if isinstance(value, str) else value
    require(
        isinstance(names, list) and all(isinstance(n, str) and n for n in names),
        f"'{key}' must be a non-empty string or a list of them",
    )
    paths = [root / n for n in names]  # an absolute name stays absolute
    if check_images:
        for path in paths:
            check_image(path, path)
    return paths


def _media_paths(record: dict, root: Path, check_images: bool) -> dict[str, list[Path]]:
    """The files of the "video" and "audio" fields (a name or a list of them), beside "image"."""
    media = {}
    for key in MEDIA:
        value = record.get(key)
        names = [] if value is None else [value] if isinstance(value, str) else value
        require(
            isinstance(names, list) and all(isinstance(n, str) and n for n in names),
            f"'{key}' must be a non-empty string or a list of them",
        )
        if names:
            media[key] = [root / n for n in names]
            for path in media[key] if check_images else []:
                require(path.exists(), f"{key} not found: {path}")
    return media


def _parse_caption(record: dict, images: list[ImageSource], media: dict[str, list[Path]]) -> Sample:
    text = record["text"]
    n = len(images) + sum(len(v) for v in media.values())
    require(n == 1, "a caption record needs exactly one image (or video, or audio clip)")
    require(isinstance(text, str) and text.strip() != "", "'text' must be a non-empty string")
    return Sample(images, [{"role": "assistant", "content": text}], {"kind": "caption"}, media)


def chat_messages(
    turns: list[tuple[str, str]], n_images: int, what: str = "turn", counts: dict[str, int] | None = None
) -> list[dict[str, str]]:
    """(role name, text with "<image>" ("<video>", "<audio>") placeholders) turns -> user/assistant
    messages with IMAGE_TOKEN (and each modality's token); `counts`: videos and audio clips given.

    The one place where the rules of a conversation are checked, for every format that has one.
    """
    messages = []
    for k, (name, text) in enumerate(turns):
        require(name in ROLES, f"{what} {k} has unknown role {name!r}")
        reserved = next((t for t in PLACEHOLDERS if t in text), None)
        require(reserved is None, f"{what} {k} contains the reserved token {reserved}")
        role = ROLES[name]
        if role is None:  # a system prompt: dropped
            continue
        expected = "user" if len(messages) % 2 == 0 else "assistant"
        require(role == expected, f"{what} {k} is from the {role}, expected the {expected} (must alternate)")
        messages.append({"role": role, "content": text})
    require(len(messages) > 0, "conversation has no user or assistant turns")
    require(messages[-1]["role"] == "assistant", "conversation must end with an assistant turn")

    given = {"image": n_images, **(counts or {})}
    for modality in MODALITIES.values():
        n = given.get(modality.name, 0)
        placeholders = sum(m["content"].count(modality.placeholder) for m in messages)
        require(
            placeholders == n,
            f"{placeholders} {modality.placeholder} placeholder(s) for {n} {modality.name}(s)",
        )
        for m in messages:
            m["content"] = m["content"].replace(modality.placeholder, modality.token)
    return messages


def _parse_conversation(record: dict, images: list[ImageSource], media: dict[str, list[Path]]) -> Sample:
    turns = record["conversations"]
    require(isinstance(turns, list) and len(turns) > 0, "'conversations' must be a non-empty list")
    pairs = []
    for k, turn in enumerate(turns):
        require(isinstance(turn, dict), f"turn {k} must be an object")
        require(
            isinstance(turn.get("from"), str) and isinstance(turn.get("value"), str),
            f"turn {k} needs string 'from' and 'value'",
        )
        pairs.append((turn["from"], turn["value"]))
    messages = chat_messages(pairs, len(images), counts={k: len(v) for k, v in media.items()})
    meta: dict[str, Any] = {"kind": "chat"}
    if "question_types" in record:
        qtypes, n = record["question_types"], len(messages) // 2
        valid = isinstance(qtypes, list) and all(isinstance(t, str) for t in qtypes) and len(qtypes) == n
        require(valid, f"'question_types' must be a list of {n} strings, one per answer")
        meta["question_types"] = qtypes
    return Sample(images, messages, meta, media)


def _content_text(content: Any, k: int, root: Path, check_images: bool, url_images: list[ImageSource]) -> str:
    """A message's content as text with "<image>" placeholders; image_url parts append their path."""
    if isinstance(content, str):
        return content
    require(isinstance(content, list), f"message {k} 'content' must be a string or a list of parts")
    pieces = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            require(isinstance(part.get("text"), str), f"message {k} has a text part without a string 'text'")
            pieces.append(part["text"])
        elif kind == "image":
            pieces.append(LLAVA_PLACEHOLDER)
        elif kind == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            require(isinstance(url, str) and url != "", f"message {k} has an image_url part without a 'url'")
            require(
                "://" not in url.removeprefix("file://") and not url.startswith("data:"),
                f"message {k}: only local image paths are read from data files, not {url[:40]!r}",
            )
            path = root / url.removeprefix("file://")
            if check_images:
                check_image(path, path)
            url_images.append(path)
            pieces.append(LLAVA_PLACEHOLDER)
        else:
            require(False, f"message {k} has a part of unknown type {kind!r} (text, image or image_url)")
    return "\n".join(pieces)


def _parse_messages(
    record: dict, images: list[ImageSource], media: dict[str, list[Path]], root: Path, check_images: bool
) -> Sample:
    turns = record["messages"]
    require(isinstance(turns, list) and len(turns) > 0, "'messages' must be a non-empty list")
    pairs, url_images = [], []
    for k, turn in enumerate(turns):
        require(isinstance(turn, dict), f"message {k} must be an object")
        require(
            isinstance(turn.get("role"), str) and "content" in turn,
            f"message {k} needs a string 'role' and a 'content'",
        )
        pairs.append((turn["role"], _content_text(turn["content"], k, root, check_images, url_images)))
    require(not (images and url_images), "use image parts with 'images', or image_url parts, not both")
    images = images or url_images
    counts = {k: len(v) for k, v in media.items()}
    return Sample(images, chat_messages(pairs, len(images), "message", counts), {"kind": "chat"}, media)


def parse_record(record: Any, root: Path, check_images: bool, images: list[ImageSource] | None = None) -> Sample:
    """One JSON record -> a Sample. `images`, when given, replaces the record's own image keys (a tar
    shard's image members); raises BadRecord, which carries the record."""
    try:
        return _parse_record(record, root, check_images, images)
    except BadRecord as e:
        e.record = record
        raise


def _parse_record(record: Any, root: Path, check_images: bool, images: list[ImageSource] | None) -> Sample:
    require(isinstance(record, dict), f"expected a JSON object, got {type(record).__name__}")
    kinds = [k for k in ("conversations", "messages") if k in record]
    require(len(kinds) < 2, "use 'conversations' or 'messages', not both")
    require(kinds or "text" in record, "missing key 'conversations' (or 'messages', or 'text' for a caption)")
    if images is None:
        images = _image_paths(record, root, check_images)
    media = _media_paths(record, root, check_images)
    if kinds == ["conversations"]:
        sample = _parse_conversation(record, images, media)
    elif kinds == ["messages"]:
        sample = _parse_messages(record, images, media, root, check_images)
    else:
        sample = _parse_caption(record, images, media)
    if "id" in record:
        sample.meta["id"] = record["id"]
    return sample


def sample_record(sample: Sample) -> dict[str, Any]:
    """A sample as JSON, for the rejects file: its id, images (names) and messages."""
    names = [im.name if isinstance(im, ImageRef) else str(im) for im in sample.images]
    record = {"images": names, "messages": sample.messages}
    return {"id": sample.meta["id"], **record} if "id" in sample.meta else record
