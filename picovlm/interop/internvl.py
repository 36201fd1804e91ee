"""picovlm VLM <-> HF `InternVLForConditionalGeneration` folder, weight for weight.

InternVL is the adapter architecture with a pixel-shuffle connector, which is ours: ViT ->
hidden_states[vision_feature_layer], CLS dropped -> pixel shuffle (each r x r block of patches becomes one
token, r = 1 / downsample_ratio) -> LayerNorm -> linear -> GELU -> linear -> causal LM. Its processor
writes each image as `<img>` + N x `<IMG_CONTEXT>` + `</img>`, which is our `image_markers` layout:
the exported tokenizer names <|image_start|>, <|image|> and <|image_end|> as those three. So a picovlm
model maps when its parts do:

  tower      our ViT with stem "patch", use_cls and pre_norm=False (InternVL's vision model has a CLS
             token, one strided conv and learned positions, and no LayerNorm before its first block).
             Its blocks are pre-LN like ours, with a layer-scale vector on each branch (written as ones)
             and a bias on the patch conv (zeros); sincos2d positions are written as the learned table;
             our post_norm becomes its final layernorm, which InternVL applies only to the last hidden
             state (vision_feature_layer -1), so feature_layer is written as a non-negative index.
  projector  pixel_shuffleR for R a power of two (transformers checks the grid against the float ratio
             1/R). Its token and feature order is ours, so the weights go over as they are. "+pos" slot
             embeddings, c_abstractorR and the LLaVA projectors (mlpNx_gelu, linear, identity) do not map.
  lm         our GPT: LlamaModel, or Qwen3Model with qk_norm.
  text       image_markers on, with a tokenizer that has the markers.

The folder holds config.json, model.safetensors, the tokenizer with our chat template and the processor
(InternVLProcessor; its GotOcr2 image processor set to our resize and normalization, one tile per image),
so `AutoProcessor` + `InternVLForConditionalGeneration` run it as is. The processor's files are written
one by one rather than by `InternVLProcessor.save_pretrained`: transformers builds that processor only
together with a video processor, which needs torchvision even for images, and picovlm does not need it.
`import_internvl` reads such a folder back into a picovlm checkpoint, also after training in
transformers: learned layer scales and patch bias are folded into our weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from picovlm.config import VisionConfig, ViTConfig, VLMConfig
from picovlm.interop.hf_text import hf_tokenizer
from picovlm.interop.mapping import (
    StateDict,
    fit_state_dict,
    gpt_config_from_hf,
    gpt_from_hf,
    gpt_hf_config,
    gpt_to_hf,
    gpt_unmappable,
    swap_prefix,
    vit_state_for_export,
)
from picovlm.interop.vlm_folder import read_vlm_folder, save_imported, split_parts, vlm_canonical
from picovlm.models.vlm import VLM, load_vlm, reads
from picovlm.text.tokenizer import Tokenizer
from picovlm.text.tokens import IMAGE, IMAGE_END, IMAGE_START, PAD
from picovlm.vision.hf_tower import read_image_processor

_BLOCK = [  # (ours, InternVL) inside one block; "self_attn.out_proj." must be tried before "self_attn."
    ("layer_norm1.", "layernorm_before."),
    ("layer_norm2.", "layernorm_after."),
    ("self_attn.out_proj.", "attention.projection_layer."),
    ("self_attn.", "attention."),
    ("fc1.", "mlp.fc1."),
    ("fc2.", "mlp.fc2."),
]
_TOP = [  # (ours, InternVL) outside the blocks; InternVL's cls_token and positions have leading 1s
    ("patch_embed.weight", "embeddings.patch_embeddings.projection.weight"),
    ("cls_token", "embeddings.cls_token"),
    ("pos_embed", "embeddings.position_embeddings"),
    ("post_norm.", "layernorm."),
]
_PROJECTOR = [("norm.", "layer_norm."), ("mlp.net.0.", "linear_1."), ("mlp.net.2.", "linear_2.")]
_PATCH_BIAS = "embeddings.patch_embeddings.projection.bias"


def _back(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(new, old) for old, new in pairs]


def shuffle_factor(projector: str) -> int | None:
    """R of a plain "pixel_shuffleR" projector name, else None."""
    digits = projector.removeprefix("pixel_shuffle")
    return int(digits) if projector.startswith("pixel_shuffle") and digits.isdigit() else None


def internvl_unmappable(cfg: VLMConfig) -> str | None:
    """Why this VLM has no InternVL twin, or None."""
    if reads(cfg):
        return f"the model also reads {', '.join(reads(cfg))}; an HF InternVL folder holds an image path only"
    if cfg.vision.kind != "vit":
        return f"vision tower kind {cfg.vision.kind!r}: only our ViT (kind 'vit') is exported"
    if cfg.lm_kind != "gpt":
        return f"language model kind {cfg.lm_kind!r}: only our GPT (lm_kind 'gpt') is exported"
    r = shuffle_factor(cfg.projector)
    if r is None:
        return (
            f"projector {cfg.projector!r} has no InternVL counterpart (InternVL's is pixel shuffle -> LayerNorm -> "
            "linear -> GELU -> linear: pixel_shuffleR, without '+pos' slot embeddings; those export as hf-picovlm)"
        )
    if r & (r - 1):
        return (
            f"projector {cfg.projector!r}: transformers' InternVL takes the ratio 1/{r} as a float and accepts "
            "powers of two only"
        )
    vit = cfg.vision.vit
    if vit.stem != "patch":
        return (
            f"stem {vit.stem!r}: InternVL's vision model embeds patches with one strided conv (stem 'patch'); "
            "the hybrid stem exports as hf-picovlm"
        )
    if not vit.use_cls:
        return "use_cls=False: InternVL's vision model always has a CLS token"
    if vit.pre_norm:
        return "pre_norm=True: InternVL's vision model has no LayerNorm before its first block"
    if vit.act not in ("gelu", "quick_gelu"):
        return f"act {vit.act!r} has no InternVL counterpart"
    if not cfg.image_markers:
        return "image_markers=False: InternVL's processor puts <img> ... </img> around every image"
    return gpt_unmappable(cfg.lm)


# --- ViT <-> InternVLVisionModel ---------------------------------------------------------------------


def internvl_vision_config(cfg: ViTConfig):
    from transformers import InternVLVisionConfig

    return InternVLVisionConfig(
        hidden_size=cfg.n_embd,
        intermediate_size=int(cfg.n_embd * cfg.mlp_ratio),
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        hidden_act=cfg.act,
        layer_norm_eps=cfg.norm_eps,
        attention_bias=True,  # our q/k/v projections have biases
        use_qk_norm=False,
        norm_type="layer_norm",
        layer_scale_init_value=1.0,
        use_absolute_position_embeddings=True,
        use_mean_pooling=False,  # keeps the final layernorm, where our post_norm goes
        use_mask_token=False,
    )


def vit_to_internvl(vit: torch.nn.Module) -> StateDict:
    """Our ViT's weights under `InternVLVisionModel` keys, with unit layer scales and a zero patch bias."""
    sd, dim = vit_state_for_export(vit), vit.cfg.n_embd
    out = {_PATCH_BIAS: torch.zeros(dim)}
    for key, value in sd.items():
        if key.startswith("blocks."):
            _, i, rest = key.split(".", 2)
            out[f"encoder.layer.{i}.{swap_prefix(rest, _BLOCK, key)}"] = value
        else:
            out[swap_prefix(key, _TOP, key)] = value
    out["embeddings.cls_token"] = out["embeddings.cls_token"].view(1, 1, dim)
    out["embeddings.position_embeddings"] = out["embeddings.position_embeddings"][None]
    for i in range(vit.cfg.n_layer):
        out |= {f"encoder.layer.{i}.lambda_{k}": torch.ones(dim) for k in (1, 2)}
    return out


def vit_from_internvl(sd: StateDict) -> StateDict:
    """The inverse of `vit_to_internvl`. Layer scales are folded into the linear layer before them
    (lambda * (W x + b) = (lambda W) x + lambda b) and the patch bias into the patch positions, so a tower
    trained in transformers comes back exactly; a missing q/k/v bias (attention_bias=False) is zero and a
    missing final layernorm (use_mean_pooling) the identity."""
    out, scales = {}, {}
    for key, value in sd.items():
        if key in ("embeddings.mask_token", _PATCH_BIAS):  # masked image modelling only; folded below
            continue
        if key.startswith("encoder.layer."):
            _, _, i, rest = key.split(".", 3)
            if rest.startswith("lambda_"):
                scales[f"blocks.{i}.{'self_attn.out_proj' if rest == 'lambda_1' else 'fc2'}"] = value
            else:
                out[f"blocks.{i}.{swap_prefix(rest, _back(_BLOCK), key)}"] = value
        else:
            out[swap_prefix(key, _back(_TOP), key)] = value
    dim = out["cls_token"].numel()
    out["cls_token"] = out["cls_token"].reshape(dim)
    out["pos_embed"] = out["pos_embed"][0].clone()
    out["pos_embed"][1:] += sd.get(_PATCH_BIAS, 0)  # the bias is added to every patch, never to CLS
    for linear, scale in scales.items():
        out[f"{linear}.weight"] = scale[:, None] * out[f"{linear}.weight"]
        out[f"{linear}.bias"] = scale * out[f"{linear}.bias"]
    for i in {key.split(".")[1] for key in out if key.startswith("blocks.")}:
        for proj in ("q_proj", "k_proj", "v_proj"):
            out.setdefault(f"blocks.{i}.self_attn.{proj}.bias", torch.zeros(dim))
    out.setdefault("post_norm.weight", torch.ones(dim))
    out.setdefault("post_norm.bias", torch.zeros(dim))
    return out


def vit_config_from_internvl(hf_cfg, feature_layer, mean, std) -> ViTConfig:
    """ViTConfig of an InternVL vision config; what our ViT cannot express raises one line."""
    image, patch = hf_cfg.image_size, hf_cfg.patch_size
    checks = [
        (image[0] == image[1] and patch[0] == patch[1], f"image {image} / patch {patch} not square"),
        (hf_cfg.norm_type == "layer_norm", f"norm_type {hf_cfg.norm_type!r} (our ViT has LayerNorm)"),
        (not hf_cfg.use_qk_norm, "use_qk_norm=True (our ViT has no q/k norm)"),
        (hf_cfg.use_absolute_position_embeddings, "no absolute position embeddings"),
        (hf_cfg.hidden_act in ("gelu", "quick_gelu"), f"hidden_act {hf_cfg.hidden_act!r} (gelu or quick_gelu)"),
        (
            isinstance(feature_layer, int) and feature_layer != -1,
            f"vision_feature_layer {feature_layer!r} (one layer, and not -1: the last state, layernormed)",
        ),
    ]
    for ok, why in checks:
        if not ok:
            raise ValueError(f"vision tower: {why}")
    ratio = hf_cfg.intermediate_size / hf_cfg.hidden_size
    if int(hf_cfg.hidden_size * ratio) != hf_cfg.intermediate_size:
        raise ValueError(f"vision intermediate_size {hf_cfg.intermediate_size} is no ratio of {hf_cfg.hidden_size}")
    return ViTConfig(
        image_size=image[0],
        patch_size=patch[0],
        n_embd=hf_cfg.hidden_size,
        n_layer=hf_cfg.num_hidden_layers,
        n_head=hf_cfg.num_attention_heads,
        mlp_ratio=ratio,
        use_cls=True,
        pos_embed="learned",
        pre_norm=False,
        act=hf_cfg.hidden_act,
        norm_eps=hf_cfg.layer_norm_eps,
        feature_layer=feature_layer,
        image_mean=tuple(mean),
        image_std=tuple(std),
    )


# --- the whole model ---------------------------------------------------------------------------------


def to_internvl(model: VLM, tok: Tokenizer):
    """An in-memory `InternVLForConditionalGeneration` holding `model`'s weights."""
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    cfg = model.cfg
    why = internvl_unmappable(cfg)
    if why:
        raise ValueError(f"cannot export as hf-internvl: {why}")
    if not tok.has_image_markers:
        raise ValueError(f"cannot export as hf-internvl: the tokenizer has no {IMAGE_START} / {IMAGE_END}")
    vit, special = cfg.vision.vit, dict(bos_token_id=tok.bos_id, eos_token_id=tok.end_id, pad_token_id=tok.pad_id)
    config = InternVLConfig(
        vision_config=internvl_vision_config(vit),
        text_config=gpt_hf_config(cfg.lm, **special),
        image_token_id=tok.image_id,
        image_seq_length=model.tokens_per_image,
        downsample_ratio=1 / shuffle_factor(cfg.projector),
        projector_hidden_act="gelu",
        vision_feature_layer=vit.feature_layer % (vit.n_layer + 1),  # never -1: that one is layernormed
        vision_feature_select_strategy="default",  # drops CLS, as our ViT does
        tie_word_embeddings=cfg.lm.tie_embeddings,
        **special,
    )
    hf = InternVLForConditionalGeneration(config)
    projector = {swap_prefix(k, _PROJECTOR, k): v for k, v in model.projector.state_dict().items()}
    ours = {
        **{"vision." + k: v for k, v in vit_to_internvl(model.tower).items()},
        **{"projector." + k: v for k, v in projector.items()},
        **{"text." + k: v for k, v in gpt_to_hf(model.lm.state_dict()).items()},
    }
    fitted = fit_state_dict(list(hf.state_dict()), ours, vlm_canonical)
    hf.load_state_dict({k: v.detach().clone() for k, v in fitted.items()}, strict=False)
    if cfg.lm.tie_embeddings:
        hf.tie_weights()
    for k, v in special.items():
        setattr(hf.generation_config, k, v)
    return hf.eval()


def save_internvl_processor(model: VLM, tokenizer_file: Path, out: Path) -> None:
    """The files `AutoProcessor` reads as an `InternVLProcessor` that prepares text and images exactly as
    our `VLMProcessor` does: the tokenizer naming our three image tokens, the image processor, and
    processor_config.json (class and tokens per image)."""
    from transformers import GotOcr2ImageProcessorPil

    ip = model.tower.processor
    named = {"start_image_token": IMAGE_START, "context_image_token": IMAGE, "end_image_token": IMAGE_END}
    # InternVLProcessor insists on a video token; picovlm models take no video, and a new token would lie
    # outside the model's vocabulary, so it is one that no prompt contains (chat content may hold none)
    hf_tokenizer(tokenizer_file, {**named, "video_token": PAD}).save_pretrained(out)
    GotOcr2ImageProcessorPil(
        do_resize=True,
        size={"height": ip.size, "width": ip.size},  # ours squashes any aspect ratio to the square
        resample=int(ip.resample),
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(ip.mean),
        image_std=list(ip.std),
        do_convert_rgb=True,
        # one tile per image: InternVLProcessor asks for crop_to_patches by default, max_patches=1 disables it
        crop_to_patches=False,
        min_patches=1,
        max_patches=1,
    ).save_pretrained(out)
    processor = {"processor_class": "InternVLProcessor", "image_seq_length": model.tokens_per_image}
    (out / "processor_config.json").write_text(json.dumps(processor, indent=2) + "\n")


def export_internvl(model_path: str | Path, out: str | Path) -> Path:
    """Write an HF InternVL folder for the picovlm checkpoint at `model_path`."""
    model_path, out = Path(model_path), Path(out)
    model, tok = load_vlm(model_path)
    try:
        hf = to_internvl(model, tok)
    except ValueError as e:
        raise ValueError(f"{model_path}: {e}") from None
    out.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(out, safe_serialization=True)
    save_internvl_processor(model, model_path / "tokenizer.json", out)
    return out


def import_internvl(folder: str | Path, out: str | Path) -> Path:
    """Read an HF InternVL folder (our ViT's layout, Llama/Qwen3 LM, our tokenizer) into a picovlm checkpoint."""
    from transformers import InternVLForConditionalGeneration

    folder, out = Path(folder), Path(out)
    hf_cfg, tok = read_vlm_folder(folder, "internvl")
    if not tok.has_image_markers:  # InternVL's <img> ... </img> must be our markers
        raise ValueError(f"{folder}: the tokenizer has no {IMAGE_START} / {IMAGE_END}")
    r = round(1 / hf_cfg.downsample_ratio)
    if hf_cfg.downsample_ratio != 1 / r:
        raise ValueError(f"{folder}: downsample_ratio {hf_cfg.downsample_ratio} is not 1/R: no pixel_shuffleR")
    if hf_cfg.projector_hidden_act != "gelu" or hf_cfg.vision_feature_select_strategy != "default":
        raise ValueError(f"{folder}: only projector_hidden_act 'gelu' with vision_feature_select_strategy 'default'")
    vcfg = hf_cfg.vision_config
    ip = read_image_processor(folder, vcfg.image_size[0])
    try:
        vit = vit_config_from_internvl(vcfg, hf_cfg.vision_feature_layer, ip.mean, ip.std)
    except ValueError as e:
        raise ValueError(f"{folder}: {e}") from None
    cfg = VLMConfig(
        vision=VisionConfig(kind="vit", vit=vit),
        projector=f"pixel_shuffle{r}",
        lm=gpt_config_from_hf(hf_cfg.text_config),
        image_markers=True,
    )
    parts = split_parts(InternVLForConditionalGeneration.from_pretrained(folder))
    state = {
        **{"tower." + k: v for k, v in vit_from_internvl(parts["vision"]).items()},
        **{"projector." + swap_prefix(k, _back(_PROJECTOR), k): v for k, v in parts["projector"].items()},
        **{"lm." + k: v for k, v in gpt_from_hf(parts["text"]).items()},
    }
    return save_imported(cfg, tok, state, folder, out)
