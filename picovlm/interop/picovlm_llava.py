"""picovlm VLM -> an HF folder that transformers runs as LLaVA plus picovlm's own stem and projector.

Why: the demo's model has a tower with the hybrid stem (a CNN on luminance beside the patch conv) and
a `pixel_shuffle2+pos` projector. Neither transformers' LLaVA (one patch conv; linear -> act -> linear)
nor its InternVL (pixel shuffle, but a plain patch conv, no slot vectors, no pre-LayerNorm) holds them,
and the exportable layouts cost the demo its shape accuracy (docs/experiments.md). So `hf-picovlm`
writes a LLaVA folder (`model_type` "picovlm_llava") with the two missing modules as code beside the
weights, interop/modeling_picovlm.py, which config.json names in `auto_map`: transformers' usual way
for a model its library lacks, loaded with `trust_remote_code=True`. Everything else in the folder is
the hf-llava export's (CLIP vision encoder, Llama or Qwen3, our tokenizer and chat template, a stock
`LlavaProcessor` that writes each image as its tokens after the pixel shuffle).

  tower      our ViT in the CLIP layout (use_cls, pre_norm), stem "patch" or "hybrid"
  projector  mlp2x_gelu, linear, identity or pixel_shuffleR, each with or without "+pos"
  lm         our GPT: Llama, or Qwen3 with qk_norm
  text       without image_markers (LLaVA's processor writes no image start/end tokens)
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import torch

from picovlm.config import VLMConfig
from picovlm.interop.internvl import shuffle_factor
from picovlm.interop.llava import (
    EXPORTABLE_PROJECTORS,
    llava_config_args,
    llava_processor,
    load_llava_weights,
    projector_to_hf,
)
from picovlm.interop.mapping import (
    gpt_unmappable,
    vit_state_for_export,
    vit_to_hf,
    vit_unmappable,
)
from picovlm.models.vlm import VLM, load_vlm, reads
from picovlm.text.tokenizer import Tokenizer

REMOTE_CODE = Path(__file__).with_name("modeling_picovlm.py")
AUTO_MAP = {
    "AutoConfig": "modeling_picovlm.PicoVLMConfig",
    "AutoModelForImageTextToText": "modeling_picovlm.PicoVLMForConditionalGeneration",
}
STEMS = ("patch", "hybrid")


def picovlm_llava_unmappable(cfg: VLMConfig) -> str | None:
    """Why this VLM cannot be written as hf-picovlm, or None."""
    if reads(cfg):
        return f"the model also reads {', '.join(reads(cfg))}; an HF LLaVA folder holds an image path only"
    if cfg.vision.kind != "vit" or cfg.lm_kind != "gpt":
        return "only our ViT tower (kind 'vit') and our GPT (lm_kind 'gpt') are exported"
    base = cfg.projector.removesuffix("+pos")
    if base not in EXPORTABLE_PROJECTORS and shuffle_factor(base) is None:
        exportable = ", ".join(EXPORTABLE_PROJECTORS)
        return f"projector {cfg.projector!r}: exportable are {exportable} and pixel_shuffleR, each with or without +pos"
    if cfg.image_markers:
        return "image_markers=True: LLaVA's processor writes no image start/end tokens (export as hf-internvl)"
    vit = cfg.vision.vit
    if vit.stem not in STEMS:
        return f"stem {vit.stem!r}: exportable stems are {', '.join(STEMS)}"
    return vit_unmappable(dataclasses.replace(vit, stem="patch")) or gpt_unmappable(cfg.lm)


def _projector(model: VLM) -> tuple[dict[str, torch.Tensor], str, dict[str, int | bool]]:
    """(the projector's tensors under PicoVLMProjector's names, its act, its PicoVLMConfig fields)."""
    name, proj, dim = model.cfg.projector, model.projector, model.cfg.lm.n_embd
    extra, slots = {}, 0
    if name.endswith("+pos"):
        extra["slots"], slots = proj.pos, proj.pos.shape[0]
        name, proj = name.removesuffix("+pos"), proj.inner
    r = shuffle_factor(name) or 1
    if r > 1:  # LayerNorm -> the two linears of an mlp2x_gelu
        extra |= {"layer_norm.weight": proj.norm.weight, "layer_norm.bias": proj.norm.bias}
        name, proj = "mlp2x_gelu", proj.mlp
    weights, act = projector_to_hf(name, proj, dim)
    return {**weights, **extra}, act, {"pixel_shuffle": r, "projector_norm": r > 1, "slot_embeddings": slots}


def _tower(model: VLM) -> tuple[dict[str, torch.Tensor], list[int]]:
    """(the tower's tensors under CLIP's names, the hybrid stem's conv widths or [] for a patch stem)."""
    sd = vit_state_for_export(model.tower)
    if model.cfg.vision.vit.stem == "patch":
        return vit_to_hf(sd), []
    stem = {k: sd.pop(k) for k in [k for k in sd if k.startswith("patch_embed.")]}
    sd["patch_embed.weight"] = stem.pop("patch_embed.patch.weight")  # CLIP's patch conv, renamed below
    out = vit_to_hf(sd)
    out["embeddings.patch_embedding.patch.weight"] = out.pop("embeddings.patch_embedding.weight")
    out |= {"embeddings.patch_embedding." + k.removeprefix("patch_embed."): v for k, v in stem.items()}
    convs = model.tower.patch_embed.convs[::2]
    return out, [convs[0].in_channels, *(c.out_channels for c in convs)]


def to_picovlm_llava(model: VLM, tok: Tokenizer):
    """An in-memory `PicoVLMForConditionalGeneration` holding `model`'s weights."""
    from picovlm.interop import modeling_picovlm as remote  # imports transformers

    why = picovlm_llava_unmappable(model.cfg)
    if why:
        raise ValueError(f"cannot export as hf-picovlm: {why}")
    projector, act, shape = _projector(model)
    vision, stem_widths = _tower(model)
    config = remote.PicoVLMConfig(stem_widths=stem_widths, **shape, **llava_config_args(model, tok, act))
    config.auto_map = AUTO_MAP
    return load_llava_weights(remote.PicoVLMForConditionalGeneration(config), model, vision, projector)


def export_picovlm_llava(model_path: str | Path, out: str | Path) -> Path:
    """Write an hf-picovlm folder for the picovlm checkpoint at `model_path`: weights, config (with
    `auto_map`), modeling_picovlm.py, tokenizer, chat template and a stock LlavaProcessor."""
    model_path, out = Path(model_path), Path(out)
    model, tok = load_vlm(model_path)
    try:
        hf = to_picovlm_llava(model, tok)
    except ValueError as e:
        raise ValueError(f"{model_path}: {e}") from None
    out.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(out, safe_serialization=True)
    shutil.copyfile(REMOTE_CODE, out / REMOTE_CODE.name)
    # the processor counts an image's tokens from its patch grid: one token per r x r block of patches
    patch = model.cfg.vision.vit.patch_size * hf.config.pixel_shuffle
    llava_processor(model, model_path / "tokenizer.json", patch).save_pretrained(out)
    return out
