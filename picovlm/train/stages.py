"""A recipe is a list of stages; each stage builds its task (model + data + loss) and runs the one
training loop. Stage outputs are checkpoints that later stages initialize parts from.

The classic adapter-VLM recipe, as the config in `picovlm.presets` spells it:
  lm        pretrain the text LM on text (nothing pretrained is available offline)
  clip      pretrain the vision tower contrastively on image/caption pairs
  align     only the projector learns, on captions: image features learn to look like words
  instruct  projector + LM learn on conversations, loss on the assistant's tokens only

A stage with `lora` set trains LoRA adapters on the LM instead of the LM itself (interop/lora.py).
Its checkpoint `model/` is then a plain model with the adapters merged in (what evaluation, the
server, export and later stages load, none of which need to know about LoRA), and `model/adapter/`
holds the adapters and projector apart (kilobytes to megabytes): resuming rebuilds the frozen base
as the stage began (its `init`, or the pretrained LM), puts the adapters back, and goes on.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from picovlm.checkpoint import load_part, load_trainer_state, part_files, read_config, save_checkpoint
from picovlm.config import RecipeConfig, StageConfig
from picovlm.data.batches import BatchStream, ImageCache, TowerFeatures, clip_batch, text_batch, vlm_batch
from picovlm.data.formats import Sample, load_samples, split_format
from picovlm.interop.lora import add_lora, load_lora, merged_state_dict, save_lora
from picovlm.models.clip import CLIPModel
from picovlm.models.gpt import GPT
from picovlm.models.processor import VLMProcessor
from picovlm.models.vlm import VLM, masked_lm_loss
from picovlm.text.tokenizer import Tokenizer
from picovlm.train.loop import History, Task, train

VLM_PARTS = {"tower": "tower.", "projector": "projector.", "lm": "lm."}
CLIP_PARTS = {"tower": "tower.", "clip": ""}
# a pretrained HF text encoder (clip_text_layout "hf") is a part of its own: locked unless a stage names
# "text" among its trainable parts, and then not stored (the checkpoint names its folder)
CLIP_HF_PARTS = {"tower": "tower.", "text": "text.", "clip": ""}
LM_PARTS = {"lm": ""}
LORA_KEYS = ("r", "alpha", "dropout", "targets", "new_tokens")
ADAPTER_DIR = "adapter"  # inside a LoRA stage's checkpoint folder


def stage_dir(out_dir: Path, stage: str) -> Path:
    return Path(out_dir) / stage


def checkpoint_dir(out_dir: Path, stage: str) -> Path:
    return stage_dir(out_dir, stage) / "model"


def read_samples(files: tuple[str, ...], data_dir: Path) -> list[Sample]:
    """Every file's samples; an entry may name its format ("webdataset:shards", see `split_format`)."""
    samples: list[Sample] = []
    for f in files:
        fmt, name = split_format(f)
        samples += load_samples(data_dir / name, on_error="skip", format=fmt)
    if not samples:
        raise ValueError(f"no usable samples in {', '.join(files) or '(no files given)'}")
    return samples


def train_tokenizer(recipe: RecipeConfig, path: Path) -> Tokenizer:
    """A byte-level BPE fitted to the text of every stage's training data."""
    files = sorted({f for s in recipe.stages for f in s.data})
    texts = (m["content"] for s in read_samples(tuple(files), Path(recipe.data_dir)) for m in s.messages)
    tok = Tokenizer.train(texts, vocab_size=recipe.tokenizer_vocab)
    tok.save(path)
    return tok


def build_task(recipe: RecipeConfig, stage: StageConfig, tok: Tokenizer) -> tuple[Task, Any, dict[str, str]]:
    """(task, batch builder, parts). The model is built with the tokenizer's vocabulary size."""
    lm_cfg = dataclasses.replace(recipe.model.lm, vocab_size=tok.vocab_size)
    if stage.task == "lm":
        model = GPT(lm_cfg)
        task = Task(model, LM_PARTS, _lm_loss, lambda b: b["ids"].numel())
        return (
            task,
            lambda s: text_batch(s, tok, lm_cfg.max_seq_len),
            {"task": "lm", "model": dataclasses.asdict(lm_cfg)},
        )
    if stage.task == "clip":
        vit = recipe.model.vision.vit
        text_cfg = dataclasses.replace(recipe.clip_text, vocab_size=tok.vocab_size)
        layout, hf_path = recipe.clip_text_layout, recipe.clip_text_hf_path
        model = CLIPModel(vit, text_cfg, recipe.clip_embed_dim, layout, hf_path)
        proc, cache, captions = model.tower.processor, ImageCache(), model.captions(tok)
        hf = layout == "hf"
        task = Task(
            model,
            CLIP_HF_PARTS if hf else CLIP_PARTS,
            lambda m, b: m(b["pixels"], b["ids"], b["lengths"]),
            lambda b: b["pixels"].shape[0],
            unit="img",
            pretrained=("text",) if hf else (),
        )
        config = {
            "task": "clip",
            "vit": dataclasses.asdict(vit),
            "text": dataclasses.asdict(text_cfg),
            "embed_dim": recipe.clip_embed_dim,
            "text_layout": layout,
            "text_hf_path": hf_path if hf else "",
        }
        return task, lambda s: clip_batch(s, captions, proc, cache), config
    if stage.task == "vlm":
        if not 0 <= stage.isolate_turns <= 1:
            raise ValueError(f"stage {stage.name!r}: isolate_turns is a share in [0, 1], got {stage.isolate_turns}")
        if stage.isolate_turns and recipe.model.lm_kind != "gpt":
            raise ValueError(f"stage {stage.name!r}: isolate_turns needs picovlm's GPT, not an HF LM")
        cfg = dataclasses.replace(recipe.model, lm=lm_cfg)
        model = VLM(cfg, tok.image_id)
        processor = VLMProcessor(tok, model.tower.processor, model.tokens_per_image, lm_cfg.max_seq_len)
        cache = ImageCache()
        # a tower that does not learn in this stage is run once per image, not once per use (its weights
        # are loaded before the first batch is drawn, so the features are those of the trained tower)
        features = None if "tower" in stage.trainable else TowerFeatures(model.tower, cache)

        def loss(m: VLM, b: dict[str, torch.Tensor]) -> torch.Tensor:
            return m(
                b["ids"],
                b.get("pixels"),
                b["labels"],
                features=b.get("features"),
                position_ids=b.get("positions"),
                segment_ids=b.get("segments"),
            )

        task = Task(model, VLM_PARTS, loss, lambda b: b["ids"].numel())
        config = {"task": "vlm", "model": model.cfg.to_dict(), "image_token_id": tok.image_id}
        return task, lambda s: vlm_batch(s, processor, cache, features, stage.isolate_turns), config
    raise ValueError(f"stage {stage.name!r}: unknown task {stage.task!r} (lm, clip or vlm)")


def lora_kwargs(stage: StageConfig, model: VLM) -> dict[str, Any]:
    """`add_lora` arguments from a stage's `lora` settings, checked against the stage."""
    check_lora(stage)
    kwargs = {k: stage.lora[k] for k in ("r", "alpha", "dropout", "targets") if k in stage.lora}
    base = getattr(model.lm, "base_vocab", None)  # an HF LM: ids from here on are tokens picovlm added
    if stage.lora.get("new_tokens", True) and base is not None and base < model.lm.cfg.vocab_size:
        kwargs["new_tokens"] = list(range(base, model.lm.cfg.vocab_size))
    return kwargs


def check_lora(stage: StageConfig) -> None:
    unknown = set(stage.lora) - set(LORA_KEYS)
    if unknown:
        raise ValueError(f"stage {stage.name!r}: unknown lora keys {sorted(unknown)}; known: {', '.join(LORA_KEYS)}")
    if stage.task != "vlm" or "lm" not in stage.trainable:
        raise ValueError(f"stage {stage.name!r}: lora needs task 'vlm' with 'lm' among its trainable parts")


def _lm_loss(model: GPT, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return masked_lm_loss(model(batch["ids"]), batch["labels"])


def run_stage(
    recipe: RecipeConfig,
    stage: StageConfig,
    out_dir: Path,
    tok: Tokenizer,
    resume: bool = False,
    until: int | None = None,
    progress: bool = True,
) -> tuple[Path, History]:
    """Train one stage; returns its checkpoint folder."""
    if stage.lora:
        check_lora(stage)  # before anything is built or loaded
    torch.manual_seed(stage.seed)
    task, make_batch, config = build_task(recipe, stage, tok)
    ckpt = checkpoint_dir(out_dir, stage.name)
    inherited: dict[str, Path] = {}
    for part, source in stage.init.items():
        if part not in task.parts:
            raise ValueError(f"stage {stage.name!r}: cannot init unknown part {part!r}")
        files = part_files(checkpoint_dir(out_dir, source))
        if part not in files:
            locked = part in read_config(checkpoint_dir(out_dir, source))["parts"]
            why = "a locked pretrained part, rebuilt from its folder, not stored" if locked else "no such part"
            raise ValueError(f"stage {stage.name!r}: stage {source!r} has no stored part {part!r} ({why})")
        file = files[part]
        load_part(task.model, task.parts, part, file)
        if part not in stage.trainable:
            inherited[part] = file  # frozen and unchanged: reference it instead of copying
    state = None
    if resume and (ckpt / "trainer_state.pt").is_file():
        state = load_trainer_state(ckpt)
        for part, file in part_files(ckpt).items():
            if not (stage.lora and part == "lm"):  # a LoRA stage stores its LM merged: the base comes from init
                load_part(task.model, task.parts, part, file)
    if stage.lora:
        if state is not None:
            load_lora(task.model, ckpt / ADAPTER_DIR)
        else:
            add_lora(task.model, **lora_kwargs(stage, task.model))
    data_dir = Path(recipe.data_dir)
    batches = BatchStream(read_samples(stage.data, data_dir), stage.batch_size, make_batch, stage.seed)
    make_val = None
    if stage.val_data:
        val_samples = read_samples(stage.val_data, data_dir)
        bs = min(stage.batch_size, len(val_samples))

        def make_val() -> BatchStream:  # the same validation batches at every evaluation
            return BatchStream(val_samples, bs, make_batch, seed=12345)

    config = {**config, "stage": dataclasses.asdict(stage)}
    unstored = tuple(p for p in task.pretrained if p not in stage.trainable)

    def save(trainer_state: dict[str, Any]) -> None:
        lora = bool(stage.lora)
        save_checkpoint(
            ckpt,
            task.model,
            {**config, "step": trainer_state["step"]},
            task.parts,
            inherited,
            out_dir / "tokenizer.json",
            trainer_state,
            state=merged_state_dict(task.model) if lora else None,
            extra=(lambda folder: save_lora(task.model, folder / ADAPTER_DIR)) if lora else None,
            pretrained=unstored,
        )

    history = train(
        task, stage, batches, stage_dir(out_dir, stage.name), save, make_val, state, recipe.device, until, progress
    )
    return ckpt, history


def run_recipe(
    recipe: RecipeConfig, out_dir: Path, only: list[str] | None = None, resume: bool = False, progress: bool = True
) -> dict[str, Path]:
    """Run the recipe's stages in order (or just `only`); the tokenizer is trained once per run."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok_path = out_dir / "tokenizer.json"
    if tok_path.exists():
        tok = Tokenizer.load(tok_path)
    elif recipe.model.lm_kind == "hf":  # a pretrained LM brings its own vocabulary (+ our special tokens)
        from picovlm.models.hf_lm import hf_lm_tokenizer

        tok = hf_lm_tokenizer(recipe.model.lm_hf_path)
        tok.save(tok_path)
    else:
        tok = train_tokenizer(recipe, tok_path)
    done = {}
    for stage in recipe.stages:
        if only and stage.name not in only:
            continue
        done[stage.name], _ = run_stage(recipe, stage, out_dir, tok, resume, progress=progress)
    return done
