"""Training step speed and memory: picovlm against HF transformers on the very same weights and batch.

    python bench/train_step.py            # demo size (ViT 4x128 + mlp2x_gelu + GPT 4x128), batch 16
    python bench/train_step.py --quick    # a tiny model, few repetitions: seconds (what the test runs)

The model is built by picovlm and exported to HF `LlavaForConditionalGeneration` through
picovlm/interop (`to_llava`); both are trained with labels (loss on the answer tokens only, the prompt
and image tokens ignored) by AdamW on the parts that learn in the stage:
  align     the projector alone (tower and LM frozen)
  instruct  the projector and the LM (tower frozen)
First both give the same loss on the batch (`same_loss_as_hf`), then one step each (forward, backward,
optimizer step), interleaved repetitions, medians. Rows are right-padded to different lengths.

picovlm trains a frozen tower's stage on the tower's features computed once per image (`TowerFeatures`
in data/batches.py); HF runs the tower every step. Both are measured: "pixels" (the same work as HF:
the key train_speedup_vs_hf, the lower of the two stages) and "cached features" (the stage as
picovlm runs it: train_speedup_vs_hf_as_run).

Memory: a step's peak resident memory above what the process held before its first step (weights,
batch, torch itself), each framework and stage in a fresh subprocess: Linux's VmHWM (the RSS
high-water mark) after resetting it (`/proc/self/clear_refs` 5), minus VmRSS before the steps.
tracemalloc does not see torch's allocations, and torch keeps no CPU allocator statistics by default.
train_memory_ratio_vs_hf: picovlm's peak over HF's (the higher of the two stages; < 1 is less memory).

mfu_vs_matmul: picovlm's achieved FLOP/s in the instruct step (pixels), against a 2048^2 float32
matmul's FLOP/s timed in the same run. FLOPs are those torch's FlopCounterMode counts in the step's
forward and backward, times the share of tokens that are not padding (the useful work).

Length grouping (`StageConfig.group_by_length`): picovlm's instruct step over an epoch of batches
drawn at random and one of batches of like length, the same samples, lengths spread wider:
padding share and useful (not padding) tokens/s of each; key length_grouped_useful_tokens_per_s_gain.
Micro-batches (`StageConfig.micro_batch`): the random batches again, each computed in 4 length-sorted
parts (a quarter of the batch each, as the demo's micro_batch 4 of 16), the parts' losses weighted by
their labelled tokens (the whole batch's gradient); key micro_batch_useful_tokens_per_s_gain (against
the random batches computed whole).
Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from picovlm.config import GPTConfig, VisionConfig, ViTConfig, VLMConfig  # noqa: E402
from picovlm.data.batches import BatchStream  # noqa: E402
from picovlm.interop.llava import to_llava  # noqa: E402
from picovlm.models.vlm import VLM  # noqa: E402
from picovlm.text.padding import IGNORE_INDEX  # noqa: E402
from picovlm.text.tokenizer import Tokenizer  # noqa: E402

STAGES = {"align": ("projector",), "instruct": ("projector", "lm")}
HF_PARTS = {"projector": ("model.multi_modal_projector.",), "lm": ("model.language_model.", "lm_head.")}
SIZES = {
    # (vit, lm, batch, text tokens per row: min, max)
    "quick": (ViTConfig(image_size=32, patch_size=8, n_layer=2, n_embd=64, n_head=2), (2, 64, 128), 4, (8, 24)),
    "demo": (ViTConfig(image_size=64, patch_size=8, n_layer=4, n_embd=128, n_head=4), (4, 128, 384), 16, (16, 48)),
}


def build(size: str, hf: bool = True) -> tuple[VLM, object, Tokenizer]:
    """(picovlm model, its HF export (None without `hf`), tokenizer), seeded: every process builds the
    same weights."""
    vit, (layers, width, hidden), _, _ = SIZES[size]
    words = "a red blue green circle square triangle is on the left right of above below what colour".split()
    tok = Tokenizer.train([" ".join(words[i:] + words[:i]) for i in range(len(words))] * 20, vocab_size=320)
    lm = GPTConfig(tok.vocab_size, n_layer=layers, n_head=4, n_kv_head=4, n_embd=width, mlp_hidden=hidden)
    cfg = VLMConfig(vision=VisionConfig(kind="vit", vit=vit), projector="mlp2x_gelu", lm=lm)
    torch.manual_seed(0)
    model = VLM(cfg, tok.image_id)
    return model.train(), to_llava(model, tok).train() if hf else None, tok


def make_batch(model: VLM, tok: Tokenizer, size: str, lengths: list[int] | None = None) -> dict[str, torch.Tensor]:
    """ids [B, T] = image tokens, a prompt, an answer (labelled), then padding; pixels; labels. Rows of
    text `lengths` (default: the size's batch of them, drawn)."""
    _, _, batch, (short, long) = SIZES[size]
    g = torch.Generator().manual_seed(1)
    n_img = model.tokens_per_image
    lengths = torch.tensor(lengths) if lengths is not None else torch.randint(short, long + 1, (batch,), generator=g)
    batch = len(lengths)
    T = n_img + 2 + int(lengths.max())
    ids = torch.full((batch, T), tok.pad_id)
    labels = torch.full((batch, T), IGNORE_INDEX)
    for row, n in enumerate(lengths.tolist()):
        text = torch.randint(tok.image_id + 8, tok.vocab_size, (n + 1,), generator=g)
        ids[row, 0], ids[row, 1 : 1 + n_img], ids[row, 1 + n_img : 2 + n_img + n] = tok.bos_id, tok.image_id, text
        answer = slice(1 + n_img + n // 2, 2 + n_img + n)  # the second half of the text is the answer
        labels[row, answer] = ids[row, answer]
    side = model.cfg.vision.vit.image_size
    pixels = torch.randn(batch, 3, side, side, generator=g)
    return {"ids": ids, "labels": labels, "pixels": pixels, "useful": int((ids != tok.pad_id).sum())}


def trainable(named: list[tuple[str, torch.nn.Parameter]], prefixes: tuple[str, ...]) -> list[torch.nn.Parameter]:
    """Freeze every parameter but those under `prefixes`; returns those."""
    out = []
    for name, p in named:
        p.requires_grad = name.startswith(prefixes)
        if p.requires_grad:
            out.append(p)
    return out


def steppers(model: VLM, hf: object, batch: dict, stage: str) -> dict[str, callable]:
    """name -> one training step: picovlm on pixels, picovlm on cached features, HF on pixels (given `hf`)."""
    ours = trainable(list(model.named_parameters()), tuple(p + "." for p in STAGES[stage]))
    opt_ours = torch.optim.AdamW(ours, lr=1e-4)
    with torch.no_grad():
        features = model.tower(batch["pixels"])
    ids, labels, pixels = batch["ids"], batch["labels"], batch["pixels"]

    def step(loss: torch.Tensor, opt: torch.optim.Optimizer) -> float:
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    out = {
        "picovlm": lambda: step(model(ids, pixels, labels=labels), opt_ours),
        "picovlm_cached": lambda: step(model(ids, features=features, labels=labels), opt_ours),
    }
    if hf is not None:
        theirs = trainable(list(hf.named_parameters()), tuple(x for p in STAGES[stage] for x in HF_PARTS[p]))
        opt_hf = torch.optim.AdamW(theirs, lr=1e-4)
        out["hf"] = lambda: step(hf(input_ids=ids, pixel_values=pixels, labels=labels).loss, opt_hf)
    return out


PARTS = 4  # a micro-batched step's parts (the demo's instruct stage: batch 16, micro_batch 4)


def length_grouping(model: VLM, tok: Tokenizer, size: str, n_batches: int = 16) -> dict:
    """picovlm's instruct step over one epoch of batches drawn at random, one of batches of like length
    (`BatchStream` with `lengths`, as `group_by_length` draws them) and the random batches again, each
    computed in length-sorted parts (`micro_batch`): the same samples in all three, whose text lengths
    spread wider (up to 3x the benchmark batch's longest); padding share and useful tokens/s (each step
    of one timed beside a step of the others, in turn)."""
    _, _, batch, (short, long) = SIZES[size]
    draw = random.Random(2)
    lengths = [draw.randint(short, 3 * long) for _ in range(batch * n_batches)]
    index, same = list(range(len(lengths))), lambda idx: idx
    streams = {
        "random": BatchStream(index, batch, same, seed=0),
        "by_length": BatchStream(index, batch, same, seed=0, lengths=lengths, group_by_length=True),
        # the random batches again (same seed), each cut by the stream as a stage's `micro_batch` cuts it
        "micro_batch": BatchStream(index, batch, same, seed=0, lengths=lengths, micro_batch=max(1, batch // PARTS)),
    }
    steps = {
        k: [
            [make_batch(model, tok, size, [lengths[i] for i in part]) for part in s.next_parts()]
            for _ in range(n_batches)
        ]
        for k, s in streams.items()
    }
    opt = torch.optim.AdamW(trainable(list(model.named_parameters()), ("projector.", "lm.")), lr=1e-4)
    seconds = dict.fromkeys(steps, 0.0)
    for k in range(-1, n_batches):  # k = -1: a warm-up step of each
        for name, parts in steps.items():
            t0 = time.perf_counter()
            weighted_step(model, opt, parts[max(k, 0)])
            seconds[name] += (time.perf_counter() - t0) if k >= 0 else 0.0
    out = {}
    for name, parts in steps.items():
        batches = [b for step in parts for b in step]
        useful, total = sum(b["useful"] for b in batches), sum(b["ids"].numel() for b in batches)
        out[f"{name}_padding_share"] = 1 - useful / total
        out[f"{name}_useful_tokens_per_s"] = useful / seconds[name]
    out["useful_tokens_per_s_gain"] = out["by_length_useful_tokens_per_s"] / out["random_useful_tokens_per_s"]
    out["micro_batch_gain"] = out["micro_batch_useful_tokens_per_s"] / out["random_useful_tokens_per_s"]
    return out


def weighted_step(model: VLM, opt: torch.optim.Optimizer, parts: list[dict[str, torch.Tensor]]) -> None:
    """One optimizer step over a batch in parts, each part's mean loss weighted by its labelled tokens."""
    labelled = [int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in parts]
    for b, n in zip(parts, labelled, strict=True):
        (model(b["ids"], b["pixels"], labels=b["labels"]) * (n / sum(labelled))).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def same_loss(model: VLM, hf: object, batch: dict) -> bool:
    with torch.no_grad():
        ours = model(batch["ids"], batch["pixels"], labels=batch["labels"])
        theirs = hf(input_ids=batch["ids"], pixel_values=batch["pixels"], labels=batch["labels"]).loss
    return abs(float(ours) - float(theirs)) < 1e-4


def time_steps(steps: dict[str, callable], reps: int) -> dict[str, float]:
    """Median seconds per step of each, the repetitions interleaved (one of each, in turn)."""
    for f in steps.values():
        f()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(reps):
        for name, f in steps.items():
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def step_flops(step: callable) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def matmul_flops_per_s(n: int = 2048, reps: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    torch.mm(a, b, out=out)
    best = min(_timed(lambda: torch.mm(a, b, out=out)) for _ in range(reps))
    return 2 * n**3 / best


def _timed(f: callable) -> float:
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def _rss(field: str) -> int:
    """A VmRSS / VmHWM line of /proc/self/status, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")


def peak_memory(size: str, stage: str, name: str) -> int:
    """In this (fresh) process: a step's peak resident bytes above what was held before it."""
    model, hf, tok = build(size, hf=name == "hf")
    batch = make_batch(model, tok, size)
    step = steppers(model, hf, batch, stage)[name]
    if name == "hf":
        del model  # each process holds the model it trains alone
    before = _rss("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # the high-water mark starts again from here
    for _ in range(3):
        step()
    return _rss("VmHWM") - before


def memory_in_subprocess(size: str, stage: str, name: str, threads: int) -> int:
    cmd = [sys.executable, __file__, "--size", size, "--threads", str(threads), "--memory-of", f"{stage}:{name}"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return int(out.strip().splitlines()[-1])


def run(size: str, reps: int, threads: int) -> dict:
    model, hf, tok = build(size)
    batch = make_batch(model, tok, size)
    results: dict = {"size": size, "batch": list(batch["ids"].shape), "useful_tokens": batch["useful"]}
    results["same_loss_as_hf"] = same_loss(model, hf, batch)
    matmul = matmul_flops_per_s()
    results["matmul_gflops"] = matmul / 1e9
    stages = {}
    for stage in STAGES:
        steps = steppers(model, hf, batch, stage)
        t = time_steps(steps, reps)
        useful = batch["useful"] / batch["ids"].numel()
        flops = step_flops(steps["picovlm"]) * useful
        n = batch["ids"].shape[0]
        memory = {k: memory_in_subprocess(size, stage, k, threads) for k in ("picovlm", "hf")}
        stages[stage] = {
            **{f"{k}_samples_per_s": n / v for k, v in t.items()},
            "speedup_vs_hf": t["hf"] / t["picovlm"],
            "speedup_vs_hf_as_run": t["hf"] / t["picovlm_cached"],
            **{f"{k}_peak_mib": v / 2**20 for k, v in memory.items()},
            "memory_ratio_vs_hf": memory["picovlm"] / memory["hf"],
            "mfu_vs_matmul": flops / t["picovlm"] / matmul,
        }
    results["stages"] = stages
    results["length_grouping"] = length_grouping(model, tok, size)
    results["length_grouped_useful_tokens_per_s_gain"] = results["length_grouping"]["useful_tokens_per_s_gain"]
    results["micro_batch_useful_tokens_per_s_gain"] = results["length_grouping"]["micro_batch_gain"]
    results["train_speedup_vs_hf"] = min(s["speedup_vs_hf"] for s in stages.values())
    results["train_speedup_vs_hf_as_run"] = min(s["speedup_vs_hf_as_run"] for s in stages.values())
    results["train_memory_ratio_vs_hf"] = max(s["memory_ratio_vs_hf"] for s in stages.values())
    results["mfu_vs_matmul"] = stages["instruct"]["mfu_vs_matmul"]
    return results


def table(r: dict) -> str:
    head = f"{'stage':9} {'pico s/s':>9} {'cached s/s':>10} {'HF s/s':>8} {'x HF':>6} {'x HF run':>8} "
    head += f"{'pico MiB':>9} {'HF MiB':>8} {'mem/HF':>7} {'MFU':>6}"
    lines = [head]
    for name, s in r["stages"].items():
        lines.append(
            f"{name:9} {s['picovlm_samples_per_s']:9.1f} {s['picovlm_cached_samples_per_s']:10.1f} "
            f"{s['hf_samples_per_s']:8.1f} {s['speedup_vs_hf']:6.2f} {s['speedup_vs_hf_as_run']:8.2f} "
            f"{s['picovlm_peak_mib']:9.1f} {s['hf_peak_mib']:8.1f} "
            f"{s['memory_ratio_vs_hf']:7.2f} {s['mfu_vs_matmul']:6.1%}"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a tiny model and few repetitions (seconds)")
    p.add_argument("--size", choices=sorted(SIZES), help=argparse.SUPPRESS)
    p.add_argument("--reps", type=int, help="timed steps per implementation and stage (default 20, --quick 3)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--memory-of", help=argparse.SUPPRESS)  # STAGE:NAME, the subprocess of one measurement
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    size = args.size or ("quick" if args.quick else "demo")
    if args.memory_of:
        stage, name = args.memory_of.split(":")
        print(peak_memory(size, stage, name))
        return
    r = run(size, args.reps or (3 if args.quick else 20), args.threads)
    print(
        f"train step, {size} size, batch {r['batch']} ({r['useful_tokens']} tokens not padding), "
        f"{args.threads} thread(s), matmul {r['matmul_gflops']:.1f} GFLOP/s, same loss as HF: {r['same_loss_as_hf']}"
    )
    print(table(r))
    g = r["length_grouping"]
    print(
        f"instruct, batches of like length (group_by_length) vs at random: padding {g['by_length_padding_share']:.0%}"
        f" vs {g['random_padding_share']:.0%}, useful tokens/s {g['by_length_useful_tokens_per_s']:.0f} vs "
        f"{g['random_useful_tokens_per_s']:.0f} ({g['useful_tokens_per_s_gain']:.2f}x)"
    )
    print(
        f"instruct, random batches in {PARTS} length-sorted parts (micro_batch) vs whole: padding"
        f" {g['micro_batch_padding_share']:.0%} vs {g['random_padding_share']:.0%}, useful tokens/s"
        f" {g['micro_batch_useful_tokens_per_s']:.0f} ({g['micro_batch_gain']:.2f}x)"
    )
    print(json.dumps(r))


if __name__ == "__main__":
    main()
