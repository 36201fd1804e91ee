"""Data-parallel training under torchrun: DDP, or FSDP2 (`fully_shard`) for models that do not fit.

    torchrun --nproc_per_node 4 -m picovlm train --preset demo --out runs/demo

torchrun starts one process per device and sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous
(MASTER_ADDR/PORT); `setup` reads them. Without torchrun (one process) every method of `Parallel`
is the identity, so the single-process path is exactly the one it always was.

What the processes (ranks) agree on, so that N ranks train as one process would on the same batches:
- Data: every rank draws the same global batch (same seed, same order) and takes its share of it,
  samples `rank::world` (`BatchStream.shard`); the data position in a checkpoint is the global one.
- Loss: rank r's mean loss over its n_r units (labelled tokens, or samples) is scaled by
  n_r * world / N, N the sum over ranks, so the averaged gradient is that of the global batch's mean.
  (A contrastive loss is the exception: each rank contrasts its own share only.)
- Gradient accumulation: no all-reduce before the last micro-step of an optimizer step
  (`no_sync` for DDP, `set_requires_gradient_sync` for FSDP2).
- Rank 0 alone logs, plots and writes the checkpoint; with FSDP every rank also writes its share of
  the optimizer state with `torch.distributed.checkpoint` (DCP) into the checkpoint's
  `optimizer_shards/`, beside the full weights gathered to rank 0 as safetensors, so the checkpoint
  stays a plain picovlm model, and DCP reshards it on resume at any world size, one process included.
- Device: "cuda" means cuda:LOCAL_RANK (backend nccl); "cpu" uses gloo.

FSDP shards the parts that learn in the stage (each block of a ModuleList on its own, then the part);
frozen parts stay whole on every rank, because a frozen tower is run outside the model's forward
(`TowerFeatures`), on each rank's own images.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn as nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, fully_shard, register_fsdp_forward_method
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

SHARDS = "optimizer_shards"  # inside a checkpoint folder that an FSDP run wrote: the DCP optimizer state
MODES = ("ddp", "fsdp")
# methods other than forward that a model calls on a sharded part (the VLM embeds its text with
# `lm.embed` before it runs `lm`): they gather the part's weights as its forward does
ENTRY_METHODS = ("embed",)


@dataclass
class Parallel:
    """This process's place in the job (rank 0 of 1 without torchrun) and how the model is spread."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    mode: str = "none"  # "none" (one process) | "ddp" | "fsdp", set by `wrap`
    ddp: DistributedDataParallel | None = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def wrap(self, model: nn.Module, mode: str, trainable_modules: list[nn.Module]) -> None:
        """Spread `model` over the ranks: a DDP wrapper, or FSDP2 shards of `trainable_modules`."""
        if self.world == 1:
            return
        if mode not in MODES:
            raise ValueError(f"unknown parallel mode {mode!r}: one of {', '.join(MODES)}")
        self.mode = mode
        if mode == "ddp":
            ids = [self.device.index] if self.device.type == "cuda" else None
            # unused parameters: a model that can read video or audio sees batches of images alone
            self.ddp = DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)
            return
        for module in trainable_modules:
            module.to(memory_format=torch.contiguous_format)  # FSDP2 shards contiguous parameters only
            shard(module)
        loose = [n for n, p in model.named_parameters() if p.requires_grad and not isinstance(p, DTensor)]
        if loose:
            raise ValueError(f"fsdp: trainable parameter {loose[0]} is in no sharded module; use parallel 'ddp'")

    @contextmanager
    def micro_step(self, task: Any, last: bool) -> Iterator[None]:
        """Around one micro-step's forward and backward: gradients are all-reduced on the `last` only;
        with DDP the task's loss runs through the wrapper (`task.model` is it, meanwhile)."""
        if self.mode == "ddp":
            inner, task.model = task.model, self.ddp
            try:
                with nullcontext() if last else self.ddp.no_sync():
                    yield
            finally:
                task.model = inner
            return
        if self.mode == "fsdp":
            for module in _fsdp_modules(task.model):
                module.set_requires_gradient_sync(last, recurse=False)
        yield

    def scale(self, loss: torch.Tensor, units: Callable[[], int]) -> torch.Tensor:
        """This rank's mean `loss` over its `units()` units, weighted so that the ranks' averaged
        gradient is that of the mean over all their units (one process's, on the global batch)."""
        if self.world == 1:
            return loss
        weight = units()
        total = torch.tensor(float(weight), device=self.device)
        dist.all_reduce(total)
        return loss * (weight * self.world / max(float(total), 1.0))

    def agree(self, loss: float, work: int, stop: bool) -> tuple[float, int, bool]:
        """The step's loss (the mean over ranks of their scaled losses), the work of all ranks, and
        whether any rank was asked to stop (Ctrl-C): then all of them stop after this step."""
        if self.world == 1:
            return loss, work, stop
        t = torch.tensor([loss / self.world, float(work), float(stop)], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t[0]), int(t[1]), bool(t[2] > 0)

    def save(
        self, save: Callable[..., None], state: dict[str, Any], model: nn.Module, opt: torch.optim.Optimizer, at: Path
    ) -> None:
        """Checkpoint through `save(trainer_state, weights=None, add_files=None)` on rank 0; with FSDP
        the weights are gathered first and every rank writes its optimizer shard (DCP) into a folder
        beside the checkpoint (`at`), which rank 0 moves into it before publishing it."""
        if self.mode != "fsdp":
            if self.main:
                save(state)
            self.barrier()
            return
        weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        staged = at / f"{SHARDS}.tmp"
        if self.main:
            shutil.rmtree(staged, ignore_errors=True)
        self.barrier()
        dcp.save({"optimizer": get_optimizer_state_dict(model, opt)}, checkpoint_id=staged)
        if self.main:
            save({**state, "optimizer": None}, weights=weights, add_files=lambda folder: staged.rename(folder / SHARDS))
        self.barrier()

    def load_optimizer(self, model: nn.Module, opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        """The optimizer state of a checkpoint: from its .pt, or resharded from its DCP shards."""
        shards = state.get(SHARDS)
        if shards is None:
            if self.mode == "fsdp":
                raise ValueError("fsdp resumes from a checkpoint that fsdp wrote, not from one of ddp or 1 process")
            opt.load_state_dict(state["optimizer"])
            return
        osd = get_optimizer_state_dict(model, opt)
        with warnings.catch_warnings():  # one process reads the shards of many: DCP says it, and it is meant
            warnings.filterwarnings("ignore", "torch.distributed is disabled")
            dcp.load({"optimizer": osd}, checkpoint_id=shards)
        set_optimizer_state_dict(model, opt, osd)


def setup(device: str | torch.device) -> Parallel:
    """This process's `Parallel`, joining the torchrun job (the process group) once, if there is one."""
    device = torch.device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) == 1 and not dist.is_initialized():
        return Parallel(device=device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if dist.get_world_size() == 1:
        return Parallel(device=device)
    return Parallel(dist.get_rank(), dist.get_world_size(), device)


def shutdown() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_initialized():
        dist.destroy_process_group()


def shard(module: nn.Module) -> None:
    """FSDP2 over `module`: each block of its ModuleLists first (deepest first), then the rest of it."""
    blocks = [(name, m) for name, m in module.named_modules() if name and _in_module_list(module, name)]
    for _, block in sorted(blocks, key=lambda b: -b[0].count(".")):
        if not isinstance(block, FSDPModule):
            fully_shard(block)
    fully_shard(module)
    for name in ENTRY_METHODS:
        if callable(getattr(module, name, None)):
            register_fsdp_forward_method(module, name)


def _in_module_list(root: nn.Module, name: str) -> bool:
    parent = root.get_submodule(name.rpartition(".")[0]) if "." in name else root
    return isinstance(parent, nn.ModuleList)


def _fsdp_modules(model: nn.Module) -> list[FSDPModule]:
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def part_modules(model: nn.Module, parts: dict[str, str], trainable: tuple[str, ...]) -> list[nn.Module]:
    """The modules of the `trainable` parts (prefix -> module), innermost first, as FSDP2 shards them;
    a part that is a bare parameter has none (and `wrap` then says so)."""
    found = []
    for prefix in sorted((parts[p] for p in trainable), key=len, reverse=True):
        try:
            found.append(model.get_submodule(prefix.rstrip(".")))
        except AttributeError:
            continue
    return found
