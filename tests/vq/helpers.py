"""Helpers for the VQ tests: a tiny tokenizer trained on the tiny preset's data."""

import dataclasses
from pathlib import Path

from picovlm.presets import tiny_vq_recipe
from picovlm.train.stages import run_recipe


def train_tiny_vq(data: Path, out: Path, steps: int = 60) -> Path:
    """A `vq` checkpoint of the tiny recipe trained `steps` steps at a learning rate that makes it
    learn something in them (a second or two); returns its folder."""
    recipe = tiny_vq_recipe(str(data))
    recipe.stages = [dataclasses.replace(s, steps=steps, lr=1e-2) for s in recipe.stages]
    return run_recipe(recipe, out, progress=False)["vq"]
