"""Scaling curves: cost per token of picovlm and of HF transformers on the same weights, as the prompt,
the image count and the batch grow, and a training step's as its batch and length grow.

    python bench/scaling.py                    # demo shape, 1 thread: ~2.5 min; PNGs in bench/results/
    python bench/scaling.py --size 135m        # SmolLM2-135M-shaped LM, fewer points, no training sweep
    python bench/scaling.py --quick --out DIR  # tiny shapes, seconds (what tests/bench runs)

Inference: bench/generate.py's demo-shape checkpoint (random, seeded) exported as hf-internvl and loaded
by transformers; every point first checks both decode the same greedy tokens, then times them with its
`time_cell` (interleaved repetitions, medians). Prefill ms/token: time to the first token over batch x
prompt tokens; decode ms/token: the later steps' time over batch x steps. Training: bench/train_step.py's
demo model (LLaVA export), instruct stage (projector and LM learn, tower frozen, both on pixels): one
AdamW step over the tokens in the batch (rows of one length, no padding). Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

import generate as gen  # noqa: E402
import train_step as ts  # noqa: E402
from scaling_plot import plot  # noqa: E402

WORDS = "a red cat on the left of a blue square".split()
# size (bench/generate.py's) -> its points; "train": bench/train_step.py's size, None for no training sweep
PRESETS = {
    "demo": {"contexts": [32, 64, 128, 256, 480], "images": [1, 2, 4], "batches": [1, 2, 4, 8], "tokens": 32,
             "reps": 9, "train": "demo", "train_reps": 15, "train_batches": [1, 2, 4, 8],
             "train_lengths": [16, 64, 160]},
    "135m": {"contexts": [80, 160, 320], "images": [1, 4], "batches": [1, 4], "tokens": 8, "reps": 3, "train": None},
    "tiny": {"contexts": [24, 48], "images": [1, 2], "batches": [1, 2], "tokens": 3, "reps": 1, "train": "quick",
             "train_reps": 1, "train_batches": [1, 2], "train_lengths": [8, 16]},
}  # fmt: skip
XLABELS = {"length": "prompt tokens (batch 1, 1 image)", "images": "images (batch 1)", "batch": "batch (1 image a row)"}
PHASES = ("prefill", "decode")


def text_for(pipe, target: int) -> str:
    """Words for a one-image prompt of at most `target` tokens (or one word): the prompt's tokens are its
    text's plus a fixed overhead (template, image), and the text grows a word at a time."""
    overhead = len(gen.make_cell(pipe, 1, 1, WORDS[0]).ours[0].ids) - len(pipe.tokenizer.encode(WORDS[0]))
    words = WORDS[:1]
    while overhead + len(pipe.tokenizer.encode(" ".join(words + [WORDS[len(words) % len(WORDS)]]))) <= target:
        words.append(WORDS[len(words) % len(WORDS)])
    return " ".join(words)


def infer_point(pipe, hf, sweep: str, batch: int, n_images: int, text: str, args) -> dict:
    cell = gen.make_cell(pipe, batch, n_images, text)
    runs, same, _ = gen.time_cell(pipe, hf, cell, args.tokens, args.reps)
    prompt = len(cell.ours[0].ids)
    per = dict(zip(PHASES, (batch * prompt, batch * (args.tokens - 1)), strict=True))
    row = {"sweep": sweep, "x": {"length": prompt, "images": n_images, "batch": batch}[sweep], "batch": batch}
    row |= {"images": n_images, "prompt_tokens": prompt, "same_tokens_as_hf": same}
    for i, phase in enumerate(per):
        for who, key in (("ours", f"{phase}_ms_per_token"), ("hf", f"hf_{phase}_ms_per_token")):
            row[key] = 1000 * statistics.median(r[i] for r in runs[who]) / per[phase]
        row[f"{phase}_speedup_vs_hf"] = row[f"hf_{phase}_ms_per_token"] / row[f"{phase}_ms_per_token"]
    return row


def inference_sweeps(folder: Path, args) -> list[dict]:
    """The length sweep (batch 1, one image), the image sweep (batch 1) and the batch sweep (one image)."""
    tok = gen.tokenizer()
    pipe, hf = gen.load_pair(args.size, folder, tok, args.seed)
    rows = [infer_point(pipe, hf, "length", 1, 1, text_for(pipe, c), args) for c in args.contexts]
    rows += [infer_point(pipe, hf, "images", 1, n, "describe the picture", args) for n in args.images]
    rows += [infer_point(pipe, hf, "batch", b, 1, "describe the picture", args) for b in args.batches]
    return rows


def train_point(model, hf, tok, sweep: str, batch: int, length: int, args) -> dict:
    data = ts.make_batch(model, tok, args.train, [length] * batch)
    steps = ts.steppers(model, hf, data, "instruct")
    del steps["picovlm_cached"]  # the same work as HF's step: the tower runs on the pixels in both
    t = ts.time_steps(steps, args.train_reps)
    tokens = data["ids"].numel()
    row = {"sweep": sweep, "x": batch if sweep == "train_batch" else tokens // batch, "batch": batch}
    row |= {"text_tokens": length, "tokens": tokens}
    row["train_ms_per_token"] = 1000 * t["picovlm"] / tokens
    row["hf_train_ms_per_token"] = 1000 * t["hf"] / tokens
    row["train_speedup_vs_hf"] = t["hf"] / t["picovlm"]
    return row


def train_sweeps(args) -> tuple[list[dict], bool | None]:
    """(the batch sweep and the length sweep, whether both gave the same loss before any step)."""
    if args.train is None:
        return [], None
    model, hf, tok = ts.build(args.train)
    same = ts.same_loss(model, hf, ts.make_batch(model, tok, args.train))
    mid = args.train_lengths[len(args.train_lengths) // 2]
    rows = [train_point(model, hf, tok, "train_batch", b, mid, args) for b in args.train_batches]
    mid = args.train_batches[len(args.train_batches) // 2]
    return rows + [train_point(model, hf, tok, "train_length", mid, n, args) for n in args.train_lengths], same


def machine(threads: int) -> str:
    """The CPU model (/proc/cpuinfo) and threads, for the plots' titles."""
    cpu = next((ln.split(":", 1)[1].strip() for ln in _cpuinfo() if ln.startswith("model name")), "unknown CPU")
    return f"{cpu}, {os.cpu_count()} cores, {threads} torch thread(s)"


def _cpuinfo() -> list[str]:
    path = Path("/proc/cpuinfo")
    return path.read_text().splitlines() if path.exists() else []


def _curves(points: list[dict], key: str) -> dict[str, list]:
    return {"picovlm": [p[key] for p in points], "HF transformers": [p[f"hf_{key}"] for p in points]}


def figures(size: str, rows: list[dict], train: list[dict], out: Path, title: str) -> list[Path]:
    """scaling_SIZE_{length,images,batch}.png (prefill and decode panels) and scaling_SIZE_train.png."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for sweep, xlabel in XLABELS.items():
        pts = [r for r in rows if r["sweep"] == sweep]
        xs = [p["x"] for p in pts]
        panels = [(xlabel, f"{ph} ms per token", xs, _curves(pts, f"{ph}_ms_per_token")) for ph in PHASES]
        paths.append(plot(out / f"scaling_{size}_{sweep}.png", f"{size} inference vs {sweep}: {title}", panels))
    return paths + ([train_figure(train, out / f"scaling_{size}_train.png", title)] if train else [])


def train_figure(train: list[dict], path: Path, title: str) -> Path:
    by_batch = [r for r in train if r["sweep"] == "train_batch"]
    by_length = [r for r in train if r["sweep"] == "train_length"]
    panels = [
        (f"batch ({by_batch[0]['tokens'] // by_batch[0]['batch']} tokens a row)", "train step ms per token",
         [r["x"] for r in by_batch], _curves(by_batch, "train_ms_per_token")),
        (f"tokens a row (batch {by_length[0]['batch']})", "train step ms per token",
         [r["x"] for r in by_length], _curves(by_length, "train_ms_per_token")),
    ]  # fmt: skip
    return plot(path, f"instruct training step: {title}", panels)


def print_tables(rows: list[dict], train: list[dict]) -> None:
    print(f"{'sweep':>6} {'B':>2} {'img':>3} {'ids':>4} {'same':>5}  prefill ms/tok {'HF':>7} {'x':>5}", end="")
    print(f"  decode ms/tok {'HF':>7} {'x':>5}")
    for r in rows:
        print(
            f"{r['sweep']:>6} {r['batch']:>2} {r['images']:>3} {r['prompt_tokens']:>4} {str(r['same_tokens_as_hf']):>5}"
            f"  {r['prefill_ms_per_token']:14.3f} {r['hf_prefill_ms_per_token']:7.3f} {r['prefill_speedup_vs_hf']:5.2f}"
            f"  {r['decode_ms_per_token']:13.3f} {r['hf_decode_ms_per_token']:7.3f} {r['decode_speedup_vs_hf']:5.2f}"
        )
    if not train:
        return
    print(f"{'train sweep':>12} {'B':>2} {'tok/row':>7}  step ms/tok {'HF':>7} {'x':>5}")
    for r in train:
        print(
            f"{r['sweep']:>12} {r['batch']:>2} {r['tokens'] // r['batch']:>7}  {r['train_ms_per_token']:11.3f}"
            f" {r['hf_train_ms_per_token']:7.3f} {r['train_speedup_vs_hf']:5.2f}"
        )


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="--size tiny: 1 repetition, 2 points a sweep, a smoke run")
    ap.add_argument("--size", choices=sorted(PRESETS), default="demo", help="135m: inference only, ~3 min more")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results", help="where PNGs go")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions a point (default: the size's)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    args.size = "tiny" if args.quick else args.size
    for key, value in PRESETS[args.size].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        rows = inference_sweeps(Path(tmp), args)
    train, same_loss = train_sweeps(args)
    title = f"{machine(args.threads)}, load {os.getloadavg()[0]:.1f} (shared)"
    paths = figures(args.size, rows, train, args.out, title)
    print_tables(rows, train)

    def ratios(points: list[dict], key: str) -> dict:
        return {f"{p['sweep']}_{p['x']}": p[key] for p in points}

    summary = {
        "bench": "scaling", "size": args.size, "machine": title, "threads": args.threads, "seed": args.seed,
        "reps": args.reps,
        "new_tokens": args.tokens, "load_avg_start": load_start, "load_avg_end": os.getloadavg(),
        "same_tokens_as_hf": all(r["same_tokens_as_hf"] for r in rows), "same_loss_as_hf": same_loss,
        "prefill_speedup_vs_hf": ratios(rows, "prefill_speedup_vs_hf"),
        "decode_speedup_vs_hf": ratios(rows, "decode_speedup_vs_hf"),
        "train_speedup_vs_hf": ratios(train, "train_speedup_vs_hf"),
        "plots": [str(p) for p in paths], "points": rows + train,
    }  # fmt: skip
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
