"""A vision tower from an open_clip checkpoint folder, run by our own ViT (no open_clip import).

The folder is what open_clip saves and the hub publishes: `open_clip_config.json` (`model_cfg` with
`vision_cfg`, and `preprocess_cfg`) plus `open_clip_model.safetensors` (or the older
`open_clip_pytorch_model.bin`, read with `torch.load(weights_only=True)`). open_clip's own
`VisionTransformer` is CLIP's ViT: a bias-free patch conv, CLS + learned positions, `ln_pre`, pre-LN
blocks with a fused q/k/v projection. That is our ViT with `use_cls`, so its weights are a renaming
plus one split of `in_proj_weight` into q, k and v; the text tower and the image projection `proj`
are not needed for patch features and are dropped.

Two settings decide whether the numbers match, and both are read from the config, never guessed:
the activation (open_clip uses GELU unless `model_cfg.quick_gelu` is true, which OpenAI-pretrained
configs set) and the LayerNorm eps (`vision_cfg.norm_kwargs.eps`, 1e-5 by default). LayerScale
(`ls_init_value`) is folded into the projection before it, which computes the same function.
Anything else open_clip can build (timm towers, ModifiedResNet, the attentional pooler, the custom
attention block) is refused in one line rather than silently computed differently.

Preprocessing follows `preprocess_cfg` (mean/std, interpolation), with open_clip's defaults (OpenAI
CLIP mean/std, bicubic) where absent; the size is the tower's `image_size`, as open_clip sets it.
Like every picovlm tower it resizes the whole image to a square (open_clip's default `resize_mode`
"shortest" would center-crop instead).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from PIL import Image

from picovlm.config import ViTConfig
from picovlm.vision.image import ImageProcessor
from picovlm.vision.vit import ViT

CONFIG_NAME = "open_clip_config.json"
# open_clip's own preference when a folder holds several files (factory._find_checkpoint_in_dir)
WEIGHT_NAMES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
)
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)  # open_clip's defaults when preprocess_cfg has none
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
_RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "random": Image.BICUBIC}  # random: train only

# vision_cfg keys whose effect on the patch features we reproduce (or which have none: pooling,
# patch dropout, the output flags). Any other key might change the function, so it is refused.
_HARMLESS = {
    "image_size", "layers", "width", "head_width", "mlp_ratio", "patch_size", "ls_init_value",
    "patch_dropout", "no_ln_pre", "pos_embed_type", "pool_type", "final_ln_after_pool", "output_tokens",
    "norm_kwargs", "act_kwargs", "attentional_pool", "attn_pooler_queries", "attn_pooler_heads",
    "block_type", "timm_model_name", "timm_model_pretrained", "timm_pool", "timm_proj", "timm_proj_bias",
    "timm_drop", "timm_drop_path",
}  # fmt: skip
_CUSTOM_BLOCK = ("qk_norm", "scaled_cosine_attn", "scale_heads", "scale_attn_inner", "scale_attn", "scale_fc")


def read_open_clip_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no {CONFIG_NAME}; expected a local open_clip model folder")
    cfg = json.loads(path.read_text())
    if "vision_cfg" not in cfg.get("model_cfg", {}):
        raise ValueError(f"{path}: no model_cfg.vision_cfg; not an open_clip model config")
    return cfg


def _square(value: Any, name: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ValueError(f"open_clip {name} {list(value)}: only square images and patches are supported")
        value = value[0]
    return int(value)


def vit_config_from_open_clip(model_cfg: dict[str, Any], feature_layer: int, mean, std) -> ViTConfig:
    """Our ViTConfig of an open_clip `model_cfg`; anything our ViT cannot compute raises one line."""
    v = model_cfg["vision_cfg"]
    if v.get("timm_model_name"):
        raise ValueError(f"open_clip timm vision tower {v['timm_model_name']!r} is not supported (ViT towers only)")
    if isinstance(v.get("layers"), (list, tuple)):
        raise ValueError("open_clip ModifiedResNet vision tower is not supported (ViT towers only)")
    if v.get("attentional_pool"):
        raise ValueError("open_clip attentional pooler (CoCa) vision tower is not supported")
    custom = [k for k in _CUSTOM_BLOCK if v.get(k)] + (["block_type=custom"] if v.get("block_type") == "custom" else [])
    if custom:
        raise ValueError(f"open_clip custom attention block ({', '.join(custom)}) is not supported")
    if v.get("act_kwargs"):
        raise ValueError(f"open_clip act_kwargs {v['act_kwargs']} are not supported")
    norm_kwargs = v.get("norm_kwargs") or {}
    if set(norm_kwargs) - {"eps"}:
        raise ValueError(f"open_clip norm_kwargs {norm_kwargs}: only eps is supported")
    unknown = sorted(set(v) - _HARMLESS - set(_CUSTOM_BLOCK))
    if unknown:
        raise ValueError(f"open_clip vision_cfg keys {unknown} are not supported")
    width, head_width = int(v.get("width", 768)), int(v.get("head_width", 64))
    if width % head_width:
        raise ValueError(f"open_clip width {width} is not a multiple of head_width {head_width}")
    return ViTConfig(
        image_size=_square(v.get("image_size", 224), "image_size"),
        patch_size=_square(v.get("patch_size", 16), "patch_size"),
        stem="patch",
        n_embd=width,
        n_layer=int(v.get("layers", 12)),
        n_head=width // head_width,
        mlp_ratio=float(v.get("mlp_ratio", 4.0)),
        use_cls=True,  # open_clip's VisionTransformer always has a class token
        pos_embed="learned",  # a sin_cos_2d table is stored in the checkpoint like a learned one
        pre_norm=not v.get("no_ln_pre", False),
        act="quick_gelu" if model_cfg.get("quick_gelu", False) else "gelu",
        norm_eps=float(norm_kwargs.get("eps", 1e-5)),
        feature_layer=feature_layer,
        image_mean=tuple(mean),
        image_std=tuple(std),
    )


def vit_from_open_clip(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip CLIP state dict (`visual.*` keys; the rest is ignored) -> our ViT's keys.

    The fused `in_proj_{weight,bias}` is split into q, k, v (that order, as nn.MultiheadAttention
    uses); LayerScale gammas `ls_1`/`ls_2` are multiplied into `out_proj`/`c_proj`; `proj` (the
    contrastive image projection) is dropped. An unexpected visual key raises.
    """
    top = {
        "conv1.weight": "patch_embed.weight",
        "class_embedding": "cls_token",
        "positional_embedding": "pos_embed",
    }
    block = {"ln_1.": "layer_norm1.", "ln_2.": "layer_norm2.", "attn.out_proj.": "self_attn.out_proj."}
    block |= {"mlp.c_fc.": "fc1.", "mlp.c_proj.": "fc2."}
    visual = {k.removeprefix("visual."): t for k, t in sd.items() if k.startswith("visual.")}
    out: dict[str, torch.Tensor] = {}
    gammas: dict[str, torch.Tensor] = {}
    for key, t in visual.items():
        if key in top:
            out[top[key]] = t
        elif key.startswith(("ln_pre.", "ln_post.")):
            out[key.replace("ln_pre.", "pre_norm.").replace("ln_post.", "post_norm.")] = t
        elif key == "proj":
            continue
        elif key.startswith("transformer.resblocks."):
            _, _, i, rest = key.split(".", 3)
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = rest.rsplit("_", 1)[1]
                for name, part in zip(("q", "k", "v"), t.chunk(3, dim=0), strict=True):
                    out[f"blocks.{i}.self_attn.{name}_proj.{kind}"] = part
            elif rest in ("ls_1.gamma", "ls_2.gamma"):
                gammas[f"blocks.{i}.{'self_attn.out_proj' if rest == 'ls_1.gamma' else 'fc2'}"] = t
            else:
                prefix = next((p for p in block if rest.startswith(p)), None)
                if prefix is None:
                    raise ValueError(f"open_clip weight visual.{key} has no counterpart in our ViT")
                out[f"blocks.{i}.{block[prefix]}{rest[len(prefix) :]}"] = t
        else:
            raise ValueError(f"open_clip weight visual.{key} has no counterpart in our ViT")
    for layer, gamma in gammas.items():  # ls(W x + b) = (gamma * W) x + gamma * b
        out[f"{layer}.weight"] = out[f"{layer}.weight"] * gamma[:, None]
        out[f"{layer}.bias"] = out[f"{layer}.bias"] * gamma
    return out


def load_open_clip_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The folder's full CLIP state dict: safetensors when present, else a pickle-free torch.load."""
    path = next((folder / n for n in WEIGHT_NAMES if (folder / n).is_file()), None)
    if path is None:
        raise FileNotFoundError(f"{folder}: no open_clip weights ({' or '.join(WEIGHT_NAMES)})")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(sd, dict) or not any(k.startswith("visual.") for k in sd):
        raise ValueError(f"{path}: not an open_clip state dict (no visual.* weights)")
    return sd


def open_clip_processor(preprocess_cfg: dict[str, Any], size: int) -> ImageProcessor:
    interpolation = preprocess_cfg.get("interpolation", "bicubic")
    if interpolation not in _RESAMPLE:
        raise ValueError(f"open_clip interpolation {interpolation!r}: expected one of {', '.join(_RESAMPLE)}")
    return ImageProcessor(
        size=size,
        mean=tuple(preprocess_cfg.get("mean", OPENAI_MEAN)),
        std=tuple(preprocess_cfg.get("std", OPENAI_STD)),
        resample=_RESAMPLE[interpolation],
    )


def _load_exactly(vit: ViT, sd: dict[str, torch.Tensor], folder: Path) -> None:
    """Every ViT weight from the checkpoint, with the shape the config implies, or one line saying which not."""
    own = vit.state_dict()
    for key in sorted(set(own) | set(sd)):
        if key not in sd:
            raise ValueError(f"{folder}: open_clip weights lack our ViT's {key}")
        if key not in own:
            raise ValueError(f"{folder}: open_clip weight for {key} has no place in the ViT its config describes")
        if sd[key].shape != own[key].shape:
            raise ValueError(
                f"{folder}: {key} is {tuple(sd[key].shape)} in the weights, {tuple(own[key].shape)} by the config"
            )
    vit.load_state_dict(sd)


class OpenCLIPTower(nn.Module):
    """Patch features of one hidden layer of an open_clip ViT (held as our `ViT`), CLS dropped
    unless asked for. `feature_layer` indexes the n_layer+1 hidden states like HF's towers do
    (0 = the embeddings after ln_pre, -1 = the last block, before ln_post). `vit.pooled(x) @ proj`
    is open_clip's image embedding only for its default pool_type "tok"; the patch features do not
    depend on pooling."""

    def __init__(self, path: str | Path, feature_layer: int = -2, use_cls: bool = False):
        super().__init__()
        folder = Path(path)
        cfg = read_open_clip_config(folder)
        pre = cfg.get("preprocess_cfg") or {}
        vit_cfg = vit_config_from_open_clip(
            cfg["model_cfg"], feature_layer, pre.get("mean", OPENAI_MEAN), pre.get("std", OPENAI_STD)
        )
        self.vit = ViT(vit_cfg)
        _load_exactly(self.vit, vit_from_open_clip(load_open_clip_weights(folder)), folder)
        self.vit.processor = self.processor = open_clip_processor(pre, vit_cfg.image_size)
        self.feature_layer, self.use_cls = feature_layer, use_cls
        self.grid, self.hidden_size = self.vit.grid, vit_cfg.n_embd

    @property
    def num_patches(self) -> int:
        return self.grid**2 + int(self.use_cls)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        upto = self.feature_layer % (self.vit.cfg.n_layer + 1)  # blocks above it are not run
        x = self.vit.hidden_states(pixels, upto)
        return x if self.use_cls else x[:, 1:]
