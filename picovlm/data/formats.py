"""Read and write dataset files as a list of `Sample`s, with errors that say file and record.

Four formats, picked from the path (or named with `format=`, or a "NAME:" prefix in a stage's data):

* `.json`: a list of records; `.jsonl`: one record per line. A record is one of
  - LLaVA / ShareGPT conversations: {"id", "image": str | [str, ...] or "images": [str, ...]
    (optional), "conversations": [{"from": "human"|"user"|"gpt"|"assistant"|"system", "value": str},
    ...], "question_types": [...] (optional), "video": str | [str, ...], "audio": str | [str, ...]
    (optional)}. Each "<image>" placeholder becomes IMAGE_TOKEN ("<|image|>"), exactly one per image,
    and each "<video>" ("<audio>") becomes "<|video|>" ("<|audio|>"), one per video (audio clip).
    System turns are dropped; the rest must alternate user/assistant, starting with the user and
    ending with the assistant (a trailing question has no answer to learn from, so it is treated as
    truncated).
  - OpenAI-style messages: {"messages": [{"role": "user"|"assistant"|"system", "content": str |
    [{"type": "text", "text": str} | {"type": "image"} | {"type": "image_url", "image_url": {"url":
    local path}}, ...]}], "images": [...] (optional)}: the same rules, an image part standing for
    one "<image>" placeholder.
  - Captions: {"image": str, "text": str} ("video" or "audio" in place of "image" for theirs). A
    caption becomes `Sample(images=[image], messages=[{"role": "assistant", "content": text}],
    meta={"kind": "caption"})`: it has no user turn and no image token on purpose, so captioning
    stays distinguishable from chat; whoever turns samples into tokens puts the image in front of
    the caption.
* webdataset tar shards (`.tar`, `.tar.gz`, or a folder of them): see `picovlm.data.webdataset`.
* the_cauldron layout through `datasets` (`.parquet`, `.arrow`, or a folder written by
  `save_to_disk` or holding parquet files): see `picovlm.data.cauldron`.

Images in a tar shard or a dataset are not files of their own: a sample refers to them with an
`ImageRef`, read only when a batch needs it, so a large shard is never held in memory whole.

A record is named by its file and where it is in it: "train.json#3 (id train_000003)" (the index in
a JSON list, with the line where it starts when the list spans several lines, and its id when it has
one), "train.jsonl:4" (the line), "shard.tar:key", "data.parquet:row 7".

Bad records are never dropped silently: with on_error="raise" the first one raises `DataError`,
with on_error="skip" each is logged at WARNING and counted in a `DataReport`. A file that cannot be
read to its end (invalid JSON mid-list, a damaged shard) raises even then, unless on_bad_file="skip"
accepts the records before the damage.
"""

import functools
import itertools
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from picovlm.data.cauldron import read_cauldron
from picovlm.data.records import (
    BadRecord,
    DamagedFile,
    DataError,
    ImageRef,
    Records,
    Sample,
    bad_record,
    parse_record,
)
from picovlm.data.report import DataReport
from picovlm.data.webdataset import TAR_SUFFIXES, read_shards
from picovlm.models.modalities import MODALITIES

FORMATS = ("json", "jsonl", "webdataset", "cauldron")
ON_BAD_FILE = ("fail", "skip")
UNREAD = "the rest of the file was not read"
_WHITESPACE = re.compile(r"\s*")


def _json_readers(path: Path, fmt: str, root: Path, check_images: bool) -> Records:
    text = path.read_text(encoding="utf-8")
    items = _jsonl_records(text) if fmt == "jsonl" else _json_array_records(text)
    for where, line, record in items:
        source = _locator(path, where, line, record)
        if isinstance(record, BadRecord):
            yield source, functools.partial(bad_record, record)
        else:
            yield source, functools.partial(parse_record, record, root, check_images)


def _locator(path: Path, where: str, line: int | None, record: Any) -> str:
    """ "train.json#3 (line 5, id train_000003)": the file, where the record is, and what else says it."""
    notes = [f"line {line}"] if line is not None else []
    if isinstance(record, dict) and isinstance(record.get("id"), str | int):
        notes.append(f"id {record['id']}")
    return f"{path}{where}" + (f" ({', '.join(notes)})" if notes else "")


Item = tuple[str, int | None, Any]  # (where in the file, the line it starts on if that says more, the record)


def _jsonl_records(text: str) -> Iterator[Item]:
    for line_no, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                yield f":{line_no}", None, json.loads(line)
            except json.JSONDecodeError as e:
                yield f":{line_no}", None, BadRecord(f"invalid JSON: {e.msg} (column {e.colno})")


def _json_array_records(text: str) -> Iterator[Item]:
    """Yield ("#index", line where the record starts, record), walking the array one value at a time;
    the line is left out of a file on one line (what `json.dump` writes), where it would say nothing.

    A syntax error cannot be skipped over reliably, so it is yielded as the last item, a DamagedFile.
    """
    decoder = json.JSONDecoder()
    multiline = "\n" in text.strip()
    pos = _WHITESPACE.match(text).end()
    if not text.startswith("[", pos):
        yield "", None, DamagedFile("expected a JSON list of records")
        return
    pos = _WHITESPACE.match(text, pos + 1).end()
    if text.startswith("]", pos):
        return
    line, counted = 1, 0
    for index in itertools.count():
        line, counted = line + text.count("\n", counted, pos), pos
        where, at = f"#{index}", line if multiline else None
        try:
            record, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            column = f"line {e.lineno}, column {e.colno}" if multiline else f"column {e.colno}"
            yield where, at, DamagedFile(f"invalid JSON at {column}: {e.msg.removesuffix(' at')}; {UNREAD}")
            return
        yield where, at, record
        pos = _WHITESPACE.match(text, pos).end()
        if text.startswith("]", pos):
            return
        if not text.startswith(",", pos):
            at = line + text.count("\n", counted, pos) if multiline else None
            yield f"#{index + 1}", at, DamagedFile(f"expected ',' or ']' after a record; {UNREAD}")
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
    report: DataReport | None = None,
    check_images: bool = True,
    format: str | None = None,
    on_bad_file: str = "fail",
) -> list[Sample]:
    """Read a dataset file or folder into samples; `format` (one of FORMATS) overrides detection.

    Image names are resolved against `image_root` (default: the file's folder, or the dataset
    folder); with `check_images` each image's header is read (nothing is decoded). Every problem is
    a one-line "{path}{record}: {what}" message: raised as `DataError` with on_error="raise"; with
    on_error="skip" the bad record is left out, logged and counted in `report` (when given), and the
    good ones are returned. A file that cannot be read to its end raises unless on_bad_file="skip".
    """
    if on_error not in ("skip", "raise"):
        raise ValueError(f"on_error must be 'skip' or 'raise', not {on_error!r}")
    if on_bad_file not in ON_BAD_FILE:
        raise ValueError(f"on_bad_file must be 'fail' or 'skip', not {on_bad_file!r}")
    if format is not None and format not in FORMATS:
        raise ValueError(f"unknown format {format!r}, expected one of {', '.join(FORMATS)}")
    path = Path(path)
    report = report if report is not None else DataReport(path.name)
    samples = []
    for source, parse in _records(path, format or detect_format(path), image_root, check_images):
        try:
            sample = parse()
        except BadRecord as e:
            if on_error == "raise" or (isinstance(e, DamagedFile) and on_bad_file == "fail"):
                raise DataError(f"{source}: {e}{_keep_hint(e, on_error, samples)}") from None
            if not isinstance(e, DamagedFile):  # a record, read and found bad (not the unread rest of a file)
                report.read += 1
            report.reject(source, e.reason, str(e), e.record)
            continue
        report.read += 1
        sample.meta["source"] = source
        samples.append(sample)
    return samples


def _keep_hint(error: BadRecord, on_error: str, samples: list[Sample]) -> str:
    """What to say to go on past a damaged file, when it is the only thing that stopped the read."""
    if not isinstance(error, DamagedFile) or on_error == "raise":
        return ""
    n = len(samples)
    return f' (on_bad_file="skip" keeps the {n} record{"s" if n != 1 else ""} read before it)'


def _records(path: Path, fmt: str, image_root: str | Path | None, check_images: bool) -> Records:
    root = Path(image_root) if image_root is not None else path if path.is_dir() else path.parent
    if fmt in ("json", "jsonl"):
        return _json_readers(path, fmt, root, check_images)
    if fmt == "webdataset":
        return read_shards(path)
    return read_cauldron(path, root, check_images)


def _llava_turn(message: dict[str, str]) -> dict[str, str]:
    role = "human" if message["role"] == "user" else "gpt"
    value = message["content"]
    for modality in MODALITIES.values():
        value = value.replace(modality.token, modality.placeholder)
    return {"from": role, "value": value}


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
        for key in ("image", *sample.media):
            names = [Path(os.path.relpath(Path(p).absolute(), folder)).as_posix() for p in sample.inputs(key)]
            if names:
                record[key] = names[0] if len(names) == 1 else names
        record["conversations"] = [_llava_turn(m) for m in sample.messages]
        if "question_types" in sample.meta:
            record["question_types"] = sample.meta["question_types"]
        records.append(record)
    path.parent.mkdir(parents=True, exist_ok=True)
    # One record per line, like scenes.build_dataset, so that load errors point at the record.
    path.write_text("[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]\n", encoding="utf-8")
