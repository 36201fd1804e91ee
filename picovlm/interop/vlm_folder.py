"""What the two adapter-VLM formats (hf-llava, hf-internvl) share on the way back into picovlm.

Both HF classes wrap their parts alike (`vision_tower`, `multi_modal_projector`, `language_model`,
`lm_head`), and a folder `picovlm export` wrote carries our own tokenizer, so importing either is the
same four steps: check the folder and read our tokenizer (`read_vlm_folder`), split the HF weights by
part (`split_parts`), map each part, and save a checkpoint (`save_imported`). Only the maps differ.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from picovlm.checkpoint import save_checkpoint
from picovlm.config import VLMConfig
from picovlm.models.vlm import VLM, VLM_PARTS, vlm_checkpoint_config
from picovlm.text.tokenizer import Tokenizer
from picovlm.text.tokens import IMAGE

StateDict = dict[str, torch.Tensor]


def vlm_canonical(key: str) -> str:
    """An HF adapter-VLM key without its version-dependent wrappers: vision.*, projector.*, text.*
    (LLaVA nests the LM under `model.language_model.` in memory and `language_model.model.` on disk,
    and CLIP under `vision_model.` in transformers 4)."""
    for marker, tag in (("vision_tower.", "vision."), ("multi_modal_projector.", "projector.")):
        if marker in key:
            return tag + key.split(marker, 1)[1].removeprefix("vision_model.")
    if "lm_head." in key:
        return "text.lm_head." + key.split("lm_head.", 1)[1]
    if "language_model." in key:
        return "text.model." + key.split("language_model.", 1)[1].removeprefix("model.")
    return key


def read_vlm_folder(folder: Path, model_type: str):
    """(HF config, our Tokenizer) of an HF folder of `model_type` that holds picovlm's tokenizer;
    otherwise one line why."""
    from transformers import AutoConfig

    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: no config.json; expected an HF {model_type} folder")
    hf_cfg = AutoConfig.from_pretrained(folder)
    if hf_cfg.model_type != model_type:
        raise ValueError(f"{folder}: a {hf_cfg.model_type!r} model, not {model_type}")
    try:
        tok = Tokenizer.load(folder / "tokenizer.json")
    except ValueError as e:
        raise ValueError(f"{e}; importing a {model_type} with a foreign tokenizer is not supported") from None
    image_id = hf_cfg.image_token_index if hasattr(hf_cfg, "image_token_index") else hf_cfg.image_token_id
    if image_id != tok.image_id:
        raise ValueError(f"{folder}: image token id {image_id} is not the tokenizer's {IMAGE} ({tok.image_id})")
    return hf_cfg, tok


def split_parts(hf: torch.nn.Module) -> dict[str, StateDict]:
    """The HF model's weights by part ("vision", "projector", "text"), under their canonical names."""
    parts: dict[str, StateDict] = {"vision": {}, "projector": {}, "text": {}}
    for key, value in hf.state_dict().items():
        tag, _, rest = vlm_canonical(key).partition(".")
        parts[tag][rest] = value
    return parts


def save_imported(cfg: VLMConfig, tok: Tokenizer, state: StateDict, folder: Path, out: Path) -> Path:
    """Build the VLM of `cfg`, load `state` (every weight must fit) and save it as a checkpoint at `out`."""
    model = VLM(cfg, tok.image_id)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{folder}: weights do not fit picovlm ({(missing or unexpected)[0]})")
    config = {**vlm_checkpoint_config(model), "source": str(folder)}
    with tempfile.TemporaryDirectory() as tmp:  # save_checkpoint copies one self-contained tokenizer file
        plain = Path(tmp) / "tokenizer.json"
        tok.save(plain)
        save_checkpoint(out, model, config, VLM_PARTS, {}, plain)
    return out
