"""Read and write dataset files as a list of `Sample`s, with errors that say file and record.

Four formats, picked from the path (or named with `format=`, or a "NAME:" prefix in a stage's data):

* `.json`: a list of records; `.jsonl`: one record per line. A record is one of
  - LLaVA / ShareGPT conversations: {"id", "image": str | [str, ...] or "images": [str, ...]
    (optional), "conversations": [{"from": "human"|"user"|"gpt"|"assistant"|"system", "value": str},
    ...], "question_types": [...] (optional)}. Each "<image>" placeholder becomes IMAGE_TOKEN
    ("<|image|>"), exactly one per image. System turns are dropped; the rest must alternate
    user/assistant, starting with the user and ending with the assistant (a trailing question has
    no answer to learn from, so it is treated as truncated).
  - OpenAI-style messages: {"messages": [{"role": "user"|"assistant"|"system", "content": str |
    [{"type": "text", "text": str} | {"type": "image"} | {"type": "image_url", "image_url": {"url":
    local path}}, ...]}], "images": [...] (optional)}: the same rules, an image part standing for
    one "<image>" placeholder.
  - Captions: {"image": str, "text": str}. A caption becomes `Sample(images=[image], messages=[
    {"role": "assistant", "content": text}], meta={"kind": "caption"})`: it has no user turn and no
    image token on purpose, so captioning stays distinguishable from chat; whoever turns samples
    into tokens puts the image in front of the caption.
* webdataset tar shards (`.tar`, `.tar.gz`, or a folder of them): see `picovlm.data.webdataset`.
* the_cauldron layout through `datasets` (`.parquet`, `.arrow`, or a folder written by
  `save_to_disk` or holding parquet files): see `picovlm.data.cauldron`.

Images in a tar shard or a dataset are not files of their own: a sample refers to them with an
`ImageRef`, read only when a batch needs it, so a large shard is never held in memory whole.

Bad records are never dropped silently: with on_error="raise" the first one raises `DataError`,
with on_error="skip" each is logged at WARNING and appended to the optional `errors` list.
"""

import functools
import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from picovlm.text.tokens import IMAGE as IMAGE_TOKEN
from picovlm.vision.image import ImageError, load_image

log = logging.getLogger(__name__)

LLAVA_PLACEHOLDER = "<image>"
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": None}
FORMATS = ("json", "jsonl", "webdataset", "cauldron")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
_WHITESPACE = re.compile(r"\s*")


class DataError(ValueError):
    """A malformed record; the message is "{path}:{record}: {what is wrong}", where the record is a
    line number (JSON), "row N" (a dataset) or a sample key (a tar shard)."""


@dataclass(frozen=True)
class ImageRef:
    """An image inside something else (a tar member, a dataset cell), read when needed.

    `name` says where it is: it is the cache key and what an unreadable image's error names.
    `read` returns the encoded bytes (or a path, or a PIL image); decoding goes through
    `load_image`, so archived images get the same size limit as files.
    """

    name: str
    read: Callable[[], "bytes | Path | Image.Image"] = field(compare=False, repr=False)

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

    @property
    def image(self) -> ImageSource | None:
        """The first image, for the common one-image case."""
        return self.images[0] if self.images else None


class BadRecord(Exception):
    """Raised inside the parsers; turned into a DataError or a warning with file and record."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise BadRecord(message)


def _image_paths(record: dict, root: Path, check_images: bool) -> list[ImageSource]:
    check(not ("image" in record and "images" in record), "use 'image' or 'images', not both")
    key = "images" if "images" in record else "image"
    value = record.get(key)
    names = [] if value is None else [value] if isinstance(value, str) else value
    check(
        isinstance(names, list) and all(isinstance(n, str) and n for n in names),
        f"'{key}' must be a non-empty string or a list of them",
    )
    paths = [root / n for n in names]  # an absolute name stays absolute
    if check_images:
        for path in paths:
            check(path.exists(), f"image not found: {path}")
    return paths


def _parse_caption(record: dict, images: list[ImageSource]) -> Sample:
    text = record["text"]
    check(len(images) == 1, "a caption record needs exactly one image")
    check(isinstance(text, str) and text.strip() != "", "'text' must be a non-empty string")
    return Sample(images, [{"role": "assistant", "content": text}], {"kind": "caption"})


def chat_messages(turns: list[tuple[str, str]], n_images: int, what: str = "turn") -> list[dict[str, str]]:
    """(role name, text with "<image>" placeholders) turns -> user/assistant messages with IMAGE_TOKEN.

    The one place where the rules of a conversation are checked, for every format that has one.
    """
    messages = []
    for k, (name, text) in enumerate(turns):
        check(name in ROLES, f"{what} {k} has unknown role {name!r}")
        check(IMAGE_TOKEN not in text, f"{what} {k} contains the reserved token {IMAGE_TOKEN}")
        role = ROLES[name]
        if role is None:  # a system prompt: dropped
            continue
        expected = "user" if len(messages) % 2 == 0 else "assistant"
        check(role == expected, f"{what} {k} is from the {role}, expected the {expected} (must alternate)")
        messages.append({"role": role, "content": text})
    check(len(messages) > 0, "conversation has no user or assistant turns")
    check(messages[-1]["role"] == "assistant", "conversation must end with an assistant turn")

    placeholders = sum(m["content"].count(LLAVA_PLACEHOLDER) for m in messages)
    check(placeholders == n_images, f"{placeholders} <image> placeholder(s) for {n_images} image(s)")
    for m in messages:
        m["content"] = m["content"].replace(LLAVA_PLACEHOLDER, IMAGE_TOKEN)
    return messages


def _parse_conversation(record: dict, images: list[ImageSource]) -> Sample:
    turns = record["conversations"]
    check(isinstance(turns, list) and len(turns) > 0, "'conversations' must be a non-empty list")
    pairs = []
    for k, turn in enumerate(turns):
        check(isinstance(turn, dict), f"turn {k} must be an object")
        check(
            isinstance(turn.get("from"), str) and isinstance(turn.get("value"), str),
            f"turn {k} needs string 'from' and 'value'",
        )
        pairs.append((turn["from"], turn["value"]))
    messages = chat_messages(pairs, len(images))
    meta: dict[str, Any] = {"kind": "chat"}
    if "question_types" in record:
        qtypes, n = record["question_types"], len(messages) // 2
        valid = isinstance(qtypes, list) and all(isinstance(t, str) for t in qtypes) and len(qtypes) == n
        check(valid, f"'question_types' must be a list of {n} strings, one per answer")
        meta["question_types"] = qtypes
    return Sample(images, messages, meta)


def _content_text(content: Any, k: int, root: Path, check_images: bool, url_images: list[ImageSource]) -> str:
    """A message's content as text with "<image>" placeholders; image_url parts append their path."""
    if isinstance(content, str):
        return content
    check(isinstance(content, list), f"message {k} 'content' must be a string or a list of parts")
    pieces = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            check(isinstance(part.get("text"), str), f"message {k} has a text part without a string 'text'")
            pieces.append(part["text"])
        elif kind == "image":
            pieces.append(LLAVA_PLACEHOLDER)
        elif kind == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            check(isinstance(url, str) and url != "", f"message {k} has an image_url part without a 'url'")
            check(
                "://" not in url.removeprefix("file://") and not url.startswith("data:"),
                f"message {k}: only local image paths are read from data files, not {url[:40]!r}",
            )
            path = root / url.removeprefix("file://")
            check(not check_images or path.exists(), f"image not found: {path}")
            url_images.append(path)
            pieces.append(LLAVA_PLACEHOLDER)
        else:
            check(False, f"message {k} has a part of unknown type {kind!r} (text, image or image_url)")
    return "\n".join(pieces)


def _parse_messages(record: dict, images: list[ImageSource], root: Path, check_images: bool) -> Sample:
    turns = record["messages"]
    check(isinstance(turns, list) and len(turns) > 0, "'messages' must be a non-empty list")
    pairs, url_images = [], []
    for k, turn in enumerate(turns):
        check(isinstance(turn, dict), f"message {k} must be an object")
        check(
            isinstance(turn.get("role"), str) and "content" in turn,
            f"message {k} needs a string 'role' and a 'content'",
        )
        pairs.append((turn["role"], _content_text(turn["content"], k, root, check_images, url_images)))
    check(not (images and url_images), "use image parts with 'images', or image_url parts, not both")
    images = images or url_images
    return Sample(images, chat_messages(pairs, len(images), what="message"), {"kind": "chat"})


def parse_record(record: Any, root: Path, check_images: bool, images: list[ImageSource] | None = None) -> Sample:
    """One JSON record -> a Sample. `images`, when given, replaces the record's own image keys (a tar
    shard's image members); raises BadRecord."""
    check(isinstance(record, dict), f"expected a JSON object, got {type(record).__name__}")
    kinds = [k for k in ("conversations", "messages") if k in record]
    check(len(kinds) < 2, "use 'conversations' or 'messages', not both")
    check(kinds or "text" in record, "missing key 'conversations' (or 'messages', or 'text' for a caption)")
    if images is None:
        images = _image_paths(record, root, check_images)
    if kinds == ["conversations"]:
        sample = _parse_conversation(record, images)
    elif kinds == ["messages"]:
        sample = _parse_messages(record, images, root, check_images)
    else:
        sample = _parse_caption(record, images)
    if "id" in record:
        sample.meta["id"] = record["id"]
    return sample


# A reader yields (source, parse): `source` names the record, "{file}:{where}" with `where` a line
# number, "row N" or a sample key, and `parse()` returns its Sample or raises BadRecord. Parsing is
# left to the caller so that one loop turns every problem of every format into the same message.
Records = Iterator[tuple[str, Callable[[], Sample]]]


def _raise(error: BadRecord) -> Sample:
    raise error


def _json_readers(path: Path, fmt: str, root: Path, check_images: bool) -> Records:
    text = path.read_text(encoding="utf-8")
    items = _jsonl_records(text) if fmt == "jsonl" else _json_array_records(text)
    for line, record in items:
        if isinstance(record, BadRecord):
            yield f"{path}:{line}", functools.partial(_raise, record)
        else:
            yield f"{path}:{line}", functools.partial(parse_record, record, root, check_images)


def _jsonl_records(text: str) -> Iterator[tuple[int, Any]]:
    for line_no, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                yield line_no, json.loads(line)
            except json.JSONDecodeError as e:
                yield line_no, BadRecord(f"invalid JSON: {e.msg} (column {e.colno})")


def _json_array_records(text: str) -> Iterator[tuple[int, Any]]:
    """Yield (line where the record starts, record), walking the array one value at a time.

    A syntax error cannot be skipped over reliably, so it is yielded as the last item.
    """
    decoder = json.JSONDecoder()
    pos = _WHITESPACE.match(text).end()
    if not text.startswith("[", pos):
        yield text.count("\n", 0, pos) + 1, BadRecord("expected a JSON list of records")
        return
    pos = _WHITESPACE.match(text, pos + 1).end()
    if text.startswith("]", pos):
        return
    line, counted = 1, 0
    while True:
        line, counted = line + text.count("\n", counted, pos), pos
        try:
            record, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            yield e.lineno, BadRecord(f"invalid JSON: {e.msg} (column {e.colno}); rest of file not read")
            return
        yield line, record
        pos = _WHITESPACE.match(text, pos).end()
        if text.startswith("]", pos):
            return
        if not text.startswith(",", pos):
            line += text.count("\n", counted, pos)
            yield line, BadRecord("expected ',' or ']' after a record; rest of file not read")
            return
        pos = _WHITESPACE.match(text, pos + 1).end()


def detect_format(path: Path) -> str:
    """The format of a file or folder, from its extension or what the folder holds."""
    name = path.name.lower()
    if path.is_dir():
        if any((path / f).is_file() for f in ("state.json", "dataset_info.json", "dataset_dict.json")):
            return "cauldron"
        if any(path.glob("*.parquet")) or any(path.glob("*.arrow")):
            return "cauldron"
        if any(p.name.lower().endswith(TAR_SUFFIXES) for p in path.iterdir()):
            return "webdataset"
        raise ValueError(
            f"{path}: a folder with no dataset files (.parquet, .arrow, save_to_disk files or .tar shards)"
        )
    for fmt, suffixes in (
        ("json", (".json",)),
        ("jsonl", (".jsonl",)),
        ("webdataset", TAR_SUFFIXES),
        ("cauldron", (".parquet", ".arrow")),
    ):
        if name.endswith(suffixes):
            return fmt
    raise ValueError(
        f"{path}: unsupported extension {path.suffix!r}, expected .json, .jsonl, .tar, .parquet, .arrow "
        f"or a dataset folder (or name the format: one of {', '.join(FORMATS)})"
    )


def split_format(spec: str) -> tuple[str | None, str]:
    """ "cauldron:vqa/train" -> ("cauldron", "vqa/train"); a name without a known format prefix is
    returned whole, so stage data can name a format where the path does not tell it."""
    prefix, sep, rest = spec.partition(":")
    return (prefix, rest) if sep and prefix in FORMATS else (None, spec)


def load_samples(
    path: str | Path,
    on_error: str = "skip",
    image_root: str | Path | None = None,
    errors: list[str] | None = None,
    check_images: bool = True,
    format: str | None = None,
) -> list[Sample]:
    """Read a dataset file or folder into samples; `format` (one of FORMATS) overrides detection.

    Image names are resolved against `image_root` (default: the file's folder, or the dataset
    folder). Every problem is a one-line "{path}:{record}: {what}" message: raised as `DataError`
    with on_error="raise", logged at WARNING and appended to `errors` (when given) with
    on_error="skip", in which case the bad record is left out and the good ones are returned.
    """
    if on_error not in ("skip", "raise"):
        raise ValueError(f"on_error must be 'skip' or 'raise', not {on_error!r}")
    if format is not None and format not in FORMATS:
        raise ValueError(f"unknown format {format!r}, expected one of {', '.join(FORMATS)}")
    path = Path(path)
    fmt = format or detect_format(path)
    root = Path(image_root) if image_root is not None else path if path.is_dir() else path.parent
    if fmt in ("json", "jsonl"):
        records = _json_readers(path, fmt, root, check_images)
    elif fmt == "webdataset":
        from picovlm.data.webdataset import read_shards

        records = read_shards(path)
    else:
        from picovlm.data.cauldron import read_cauldron

        records = read_cauldron(path, root, check_images)

    samples = []
    for source, parse in records:
        try:
            sample = parse()
        except BadRecord as e:
            if on_error == "raise":
                raise DataError(f"{source}: {e}") from None
            log.warning(f"{source}: {e}")
            if errors is not None:
                errors.append(f"{source}: {e}")
            continue
        sample.meta["source"] = source
        samples.append(sample)
    return samples


def _llava_turn(message: dict[str, str]) -> dict[str, str]:
    role = "human" if message["role"] == "user" else "gpt"
    return {"from": role, "value": message["content"].replace(IMAGE_TOKEN, LLAVA_PLACEHOLDER)}


def write_llava_json(samples: list[Sample], path: str | Path) -> None:
    """Write chat samples as a LLaVA `.json` list, image paths relative to the file's folder.

    Caption samples have no LLaVA form (no user turn) and are rejected rather than guessed at.
    """
    path = Path(path)
    folder = path.parent.absolute()
    records = []
    for i, sample in enumerate(samples):
        if any(isinstance(im, ImageRef) for im in sample.images):
            raise ValueError(
                f"sample {i} has images inside an archive or dataset ({sample.images[0]}); no path to write"
            )
        if not sample.messages or sample.messages[0]["role"] != "user":
            raise ValueError(f"sample {i} is not a user/assistant conversation (a caption?)")
        record: dict[str, Any] = {"id": sample.meta.get("id", str(i))}
        names = [Path(os.path.relpath(Path(p).absolute(), folder)).as_posix() for p in sample.images]
        if names:
            record["image"] = names[0] if len(names) == 1 else names
        record["conversations"] = [_llava_turn(m) for m in sample.messages]
        if "question_types" in sample.meta:
            record["question_types"] = sample.meta["question_types"]
        records.append(record)
    path.parent.mkdir(parents=True, exist_ok=True)
    # One record per line, like scenes.build_dataset, so that load errors point at the record.
    path.write_text("[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]\n", encoding="utf-8")
