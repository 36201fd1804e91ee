"""Helpers for the format tests: the tiny dataset's samples, and one tiny training stage on any data."""

import dataclasses
import math
import shutil
from pathlib import Path

import pytest
import torch

from picovlm.data.formats import load_samples
from picovlm.data.records import Sample
from picovlm.presets import RECIPES
from picovlm.train.stage_tasks import build_stage_task
from picovlm.train.stages import run_stage, train_tokenizer


@pytest.fixture(scope="session")
def llava_samples(tiny_data) -> list[Sample]:
    """The first 8 training conversations of the tiny dataset, read from its LLaVA JSON."""
    return load_samples(tiny_data / "train.json", on_error="raise")[:8]


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_data, tmp_path_factory):
    path = tmp_path_factory.mktemp("format_tok") / "tokenizer.json"
    return train_tokenizer(RECIPES["tiny"](str(tiny_data)), path), path


@pytest.fixture
def train_from(tiny_data, tiny_tokenizer, llava_samples, tmp_path):
    """train_from(data_dir, files, samples) trains the tiny recipe's instruct stage alone for 2 steps
    on `files` (stage data entries), after checking that `samples` (read from those files) make the
    very batch the LLaVA JSON's samples make; returns the stage's training losses."""

    def run(data_dir: Path, files: tuple[str, ...], samples: list[Sample]) -> list[float]:
        tok, tok_path = tiny_tokenizer
        recipe = dataclasses.replace(RECIPES["tiny"](str(tiny_data)), data_dir=str(data_dir))
        instruct = next(s for s in recipe.stages if s.name == "instruct")
        stage = dataclasses.replace(instruct, init={}, data=files, val_data=(), steps=2, batch_size=4)
        make_batch = build_stage_task(recipe, stage, tok).make_batch
        ours, reference = make_batch(samples[:4]), make_batch(llava_samples[:4])
        assert ours.keys() == reference.keys()
        for key in reference:
            assert torch.equal(ours[key], reference[key]), key
        out = tmp_path / "run"
        out.mkdir()
        shutil.copy(tok_path, out / "tokenizer.json")
        ckpt, history = run_stage(recipe, stage, out, tok, progress=False)
        assert (ckpt / "config.json").is_file()
        losses = [loss for _, loss in history.train]
        assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
        return losses

    return run
