"""The codes file that `picovlm vq encode` writes and `picovlm vq decode` reads: JSON lines,

    {"image": "images/test_000000.png", "grid": [16, 16], "codes": [17, 3, 3, ...]}

one per image, the codes row by row. The grid travels with the codes so that a file is readable
without the tokenizer; decoding checks it against the tokenizer's.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import torch

from picovlm.vq.tokenizer import ImageTokenizer


def write_codes(path: str | Path, names: list[str], ids: torch.Tensor, grid: tuple[int, int]) -> None:
    """One line per image: its name, the grid and its codes (`ids` [B, rows * columns])."""
    lines = (
        json.dumps({"image": n, "grid": list(grid), "codes": row}) for n, row in zip(names, ids.tolist(), strict=True)
    )
    Path(path).write_text("".join(line + "\n" for line in lines))


def png_names(names: list[str]) -> list[str]:
    """A PNG file name for each image name: its stem, numbered where two stems are the same."""
    stems = [Path(n).stem or "image" for n in names]
    repeated = {s for s, n in Counter(stems).items() if n > 1}
    return [f"{s}_{k}.png" if s in repeated else f"{s}.png" for k, s in enumerate(stems)]


def read_codes(path: str | Path, tokenizer: ImageTokenizer) -> tuple[list[str], torch.Tensor]:
    """(names, ids [B, tokens_per_image]) of a codes file, each line checked against `tokenizer`;
    a bad line is a one-line error naming it ("file:line")."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: codes file not found")
    names, rows = [], []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: invalid JSON ({e.msg})") from None
        codes = record.get("codes") if isinstance(record, dict) else None
        if not isinstance(codes, list) or not all(isinstance(c, int) and not isinstance(c, bool) for c in codes):
            raise ValueError(f"{where}: 'codes' must be a list of integers")
        if record.get("grid", list(tokenizer.grid)) != list(tokenizer.grid):
            raise ValueError(f"{where}: grid {record['grid']} is not this tokenizer's {list(tokenizer.grid)}")
        ids = torch.tensor([codes], dtype=torch.long)
        tokenizer.check_codes(ids, where)
        names.append(str(record.get("image", f"image_{len(names):06d}")))
        rows.append(ids)
    if not rows:
        raise ValueError(f"{path}: no codes in the file")
    return names, torch.cat(rows)
