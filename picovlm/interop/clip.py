"""picovlm CLIP checkpoint (stage "clip": ViT image tower + text encoder) -> HF `CLIPModel` folder.

The image side always maps (our ViT is in the CLIPVisionModel layout; `image_proj` is CLIP's
`visual_projection`, both without bias, both on the post-LayerNormed CLS). The text side maps only
when the recipe trained it in the "clip" layout (`RecipeConfig.clip.text_layout = "clip"`):
HF's `CLIPTextModel` has learned absolute positions, LayerNorm, biased attention and a quick_gelu
MLP, where our default "gpt" layout has RoPE, RMSNorm, no biases and SwiGLU, so a GPT text encoder
has no weights to put there (and no way to compute the same function), and export says so; as it
does for the "hf" layout (a pretrained BERT-like encoder, mean-pooled, with its own tokenizer).

Pooling agrees by construction: our captions end in <|end|> and we pool at the last real token;
HF pools at the first `eos_token_id`, which the config sets to <|end|>'s id.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from picovlm.interop.hf_text import hf_tokenizer
from picovlm.interop.mapping import (
    encoder_to_hf,
    fit_state_dict,
    vit_hf_config,
    vit_state_for_export,
    vit_to_hf,
    vit_unmappable,
)
from picovlm.models.clip import CLIPModel, load_clip
from picovlm.text.tokenizer import Tokenizer
from picovlm.vision.vit import ViT

_TEXT_TOP = {
    "token_embedding.weight": "embeddings.token_embedding.weight",
    "position_embedding": "embeddings.position_embedding.weight",
}


def clip_text_to_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our CLIPTextEncoder's keys -> `CLIPTextModel` keys without the `text_model.` wrapper."""
    return encoder_to_hf(sd, _TEXT_TOP, [("final_norm.", "final_layer_norm.")])


def clip_unmappable(model: CLIPModel, layout: str) -> str | None:
    if layout == "hf":
        return (
            "its text encoder is a pretrained HF sentence encoder (clip.text_layout 'hf': its own tokenizer, "
            "mean-pooled), which HF CLIPModel's text side cannot hold; its image tower still serves a VLM"
        )
    if layout != "clip":
        return (
            "its text encoder is in the GPT layout (RoPE, RMSNorm, SwiGLU, no biases), which HF CLIPTextModel "
            "(learned positions, LayerNorm, biased attention, quick_gelu MLP) cannot hold; train the clip stage "
            "with clip.text_layout='clip'"
        )
    if not isinstance(model.tower, ViT):
        return f"its image tower is of kind {model.vision_cfg.kind!r}; HF CLIPModel holds picovlm's ViT (kind 'vit')"
    return vit_unmappable(model.tower.cfg)


def _canonical(key: str) -> str:
    for marker, tag in (("vision_model.", "vision."), ("text_model.", "text.")):
        if marker in key:
            return tag + key.split(marker, 1)[1]
    return key


def to_hf_clip(model: CLIPModel, tok: Tokenizer, layout: str):
    from transformers import CLIPConfig, CLIPTextConfig
    from transformers import CLIPModel as HFCLIPModel

    why = clip_unmappable(model, layout)
    if why:
        raise ValueError(f"cannot export as hf-clip: {why}")
    t = model.text.cfg
    text_config = CLIPTextConfig(
        vocab_size=t.vocab_size,
        hidden_size=t.n_embd,
        intermediate_size=t.mlp_hidden,
        num_hidden_layers=t.n_layer,
        num_attention_heads=t.n_head,
        max_position_embeddings=t.max_seq_len,
        hidden_act="quick_gelu",
        layer_norm_eps=t.norm_eps,
        bos_token_id=tok.bos_id,
        eos_token_id=tok.end_id,  # pooled here; != 2, so HF takes the first eos, not the legacy argmax
        pad_token_id=tok.pad_id,
        projection_dim=model.text_proj.out_features,
    )
    config = CLIPConfig(
        text_config=text_config.to_dict(),
        vision_config=vit_hf_config(model.tower.cfg).to_dict(),
        projection_dim=model.text_proj.out_features,
        logit_scale_init_value=float(model.logit_scale.detach()),
    )
    hf = HFCLIPModel(config)
    ours = {
        **{"vision." + k: v for k, v in vit_to_hf(vit_state_for_export(model.tower)).items()},
        **{"text." + k: v for k, v in clip_text_to_hf(model.text.state_dict()).items()},
        "visual_projection.weight": model.image_proj.weight,
        "text_projection.weight": model.text_proj.weight,
        "logit_scale": model.logit_scale,
    }
    fitted = fit_state_dict(list(hf.state_dict()), ours, _canonical)
    hf.load_state_dict({k: v.detach().clone() for k, v in fitted.items()}, strict=False)
    return hf.eval()


def export_clip(model_path: str | Path, out: str | Path) -> Path:
    """Write an HF CLIPModel folder (weights, config, our tokenizer, CLIP image processor)."""
    from transformers import CLIPImageProcessor

    model_path, out = Path(model_path), Path(out)
    model, tok, layout = load_clip(model_path)
    try:
        hf = to_hf_clip(model, tok, layout)
    except ValueError as e:
        raise ValueError(f"{model_path}: {e}") from None
    out.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(out, safe_serialization=True)
    ip = model.tower.processor
    size = {"height": ip.size, "width": ip.size}
    CLIPImageProcessor(
        size=size, crop_size=size, do_center_crop=False, image_mean=list(ip.mean), image_std=list(ip.std),
        resample=int(ip.resample),
    ).save_pretrained(out)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "tokenizer.json"
        tok.save(plain)
        hf_tokenizer(plain).save_pretrained(out)
    return out
