"""Read and write dataset files as a list of `Sample`s, with errors that say file and line.

Two layouts are understood, in `.json` (a list of records) and `.jsonl` (one record per line):

* LLaVA conversations: {"id", "image": str | [str, ...] (optional), "conversations": [{"from":
  "human"|"user"|"gpt"|"assistant"|"system", "value": str}, ...], "question_types": [...] (optional)}.
  Each "<image>" placeholder becomes IMAGE_TOKEN ("<|image|>"), exactly one per image. System turns
  are dropped; the rest must alternate user/assistant, starting with the user and ending with
  the assistant (a trailing question has no answer to learn from, so it is treated as truncated).
* Captions: {"image": str, "text": str}. A caption becomes `Sample(images=[image], messages=[
  {"role": "assistant", "content": text}], meta={"kind": "caption"})`: it has no user turn and no
  image token on purpose, so captioning stays distinguishable from chat; whoever turns samples
  into tokens puts the image in front of the caption.

Bad records are never dropped silently: with on_error="raise" the first one raises `DataError`,
with on_error="skip" each is logged at WARNING and appended to the optional `errors` list.
"""

import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from picovlm.text.tokens import IMAGE as IMAGE_TOKEN

log = logging.getLogger(__name__)

LLAVA_PLACEHOLDER = "<image>"
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": None}
_WHITESPACE = re.compile(r"\s*")


class DataError(ValueError):
    """A malformed record; the message is "{path}:{line}: {what is wrong}"."""


@dataclass
class Sample:
    images: list[Path]
    messages: list[dict[str, str]]  # {"role": "user" | "assistant", "content": str}
    meta: dict[str, Any] = field(default_factory=dict)  # kind, source ("file:line"), id, question_types

    @property
    def image(self) -> Path | None:
        """The first image, for the common one-image case."""
        return self.images[0] if self.images else None


class _BadRecord(Exception):
    """Raised inside the parsers; turned into a DataError or a warning with file and line."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise _BadRecord(message)


def _image_paths(record: dict, root: Path, check_images: bool) -> list[Path]:
    value = record.get("image")
    names = [] if value is None else [value] if isinstance(value, str) else value
    _check(
        isinstance(names, list) and all(isinstance(n, str) and n for n in names),
        "'image' must be a non-empty string or a list of them",
    )
    paths = [root / n for n in names]  # an absolute name stays absolute
    if check_images:
        for path in paths:
            _check(path.exists(), f"image not found: {path}")
    return paths


def _parse_caption(record: dict, images: list[Path]) -> Sample:
    text = record["text"]
    _check(len(images) == 1, "a caption record needs exactly one image")
    _check(isinstance(text, str) and text.strip() != "", "'text' must be a non-empty string")
    return Sample(images, [{"role": "assistant", "content": text}], {"kind": "caption"})


def _parse_conversation(record: dict, images: list[Path]) -> Sample:
    turns = record["conversations"]
    _check(isinstance(turns, list) and len(turns) > 0, "'conversations' must be a non-empty list")
    messages = []
    for k, turn in enumerate(turns):
        _check(isinstance(turn, dict), f"turn {k} must be an object")
        _check(
            isinstance(turn.get("from"), str) and isinstance(turn.get("value"), str),
            f"turn {k} needs string 'from' and 'value'",
        )
        _check(turn["from"] in ROLES, f"turn {k} has unknown role {turn['from']!r}")
        role = ROLES[turn["from"]]
        if role is None:  # a system prompt: dropped
            continue
        expected = "user" if len(messages) % 2 == 0 else "assistant"
        _check(role == expected, f"turn {k} is from the {role}, expected the {expected} (must alternate)")
        messages.append({"role": role, "content": turn["value"]})
    _check(len(messages) > 0, "conversation has no user or assistant turns")
    _check(messages[-1]["role"] == "assistant", "conversation must end with an assistant turn")

    placeholders = sum(m["content"].count(LLAVA_PLACEHOLDER) for m in messages)
    _check(placeholders == len(images), f"{placeholders} <image> placeholder(s) for {len(images)} image(s)")
    for m in messages:
        m["content"] = m["content"].replace(LLAVA_PLACEHOLDER, IMAGE_TOKEN)

    meta: dict[str, Any] = {"kind": "chat"}
    if "question_types" in record:
        qtypes, n = record["question_types"], len(messages) // 2
        valid = isinstance(qtypes, list) and all(isinstance(t, str) for t in qtypes) and len(qtypes) == n
        _check(valid, f"'question_types' must be a list of {n} strings, one per answer")
        meta["question_types"] = qtypes
    return Sample(images, messages, meta)


def _parse_record(record: Any, root: Path, check_images: bool) -> Sample:
    _check(isinstance(record, dict), f"expected a JSON object, got {type(record).__name__}")
    is_chat = "conversations" in record
    _check(is_chat or "text" in record, "missing key 'conversations' (or 'text' for a caption)")
    images = _image_paths(record, root, check_images)
    sample = _parse_conversation(record, images) if is_chat else _parse_caption(record, images)
    if "id" in record:
        sample.meta["id"] = record["id"]
    return sample


def _jsonl_records(text: str) -> Iterator[tuple[int, Any]]:
    for line_no, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                yield line_no, json.loads(line)
            except json.JSONDecodeError as e:
                yield line_no, _BadRecord(f"invalid JSON: {e.msg} (column {e.colno})")


def _json_array_records(text: str) -> Iterator[tuple[int, Any]]:
    """Yield (line where the record starts, record), walking the array one value at a time.

    A syntax error cannot be skipped over reliably, so it is yielded as the last item.
    """
    decoder = json.JSONDecoder()
    pos = _WHITESPACE.match(text).end()
    if not text.startswith("[", pos):
        yield text.count("\n", 0, pos) + 1, _BadRecord("expected a JSON list of records")
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
            yield e.lineno, _BadRecord(f"invalid JSON: {e.msg} (column {e.colno}); rest of file not read")
            return
        yield line, record
        pos = _WHITESPACE.match(text, pos).end()
        if text.startswith("]", pos):
            return
        if not text.startswith(",", pos):
            line += text.count("\n", counted, pos)
            yield line, _BadRecord("expected ',' or ']' after a record; rest of file not read")
            return
        pos = _WHITESPACE.match(text, pos + 1).end()


def load_samples(
    path: str | Path,
    on_error: str = "skip",
    image_root: str | Path | None = None,
    errors: list[str] | None = None,
    check_images: bool = True,
) -> list[Sample]:
    """Read a `.json` or `.jsonl` file into samples.

    Image names are resolved against `image_root` (default: the file's folder). Every problem is
    a one-line "{path}:{line}: {what}" message: raised as `DataError` with on_error="raise",
    logged at WARNING and appended to `errors` (when given) with on_error="skip", in which case
    the bad record is left out and the good ones are returned.
    """
    if on_error not in ("skip", "raise"):
        raise ValueError(f"on_error must be 'skip' or 'raise', not {on_error!r}")
    path = Path(path)
    readers = {".json": _json_array_records, ".jsonl": _jsonl_records}
    if path.suffix not in readers:
        raise ValueError(f"{path}: unsupported extension {path.suffix!r}, expected .json or .jsonl")
    root = Path(image_root) if image_root is not None else path.parent

    samples = []
    for line, record in readers[path.suffix](path.read_text(encoding="utf-8")):
        try:
            if isinstance(record, _BadRecord):
                raise record
            sample = _parse_record(record, root, check_images)
        except _BadRecord as e:
            message = f"{path}:{line}: {e}"
            if on_error == "raise":
                raise DataError(message) from None
            log.warning(message)
            if errors is not None:
                errors.append(message)
            continue
        sample.meta["source"] = f"{path}:{line}"
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
