"""Weight and config maps between our parts and their HF twins: GPT <-> Llama/Qwen3, ViT <-> CLIP vision.

Our GPT is laid out like `LlamaForCausalLM` (and with `qk_norm` like `Qwen3ForCausalLM`), our ViT
like `CLIPVisionModel`, so every map here is a renaming of keys: no tensor is permuted or reshaped.
Each map works on plain state dicts, in both directions, and the key names are the ones of the HF
model *without* the wrapper prefixes that differ between transformers versions (4.x nests CLIP's
weights under `vision_model.`, 5.x does not; LLaVA nests the LM under `model.language_model.` in
memory and `language_model.model.` on disk). `fit_state_dict` puts such names onto a live HF
module whatever its version spells, so the exporters never guess a version.

Why a part may not map is said in one line by `gpt_unmappable` / `vit_unmappable`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from picovlm.config import GPTConfig, ViTConfig

StateDict = dict[str, torch.Tensor]

# --- GPT <-> Llama / Qwen3 ---------------------------------------------------------------------------

_GPT_BLOCK = [  # (ours, HF) inside one block; "attn_norm." must be tried before "attn."
    ("attn_norm.", "input_layernorm."),
    ("attn.", "self_attn."),
    ("mlp_norm.", "post_attention_layernorm."),
    ("mlp.", "mlp."),
]


def swap_prefix(rest: str, pairs: list[tuple[str, str]], key: str) -> str:
    """`rest` with its prefix renamed by the first matching (old, new) pair; `key` names it if none matches."""
    for old, new in pairs:
        if rest.startswith(old):
            return new + rest[len(old) :]
    raise KeyError(f"no HF counterpart for parameter {key}")


def gpt_to_hf(sd: StateDict) -> StateDict:
    """Our GPT's keys -> `LlamaForCausalLM` / `Qwen3ForCausalLM` keys (model.layers.0.self_attn.q_proj...)."""
    out = {}
    for key, value in sd.items():
        if key.startswith("blocks."):
            _, i, rest = key.split(".", 2)
            out[f"model.layers.{i}.{swap_prefix(rest, _GPT_BLOCK, key)}"] = value
        elif key.startswith("tok_emb."):
            out["model.embed_tokens." + key.removeprefix("tok_emb.")] = value
        elif key.startswith("norm."):
            out["model." + key] = value
        elif key.startswith("lm_head."):
            out[key] = value
        else:
            raise KeyError(f"no HF counterpart for parameter {key}")
    return out


def gpt_from_hf(sd: StateDict) -> StateDict:
    """The inverse of `gpt_to_hf` (rotary `inv_freq` buffers, which we recompute, are dropped)."""
    back = [(new, old) for old, new in _GPT_BLOCK]
    out = {}
    for key, value in sd.items():
        if key.endswith("rotary_emb.inv_freq"):
            continue
        if key.startswith("model.layers."):
            _, _, i, rest = key.split(".", 3)
            out[f"blocks.{i}.{swap_prefix(rest, back, key)}"] = value
        elif key.startswith("model.embed_tokens."):
            out["tok_emb." + key.removeprefix("model.embed_tokens.")] = value
        elif key.startswith("model.norm."):
            out[key.removeprefix("model.")] = value
        elif key.startswith("lm_head."):
            out[key] = value
        else:
            raise KeyError(f"no picovlm counterpart for HF parameter {key}")
    return out


def gpt_unmappable(cfg: GPTConfig) -> str | None:
    """None: every GPTConfig maps (the two layouts are Llama and, with qk_norm, Qwen3)."""
    if cfg.n_embd % cfg.n_head:
        return f"n_embd {cfg.n_embd} is not a multiple of n_head {cfg.n_head}"
    return None


def gpt_hf_config(cfg: GPTConfig, **hf_fields):
    """The HF config of our GPT's twin: `LlamaConfig`, or `Qwen3Config` when qk_norm is on.
    `hf_fields` go into it as they are (e.g. the special token ids, which our GPTConfig does not hold)."""
    from transformers import LlamaConfig, Qwen3Config

    common = dict(
        hidden_size=cfg.n_embd,
        intermediate_size=cfg.mlp_hidden,
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head,
        num_key_value_heads=cfg.n_kv_head,
        head_dim=cfg.n_embd // cfg.n_head,
        rms_norm_eps=cfg.norm_eps,
        rope_theta=cfg.rope_theta,
        max_position_embeddings=cfg.max_seq_len,
        vocab_size=cfg.vocab_size,
        tie_word_embeddings=cfg.tie_embeddings,
        attention_bias=False,
        hidden_act="silu",
        **hf_fields,
    )
    if cfg.qk_norm:
        return Qwen3Config(**common)
    return LlamaConfig(mlp_bias=False, **common)


def rope_theta_of(hf_cfg) -> float:
    """rope_theta from a config of either transformers major (5.x moves it into rope_parameters)."""
    params = getattr(hf_cfg, "rope_parameters", None) or {}
    scaling = getattr(hf_cfg, "rope_scaling", None) or {}
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if kind != "default":
        raise ValueError(f"rope scaling {kind!r} has no counterpart in our GPT (plain RoPE only)")
    theta = params.get("rope_theta", getattr(hf_cfg, "rope_theta", None))
    return float(theta if theta is not None else 10000.0)


def gpt_config_from_hf(hf_cfg) -> GPTConfig:
    """GPTConfig of an HF Llama or Qwen3 config; anything our GPT cannot express raises one line."""
    kind = hf_cfg.model_type
    if kind not in ("llama", "qwen3"):
        raise ValueError(f"a {kind!r} language model has no picovlm GPT layout (llama or qwen3 only)")
    if hf_cfg.hidden_act != "silu":
        raise ValueError(f"hidden_act {hf_cfg.hidden_act!r}: our GPT's MLP is SwiGLU (silu)")
    for flag in ("attention_bias", "mlp_bias"):
        if getattr(hf_cfg, flag, False):
            raise ValueError(f"{flag}=True: our GPT has no biases")
    head_dim = getattr(hf_cfg, "head_dim", None) or hf_cfg.hidden_size // hf_cfg.num_attention_heads
    if head_dim * hf_cfg.num_attention_heads != hf_cfg.hidden_size:
        raise ValueError(f"head_dim {head_dim} x {hf_cfg.num_attention_heads} heads != hidden_size: not our layout")
    return GPTConfig(
        vocab_size=hf_cfg.vocab_size,
        n_layer=hf_cfg.num_hidden_layers,
        n_head=hf_cfg.num_attention_heads,
        n_kv_head=hf_cfg.num_key_value_heads or hf_cfg.num_attention_heads,
        n_embd=hf_cfg.hidden_size,
        mlp_hidden=hf_cfg.intermediate_size,
        max_seq_len=hf_cfg.max_position_embeddings,
        rope_theta=rope_theta_of(hf_cfg),
        norm_eps=hf_cfg.rms_norm_eps,
        tie_embeddings=bool(getattr(hf_cfg, "tie_word_embeddings", False)),
        qk_norm=kind == "qwen3",
    )


# --- ViT <-> CLIP vision -----------------------------------------------------------------------------

_VIT_TOP = {
    "patch_embed.weight": "embeddings.patch_embedding.weight",
    "cls_token": "embeddings.class_embedding",
    "pos_embed": "embeddings.position_embedding.weight",
}
_VIT_NORMS = [("pre_norm.", "pre_layrnorm."), ("post_norm.", "post_layernorm.")]
_VIT_BLOCK = [("fc1.", "mlp.fc1."), ("fc2.", "mlp.fc2."), ("layer_norm", "layer_norm"), ("self_attn.", "self_attn.")]


def encoder_to_hf(sd: StateDict, top: dict[str, str], norms: list[tuple[str, str]]) -> StateDict:
    """Keys of a stack of our ViT `Block`s -> HF CLIP encoder keys: `top` renames whole keys (embeddings),
    blocks go to `encoder.layers.{i}`, and `norms` renames the remaining prefixes."""
    out = {}
    for key, value in sd.items():
        if key in top:
            out[top[key]] = value
        elif key.startswith("blocks."):
            _, i, rest = key.split(".", 2)
            out[f"encoder.layers.{i}.{swap_prefix(rest, _VIT_BLOCK, key)}"] = value
        else:
            out[swap_prefix(key, norms, key)] = value
    return out


def vit_to_hf(sd: StateDict) -> StateDict:
    """Our ViT's keys -> `CLIPVisionModel` keys without the `vision_model.` wrapper."""
    return encoder_to_hf(sd, _VIT_TOP, _VIT_NORMS)


def vit_from_hf(sd: StateDict) -> StateDict:
    """The inverse of `vit_to_hf` (the `position_ids` buffer some versions keep is dropped)."""
    top = {v: k for k, v in _VIT_TOP.items()}
    block = [(new, old) for old, new in _VIT_BLOCK]
    out = {}
    for key, value in sd.items():
        if key.endswith("position_ids"):
            continue
        if key in top:
            out[top[key]] = value
        elif key.startswith("encoder.layers."):
            _, _, i, rest = key.split(".", 3)
            out[f"blocks.{i}.{swap_prefix(rest, block, key)}"] = value
        else:
            out[swap_prefix(key, [(n, o) for o, n in _VIT_NORMS], key)] = value
    return out


def vit_unmappable(cfg: ViTConfig) -> str | None:
    """Why our ViT has no CLIPVisionModel twin, or None. sincos2d positions do map: the fixed table
    is written as CLIP's (learned) position embedding."""
    if cfg.stem != "patch":
        return (
            f"stem {cfg.stem!r}: HF CLIPVisionModel embeds patches with one strided conv (stem 'patch'); "
            "the hybrid stem exports as hf-picovlm"
        )
    if not cfg.use_cls:
        return "use_cls=False: HF CLIPVisionModel always has a CLS token"
    if not cfg.pre_norm:
        return "pre_norm=False: HF CLIPVisionModel always applies pre_layrnorm"
    if cfg.act not in ("gelu", "quick_gelu"):
        return f"act {cfg.act!r} has no CLIP counterpart"
    return None


def vit_state_for_export(vit: torch.nn.Module) -> StateDict:
    """The ViT's state dict with a fixed sincos table included, so it can become learned positions."""
    sd = dict(vit.state_dict())
    sd.setdefault("pos_embed", vit.pos_embed)
    return sd


def vit_hf_config(cfg: ViTConfig):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=cfg.n_embd,
        intermediate_size=int(cfg.n_embd * cfg.mlp_ratio),
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        hidden_act=cfg.act,
        layer_norm_eps=cfg.norm_eps,
        num_channels=3,
    )


def vit_config_from_hf(hf_cfg, feature_layer: int, mean, std) -> ViTConfig:
    if hf_cfg.hidden_act not in ("gelu", "quick_gelu"):
        raise ValueError(f"vision hidden_act {hf_cfg.hidden_act!r}: our ViT has gelu or quick_gelu")
    if hf_cfg.intermediate_size % hf_cfg.hidden_size:
        raise ValueError(f"vision intermediate_size {hf_cfg.intermediate_size} is not a multiple of hidden_size")
    return ViTConfig(
        image_size=hf_cfg.image_size,
        patch_size=hf_cfg.patch_size,
        n_embd=hf_cfg.hidden_size,
        n_layer=hf_cfg.num_hidden_layers,
        n_head=hf_cfg.num_attention_heads,
        mlp_ratio=hf_cfg.intermediate_size / hf_cfg.hidden_size,
        use_cls=True,
        pos_embed="learned",
        pre_norm=True,
        act=hf_cfg.hidden_act,
        norm_eps=hf_cfg.layer_norm_eps,
        feature_layer=feature_layer,
        image_mean=tuple(mean),
        image_std=tuple(std),
    )


# --- onto a live HF module ---------------------------------------------------------------------------


def _is_buffer_only(key: str) -> bool:
    return key.endswith(("position_ids", "rotary_emb.inv_freq"))


def fit_state_dict(hf_keys: list[str], ours: StateDict, canonical: Callable[[str], str]) -> StateDict:
    """Tensors of `ours` (keyed by canonical names) under the HF module's own key names.

    `canonical` strips the version-dependent wrapper prefixes of an HF key. Every HF weight must be
    found and every tensor of ours used, otherwise the layouts differ and we say which key.
    """
    out, used = {}, set()
    for key in hf_keys:
        if _is_buffer_only(key):
            continue
        name = canonical(key)
        if name not in ours:
            raise ValueError(f"HF weight {key} ({name}) has no picovlm counterpart")
        out[key] = ours[name]
        used.add(name)
    unused = sorted(set(ours) - used)
    if unused:
        raise ValueError(f"picovlm weight {unused[0]} has no place in the HF model ({len(unused)} unused)")
    return out
