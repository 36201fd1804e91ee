"""picovlm VLM <-> HF `LlavaForConditionalGeneration` folder, weight for weight.

LLaVA is the same adapter architecture as ours: CLIP vision tower -> `linear_1, act, linear_2`
projector -> causal LM, with each `<image>` placeholder expanded to one token per patch (CLS
dropped: `vision_feature_select_strategy="default"`). So a picovlm model maps when its parts do:

  tower      our ViT in the CLIP layout (use_cls, pre_norm); sincos2d positions are written as
             CLIP's learned position table. HF towers (kind "hf") are not exported yet.
  projector  mlp2x_gelu (exactly LLaVA 1.5's), linear (linear_1 = ours, act = identity,
             linear_2 = identity matrix) and identity. pixel_shuffleR (merges 2x2 patches into one
             token: LLaVA has no such step; interop/internvl.py exports it), mlpNx_gelu with N > 2
             and "+pos" slot embeddings (no LLaVA weight to hold them) do not map, and export says
             so in one line.
  lm         our GPT: LlamaForCausalLM, or Qwen3ForCausalLM with qk_norm.
  text       without image_markers: LLaVA's processor writes no image start/end tokens.

The folder holds config.json (text_config / vision_config), model.safetensors, the tokenizer
with our chat template, and a LlavaProcessor (CLIP image processor with our resize/normalize,
image token `<|image|>`), so `AutoProcessor` + `LlavaForConditionalGeneration` run it as is.
`import_llava` reads such a folder back into a picovlm checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from picovlm.config import VisionConfig, VLMConfig
from picovlm.interop.hf_text import CHAT_TEMPLATE, hf_tokenizer
from picovlm.interop.mapping import (
    StateDict,
    fit_state_dict,
    gpt_config_from_hf,
    gpt_from_hf,
    gpt_hf_config,
    gpt_to_hf,
    gpt_unmappable,
    vit_config_from_hf,
    vit_from_hf,
    vit_hf_config,
    vit_state_for_export,
    vit_to_hf,
    vit_unmappable,
)
from picovlm.interop.vlm_folder import read_vlm_folder, save_imported, split_parts, vlm_canonical
from picovlm.models.vlm import VLM, load_vlm, reads
from picovlm.text.tokenizer import Tokenizer
from picovlm.text.tokens import IMAGE
from picovlm.vision.hf_tower import read_image_processor

EXPORTABLE_PROJECTORS = ("linear", "mlp2x_gelu", "identity")


def llava_unmappable(cfg: VLMConfig) -> str | None:
    """Why this VLM has no LLaVA twin, or None."""
    if reads(cfg):
        return f"the model also reads {', '.join(reads(cfg))}; an HF LLaVA folder holds an image path only"
    if cfg.vision.kind != "vit":
        return f"vision tower kind {cfg.vision.kind!r}: only our ViT (kind 'vit') is exported"
    if cfg.lm_kind != "gpt":
        return f"language model kind {cfg.lm_kind!r}: only our GPT (lm_kind 'gpt') is exported"
    if cfg.projector not in EXPORTABLE_PROJECTORS:
        return (
            f"projector {cfg.projector!r} has no LLaVA counterpart (LLaVA's is linear -> act -> linear; "
            f"exportable: {', '.join(EXPORTABLE_PROJECTORS)}; pixel_shuffleR: export as hf-internvl, "
            "or with '+pos' or a hybrid stem as hf-picovlm)"
        )
    if cfg.image_markers:
        return "image_markers=True: LLaVA's processor writes no image start/end tokens (export as hf-internvl)"
    why = vit_unmappable(cfg.vision.vit) or gpt_unmappable(cfg.lm)
    return why


def projector_to_hf(name: str, proj: torch.nn.Module, dim: int) -> tuple[dict[str, torch.Tensor], str]:
    """(linear_1/linear_2 tensors, act) of an exportable projector. LLaVA's is linear -> act -> linear,
    so one linear layer (or none, for identity) is written with act "linear" and identity matrices."""
    if name == "mlp2x_gelu":
        first, second = proj.net[0], proj.net[2]
        w = {"linear_1.weight": first.weight, "linear_1.bias": first.bias}
        return {**w, "linear_2.weight": second.weight, "linear_2.bias": second.bias}, "gelu"
    eye, zero = torch.eye(dim), torch.zeros(dim)
    w1, b1 = (proj.net[0].weight, proj.net[0].bias) if name == "linear" else (eye, zero)  # else identity
    return {"linear_1.weight": w1, "linear_1.bias": b1, "linear_2.weight": eye, "linear_2.bias": zero}, "linear"


def to_llava(model: VLM, tok: Tokenizer):
    """An in-memory `LlavaForConditionalGeneration` holding `model`'s weights."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    why = llava_unmappable(model.cfg)
    if why:
        raise ValueError(f"cannot export as hf-llava: {why}")
    projector, act = projector_to_hf(model.cfg.projector, model.projector, model.cfg.lm.n_embd)
    hf = LlavaForConditionalGeneration(LlavaConfig(**llava_config_args(model, tok, act)))
    vision = vit_to_hf(vit_state_for_export(model.tower))
    return load_llava_weights(hf, model, vision, projector)


def llava_config_args(model: VLM, tok: Tokenizer, act: str) -> dict[str, Any]:
    """The `LlavaConfig` arguments of `model` (its tower, LM, image token and projector act)."""
    cfg = model.cfg
    special = dict(bos_token_id=tok.bos_id, eos_token_id=tok.end_id, pad_token_id=tok.pad_id)
    return dict(
        vision_config=vit_hf_config(cfg.vision.vit),
        text_config=gpt_hf_config(cfg.lm, **special),
        image_token_index=tok.image_id,
        projector_hidden_act=act,
        vision_feature_select_strategy="default",
        vision_feature_layer=cfg.vision.vit.feature_layer,
        image_seq_length=model.tokens_per_image,
        multimodal_projector_bias=True,
        tie_word_embeddings=cfg.lm.tie_embeddings,
        **special,
    )


def load_llava_weights(hf, model: VLM, vision: StateDict, projector: StateDict):
    """`hf` (a LLaVA-layout model) with the tower's `vision` and the `projector` tensors under their HF
    names and `model`'s LM, every weight placed (`fit_state_dict`), in eval mode."""
    ours = {
        **{"vision." + k: v for k, v in vision.items()},
        **{"projector." + k: v for k, v in projector.items()},
        **{"text." + k: v for k, v in gpt_to_hf(model.lm.state_dict()).items()},
    }
    fitted = fit_state_dict(list(hf.state_dict()), ours, vlm_canonical)
    hf.load_state_dict({k: v.detach().clone().contiguous() for k, v in fitted.items()}, strict=False)
    if model.cfg.lm.tie_embeddings:
        hf.tie_weights()
    for k in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(hf.generation_config, k, getattr(hf.config.text_config, k))
    return hf.eval()


def llava_processor(model: VLM, tokenizer_file: Path, patch_size: int | None = None):
    """A `LlavaProcessor` that prepares images and text exactly as our `VLMProcessor` does. It writes
    (image side / `patch_size`)^2 tokens per image (default: the tower's patch size)."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    vit, ip = model.cfg.vision.vit, model.tower.processor
    size = {"height": ip.size, "width": ip.size}
    image_processor = CLIPImageProcessor(
        do_resize=True,
        size=size,
        resample=int(ip.resample),
        do_center_crop=False,  # ours squashes any aspect ratio to a square, it does not crop
        crop_size=size,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(ip.mean),
        image_std=list(ip.std),
        do_convert_rgb=True,
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=hf_tokenizer(tokenizer_file),
        patch_size=patch_size or vit.patch_size,
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE,
        num_additional_image_tokens=1,  # CLIP's CLS, which "default" then drops
    )


def export_llava(model_path: str | Path, out: str | Path) -> Path:
    """Write an HF LLaVA folder for the picovlm checkpoint at `model_path`."""
    model_path, out = Path(model_path), Path(out)
    model, tok = load_vlm(model_path)
    try:
        hf = to_llava(model, tok)
    except ValueError as e:
        raise ValueError(f"{model_path}: {e}") from None
    out.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(out, safe_serialization=True)
    llava_processor(model, model_path / "tokenizer.json").save_pretrained(out)
    return out


def import_llava(folder: str | Path, out: str | Path) -> Path:
    """Read an HF LLaVA folder (CLIP tower, Llama/Qwen3 LM, our tokenizer) into a picovlm checkpoint."""
    from transformers import LlavaForConditionalGeneration

    folder, out = Path(folder), Path(out)
    hf_cfg, tok = read_vlm_folder(folder, "llava")
    vcfg = hf_cfg.vision_config
    if vcfg.model_type not in ("clip_vision_model", "clip"):
        raise ValueError(f"{folder}: vision tower {vcfg.model_type!r}; only CLIP vision towers map onto our ViT")
    if hf_cfg.vision_feature_select_strategy != "default" or not isinstance(hf_cfg.vision_feature_layer, int):
        raise ValueError(f"{folder}: only vision_feature_select_strategy 'default' with one feature layer maps")
    ip = read_image_processor(folder, vcfg.image_size)
    vit = vit_config_from_hf(vcfg, hf_cfg.vision_feature_layer, ip.mean, ip.std)
    lm = gpt_config_from_hf(hf_cfg.text_config)
    parts = split_parts(LlavaForConditionalGeneration.from_pretrained(folder))
    projector, proj_sd = _projector_from_hf(hf_cfg.projector_hidden_act, parts["projector"], folder)
    cfg = VLMConfig(vision=VisionConfig(kind="vit", vit=vit), projector=projector, lm=lm)
    state = {
        **{"tower." + k: v for k, v in vit_from_hf(parts["vision"]).items()},
        **{"projector." + k: v for k, v in proj_sd.items()},
        **{"lm." + k: v for k, v in gpt_from_hf(parts["text"]).items()},
    }
    return save_imported(cfg, tok, state, folder, out)


def _projector_from_hf(act: str, sd: dict[str, torch.Tensor], folder: Path) -> tuple[str, dict[str, torch.Tensor]]:
    """(projector name, its state dict). A linear act is two linears in a row: folded into one."""
    w1, w2 = sd["linear_1.weight"], sd["linear_2.weight"]
    b1 = sd.get("linear_1.bias", torch.zeros(w1.shape[0]))
    b2 = sd.get("linear_2.bias", torch.zeros(w2.shape[0]))
    if act == "gelu":
        return "mlp2x_gelu", {"net.0.weight": w1, "net.0.bias": b1, "net.2.weight": w2, "net.2.bias": b2}
    if act == "linear":
        return "linear", {"net.0.weight": w2 @ w1, "net.0.bias": w2 @ b1 + b2}
    raise ValueError(f"{folder}: projector act {act!r} has no picovlm projector (gelu or linear)")


def describe(folder: Path) -> str:
    """A one-line summary of an exported folder, for the CLI."""
    cfg = json.loads((folder / "config.json").read_text())
    files = sorted(p.name for p in folder.iterdir())
    return f"{cfg.get('architectures', ['?'])[0]} in {folder} ({', '.join(files)})"
