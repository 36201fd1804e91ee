"""webdataset tar shards -> samples, with the standard library's `tarfile` and no pickle decoding.

A shard groups members by key: "dir/abc.jpg", "dir/abc.json" and "dir/abc.txt" are one sample,
key "dir/abc" (the name up to the first dot of the file name, as webdataset splits it). Per key:

* images: members whose last extension is an image type ("abc.jpg", or "abc.0.png", "abc.1.png"
  for several, in the order of their extensions);
* a `.json` member: a record as in `picovlm.data.records` (conversations, messages or a caption
  "text"); its own image keys are not used, the images are the key's members;
* a `.txt` member: the caption, when there is no JSON record (or the record has no text);
* `.pyd`, `.pickle`, `.pkl`, `.pt`, `.pth` members are refused: unpickling a downloaded file can
  run any code. Other extensions (".cls", ...) are ignored.

Images of an uncompressed shard are read when a batch needs them, by seeking to their offset: a
large shard is never held in memory. A compressed shard (.tar.gz) cannot be seeked into, so its
images are kept as bytes.
"""

from __future__ import annotations

import functools
import json
import tarfile
from pathlib import Path

from picovlm.data.records import BadRecord, DamagedFile, ImageRef, Records, Sample, bad_record, parse_record, require

IMAGE_EXTENSIONS = {"jpg", "jpeg", "png", "webp", "bmp", "gif", "ppm", "tif", "tiff"}
PICKLE_EXTENSIONS = {"pyd", "pickle", "pkl", "pt", "pth"}
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")


def split_key(name: str) -> tuple[str, str]:
    """ "dir/abc.0.png" -> ("dir/abc", "0.png"): webdataset's key and extension."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _read_at(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


def _sample(
    shard: Path, key: str, members: dict[str, tarfile.TarInfo], texts: dict[str, bytes], data: dict[str, bytes] | None
) -> Sample:
    refused = sorted(ext for ext in members if ext.rpartition(".")[2] in PICKLE_EXTENSIONS)
    if refused:
        raise BadRecord(f"refusing pickle member {key}.{refused[0]} (unpickling can run code; store it as .json)")
    for ext, info in members.items():
        require(info.isfile(), f"member {key}.{ext} is a link or special file, not a regular file")
    names = sorted(ext for ext in members if ext.rpartition(".")[2] in IMAGE_EXTENSIONS)
    images = []
    for ext in names:
        info, label = members[ext], f"{shard}:{key}.{ext}"
        if data is None:  # uncompressed: read from the file when needed
            read = functools.partial(_read_at, shard, info.offset_data, info.size)
        else:
            read = functools.partial(data.__getitem__, ext)
        images.append(ImageRef(label, read))

    record: object = {}
    if "json" in texts:
        try:
            record = json.loads(texts["json"].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise BadRecord(f"{key}.json is not valid JSON ({e})") from None
        require(isinstance(record, dict), f"{key}.json must hold a JSON object, not {type(record).__name__}")
    if "txt" in texts:
        try:
            caption = texts["txt"].decode("utf-8").strip()
        except UnicodeDecodeError:
            raise BadRecord(f"{key}.txt is not UTF-8 text") from None
        if not any(k in record for k in ("conversations", "messages", "text")):
            record = {**record, "text": caption}
    require("json" in texts or "txt" in texts, "no .json or .txt member for this key")
    return parse_record(record, shard.parent, check_images=False, images=images)


Members = dict[str, dict[str, tarfile.TarInfo]]  # key -> extension -> member
Contents = dict[str, dict[str, bytes]]  # key -> extension -> bytes


def _scan(tar: tarfile.TarFile, compressed: bool) -> tuple[Members, Contents, Contents, str | None]:
    """One pass over the members in file order: texts read, images located (or read, if compressed).
    A damaged shard keeps what came before the damage, and says so."""
    members: Members = {}
    texts: Contents = {}
    data: Contents = {}
    try:
        for info in tar:
            if info.isdir():
                continue
            key, ext = split_key(info.name)
            members.setdefault(key, {})[ext] = info
            texts.setdefault(key, {})
            data.setdefault(key, {})
            if info.isfile() and ext in ("json", "txt"):
                texts[key][ext] = tar.extractfile(info).read()
            elif info.isfile() and compressed and ext.rpartition(".")[2] in IMAGE_EXTENSIONS:
                data[key][ext] = tar.extractfile(info).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        return members, texts, data, f"damaged shard ({type(e).__name__}: {e}); the rest of the file was not read"
    return members, texts, data, None


def _read_shard(shard: Path) -> Records:
    try:
        tar, compressed = tarfile.open(shard, "r:"), False  # uncompressed: images are read later by offset
    except tarfile.ReadError:
        try:
            tar, compressed = tarfile.open(shard, "r:*"), True
        except tarfile.ReadError as e:
            yield f"{shard}", functools.partial(bad_record, DamagedFile(f"not a readable tar file ({e})"))
            return
    with tar:
        members, texts, data, error = _scan(tar, compressed)
    for key, by_ext in members.items():
        yield (
            f"{shard}:{key}",
            functools.partial(_sample, shard, key, by_ext, texts[key], data[key] if compressed else None),
        )
    if error is not None:
        yield f"{shard}:end", functools.partial(bad_record, DamagedFile(error))


def read_shards(path: Path) -> Records:
    """The records of one shard, or of every shard in a folder (in name order)."""
    shards = sorted(p for p in path.iterdir() if p.name.lower().endswith(TAR_SUFFIXES)) if path.is_dir() else [path]
    for shard in shards:
        yield from _read_shard(shard)
