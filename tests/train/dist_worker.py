"""One rank of a data-parallel test run (tests/train/test_distributed.py starts WORLD_SIZE of them, with
the environment torchrun would set): trains a stage of the tiny recipe and writes its losses."""

import json
import sys
from pathlib import Path

import torch

from picovlm.config import StageConfig, from_dict
from picovlm.presets import RECIPES
from picovlm.text.tokenizer import Tokenizer
from picovlm.train.distributed import setup, shutdown
from picovlm.train.stages import run_stage


def main(job: dict) -> None:
    torch.set_num_threads(1)
    recipe = RECIPES["tiny"](job["data"])
    stage = from_dict(StageConfig, job["stage"])
    out = Path(job["out"])
    _, history = run_stage(
        recipe, stage, out, Tokenizer.load(out / "tokenizer.json"), stop_at=job["stop_at"], progress=False
    )
    rank = setup(recipe.device).rank
    (out / f"losses.{rank}.json").write_text(json.dumps(history.train))
    shutdown()


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
