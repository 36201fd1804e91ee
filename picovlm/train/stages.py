"""A recipe is a list of stages; each stage builds its task (train/stage_tasks.py: model, batches,
loss, checkpoint parts) and runs the one training loop. Stage outputs are checkpoints that later
stages initialize parts from.

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

What a stage's data held is accounted for in a `DataReport`: each record left out is one warning
line (and one line of `rejects`, when given), and the stage ends with a summary of the records read,
used and skipped by reason, printed and written to its log.jsonl.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from picovlm.checkpoint import (
    TRAINER_STATE,
    load_part,
    load_trainer_state,
    part_files,
    read_config,
    recover_checkpoint,
    save_checkpoint,
)
from picovlm.config import ConfigError, RecipeConfig, StageConfig, check_config
from picovlm.data.batches import BatchStream
from picovlm.data.formats import Sample, load_samples, split_format
from picovlm.data.isolation import stable_draw
from picovlm.data.records import BAD_IMAGE, BadRecord, sample_record
from picovlm.data.report import DataReport
from picovlm.interop.lora import add_lora, load_lora, merged_state_dict, save_lora
from picovlm.models.vlm import VLM
from picovlm.text.tokenizer import Tokenizer
from picovlm.train.distributed import SHARDS, Parallel, setup
from picovlm.train.loop import History, Interrupted, log, train
from picovlm.train.stage_tasks import StageTask, build_stage_task

LORA_KEYS = ("r", "alpha", "dropout", "targets", "new_tokens")
ADAPTER_DIR = "adapter"  # inside a LoRA stage's checkpoint folder
VAL_SEED = 12345  # of the validation stream: the same batches at every evaluation


def stage_dir(out_dir: Path, stage: str) -> Path:
    return Path(out_dir) / stage


def checkpoint_dir(out_dir: Path, stage: str) -> Path:
    return stage_dir(out_dir, stage) / "model"


def read_samples(
    files: tuple[str, ...],
    data_dir: Path,
    report: DataReport | None = None,
    on_bad_file: str = "fail",
    shares: dict[str, float] | None = None,
    image_root: str = "",
) -> list[Sample]:
    """Every file's samples; an entry may name its format ("webdataset:shards", see `split_format`).
    Bad records are skipped and counted in `report`; a damaged file fails unless on_bad_file="skip".
    A file named in `shares` gives that share of its records (a fixed draw by content, `stable_draw`);
    relative image names resolve against `image_root` when set, else beside each file."""
    samples: list[Sample] = []
    for f in files:
        fmt, name = split_format(f)
        found = load_samples(data_dir / name, "skip", image_root or None, report, format=fmt, on_bad_file=on_bad_file)
        share = (shares or {}).get(f, 1.0)
        drawn = found if share >= 1 else [s for s in found if stable_draw(s) < share]
        if report is not None:
            report.not_drawn += len(found) - len(drawn)
        samples += drawn
    if not samples:
        raise ValueError(f"no usable samples in {', '.join(files) or '(no files given)'}")
    return samples


def train_tokenizer(recipe: RecipeConfig, path: Path, stages: list[StageConfig] | None = None) -> Tokenizer:
    """A byte-level BPE fitted to the text of the training data of `stages` (default: every stage). A
    damaged file fails here, before any stage trains, unless every stage that reads it says on_bad_file
    "skip"; the stages report the records left out, so this read is quiet."""
    policy: dict[str, str] = {}  # file -> "fail" if any stage reading it fails on damage
    for stage in recipe.stages if stages is None else stages:
        for f in stage.data:
            policy[f] = "fail" if "fail" in (policy.get(f), stage.on_bad_file) else "skip"
    quiet, samples = DataReport(quiet=True), []
    for on_bad_file in ("fail", "skip"):
        files = tuple(sorted(f for f, p in policy.items() if p == on_bad_file))
        samples += (
            read_samples(files, Path(recipe.data_dir), quiet, on_bad_file, image_root=recipe.image_root)
            if files
            else []
        )
    tok = Tokenizer.train((m["content"] for s in samples for m in s.messages), vocab_size=recipe.tokenizer_vocab)
    tok.save(path)
    return tok


def run_tokenizer(recipe: RecipeConfig, path: Path, stages: list[StageConfig]) -> Tokenizer:
    """The run's tokenizer, saved at `path`: the one there, else an HF LM's own vocabulary (+ our
    special tokens), else one trained on the data of `stages`."""
    if path.exists():
        return Tokenizer.load(path)
    if recipe.model.lm_kind == "hf":
        from picovlm.models.hf_lm import hf_lm_tokenizer

        tok = hf_lm_tokenizer(recipe.model.lm_hf_path)
        tok.save(path)
        return tok
    return train_tokenizer(recipe, path, stages)


def check_inputs(recipe: RecipeConfig, stages: list[StageConfig], out_dir: Path) -> None:
    """Before the first step of the first stage: every file the `stages` read is there, and every part
    they start from (`init`) comes from a checkpoint in `out_dir` or from a stage run before them, so a
    run does not stop minutes in for a file or a stage that was never there."""
    data_dir = Path(recipe.data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"{data_dir}: data folder not found (the folder that holds the data files)")
    for k, stage in enumerate(stages):
        for f in (*stage.data, *stage.val_data):
            if not (data_dir / split_format(f)[1]).exists():
                raise FileNotFoundError(f"stage {stage.name!r}: {data_dir / split_format(f)[1]} not found{_hint(f)}")
        earlier = {s.name for s in stages[:k]}
        for part, source in stage.init.items():
            if source not in earlier and not (checkpoint_dir(out_dir, source) / "config.json").is_file():
                raise ValueError(
                    f"stage {stage.name!r} starts its {part!r} from stage {source!r}, which has no checkpoint in "
                    f"{out_dir} and does not run before it (run {source!r} too, or drop init.{part})"
                )


def _hint(file: str) -> str:
    if file.endswith("_captions.jsonl"):
        return (
            " (caption files come with the built-in layout of `picovlm data`; for a folder of LLaVA conversations"
            " alone use --preset vqa, or leave the stage out with --stages)"
        )
    return " (data files are relative to the recipe's data_dir; leave the stage out with --stages)"


def lora_kwargs(stage: StageConfig, model: VLM) -> dict[str, Any]:
    """`add_lora` arguments from a stage's `lora` settings."""
    kwargs = {k: stage.lora[k] for k in ("r", "alpha", "dropout", "targets") if k in stage.lora}
    base = getattr(model.lm, "base_vocab", None)  # an HF LM: ids from here on are tokens picovlm added
    if stage.lora.get("new_tokens", True) and base is not None and base < model.lm.cfg.vocab_size:
        kwargs["new_tokens"] = list(range(base, model.lm.cfg.vocab_size))
    return kwargs


def check_stage(stage: StageConfig) -> None:
    """The stage's values (types and ranges, as a recipe file's are checked) and its LoRA settings."""
    try:
        check_config(stage)
    except ConfigError as e:
        raise ConfigError(f"stage {stage.name!r}: {e}") from None
    if stage.lora:
        check_lora(stage)
    if stage.parallel == "fsdp" and (stage.lora or stage.optimizer == "muon"):
        why = "LoRA merges whole matrices" if stage.lora else "Muon orthogonalizes whole matrices"
        raise ValueError(f"stage {stage.name!r}: parallel 'fsdp' shards the weights, and {why}; use 'ddp'")


def check_lora(stage: StageConfig) -> None:
    unknown = set(stage.lora) - set(LORA_KEYS)
    if unknown:
        raise ValueError(f"stage {stage.name!r}: unknown lora keys {sorted(unknown)}; known: {', '.join(LORA_KEYS)}")
    if stage.task != "vlm" or "lm" not in stage.trainable:
        raise ValueError(f"stage {stage.name!r}: lora needs task 'vlm' with 'lm' among its trainable parts")


def init_parts(task: StageTask, stage: StageConfig, out_dir: Path) -> dict[str, Path]:
    """Load each part named in `stage.init` from that stage's checkpoint; returns the files of those
    that stay frozen (part -> file), which the checkpoint then references instead of copying."""
    inherited: dict[str, Path] = {}
    for part, source in stage.init.items():
        if part not in task.parts:
            raise ValueError(f"stage {stage.name!r}: cannot init unknown part {part!r}")
        files = part_files(checkpoint_dir(out_dir, source))
        if part not in files:
            locked = part in read_config(checkpoint_dir(out_dir, source))["parts"]
            why = "a locked pretrained part, rebuilt from its folder, not stored" if locked else "no such part"
            raise ValueError(f"stage {stage.name!r}: stage {source!r} has no stored part {part!r} ({why})")
        load_part(task.model, task.parts, part, files[part])
        if part not in stage.trainable:
            inherited[part] = files[part]
    return inherited


def resume_from(task: StageTask, stage: StageConfig, ckpt: Path) -> dict[str, Any] | None:
    """The trainer state of an interrupted run of the stage, its weights loaded; None if there is none.
    A save that a crash cut short is finished first (`recover_checkpoint`)."""
    recover_checkpoint(ckpt)
    if not (ckpt / TRAINER_STATE).is_file():
        return None
    for part, file in part_files(ckpt).items():
        if not (stage.lora and part == "lm"):  # a LoRA stage stores its LM merged: the base comes from init
            load_part(task.model, task.parts, part, file)
    state = load_trainer_state(ckpt)
    if (ckpt / SHARDS).is_dir():  # written by an FSDP run: the optimizer state is there, sharded
        state[SHARDS] = str(ckpt / SHARDS)
    return state


def attach_lora(model: VLM, stage: StageConfig, ckpt: Path, resumed: bool) -> None:
    """New adapters, or, resuming, those the interrupted run saved."""
    if resumed:
        load_lora(model, ckpt / ADAPTER_DIR)
    else:
        add_lora(model, **lora_kwargs(stage, model))


def stage_samples(
    files: tuple[str, ...], recipe: RecipeConfig, stage: StageConfig, task: StageTask, report: DataReport, need: int
) -> list[Sample]:
    """The samples of `files` as the stage's task trains them (`StageTask.prepare`), the others counted;
    fewer than `need` (one batch) is an error that says what was left out."""
    data_dir, image_root = Path(recipe.data_dir), recipe.image_root
    samples = read_samples(files, data_dir, report, stage.on_bad_file, stage.data_shares, image_root)
    if stage.group_by_image:
        samples = task.group(samples)
        report.conversations = len(samples)
    prepared = []
    for sample in samples:
        try:
            prepared.append(task.prepare(sample))
        except BadRecord as e:
            report.reject(sample.meta["source"], e.reason, str(e), sample_record(sample))
            continue
        if "truncated" in prepared[-1].meta:
            report.truncate(sample.meta["source"], prepared[-1].meta["truncated"])
    if len(prepared) < need:
        what = f"{len(prepared)} usable samples in {', '.join(files)}, fewer than one batch of {need}"
        raise ValueError(f"stage {stage.name!r}: {what} ({report.summary()})")
    return prepared


def data_streams(
    recipe: RecipeConfig, stage: StageConfig, task: StageTask, report: DataReport
) -> tuple[BatchStream, Callable[[], BatchStream] | None]:
    """The training batches, and (with `val_data`) a maker of the validation batches; a sample whose
    image turns out unreadable in a batch is counted in `report` and left out from then on."""

    def on_reject(sample: Sample, message: str) -> None:
        report.reject(sample.meta["source"], BAD_IMAGE, message, sample_record(sample))

    train_samples = stage_samples(stage.data, recipe, stage, task, report, stage.batch_size)
    sized = stage.group_by_length or stage.micro_batch
    lengths = [task.length(s) for s in train_samples] if sized else None
    batches = BatchStream(
        train_samples,
        stage.batch_size,
        task.make_batch,
        stage.seed,
        on_reject,
        lengths,
        group_by_length=stage.group_by_length,
        micro_batch=stage.micro_batch,
    )
    if not stage.val_data:
        return batches, None
    val_samples = stage_samples(stage.val_data, recipe, stage, task, report, 1)
    val = BatchStream(val_samples, min(stage.batch_size, len(val_samples)), task.make_batch, VAL_SEED, on_reject)
    return batches, val.rewind


def checkpoint_writer(
    task: StageTask, stage: StageConfig, ckpt: Path, inherited: dict[str, Path], tokenizer_file: Path
) -> Callable[[dict[str, Any]], None]:
    """What the loop calls to save the stage: the model's parts, config and tokenizer, the trainer
    state beside them; a LoRA stage's LM merged, and its adapters apart."""
    config = {**task.checkpoint_config(), "stage": dataclasses.asdict(stage)}
    rebuilt = tuple(p for p in task.pretrained_parts if p not in stage.trainable)

    def save(
        trainer_state: dict[str, Any],
        weights: dict[str, torch.Tensor] | None = None,
        add_files: Callable[[Path], None] | None = None,
    ) -> None:
        """`weights`, when given, instead of the model's own (FSDP gathers them); `add_files(folder)`
        puts more files in the folder before it is published (FSDP's optimizer shards)."""
        if weights is None and stage.lora:
            weights = merged_state_dict(task.model)
        save_checkpoint(
            ckpt,
            task.model,
            {**config, "step": trainer_state["step"]},
            task.parts,
            inherited,
            tokenizer_file,
            trainer_state=trainer_state,
            state_dict=weights,
            write_files=lambda folder: _add_files(folder, add_files, task.model if stage.lora else None),
            rebuilt=rebuilt,
        )

    return save


def _add_files(folder: Path, add_files: Callable[[Path], None] | None, lora_model: VLM | None) -> None:
    if lora_model is not None:
        save_lora(lora_model, folder / ADAPTER_DIR)
    if add_files is not None:
        add_files(folder)


def run_stage(
    recipe: RecipeConfig,
    stage: StageConfig,
    out_dir: Path,
    tok: Tokenizer,
    resume: bool = False,
    stop_at: int | None = None,
    progress: bool = True,
    rejects: Path | None = None,
) -> tuple[Path, History]:
    """Train one stage (stopping early after step `stop_at`); returns its checkpoint folder and losses.
    The records its data leaves out are appended to `rejects` (JSONL), when given. Under torchrun every
    rank runs this, with the same seed (so the same initial weights); rank 0 writes."""
    check_stage(stage)  # before anything is built or loaded
    par = setup(recipe.device)
    torch.manual_seed(stage.seed)
    task = build_stage_task(recipe, stage, tok)
    ckpt = checkpoint_dir(out_dir, stage.name)
    inherited = init_parts(task, stage, out_dir)
    if resume and par.main:
        recover_checkpoint(ckpt)  # once, before any rank reads the checkpoint
    par.barrier()
    state = resume_from(task, stage, ckpt) if resume else None
    if stage.lora:
        attach_lora(task.model, stage, ckpt, resumed=state is not None)
    report = DataReport(stage.name, rejects if par.main else None, quiet=not par.main)
    batches, make_val = data_streams(recipe, stage, task, report)
    save = checkpoint_writer(task, stage, ckpt, inherited, out_dir / "tokenizer.json")
    try:
        history = train(
            task,
            stage,
            batches,
            out_dir=stage_dir(out_dir, stage.name),
            save=save,
            make_val=make_val,
            resume=state,
            device=recipe.device,
            stop_at=stop_at,
            progress=progress,
            parallel=par,
        )
    except Interrupted as e:
        summarize(report, stage, out_dir, par)
        raise Interrupted(
            e.step, f"{stage.name} stopped after step {e.step} of {stage.steps}, saved to {ckpt}"
        ) from None
    summarize(report, stage, out_dir, par)
    return ckpt, history


def summarize(report: DataReport, stage: StageConfig, out_dir: Path, par: Parallel | None = None) -> None:
    """The stage's data summary, printed and written to its log.jsonl (by rank 0 alone, under torchrun)."""
    if par is not None and not par.main:
        return
    tqdm.write(report.summary())
    log(stage_dir(out_dir, stage.name), stage, "data", **report.as_dict())


def run_recipe(
    recipe: RecipeConfig,
    out_dir: Path,
    only: list[str] | None = None,
    resume: bool = False,
    progress: bool = True,
    rejects: Path | None = None,
) -> dict[str, Path]:
    """Run the recipe's stages in order (or just `only`); the tokenizer is trained once per run. The
    recipe is checked first, so that a wrong value fails before anything is written; the records the
    data leaves out are written to `rejects` (JSONL, started afresh), when given."""
    check_config(recipe)
    out_dir = Path(out_dir)
    stages = [s for s in recipe.stages if not only or s.name in only]
    check_inputs(recipe, stages, out_dir)
    par = setup(recipe.device)
    out_dir.mkdir(parents=True, exist_ok=True)
    if rejects is not None and par.main:
        Path(rejects).parent.mkdir(parents=True, exist_ok=True)
        Path(rejects).write_text("")
    tok_path = out_dir / "tokenizer.json"
    tok = run_tokenizer(recipe, tok_path, stages) if par.main else None
    par.barrier()  # the other ranks read the tokenizer rank 0 wrote
    tok = tok if tok is not None else Tokenizer.load(tok_path)
    done = {}
    for stage in stages:
        done[stage.name], _ = run_stage(recipe, stage, out_dir, tok, resume, progress=progress, rejects=rejects)
    return done
