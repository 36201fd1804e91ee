"""The training loop: one loop for every stage and task.

What a stage trains is decided by its config: `trainable` names the parts that learn (the rest are
frozen), its task (train/stage_tasks.py) says what is minimized. Everything else (AdamW, warmup + cosine,
gradient accumulation, clipping, bf16 autocast, periodic evaluation, progress, checkpoints and
exact resume) is the same for all of them.

Ctrl-C (SIGINT) stops the loop after the step it is in: the checkpoint it then saves is whole, and
`Interrupted` says where it stopped. A second Ctrl-C interrupts at once, as usual.
"""

from __future__ import annotations

import json
import math
import random
import signal
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from picovlm.checkpoint import part_of
from picovlm.config import StageConfig
from picovlm.data.batches import Batch, BatchStream
from picovlm.interop.lora import is_adapter_param
from picovlm.train.distributed import Parallel, part_modules, setup
from picovlm.train.optim import lr_at, make_optimizer
from picovlm.train.plot import plot_losses
from picovlm.train.stage_tasks import StageTask


class Interrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C after `step`, with a checkpoint saved at that step."""

    def __init__(self, step: int, message: str | None = None):
        super().__init__(message or f"stopped after step {step}, checkpoint saved")
        self.step = step


class StopOnSigint:
    """While training, SIGINT sets `requested` instead of raising KeyboardInterrupt mid-step, where it
    could leave the weights half-updated and the data position past a batch that was not learned."""

    def __init__(self):
        self.requested, self._previous = False, None

    def __enter__(self) -> StopOnSigint:
        if threading.current_thread() is threading.main_thread():  # only there can a handler be set
            self._previous = signal.signal(signal.SIGINT, self._request)
        return self

    def _request(self, signum: int, frame: Any) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, self._restored())  # a second Ctrl-C: the usual KeyboardInterrupt

    def _restored(self) -> Any:
        return self._previous if self._previous is not None else signal.default_int_handler

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._restored())


@dataclass
class History:
    train: list[tuple[int, float]] = field(default_factory=list)
    val: list[tuple[int, float]] = field(default_factory=list)


def to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def freeze(task: StageTask, trainable: tuple[str, ...]) -> None:
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


def autocast(stage: StageConfig, device: torch.device):
    if stage.dtype == "float32":
        return nullcontext()
    if stage.dtype == "bfloat16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    raise ValueError(f"unknown dtype {stage.dtype!r}: float32 or bfloat16")


@torch.no_grad()
def evaluate(task: StageTask, make_val: Callable[[], BatchStream], stage: StageConfig, device: torch.device) -> float:
    """Mean loss over the same `stage.eval_batches` validation batches every time (a fresh, seeded stream)."""
    task.model.eval()
    stream, total = make_val(), 0.0
    for _ in range(stage.eval_batches):
        with autocast(stage, device):
            total += float(task.loss(to_device(next(stream), device)))
    task.model.train()
    return total / stage.eval_batches


def train(
    task: StageTask,
    stage: StageConfig,
    batches: BatchStream,
    *,
    out_dir: Path,
    save: Callable[[dict[str, Any]], None],
    make_val: Callable[[], BatchStream] | None = None,
    resume: dict[str, Any] | None = None,
    device: str | torch.device = "cpu",
    stop_at: int | None = None,
    progress: bool = True,
    parallel: Parallel | None = None,
) -> History:
    """Run `stage.steps` optimizer steps (or stop early, after step `stop_at`), checkpointing through
    `save`, which receives the trainer state to store beside the weights; `resume` is such a state.
    `make_val` makes the validation batches, evaluated every `stage.eval_every` steps and at the end.
    Ctrl-C saves after the current step and raises `Interrupted`. Under torchrun (`parallel`, by
    default joined here) each rank trains on its share of every batch (train/distributed.py)."""
    par = parallel or setup(device)
    device = par.device
    task.model.to(device).train()
    freeze(task, stage.trainable)
    par.wrap(task.model, stage.parallel, part_modules(task.model, task.parts, stage.trainable))
    opt = make_optimizer(task.model, stage, task.parts)
    batches.shard(par.rank, par.world)
    history, start = restore(resume, opt, batches, task.model, par) if resume is not None else (History(), 0)
    out_dir.mkdir(parents=True, exist_ok=True)
    if par.main:
        trim_log(out_dir, start)
    end = stage.steps if stop_at is None else min(stop_at, stage.steps)
    bar = tqdm(range(start, end), desc=stage.name, disable=not (progress and par.main), dynamic_ncols=True, leave=True)
    t0, work = time.perf_counter(), 0
    with StopOnSigint() as stop:
        for step in bar:
            lr = set_lr(opt, step, stage)
            loss, units = optimizer_step(task, opt, batches, stage, device, par)
            loss, units, stopping = par.agree(loss, units, stop.requested)
            done, work = step + 1, work + units
            history.train.append((done, loss))
            rate = work / max(1e-9, time.perf_counter() - t0)
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.1e}", **{f"{task.unit}/s": f"{rate:.0f}"})
            if par.main and (every(stage.log_every, done) or done == end or stopping):
                log(out_dir, stage, "train", done, loss=loss, lr=lr, rate=rate)
            if make_val is not None and (every(stage.eval_every, done) or done == stage.steps):
                validate(task, make_val, stage, device, history, done, out_dir, par.main)
            if every(stage.save_every, done) or done == end or stopping:
                par.save(save, trainer_state(done, opt, batches, history), task.model, opt, out_dir)
            if stopping:
                bar.close()
                raise Interrupted(done)
    if history.train and par.main:
        plot_losses(history, out_dir / "loss.png", title=f"{stage.name} loss")
    return history


def every(n: int, done: int) -> bool:
    """Whether `done` steps end a period of `n` steps (never for n = 0: "only at the end")."""
    return n > 0 and done % n == 0


def set_lr(opt: torch.optim.Optimizer, step: int, stage: StageConfig) -> float:
    """The schedule's lr at `step`, times each group's own scale; returns the unscaled lr."""
    lr = lr_at(step, stage)
    for group in opt.param_groups:
        group["lr"] = lr * group["lr_scale"]
    return lr


def optimizer_step(
    task: StageTask,
    opt: torch.optim.Optimizer,
    batches: BatchStream,
    stage: StageConfig,
    device: torch.device,
    par: Parallel | None = None,
) -> tuple[float, int]:
    """One optimizer step over `stage.grad_accum` batches: (the summed loss, the units of work done);
    under torchrun this rank's share of them, gradients all-reduced on the last micro-step only. A batch
    in parts (`stage.micro_batch`) weighs each part's mean loss by its share of the labelled units."""
    loss_sum, work, par = 0.0, 0, par or Parallel(device=device)
    for k in range(stage.grad_accum):
        parts = [to_device(b, device) for b in batches.next_parts()]
        units = [task.loss_weight(b) for b in parts] if len(parts) > 1 else None
        for j, batch in enumerate(parts):
            with par.micro_step(task, last=k == stage.grad_accum - 1 and j == len(parts) - 1):
                with autocast(stage, device):
                    loss = part_loss(task, batch, par, units, j) / stage.grad_accum
                loss.backward()
            loss_sum += loss.item()
            work += task.count(batch)
    if stage.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_([p for p in task.model.parameters() if p.requires_grad], stage.grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss_sum, work


def part_loss(task: StageTask, batch: Batch, par: Parallel, units: list[int] | None, j: int) -> torch.Tensor:
    """The loss of part `j` of a batch cut into parts of `units` labelled units each (None: one part),
    weighted so that the parts' gradients sum to the whole batch's mean loss's, and (under torchrun)
    the ranks' average to the global batch's."""
    if units is None:
        return par.scale(task.loss(batch), partial(task.loss_weight, batch))
    total = sum(units)
    return par.scale(task.loss(batch) * (units[j] / max(total, 1)), lambda: total)


def validate(
    task: StageTask,
    make_val: Callable[[], BatchStream],
    stage: StageConfig,
    device: torch.device,
    history: History,
    step: int,
    out_dir: Path,
    main: bool = True,
) -> None:
    """Evaluate, and record the validation loss in the history, and (on the `main` rank, which alone
    writes) in the log and the progress output. Every rank evaluates the same batches."""
    val = evaluate(task, make_val, stage, device)
    history.val.append((step, val))
    if main:
        log(out_dir, stage, "val", step, loss=val)
        tqdm.write(f"{stage.name} step {step}: val loss {val:.4f}")


def log(out_dir: Path, stage: StageConfig, kind: str, step: int | None = None, **values: Any) -> None:
    """One line of `log.jsonl` (`step` left out of a line about the whole stage, like its data summary);
    the file is opened per line, so no handle is left open if training raises."""
    at = {"step": step} if step is not None else {}
    with open(out_dir / "log.jsonl", "a") as f:
        f.write(json.dumps({"stage": stage.name, kind: True, **at, **values}) + "\n")


def trim_log(out_dir: Path, step: int) -> None:
    """Keep the lines of `log.jsonl` up to `step`, where training goes on from: a resumed run then logs
    each later step once, and a run started over does not add to the lines of an old one. Lines
    without a step (a data summary, written again at the end) and a line cut short by a crash go."""
    path = out_dir / "log.jsonl"
    if path.is_file():
        kept = [line for line in path.read_text().splitlines() if _logged_step(line) <= step]
        path.write_text("".join(line + "\n" for line in kept))


def _logged_step(line: str) -> float:
    try:
        return json.loads(line).get("step", math.inf)
    except (json.JSONDecodeError, AttributeError):
        return math.inf


def trainer_state(step: int, opt: torch.optim.Optimizer, batches: BatchStream, history: History) -> dict[str, Any]:
    """Everything besides the weights that resuming after `step` needs to go on exactly."""
    return {
        "step": step,
        "optimizer": opt.state_dict(),
        "data": batches.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "python_rng": random.getstate(),
        "history": {"train": history.train, "val": history.val},
    }


def restore(
    state: dict[str, Any], opt: torch.optim.Optimizer, batches: BatchStream, model: torch.nn.Module, par: Parallel
) -> tuple[History, int]:
    """Put a `trainer_state` back; returns the history so far and the step to go on from."""
    par.load_optimizer(model, opt, state)
    batches.load_state_dict(state["data"])
    torch.set_rng_state(state["torch_rng"])
    random.setstate(_to_tuple(state["python_rng"]))
    history = History([tuple(x) for x in state["history"]["train"]], [tuple(x) for x in state["history"]["val"]])
    return history, int(state["step"])


def _to_tuple(x: Any) -> Any:
    """random.setstate wants the nested tuples that a checkpoint stores as lists."""
    return tuple(_to_tuple(v) for v in x) if isinstance(x, list | tuple) else x
