"""Shared test setup: one torch thread, a tiny trained tokenizer and a tiny trained model (each
built once per session)."""

from pathlib import Path

import pytest
import torch

from picovlm.data.scenes import build_dataset
from picovlm.presets import DATA_PRESETS, RECIPES
from picovlm.text.tokenizer import Tokenizer
from picovlm.train.stages import run_recipe

# The test models are tiny: a thread pool costs more than it saves, and on a busy machine its
# spinning workers make every small op wait (tens of milliseconds per forward instead of ~1 ms).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tok() -> Tokenizer:
    words = ["what", "is", "in", "the", "picture", "a", "cat", "on", "mat", "describe", "red", "blue", "yes"]
    texts = [" ".join(words[i:] + words[:i]) for i in range(len(words))] * 10
    return Tokenizer.train(texts, vocab_size=300)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """The dataset of the tiny preset (16 test images, 3 questions each); do not modify it."""
    data = tmp_path_factory.mktemp("tiny_data")
    preset = DATA_PRESETS["tiny"]()
    build_dataset(data, preset.scenes, preset.n_train, preset.n_val, preset.n_test, preset.seed)
    return data


@pytest.fixture(scope="session")
def tiny_run(tiny_data, tmp_path_factory) -> dict[str, Path]:
    """{"data", "model"}: a model trained on `tiny_data` by the tiny recipe, once per session (a few
    seconds), for the tests that need a real checkpoint but not a good one."""
    done = run_recipe(RECIPES["tiny"](str(tiny_data)), tmp_path_factory.mktemp("tiny_run"), progress=False)
    return {"data": tiny_data, "model": done["instruct"]}
