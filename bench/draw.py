"""Drawing one image with a native model: the engine's KV cache vs recomputing the whole sequence at
every step (engine/draw.py's reference: a full forward of the sequence so far, no cache, the same
constraint and sampling). Same tokens both ways (asserted); the speed ratio is the number (target >= 5x).
`--compile` adds a third way: the KV cache with the decode step compiled (`--compile` of draw/chat/serve,
`GPT.compile_decode`), on a copy of the same weights, same tokens asserted too.

    python bench/draw.py                        # random weights, the native preset's LM, 8x8 and 16x16 codes
    python bench/draw.py --grids 8x8 --repeats 5
    python bench/draw.py --compile              # and the compiled decode step
    python bench/draw.py --model runs/native/native/model

Both grids use the native preset's LM (4 layers, 128 wide) over 64 px images: 8x8 codes is the
preset's VQ (downsampling 8), 16x16 the issue's VQ spec (downsampling 4), its context widened to fit
256 codes. Random weights draw meaningless images, but a step costs the same. The two ways and the
grids take turns in every repetition (the machine's load then weighs on all alike); medians are
reported. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import time

import torch

GRIDS = {"8x8": 8, "16x16": 4}  # the VQ's downsampling of the preset's 64 px images
PROMPT = "a red circle above a blue square"


def tokenizer():
    from picovlm.text.tokenizer import Tokenizer

    captions = ["a small red circle at the top left", "two blue squares", "a green triangle at the bottom"] * 20
    return Tokenizer.train(captions, vocab_size=300)


def random_model(tok, downsample: int):
    """The native preset's model with a VQ of this downsampling, randomly initialised."""
    from picovlm.native.model import NativeModel, native_vocab, placeholder_ids
    from picovlm.presets import native_recipe
    from picovlm.vq.model import VQVAE

    recipe = native_recipe()
    vq = VQVAE(dataclasses.replace(recipe.vq, downsample=downsample))
    lm = recipe.native.lm
    lm = dataclasses.replace(lm, max_seq_len=max(lm.max_seq_len, vq.grid**2 + 64))  # prompt + codes + end
    cfg = dataclasses.replace(recipe.native, lm=lm)
    return NativeModel(cfg, native_vocab(tok, vq), vq, placeholder_ids(tok)).eval()


def models(args) -> dict[str, tuple]:
    """Grid name -> (model, tokenizer, the model's compiled copy or None)."""
    if args.model:
        from picovlm.native.model import load_native

        model, tok = load_native(args.model)
        grids = {f"{model.vocab.rows}x{model.vocab.columns}": (model, tok)}
    else:
        tok = tokenizer()
        grids = {name: (random_model(tok, GRIDS[name]), tok) for name in args.grids}
    return {name: (model, tok, compiled(model) if args.compile else None) for name, (model, tok) in grids.items()}


def compiled(model):
    """A copy of `model` whose decode steps run compiled (the compile is paid here, at load)."""
    from picovlm.engine.pipeline import compile_lm

    twin = copy.deepcopy(model)
    compile_lm(twin)
    return twin


def timed(fn) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def measure(grids: dict[str, tuple], repeats: int) -> dict[str, dict[str, list[float]]]:
    """Seconds of each way per grid and repetition, the ways and grids interleaved."""
    from picovlm.engine.draw import draw_codes, draw_codes_recomputed
    from picovlm.engine.sampling import SamplingParams

    params = SamplingParams(temperature=1.0, seed=0)
    times = {name: {"kv": [], "recompute": [], "kv_compiled": []} for name in grids}
    for _ in range(repeats):
        for name, (model, tok, twin) in grids.items():
            t, codes = timed(lambda: draw_codes(model, tok, [PROMPT], params)[0])  # noqa: B023 (called at once)
            times[name]["kv"].append(t)
            t, again = timed(lambda: draw_codes_recomputed(model, tok, PROMPT, params))  # noqa: B023
            times[name]["recompute"].append(t)
            assert torch.equal(codes, again), f"{name}: the KV cache and recomputing drew different tokens"
            if twin is not None:
                t, again = timed(lambda: draw_codes(twin, tok, [PROMPT], params)[0])  # noqa: B023
                times[name]["kv_compiled"].append(t)
                assert torch.equal(codes, again), f"{name}: the compiled step drew different tokens"
    return times


def report(grids: dict[str, tuple], times: dict[str, dict[str, list[float]]], args) -> dict:
    """Print the table; return the JSON line's object."""
    head = f"{'grid':<6} {'tokens':>6} {'kv s':>7} {'kv ms/tok':>9} {'recomp s':>8} {'rec ms/tok':>10} {'speed-up':>8}"
    print(head + (f" {'compiled s':>10} {'ms/tok':>6} {'speed-up':>8}" if args.compile else ""))
    rows = {}
    for name, (model, *_) in grids.items():
        n = model.vocab.tokens_per_image + 1
        kv, rec = statistics.median(times[name]["kv"]), statistics.median(times[name]["recompute"])
        rows[name] = {"tokens": n, "kv_cache_s": kv, "recompute_s": rec, "kv_speedup": rec / kv}
        line = f"{name:<6} {n:>6} {kv:>7.3f} {kv / n * 1e3:>9.2f} {rec:>8.3f} {rec / n * 1e3:>10.2f} {rec / kv:>7.1f}x"
        if args.compile:
            kvc = statistics.median(times[name]["kv_compiled"])
            rows[name] |= {"kv_compiled_s": kvc, "compiled_kv_speedup": rec / kvc}
            line += f" {kvc:>10.3f} {kvc / n * 1e3:>6.2f} {rec / kvc:>7.1f}x"
        print(line)
    print(f"medians of {args.repeats}, {args.threads} thread(s), same tokens every way (asserted)")
    compiled_keys = (
        {"compiled_kv_speedup": {n: r["compiled_kv_speedup"] for n, r in rows.items()}} if args.compile else {}
    )
    return {
        "kv_speedup": {name: row["kv_speedup"] for name, row in rows.items()},
        **compiled_keys,
        "same_tokens": True,  # measure() asserts it
        "grids": rows,
        "threads": args.threads,
        "repeats": args.repeats,
        "weights": args.model or "random",
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", help="a native checkpoint (default: random weights, the native preset's size)")
    p.add_argument("--grids", nargs="+", choices=sorted(GRIDS), default=list(GRIDS), help="with random weights")
    p.add_argument("--compile", action="store_true", help="also the KV cache with a compiled decode step")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    grids = models(args)
    print(json.dumps(report(grids, measure(grids, args.repeats), args)))


if __name__ == "__main__":
    main()
