"""Drawing one image with a native model: the engine's KV cache vs recomputing the whole sequence
at every step (engine/draw.py's reference). Same tokens both ways (asserted); the speed ratio is the
number (target >= 5x).

    python bench/draw.py                        # a randomly initialised model of the native preset's size
    python bench/draw.py --model runs/native/native/model

Random weights draw meaningless images, but a step costs the same. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def model_and_tokenizer(path: str | None):
    from picovlm.native.model import NativeModel, load_native, native_vocab, placeholder_ids
    from picovlm.presets import native_recipe
    from picovlm.text.tokenizer import Tokenizer
    from picovlm.vq.model import VQVAE

    if path:
        return load_native(path)
    recipe = native_recipe()
    captions = ["a small red circle at the top left", "two blue squares", "a green triangle at the bottom"] * 20
    tok = Tokenizer.train(captions, vocab_size=300)
    vq = VQVAE(recipe.vq)
    return NativeModel(recipe.native, native_vocab(tok, vq), vq, placeholder_ids(tok)).eval(), tok


def timed(fn) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    from picovlm.engine.draw import draw_codes, draw_codes_recomputed
    from picovlm.engine.sampling import SamplingParams

    p = argparse.ArgumentParser()
    p.add_argument("--model", help="a native checkpoint (default: random weights, the native preset's size)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model, tok = model_and_tokenizer(args.model)
    prompt, params = "a red circle above a blue square", SamplingParams(temperature=1.0, seed=0)
    cached, recomputed = [], []
    for _ in range(args.repeats):
        t, codes = timed(lambda: draw_codes(model, tok, [prompt], params)[0])
        cached.append(t)
        t, again = timed(lambda: draw_codes_recomputed(model, tok, prompt, params))
        recomputed.append(t)
        assert torch.equal(codes, again), "the KV cache and recomputing drew different tokens"
    best_cached, best_recomputed = min(cached), min(recomputed)
    n = model.vocab.tokens_per_image + 1
    print(f"{'way':<12} {'seconds':>8} {'ms/token':>9}")
    print(f"{'kv cache':<12} {best_cached:>8.3f} {best_cached / n * 1000:>9.2f}")
    print(f"{'recompute':<12} {best_recomputed:>8.3f} {best_recomputed / n * 1000:>9.2f}")
    ratio = best_recomputed / best_cached
    print(f"speed-up {ratio:.1f}x ({n} tokens, same tokens both ways)")
    print(json.dumps({"tokens": n, "kv_cache_s": best_cached, "recompute_s": best_recomputed, "speedup": ratio}))


if __name__ == "__main__":
    main()
