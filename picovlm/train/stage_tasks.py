"""The stage-task registry: what each kind of training stage (`StageConfig.task`) trains.

A stage task owns everything that differs between kinds of stage: the model it builds, which samples
it can train on and in what form (`prepare`), how samples become a batch, the loss, how the model's
parameters group into checkpoint parts, what the checkpoint's config.json records, and how such a
checkpoint loads again. Everything else (freezing, optimizer, schedule, evaluation, checkpoints, exact
resume) is the same for all of them: the loop's (`train/loop.py`) and `run_stage`'s (`train/stages.py`).

  lm    picovlm's GPT on text alone, loss on every token
  clip  the vision tower against a text encoder, contrastively (models/clip.py)
  clap  the audio tower against a text encoder, the same way, on audio/caption pairs
  vlm   the adapter VLM (models/vlm.py), loss on the assistant's tokens
  vq    the VQ image tokenizer (vq/model.py) on the images alone, loss on their reconstruction
  native  one GPT over text and image codes (native/model.py): reads images, answers, draws

A new kind of stage is a `StageTask` subclass added to `STAGE_TASKS`.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from picovlm.checkpoint import EVERYTHING_ELSE, load_weights, read_config
from picovlm.config import GPTConfig, RecipeConfig, StageConfig, from_dict
from picovlm.data.batches import (
    Batch,
    Encodings,
    ImageCache,
    MediaCache,
    TowerFeatures,
    as_caption,
    as_chat,
    clap_batch,
    clip_batch,
    context_length,
    fit_context,
    stable_draw,
    text_batch,
    vlm_batch,
)
from picovlm.data.formats import Sample
from picovlm.data.grouping import group_by_image
from picovlm.data.records import TOO_LONG, BadRecord, require
from picovlm.models.clip import CLIP_HF_PARTS, CLIP_PARTS, CLIPModel, clip_checkpoint_config, load_clip
from picovlm.models.gpt import GPT
from picovlm.models.processor import VLMProcessor
from picovlm.models.vlm import VLM, load_vlm, masked_lm_loss, media_token_ids, vlm_checkpoint_config
from picovlm.native.model import (
    NATIVE_PARTS,
    NativeModel,
    load_native,
    native_checkpoint_config,
    native_loss,
    native_vocab,
    placeholder_ids,
)
from picovlm.native.processor import NativeProcessor
from picovlm.text.padding import IGNORE_INDEX, pad_right
from picovlm.text.tokenizer import Tokenizer
from picovlm.vq.model import VQ_PARTS, VQVAE, load_vqvae, vq_checkpoint_config


class StageTask(ABC):
    """One stage's model and how it learns. A subclass builds `model` in `__init__` (with the
    tokenizer's vocabulary size) and says how its parameters group into checkpoint `parts`."""

    model: nn.Module
    parts: dict[str, str]  # checkpoint part -> prefix of its parameter names (`checkpoint.part_of`)
    # parts the model loads from a pretrained folder that its checkpoint config names: stored only
    # in a stage where they learn (a locked HF text encoder is rebuilt from its folder instead)
    pretrained_parts: tuple[str, ...] = ()
    unit = "tok"  # what `count` counts, for the progress bar's rate

    @abstractmethod
    def __init__(self, recipe: RecipeConfig, stage: StageConfig, tok: Tokenizer): ...

    def prepare(self, sample: Sample) -> Sample:
        """The sample as this task trains it, checked once when the data is read (not when a batch is
        drawn, hours later); raises BadRecord for one it cannot use. Here: every sample as it is."""
        return sample

    def group(self, samples: list[Sample]) -> list[Sample]:
        """The records about the same image(s) as one conversation each (`StageConfig.group_by_image`)."""
        raise ValueError(f"group_by_image is for stages of task 'vlm', not {type(self).__name__}")

    def length(self, sample: Sample) -> int:
        """The tokens a prepared sample takes in a batch (`StageConfig.group_by_length`, `micro_batch`)."""
        raise ValueError(f"group_by_length and micro_batch are for stages of task 'vlm', not {type(self).__name__}")

    @abstractmethod
    def make_batch(self, samples: list[Sample]) -> Batch: ...

    def loss(self, batch: Batch) -> torch.Tensor:
        """The model's mean loss on a batch: the batch's keys are its forward's arguments."""
        return self.model(**batch)

    def count(self, batch: Batch) -> int:
        """Units of work in a batch (`unit`), for throughput."""
        return batch["ids"].numel()

    def loss_weight(self, batch: Batch) -> int:
        """What `loss` is the mean over (here: the samples), so that ranks that each see a share of a
        batch weigh their losses as one process would (train/distributed.py)."""
        return len(next(iter(batch.values())))

    @abstractmethod
    def checkpoint_config(self) -> dict[str, Any]:
        """What config.json records so that `load` can rebuild the model (its "task" among it)."""

    @staticmethod
    @abstractmethod
    def load(folder: Path) -> nn.Module:
        """The model of a checkpoint this task wrote, in eval mode."""


class LMTask(StageTask):
    """Text pretraining of picovlm's GPT (`VLMConfig.lm`): the conversations without their images."""

    parts = {"lm": EVERYTHING_ELSE}

    def __init__(self, recipe: RecipeConfig, stage: StageConfig, tok: Tokenizer):
        self.cfg, self.tok = dataclasses.replace(recipe.model.lm, vocab_size=tok.vocab_size), tok
        self.model = GPT(self.cfg)

    def make_batch(self, samples: list[Sample]) -> Batch:
        return text_batch(samples, self.tok, self.cfg.max_seq_len)

    def loss(self, batch: Batch) -> torch.Tensor:
        return masked_lm_loss(self.model(batch["ids"]), batch["labels"])

    def loss_weight(self, batch: Batch) -> int:
        return labelled_targets(batch)

    def checkpoint_config(self) -> dict[str, Any]:
        return {"task": "lm", "model": dataclasses.asdict(self.cfg)}

    @staticmethod
    def load(folder: Path) -> nn.Module:
        model = GPT(from_dict(GPTConfig, read_config(folder)["model"]))
        load_weights(model, folder)
        return model.eval()


class CLIPTask(StageTask):
    """Contrastive pretraining of the model's vision tower (`VLMConfig.vision`, any kind) against the
    text encoder of `RecipeConfig.clip`, on image/caption pairs."""

    unit = "img"

    def __init__(self, recipe: RecipeConfig, stage: StageConfig, tok: Tokenizer):
        text = dataclasses.replace(recipe.clip.text, vocab_size=tok.vocab_size)
        self.model = CLIPModel(recipe.model.vision, dataclasses.replace(recipe.clip, text=text))
        locked_text = recipe.clip.text_layout == "hf"
        self.parts = CLIP_HF_PARTS if locked_text else CLIP_PARTS
        self.pretrained_parts = ("text",) if locked_text else ()
        self.captions, self.images = self.model.captions(tok), ImageCache()

    def prepare(self, sample: Sample) -> Sample:
        """Captions as they are; a conversation as the text of its turns (`as_caption`)."""
        return as_caption(sample)

    def make_batch(self, samples: list[Sample]) -> Batch:
        return clip_batch(samples, self.captions, self.model.tower.processor, self.images)

    def count(self, batch: Batch) -> int:
        return batch["pixels"].shape[0]

    def checkpoint_config(self) -> dict[str, Any]:
        return clip_checkpoint_config(self.model)

    @staticmethod
    def load(folder: Path) -> nn.Module:
        return load_clip(folder)[0]


class CLAPTask(StageTask):
    """Contrastive pretraining of the model's audio tower (`VLMConfig.audio`) against the text encoder
    of `RecipeConfig.clip`, on audio/caption pairs: CLIP's loss and model (models/clip.py), with the
    audio tower where the image tower was. Its tower part is named as the VLM's, "audio_tower"."""

    unit = "clip"

    def __init__(self, recipe: RecipeConfig, stage: StageConfig, tok: Tokenizer):
        if not recipe.model.audio.kind:
            raise ValueError(f"stage {stage.name!r}: task 'clap' needs an audio tower (model.audio.kind)")
        text = dataclasses.replace(recipe.clip.text, vocab_size=tok.vocab_size)
        self.model = CLIPModel(recipe.model.audio, dataclasses.replace(recipe.clip, text=text))
        locked_text = recipe.clip.text_layout == "hf"
        clip_parts = CLIP_HF_PARTS if locked_text else CLIP_PARTS  # its tower part renamed: the VLM's name
        self.parts = {"audio_tower" if k == "tower" else k: v for k, v in clip_parts.items()}
        self.pretrained_parts = ("text",) if locked_text else ()
        self.captions = self.model.captions(tok)
        self.clips = MediaCache(lambda media: {"audio": self.model.tower.processor(media["audio"])})

    def make_batch(self, samples: list[Sample]) -> Batch:
        return clap_batch(samples, self.captions, self.clips)

    def loss(self, batch: Batch) -> torch.Tensor:
        return self.model(batch["mels"], batch["ids"], batch["lengths"])

    def count(self, batch: Batch) -> int:
        return batch["mels"].shape[0]

    def checkpoint_config(self) -> dict[str, Any]:
        return clip_checkpoint_config(self.model)

    @staticmethod
    def load(folder: Path) -> nn.Module:
        return load_clip(folder)[0]


class VLMTask(StageTask):
    """The adapter VLM on captions or conversations, loss on the assistant's tokens; its checkpoint
    parts are the model's (tower, projector, lm, and those of the video and audio paths it has)."""

    def __init__(self, recipe: RecipeConfig, stage: StageConfig, tok: Tokenizer):
        check_isolate_turns(recipe, stage)
        lm = dataclasses.replace(recipe.model.lm, vocab_size=tok.vocab_size)
        self.model = VLM(dataclasses.replace(recipe.model, lm=lm), tok.image_id, media_token_ids(recipe.model, tok))
        self.parts = self.model.parts
        self.processor = VLMProcessor.for_model(self.model, tok)
        self.images, self.isolate_turns, self.truncate = ImageCache(), stage.isolate_turns, stage.too_long == "truncate"
        self.media = MediaCache(self.processor.prepare)  # decoded, sampled videos and spectrograms, once each
        # a tower that does not learn in this stage is run once per image, not once per use (its weights
        # are loaded before the first batch is drawn, so the features are those of the trained tower)
        self.features = None if "tower" in stage.trainable else TowerFeatures(self.model.tower, self.images)
        self.encodings = Encodings()  # each conversation tokenized once, not once per epoch

    def prepare(self, sample: Sample) -> Sample:
        """A conversation longer than the LM's context is skipped or cut after an answer (`too_long`)."""
        return fit_context(sample, self.processor, self.truncate)

    def group(self, samples: list[Sample]) -> list[Sample]:
        """Grouped so that every conversation still fits the LM's context (a group too long for one goes
        on in another about the same image)."""
        return group_by_image(samples, fits=lambda s: context_length(s, self.processor) <= self.processor.max_len)

    def length(self, sample: Sample) -> int:
        return context_length(sample, self.processor)

    def loss_weight(self, batch: Batch) -> int:
        return labelled_targets(batch)

    def make_batch(self, samples: list[Sample]) -> Batch:
        return vlm_batch(
            samples, self.processor, self.images, self.features, self.isolate_turns, self.media, self.encodings
        )

    def checkpoint_config(self) -> dict[str, Any]:
        return vlm_checkpoint_config(self.model)

    @staticmethod
    def load(folder: Path) -> nn.Module:
        return load_vlm(folder)[0]


class VQTask(StageTask):
    """The VQ-VAE of `RecipeConfig.vq` on every image of the samples (their text is not read). Its
    codebook learns inside the forward pass (EMA, vq/quantizer.py), the encoder and decoder by the
    loop's optimizer; the codebook is a buffer, so it is saved, and resumed, with the weights."""

    parts, unit = VQ_PARTS, "img"

    def __init__(self, recipe: RecipeConfig, stage: StageConfig, tok: Tokenizer):
        self.model, self.images = VQVAE(recipe.vq), ImageCache()

    def prepare(self, sample: Sample) -> Sample:
        """A record without an image is left out (and counted): there is nothing to reconstruct."""
        require(bool(sample.images), "a vq stage trains on images, and this record has none")
        return sample

    def make_batch(self, samples: list[Sample]) -> Batch:
        return {"pixels": self.model.processor([self.images(p) for s in samples for p in s.images])}

    def count(self, batch: Batch) -> int:
        return batch["pixels"].shape[0]

    def checkpoint_config(self) -> dict[str, Any]:
        return vq_checkpoint_config(self.model)

    @staticmethod
    def load(folder: Path) -> nn.Module:
        return load_vqvae(folder)


class NativeTask(StageTask):
    """The native model on mixed tasks from one stage's data: a conversation about an image (image +
    question -> answer), a caption record either read (image -> caption) or drawn (caption -> image,
    for a fixed `NativeConfig.draw_share` of them), a share of the drawn ones with the caption dropped
    (`prompt_drop`: the unconditional prompt of guidance). Its VQ tokenizer comes from a vq stage
    (`init={"vq": ...}`) and stays frozen; each image is encoded once, when a batch first needs it."""

    parts = NATIVE_PARTS

    def __init__(self, recipe: RecipeConfig, stage: StageConfig, tok: Tokenizer):
        if "vq" not in stage.init or "vq" in stage.trainable:
            raise ValueError(f"stage {stage.name!r}: a native stage starts its frozen 'vq' from a vq stage (init.vq)")
        vq, self.cfg, self.tok = VQVAE(recipe.vq), recipe.native, tok
        self.model = NativeModel(self.cfg, native_vocab(tok, vq), vq, placeholder_ids(tok))
        self.processor, self.images, self.codes = NativeProcessor(tok, self.model), ImageCache(), {}

    def prepare(self, sample: Sample) -> Sample:
        """One image, no other input, and short enough for the context; a caption record is marked
        to be drawn or read."""
        require(len(sample.images) == 1 and not sample.media, "a native stage trains on records of one image")
        draw = sample.meta.get("kind") == "caption" and stable_draw(sample) < self.cfg.draw_share
        sample = Sample(sample.images, sample.messages, {**sample.meta, "draw": draw}, sample.media)
        n = self.model.vocab.tokens_per_image
        try:
            self.encode(sample, torch.zeros(n, dtype=torch.long), drop=False)
        except ValueError as e:
            raise BadRecord(str(e), TOO_LONG) from None
        return sample

    def encode(self, sample: Sample, codes: torch.Tensor, drop: bool) -> tuple[list[int], list[int]]:
        if sample.meta["draw"]:
            return self.processor.encode_drawing("" if drop else sample.messages[-1]["content"], codes)
        return self.processor.encode_conversation(as_chat(sample), [codes])

    @torch.no_grad()
    def image_codes(self, samples: list[Sample]) -> list[torch.Tensor]:
        """Each sample's image as codes, encoded (in one batch) only the first time it is seen."""
        new = list(dict.fromkeys(s.images[0] for s in samples if s.images[0] not in self.codes))
        if new:
            encoded = self.processor.image_tokenizer.encode([self.images(p) for p in new])
            self.codes.update(zip(new, encoded, strict=True))
        return [self.codes[s.images[0]] for s in samples]

    def make_batch(self, samples: list[Sample]) -> Batch:
        """The prompt drops are drawn from torch's generator, which `run_stage` seeds with the stage's
        seed and a checkpoint's trainer state keeps: the same drops in every run and after a resume."""
        drops = (torch.rand(len(samples)) < self.cfg.prompt_drop).tolist()
        rows = [
            self.encode(s, codes, drop=s.meta["draw"] and drop)
            for s, codes, drop in zip(samples, self.image_codes(samples), drops, strict=True)
        ]
        ids = pad_right([r[0] for r in rows], self.tok.pad_id)
        mask = pad_right([r[1] for r in rows], 0)
        return {"ids": ids, "labels": ids.masked_fill(mask == 0, IGNORE_INDEX)}

    def loss(self, batch: Batch) -> torch.Tensor:
        return native_loss(self.model(batch["ids"]), batch["labels"], self.model.vocab, self.cfg)

    def checkpoint_config(self) -> dict[str, Any]:
        return native_checkpoint_config(self.model)

    @staticmethod
    def load(folder: Path) -> nn.Module:
        return load_native(folder)[0]


def labelled_targets(batch: Batch) -> int:
    """The next-token targets that `masked_lm_loss` averages over."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def check_isolate_turns(recipe: RecipeConfig, stage: StageConfig) -> None:
    """Its range is a config check (`picovlm.config.CHECKS`); what it needs of the model is checked here."""
    if stage.isolate_turns and recipe.model.lm_kind != "gpt":
        raise ValueError(f"stage {stage.name!r}: isolate_turns needs picovlm's GPT, not an HF LM")


STAGE_TASKS: dict[str, type[StageTask]] = {
    "lm": LMTask,
    "clip": CLIPTask,
    "clap": CLAPTask,
    "vlm": VLMTask,
    "vq": VQTask,
    "native": NativeTask,
}


def build_stage_task(recipe: RecipeConfig, stage: StageConfig, tok: Tokenizer) -> StageTask:
    """The task of `stage.task`, its model built with the tokenizer's vocabulary size."""
    if stage.task not in STAGE_TASKS:
        raise ValueError(f"stage {stage.name!r}: unknown task {stage.task!r}; known: {', '.join(STAGE_TASKS)}")
    return STAGE_TASKS[stage.task](recipe, stage, tok)


def load_stage_model(folder: str | Path) -> nn.Module:
    """The model of any stage's checkpoint (eval mode), by the task its config.json names."""
    task = read_config(folder).get("task")
    if task not in STAGE_TASKS:
        raise ValueError(f"{folder}: checkpoint of unknown task {task!r}; known: {', '.join(STAGE_TASKS)}")
    return STAGE_TASKS[task].load(Path(folder))
