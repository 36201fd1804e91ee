"""the_cauldron layout (HuggingFaceM4/the_cauldron) -> samples, read with `datasets` from local files.

Each row is {"images": [image, ...], "texts": [{"user": str, "assistant": str, "source": str}, ...]}:
one conversation, its images shown before the first question (the layout has no placeholders,
and Idefics2, which it was made for, puts them there too).

Accepted: a folder written by `Dataset.save_to_disk`, one `.arrow` file, one `.parquet` file or a
folder of them. `datasets` is imported only here, only when such data is read (`pip install
picovlm[data]`). Rows are read as Arrow, so no image is decoded at load time; each sample keeps an
`ImageRef` into the memory-mapped dataset and the image is read when a batch needs it.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from picovlm.data.records import (
    BadRecord,
    DataError,
    ImageRef,
    ImageSource,
    Records,
    Sample,
    chat_messages,
    check_image,
    require,
)

COLUMNS = ("images", "texts")
_CHUNK = 256  # rows converted to Python at a time while checking


def open_dataset(path: Path) -> Any:
    """A `datasets.Dataset` (memory-mapped Arrow) from a local file or folder; never the hub."""
    try:
        import datasets
    except ImportError:
        raise ImportError(f"{path}: reading the_cauldron layout needs `datasets` (pip install picovlm[data])") from None
    if path.is_dir() and (path / "dataset_dict.json").is_file():
        splits = sorted(p.name for p in path.iterdir() if p.is_dir())
        raise DataError(f"{path}: a DatasetDict with splits {splits}: give one split's folder, e.g. {path / splits[0]}")
    parquet = sorted(path.glob("*.parquet")) if path.is_dir() else [path] if path.suffix == ".parquet" else []
    if parquet:
        return datasets.load_dataset("parquet", data_files=[str(p) for p in parquet], split="train")
    if path.suffix == ".arrow":
        return datasets.Dataset.from_file(str(path))
    if path.is_dir() and not (path / "state.json").is_file() and any(path.glob("*.arrow")):
        return datasets.concatenate_datasets([datasets.Dataset.from_file(str(p)) for p in sorted(path.glob("*.arrow"))])
    return datasets.load_from_disk(str(path))


def _image_value(cell: Any, root: Path) -> bytes | Path:
    """An images-column cell (Arrow form of datasets' Image: {"bytes", "path"}; or raw bytes; or a path)."""
    if isinstance(cell, dict):
        if cell.get("bytes"):
            return cell["bytes"]
        if cell.get("path"):
            return root / cell["path"]
    if isinstance(cell, bytes) and cell:
        return cell
    if isinstance(cell, str) and cell:
        return root / cell
    raise ValueError("an image with neither bytes nor a path")


def _read_cell(table: Any, row: int, k: int, root: Path) -> bytes | Path:
    return _image_value(table[row].column("images")[0][k].as_py(), root)


def _sample(table: Any, path: Path, row: int, images: Any, texts: Any, root: Path, check_images: bool) -> Sample:
    try:
        return _parse_row(table, path, row, images, texts, root, check_images)
    except BadRecord as e:
        e.record = {"texts": texts}  # the images are bytes: the rejects file names them by row
        raise


def _parse_row(table: Any, path: Path, row: int, images: Any, texts: Any, root: Path, check_images: bool) -> Sample:
    require(isinstance(images, list), "'images' must be a list")
    require(isinstance(texts, list) and len(texts) > 0, "'texts' must be a non-empty list")
    refs: list[ImageSource] = []
    for k, cell in enumerate(images):
        try:
            value = _image_value(cell, root)
        except ValueError as e:
            require(False, f"image {k}: {e}")
        if check_images:
            check_image(value, f"{path}:row {row} image {k}" if isinstance(value, bytes) else value)
        refs.append(ImageRef(f"{path}:row {row} image {k}", functools.partial(_read_cell, table, row, k, root)))
    turns = []
    for i, t in enumerate(texts):
        valid = isinstance(t, dict) and isinstance(t.get("user"), str) and isinstance(t.get("assistant"), str)
        require(valid, f"texts[{i}] needs string 'user' and 'assistant'")
        turns += [("user", t["user"]), ("assistant", t["assistant"])]
    require(not any("<image>" in text for _, text in turns), "texts hold an <image> placeholder; this layout has none")
    if refs:  # the images go before the first question
        turns[0] = ("user", "<image>" * len(refs) + "\n" + turns[0][1])
    messages = chat_messages(turns, len(refs), what="text turn")
    meta: dict[str, Any] = {"kind": "chat"}
    if isinstance(texts[0].get("source"), str):
        meta["subset"] = texts[0]["source"]
    return Sample(refs, messages, meta)


def read_cauldron(path: Path, root: Path, check_images: bool = True) -> Records:
    """The rows of a the_cauldron-style dataset, in order; rows read a chunk at a time."""
    ds = open_dataset(path)
    missing = [c for c in COLUMNS if c not in ds.column_names]
    if missing:
        raise DataError(f"{path}: not the_cauldron layout: no column(s) {missing} (columns: {ds.column_names})")
    table = ds.with_format("arrow")  # rows as Arrow tables: image cells stay {"bytes", "path"}, undecoded
    for start in range(0, len(table), _CHUNK):
        chunk = table[start : start + _CHUNK]
        images, texts = chunk.column("images").to_pylist(), chunk.column("texts").to_pylist()
        for j, (ims, txt) in enumerate(zip(images, texts, strict=True)):
            row = start + j
            yield f"{path}:row {row}", functools.partial(_sample, table, path, row, ims, txt, root, check_images)
