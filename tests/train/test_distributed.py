"""Data-parallel training (train/distributed.py): 2 processes with the gloo backend on the CPU, started
as torchrun starts them (RANK, WORLD_SIZE, MASTER_ADDR/PORT), train as one process does on the same
global batches, and their checkpoints resume in one process."""

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from picovlm.models.vlm import load_vlm
from picovlm.presets import RECIPES
from picovlm.train.distributed import SHARDS, Parallel
from picovlm.train.stages import run_stage, train_tokenizer

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("dist_worker.py")


@pytest.fixture(scope="module")
def recipe(tiny_data):
    return RECIPES["tiny"](str(tiny_data))


@pytest.fixture(scope="module")
def tok_path(recipe, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    train_tokenizer(recipe, path)
    return path


def stage_of(recipe, **kw):
    """The instruct stage alone, 4 steps of a global batch of 8 in 2 micro-steps (accumulated gradients)."""
    stage = next(s for s in recipe.stages if s.name == "instruct")
    return dataclasses.replace(stage, init={}, steps=4, warmup=0.25, grad_accum=2, **kw)


def run_dir(tmp_path: Path, name: str, tok_path: Path) -> Path:
    out = tmp_path / name
    out.mkdir()
    shutil.copy(tok_path, out / "tokenizer.json")
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(world: int, recipe, stage, out: Path, stop_at: int | None = None) -> list[tuple[int, float]]:
    """Train `stage` in `world` processes; rank 0's losses (every rank must report the same)."""
    job = json.dumps({"data": recipe.data_dir, "stage": dataclasses.asdict(stage), "out": str(out), "stop_at": stop_at})
    env = {**os.environ, "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    env |= {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), job],
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(world)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for r, (p, said) in enumerate(zip(procs, outputs, strict=True)):
        assert p.returncode == 0, f"rank {r} failed:\n{said[-3000:]}"
    losses = [json.loads((out / f"losses.{r}.json").read_text()) for r in range(world)]
    assert all(other == losses[0] for other in losses[1:])  # the loss logged is the global batch's
    return [tuple(x) for x in losses[0]]


def assert_same_losses(a, b, tol=1e-5):
    assert [s for s, _ in a] == [s for s, _ in b]
    for (step, x), (_, y) in zip(a, b, strict=True):
        assert x == pytest.approx(y, abs=tol), (step, x, y)


@pytest.mark.parametrize(("parallel", "micro_batch"), [("ddp", 0), ("fsdp", 0), ("ddp", 1)])
def test_two_processes_train_as_one_on_the_same_global_batch(recipe, tok_path, tmp_path, parallel, micro_batch):
    """micro_batch 1: each rank computes its share of a batch one sample at a time, and still trains as one
    process computing the whole batch at once."""
    stage = stage_of(recipe, parallel=parallel)
    _, one = run_stage(recipe, stage, run_dir(tmp_path, "one", tok_path), _tok(tok_path), progress=False)
    two = run_ranks(2, recipe, dataclasses.replace(stage, micro_batch=micro_batch), run_dir(tmp_path, "two", tok_path))
    assert_same_losses(one.train, two)
    logged = (tmp_path / "two" / "instruct" / "log.jsonl").read_text().splitlines()
    assert len([line for line in logged if '"train": true' in line]) == 1  # rank 0 alone logs (the last step)
    ones, twos = (load_vlm(tmp_path / d / "instruct" / "model")[0].state_dict() for d in ("one", "two"))
    for key in ones:
        assert torch.allclose(ones[key], twos[key], atol=1e-5), key


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_a_two_process_checkpoint_resumes_in_one_process(recipe, tok_path, tmp_path, parallel):
    stage = stage_of(recipe, parallel=parallel)
    _, whole = run_stage(recipe, stage, run_dir(tmp_path, "whole", tok_path), _tok(tok_path), progress=False)
    parts = run_dir(tmp_path, "parts", tok_path)
    run_ranks(2, recipe, stage, parts, stop_at=2)  # "crash" after step 2 of 4
    assert (parts / "instruct" / "model" / SHARDS).is_dir() == (parallel == "fsdp")
    _, resumed = run_stage(recipe, stage, parts, _tok(tok_path), resume=True, progress=False)
    assert_same_losses(whole.train, resumed.train)


def test_one_process_is_left_as_it_was():
    par = Parallel()
    loss = torch.tensor(2.5)
    assert par.scale(loss, lambda: 1 / 0) is loss  # not even the units are counted
    assert par.agree(1.25, 7, False) == (1.25, 7, False)


def _tok(path: Path):
    from picovlm.text.tokenizer import Tokenizer

    return Tokenizer.load(path)
