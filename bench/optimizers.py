"""AdamW vs Muon on the demo's instruction stage: seconds per step and the loss after the same steps.

    python bench/optimizers.py --run runs/demo --data data/demo --steps 300

Needs a finished `make demo` (its lm, clip and align checkpoints are the starting point of both runs,
which train from the same init on the same batches in this one process). Muon costs more per step
(the orthogonalization) and should buy more per step; the ratio that matters is the last line's
`loss_ratio` (Muon / AdamW, lower is better) next to `time_ratio`. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    from picovlm.presets import demo_recipe
    from picovlm.text.tokenizer import Tokenizer
    from picovlm.train.stages import run_stage

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/demo", help="a finished demo run (lm, clip, align checkpoints)")
    ap.add_argument("--data", default="data/demo")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    recipe = demo_recipe(args.data)
    instruct = next(s for s in recipe.stages if s.name == "instruct")
    tok = Tokenizer.load(run / "tokenizer.json")
    results = {}
    for name in ("adamw", "muon"):
        stage = dataclasses.replace(instruct, optimizer=name, steps=args.steps, val_data=(), log_every=1)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            (out / "tokenizer.json").write_bytes((run / "tokenizer.json").read_bytes())
            for part in ("lm", "clip", "align"):
                (out / part).symlink_to((run / part).resolve())
            t0 = time.perf_counter()
            _, history = run_stage(recipe, stage, out, tok, progress=False)
            seconds = time.perf_counter() - t0
        tail = [loss for _, loss in history.train[-max(1, args.steps // 5) :]]
        results[name] = {"s_per_step": round(seconds / args.steps, 4), "final_loss": round(sum(tail) / len(tail), 4)}
        print(name, results[name], flush=True)
    print(
        json.dumps(
            {
                "bench": "optimizers",
                "steps": args.steps,
                **results,
                "loss_ratio": round(results["muon"]["final_loss"] / results["adamw"]["final_loss"], 3),
                "time_ratio": round(results["muon"]["s_per_step"] / results["adamw"]["s_per_step"], 3),
            }
        )
    )


if __name__ == "__main__":
    main()
