"""The training loop: one loop for every stage and task.

What a stage trains is decided by its config: `trainable` names the parts that learn (the rest are
frozen), the task's `loss` says what is minimized. Everything else (AdamW, warmup + cosine,
gradient accumulation, clipping, bf16 autocast, periodic evaluation, progress, checkpoints and
exact resume) is the same for all of them.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from tqdm import tqdm

from picovlm.checkpoint import part_of
from picovlm.config import StageConfig
from picovlm.data.batches import Batch, BatchStream
from picovlm.interop.lora import is_adapter_param
from picovlm.train.optim import lr_at, make_optimizer
from picovlm.train.plot import plot_losses


@dataclass
class Task:
    """A model, how its parameters group into parts, and how a batch becomes a loss."""

    model: nn.Module
    parts: dict[str, str]  # part name -> parameter-name prefix ("" = everything else)
    loss: Callable[[nn.Module, Batch], torch.Tensor]
    count: Callable[[Batch], int]  # units of work in a batch (tokens, images), for throughput
    unit: str = "tok"
    # parts the model loads from a pretrained folder its config names: while frozen they are not stored
    pretrained: tuple[str, ...] = ()


@dataclass
class History:
    train: list[tuple[int, float]] = field(default_factory=list)
    val: list[tuple[int, float]] = field(default_factory=list)


def to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def freeze(task: Task, trainable: tuple[str, ...]) -> None:
    """Parts in `trainable` learn, the others are frozen; in a part that carries LoRA adapters only
    the adapters learn (its base weights stay frozen)."""
    unknown = set(trainable) - set(task.parts)
    if unknown:
        raise ValueError(f"unknown trainable parts {sorted(unknown)}; this task has {sorted(task.parts)}")
    named = list(task.model.named_parameters())
    adapted = {part_of(name, task.parts) for name, _ in named if is_adapter_param(name)}
    for name, p in named:
        part = part_of(name, task.parts)
        p.requires_grad = part in trainable and (part not in adapted or is_adapter_param(name))


def autocast(cfg: StageConfig, device: torch.device):
    if cfg.dtype == "float32":
        return nullcontext()
    if cfg.dtype == "bfloat16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    raise ValueError(f"unknown dtype {cfg.dtype!r}: float32 or bfloat16")


@torch.no_grad()
def evaluate(task: Task, make_val: Callable[[], BatchStream], n_batches: int, cfg: StageConfig, device) -> float:
    """Mean loss over the same `n_batches` validation batches every time (a fresh, seeded stream)."""
    task.model.eval()
    stream, total = make_val(), 0.0
    for _ in range(n_batches):
        with autocast(cfg, device):
            total += float(task.loss(task.model, to_device(next(stream), device)))
    task.model.train()
    return total / n_batches


def train(
    task: Task,
    cfg: StageConfig,
    batches: BatchStream,
    out_dir: Path,
    save: Callable[[dict[str, Any]], None],
    make_val: Callable[[], BatchStream] | None = None,
    resume: dict[str, Any] | None = None,
    device: str | torch.device = "cpu",
    until: int | None = None,
    progress: bool = True,
) -> History:
    """Run `cfg.steps` optimizer steps (or stop early at step `until`), checkpointing through `save`,
    which receives the trainer state to store beside the weights. `resume` is such a state."""
    device = torch.device(device)
    model = task.model.to(device).train()
    freeze(task, cfg.trainable)
    opt = make_optimizer(model, cfg, task.parts)
    history, start = History(), 0
    if resume is not None:
        opt.load_state_dict(resume["optimizer"])
        batches.load_state_dict(resume["data"])
        torch.set_rng_state(resume["torch_rng"])
        random.setstate(_to_tuple(resume["python_rng"]))
        history = History([tuple(x) for x in resume["history"]["train"]], [tuple(x) for x in resume["history"]["val"]])
        start = int(resume["step"])
    out_dir.mkdir(parents=True, exist_ok=True)

    def trainer_state(step: int) -> dict[str, Any]:
        return {
            "step": step,
            "optimizer": opt.state_dict(),
            "data": batches.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "python_rng": random.getstate(),
            "history": {"train": history.train, "val": history.val},
        }

    def record(kind: str, step: int, **values: float) -> None:
        # opened per line (every log_every steps): no handle left open if training raises
        with open(out_dir / "log.jsonl", "a") as log:
            log.write(json.dumps({"stage": cfg.name, kind: True, "step": step, **values}) + "\n")

    end = cfg.steps if until is None else min(until, cfg.steps)
    bar = tqdm(range(start, end), desc=cfg.name, disable=not progress, dynamic_ncols=True, leave=True)
    t0, work = time.perf_counter(), 0
    for step in bar:
        lr = lr_at(step, cfg)
        for group in opt.param_groups:
            group["lr"] = lr * group["lr_scale"]
        loss_sum = 0.0
        for _ in range(cfg.grad_accum):
            batch = to_device(next(batches), device)
            with autocast(cfg, device):
                loss = task.loss(model, batch) / cfg.grad_accum
            loss.backward()
            loss_sum += loss.item()
            work += task.count(batch)
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        history.train.append((step + 1, loss_sum))
        rate = work / max(1e-9, time.perf_counter() - t0)
        bar.set_postfix(loss=f"{loss_sum:.3f}", lr=f"{lr:.1e}", **{f"{task.unit}/s": f"{rate:.0f}"})
        if (step + 1) % cfg.log_every == 0 or step + 1 == end:
            record("train", step + 1, loss=loss_sum, lr=lr, rate=rate)
        last = step + 1 == cfg.steps
        if make_val is not None and ((cfg.eval_every and (step + 1) % cfg.eval_every == 0) or last):
            val = evaluate(task, make_val, cfg.eval_batches, cfg, device)
            history.val.append((step + 1, val))
            record("val", step + 1, loss=val)
            tqdm.write(f"{cfg.name} step {step + 1}: val loss {val:.4f}")
        if (cfg.save_every and (step + 1) % cfg.save_every == 0) or step + 1 == end:
            save(trainer_state(step + 1))
    if history.train:
        plot_losses(history, out_dir / "loss.png", title=f"{cfg.name} loss")
    return history


def _to_tuple(x: Any) -> Any:
    """random.setstate wants the nested tuples that a checkpoint stores as lists."""
    return tuple(_to_tuple(v) for v in x) if isinstance(x, list | tuple) else x
