"""Checkpoints: one folder per model, safetensors per part, written atomically, self-contained.

    model/
      config.json        what to build ({"task", "model", "image_token_id", "parts", ...})
      tower.safetensors  one file per part, keys relative to the part
      lm.safetensors
      tokenizer.json
      tokenizer.chat_template.json   only with an HF LM that has its own chat template
      trainer_state.pt   optimizer, schedule step, RNG and data position (for resuming only)

A part that was frozen and inherited unchanged from an earlier stage is hard-linked from that
stage's file (copied where the file system has no hard links): a 3-stage run still stores its tower
once, and yet every folder holds all its files, so it can be copied or moved on its own, and
running an earlier stage again does not change a later stage's model. (Checkpoints written before
this map such a part to the earlier file by a relative path; they still load.)
A frozen pretrained part that the config rebuilds from its own folder (a locked HF text encoder in a
CLIP stage) is not stored at all: `parts` maps it to null.

Atomicity: everything is written into `model.tmp/`, which becomes `model.new/` once complete; then
`model/` is set aside as `model.old/`, `model.new/` takes its place, and `model.old/` is deleted.
Whatever moment a crash picks, a complete copy is left, and `recover_checkpoint` (run before every
save and every resume) puts the newest one back in place; a `.tmp` folder is never loaded.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from picovlm.text.tokenizer import chat_template_file

CONFIG = "config.json"
TRAINER_STATE = "trainer_state.pt"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read (truncated, overwritten): the message names the file."""


# the empty prefix starts every parameter name, so the part that has it takes whatever no part with a
# longer prefix claims (CLIP's "clip" part: both projections, the temperature, its own text encoder)
EVERYTHING_ELSE = ""


def part_of(key: str, parts: dict[str, str]) -> str:
    """Which part a parameter belongs to: the one whose prefix is the longest that starts its name.
    `parts` maps a part's name to the prefix of its parameter names ("tower." or `EVERYTHING_ELSE`)."""
    claims = [(len(prefix), name) for name, prefix in parts.items() if key.startswith(prefix)]
    if not claims:
        raise KeyError(f"parameter {key} belongs to no part of {sorted(parts)}")
    return max(claims)[1]


def part_state(
    model: nn.Module, parts: dict[str, str], name: str, state_dict: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """The tensors of one part (of `state_dict`, default the model's), prefix removed, tied duplicates
    dropped (safetensors refuses them)."""
    prefix, out, seen = parts[name], {}, set()
    for key, t in (state_dict if state_dict is not None else model.state_dict(keep_vars=True)).items():
        if part_of(key, parts) != name:
            continue
        if t.data_ptr() in seen:  # e.g. a tied lm_head: restored by the tie itself
            continue
        seen.add(t.data_ptr())
        out[key[len(prefix) :]] = t.detach().cpu().contiguous()
    return out


def read_tensors(file: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a damaged one is a CheckpointError naming it, not a SafetensorError."""
    try:
        return load_file(file)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{file}: {_damaged(e)}") from None


@contextmanager
def naming_damaged_weights(folder: str | Path) -> Iterator[None]:
    """Around a pretrained folder's loading (transformers' `from_pretrained`): a damaged safetensors
    file in it is a CheckpointError naming the file, not a SafetensorError traceback naming nothing."""
    try:
        yield
    except SafetensorError as e:
        files = sorted(Path(folder).glob("*.safetensors"))
        raise CheckpointError(f"{next((f for f in files if not _readable(f)), folder)}: {_damaged(e)}") from None


def _readable(file: Path) -> bool:
    """Whether a safetensors file's header reads and covers the file (no tensor is loaded)."""
    try:
        with safe_open(file, framework="pt"):
            return True
    except (SafetensorError, OSError):
        return False


def _damaged(e: Exception) -> str:
    """The one line that says a file is damaged, with the first sentence of what the reader said."""
    said = str(e).split(". ")[0].replace("\n", " ")
    return f"damaged or incomplete file ({type(e).__name__}: {said[:120]})"


def load_part(model: nn.Module, parts: dict[str, str], name: str, file: Path) -> None:
    """Load one part's file into the model, checking that every key of the part is there."""
    if not file.is_file():
        raise FileNotFoundError(f"{file}: weights of part {name!r} not found")
    stored = read_tensors(file)
    missing = set(part_state(model, parts, name)) - set(stored)
    if missing:
        raise ValueError(f"{file}: missing {len(missing)} tensors of part {name!r}, e.g. {sorted(missing)[0]}")
    _, unexpected = model.load_state_dict({parts[name] + k: v for k, v in stored.items()}, strict=False)
    if unexpected:
        raise ValueError(f"{file}: {len(unexpected)} unexpected tensors, e.g. {unexpected[0]}")


def save_checkpoint(
    out: Path,
    model: nn.Module,
    config: dict[str, Any],
    parts: dict[str, str],
    inherited: dict[str, Path],
    tokenizer_file: Path,
    *,
    trainer_state: dict[str, Any] | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
    write_files: Callable[[Path], None] | None = None,
    rebuilt: tuple[str, ...] = (),
) -> None:
    """Write `out/` atomically. Parts in `inherited` (part -> existing file) are linked, not written
    again; parts in `rebuilt` are not stored (frozen pretrained parts: loading rebuilds them from the
    folder the config names). `state_dict` replaces the model's own (a LoRA stage saves merged weights);
    `write_files(folder)` adds files to the folder before it is published (the LoRA adapters)."""
    out = Path(out)
    recover_checkpoint(out)  # so that, whatever happens next, a complete copy stays in place
    tmp = _sibling(out, "tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    files: dict[str, str | None] = {}
    for name in parts:
        files[name] = None if name in rebuilt else f"{name}.safetensors"
        if name in rebuilt:
            continue
        if name in inherited:
            _link(Path(inherited[name]), tmp / files[name])
        else:
            save_file(part_state(model, parts, name, state_dict), tmp / files[name])
    (tmp / CONFIG).write_text(json.dumps({**config, "parts": files, "part_prefixes": parts}, indent=2) + "\n")
    shutil.copyfile(tokenizer_file, tmp / "tokenizer.json")
    template = chat_template_file(tokenizer_file)
    if template.is_file():  # an HF LM's own chat template travels with its tokenizer
        shutil.copyfile(template, chat_template_file(tmp / "tokenizer.json"))
    if trainer_state is not None:
        torch.save(trainer_state, tmp / TRAINER_STATE)
    if write_files is not None:
        write_files(tmp)
    _publish(tmp, out)


def _link(source: Path, target: Path) -> None:
    """`target` as a hard link to `source` (no bytes copied), or a copy where links are not possible."""
    try:
        os.link(source.resolve(), target)
    except OSError:  # another file system, or one without hard links
        shutil.copyfile(source, target)


def _sibling(out: Path, suffix: str) -> Path:
    return out.with_name(f"{out.name}.{suffix}")


def _publish(tmp: Path, out: Path) -> None:
    """Put the finished folder `tmp` in the place of `out`: its bytes made durable, then renamed to
    `.new` (complete, not yet in place), then swapped in."""
    for f in (f for f in tmp.rglob("*") if f.is_file()):
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    new = _sibling(out, "new")
    tmp.rename(new)
    _swap_in(new, out)


def _swap_in(new: Path, out: Path) -> None:
    """`new` (complete) becomes `out`; the previous `out` is set aside as `.old` until then."""
    old = _sibling(out, "old")
    shutil.rmtree(old, ignore_errors=True)  # only a copy older than `new`, which is complete
    if out.exists():
        out.rename(old)
    new.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def recover_checkpoint(out: Path) -> None:
    """Put back in place the newest complete copy of `out` that an interrupted save left: `.new`
    (finished, not yet renamed into place), else `.old` when `out` itself is gone (set aside, its
    successor not yet in place). A `.tmp` folder may be half-written and is left alone."""
    out = Path(out)
    new, old = _sibling(out, "new"), _sibling(out, "old")
    if new.is_dir():
        _swap_in(new, out)
    elif old.is_dir() and not out.exists():
        old.rename(out)


def read_config(ckpt: Path) -> dict[str, Any]:
    path = Path(ckpt) / CONFIG
    if not path.is_file():
        left = [p for p in (_sibling(Path(ckpt), "new"), _sibling(Path(ckpt), "old")) if (p / CONFIG).is_file()]
        hint = f"; an interrupted save left {left[0]}, which `train --resume` puts back" if left else ""
        raise FileNotFoundError(f"{ckpt}: not a picovlm checkpoint (no {CONFIG}){hint}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt config ({e})") from None


def part_files(ckpt: Path) -> dict[str, Path]:
    """Absolute file of each stored part of a checkpoint (following references to earlier stages); the
    parts that are not stored (frozen pretrained ones, rebuilt from their folder) are left out."""
    cfg = read_config(ckpt)
    return {name: (Path(ckpt) / rel).resolve() for name, rel in cfg["parts"].items() if rel is not None}


def load_weights(model: nn.Module, ckpt: Path) -> None:
    cfg = read_config(ckpt)
    for name, file in part_files(ckpt).items():
        load_part(model, cfg["part_prefixes"], name, file)


def load_trainer_state(ckpt: Path) -> dict[str, Any]:
    path = Path(ckpt) / TRAINER_STATE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as e:
        raise CheckpointError(f"{path}: {_damaged(e)}; delete {ckpt} to train the stage from its start") from None
