"""Generation speed against HF transformers on the very same weights: prefill latency and decode tokens/s.

    PYTHONPATH=. python bench/generate.py            # demo shape and a SmolLM2-135M-shaped LM, ~15 min
    PYTHONPATH=. python bench/generate.py --quick    # tiny shapes, a smoke run of seconds

Each size is a random VLM checkpoint (seeded), exported by picovlm's own interop (`hf-internvl` for the
demo architecture: pixel shuffle and image markers; `hf-llava` for the 135M one: a CLIP-layout ViT and a
2-layer MLP projector) and loaded by transformers. Both first decode the same prompts greedily and must
give the same tokens (`same_tokens_as_hf`); then every (size, batch, images) cell is timed with the
repetitions interleaved (ours, HF, ours, ...) and medians reported, on one torch thread by default.

Prefill: the time to the first token's logits (vision tower, projector, LM over the prompt). Decode: the
tokens/s of the steps after it (batch x steps / their time). `decode_bandwidth_share`: the LM's weight
bytes read per decode step x steps/s, against this machine's copy bandwidth (a large tensor copied into a
buffer allocated beforehand, timed in the same run). The int8 row is `Pipeline.load(quantize="int8")`'s
dynamic int8 Linear layers against fp32 picovlm. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from picovlm.checkpoint import save_checkpoint
from picovlm.config import GPTConfig, VisionConfig, ViTConfig, VLMConfig
from picovlm.engine.batch import DecodeBatch, Sequence
from picovlm.engine.pipeline import Pipeline
from picovlm.engine.sampling import SamplingParams
from picovlm.interop.internvl import export_internvl
from picovlm.interop.llava import export_llava
from picovlm.models.vlm import VLM, VLM_PARTS, vlm_checkpoint_config
from picovlm.presets import demo_recipe
from picovlm.text.tokenizer import Tokenizer
from picovlm.text.tokens import IMAGE


def demo_shape(vocab: int) -> VLMConfig:
    """The demo recipe's model in its exportable layout (patch stem, no pre-LayerNorm, plain pixel shuffle,
    image markers: what `export --format hf-internvl` takes)."""
    model = demo_recipe().model
    vit = dataclasses.replace(model.vision.vit, stem="patch", pre_norm=False)
    lm = dataclasses.replace(model.lm, vocab_size=vocab, max_seq_len=512)
    return dataclasses.replace(
        model, vision=VisionConfig(kind="vit", vit=vit), projector="pixel_shuffle2", image_markers=True, lm=lm
    )


def smollm_shape(vocab: int) -> VLMConfig:
    """SmolLM2-135M's LM (30 layers, 576 wide, 9 heads, 3 KV heads, SwiGLU 1536, tied embeddings) with a
    ViT-S-like CLIP-layout tower at 64 px (64 patches an image) and LLaVA's MLP projector."""
    vit = ViTConfig(image_size=64, patch_size=8, n_embd=384, n_layer=6, n_head=6, act="quick_gelu")
    lm = GPTConfig(
        vocab_size=vocab, n_layer=30, n_head=9, n_kv_head=3, n_embd=576, mlp_hidden=1536, max_seq_len=1024,
        rope_theta=100000.0, tie_embeddings=True,
    )  # fmt: skip
    return VLMConfig(vision=VisionConfig(kind="vit", vit=vit), projector="mlp2x_gelu", lm=lm)


def tiny_shape(vocab: int) -> VLMConfig:
    """`--quick`: a model of a few thousand weights, exportable as hf-internvl."""
    vit = ViTConfig(image_size=16, patch_size=4, n_embd=32, n_layer=2, n_head=2, pre_norm=False)
    lm = GPTConfig(vocab_size=vocab, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, mlp_hidden=64, max_seq_len=256)
    return VLMConfig(vision=VisionConfig(kind="vit", vit=vit), projector="pixel_shuffle2", image_markers=True, lm=lm)


# name -> (config for a tokenizer's vocabulary size, exporter, HF class)
SIZES = {
    "demo": (demo_shape, export_internvl, "InternVLForConditionalGeneration"),
    "135m": (smollm_shape, export_llava, "LlavaForConditionalGeneration"),
    "tiny": (tiny_shape, export_internvl, "InternVLForConditionalGeneration"),
}
SMOLLM_VOCAB = 49152


def tokenizer() -> Tokenizer:
    words = "what is in the picture a red blue green cat circle square on left right top of describe it".split()
    return Tokenizer.train([" ".join(words[i:] + words[:i]) for i in range(len(words))] * 20, vocab_size=320)


def checkpoint(folder: Path, size: str, tok: Tokenizer, seed: int) -> Path:
    """A random checkpoint of `size` (std 0.02 init, seeded): timing needs no training, parity holds for any weights."""
    shape = SIZES[size][0]
    cfg = shape(SMOLLM_VOCAB if size == "135m" else tok.vocab_size)
    torch.manual_seed(seed)
    model = VLM(cfg, tok.image_id)
    tok_file = folder / f"{size}.tokenizer.json"
    tok.save(tok_file)
    path = folder / size
    save_checkpoint(path, model, vlm_checkpoint_config(model), VLM_PARTS, {}, tok_file)
    return path


def images(n: int, seed: int) -> list[Image.Image]:
    g = torch.Generator().manual_seed(seed)
    return [Image.fromarray((torch.rand(48, 64, 3, generator=g) * 255).byte().numpy()) for _ in range(n)]


@dataclasses.dataclass
class Cell:
    """One (batch, images) prompt set in both layouts."""

    batch: int
    n_images: int
    ours: list  # encoded prompts (ids, pixels)
    hf_inputs: dict


def make_cell(pipe: Pipeline, batch: int, n_images: int, text: str = "describe the picture") -> Cell:
    """`batch` prompts of the same length, each with its own `n_images` images. HF gets our ids and pixels:
    that its own processor gives the same ones is what tests/interop checks (InternVL's processor would
    need torchvision here only for its video part)."""
    messages = [{"role": "user", "content": f"{IMAGE}\n" * n_images + text}]
    ours = [pipe.processor.encode_prompt(messages, images(n_images, seed=row)) for row in range(batch)]
    ids = torch.tensor([e.ids for e in ours])
    pixels = torch.cat([e.pixels for e in ours])
    return Cell(
        batch, n_images, ours, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels}
    )


def ours_run(pipe: Pipeline, cell: Cell, new_tokens: int) -> tuple[float, float, list[list[int]]]:
    """(prefill s, decode s over new_tokens - 1 steps, tokens per row) through the engine, greedy."""
    params = SamplingParams(max_tokens=new_tokens, temperature=0.0)
    engine = DecodeBatch(pipe.model, pipe.tokenizer)
    seqs = [Sequence(i, e.ids, e.pixels, params, ignore_stop=True) for i, e in enumerate(cell.ours)]
    t0 = time.perf_counter()
    engine.add(seqs)
    t1 = time.perf_counter()
    tokens: list[list[int]] = [[] for _ in seqs]
    while len(engine):
        for st in engine.step():
            tokens[st.key].append(st.token)
    return t1 - t0, time.perf_counter() - t1, tokens


class FirstTokenClock:
    """A `generate` streamer that notes when the first new token is handed over (its first `put` is the
    prompt). Why: prefill and decode timed inside one call; a separate 1-token call subtracted from an
    n-token one made the decode time negative whenever two steps cost less than the calls' jitter."""

    def __init__(self):
        self.puts, self.at = 0, 0.0

    def put(self, value: torch.Tensor) -> None:
        self.puts += 1
        if self.puts == 2:
            self.at = time.perf_counter()

    def end(self) -> None:
        pass


@torch.inference_mode()
def hf_run(hf, cell: Cell, new_tokens: int, suppress: list[int]) -> tuple[float, float, list[list[int]]]:
    """The same through `hf.generate`: prefill = up to its first new token, decode = the rest of the call."""
    kw = dict(do_sample=False, suppress_tokens=suppress, eos_token_id=None, pad_token_id=0)
    clock = FirstTokenClock()
    t0 = time.perf_counter()
    out = hf.generate(**cell.hf_inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, streamer=clock, **kw)
    end = time.perf_counter()
    return clock.at - t0, end - clock.at, out[:, cell.hf_inputs["input_ids"].shape[1] :].tolist()


def copy_bandwidth(mib: int, reps: int) -> float:
    """Bytes/s of a large copy into a buffer allocated (and touched) beforehand: read + write counted."""
    src = torch.rand(mib * 2**18)
    dst = torch.empty_like(src).fill_(0)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t0)
    return 2 * src.numel() * 4 / statistics.median(times)


def lm_weight_bytes(model: VLM) -> int:
    """Bytes a decode step reads: the LM's weights (a tied embedding once; the embedding lookup is a row)."""
    seen = {id(model.lm.lm_head.weight)}
    total = model.lm.lm_head.weight.numel() * model.lm.lm_head.weight.element_size()
    for name, p in model.lm.named_parameters():
        if id(p) not in seen and "tok_emb" not in name:
            seen.add(id(p))
            total += p.numel() * p.element_size()
    return total


def load_pair(size: str, folder: Path, tok: Tokenizer, seed: int):
    """(picovlm Pipeline, HF model) of one random checkpoint of `size`, the HF one through our export."""
    import transformers

    ckpt = checkpoint(folder, size, tok, seed)
    hf_dir = SIZES[size][1](ckpt, folder / f"{size}-hf")
    hf = getattr(transformers, SIZES[size][2]).from_pretrained(hf_dir).eval()
    return Pipeline.load(ckpt), hf


def time_cell(pipe: Pipeline, hf, cell: Cell, new_tokens: int, reps: int, variants: dict[str, Pipeline] | None = None):
    """(runs: who -> [(prefill s, decode s)], same greedy tokens as HF, who -> its tokens are HF's): a
    warm-up of each that checks parity (and pays a compiled variant's compile), then `reps` repetitions
    interleaved (ours, HF / HF, ours, then each variant: "int8", "compiled")."""
    variants = variants or {}
    suppress = list(pipe.model.placeholder_ids)
    _, _, mine = ours_run(pipe, cell, new_tokens)
    _, _, theirs = hf_run(hf, cell, new_tokens, suppress)
    same_as_hf = {who: ours_run(v, cell, new_tokens)[2] == theirs for who, v in variants.items()}
    runs: dict[str, list] = {"ours": [], "hf": [], **{who: [] for who in variants}}
    for rep in range(reps):
        order = ["ours", "hf"] if rep % 2 == 0 else ["hf", "ours"]
        for who in order + list(variants):
            if who == "hf":
                runs[who].append(hf_run(hf, cell, new_tokens, suppress)[:2])
            else:
                runs[who].append(ours_run(variants.get(who, pipe), cell, new_tokens)[:2])
    return runs, mine == theirs, same_as_hf


def bench_size(size: str, folder: Path, args, tok: Tokenizer) -> list[dict]:
    """Every (batch, images) row of one size: ours vs HF (and the int8 and compiled variants of ours),
    interleaved medians."""
    pipe, hf = load_pair(size, folder, tok, args.seed)
    variants = {}
    if args.int8:
        variants["int8"] = Pipeline.load(folder / size, quantize="int8")
    compile_s = None
    if args.compile:
        t0 = time.perf_counter()
        variants["compiled"] = Pipeline.load(folder / size, compile_decode=True)
        compile_s = time.perf_counter() - t0  # compile_decode's warm-up compiles at load
    rows = []
    for batch in args.batches:
        for n_images in args.images:
            cell = make_cell(pipe, batch, n_images)
            runs, same, same_as_hf = time_cell(pipe, hf, cell, args.tokens, args.reps, variants)
            row = summarize(size, cell, runs, args.tokens, same, lm_weight_bytes(pipe.model))
            if args.compile:
                row["compiled_same_tokens_as_hf"] = same_as_hf["compiled"]
                row["compile_s"] = compile_s
            rows.append(row)
    return rows


def summarize(size: str, cell: Cell, runs: dict, new_tokens: int, same: bool, weight_bytes: int) -> dict:
    def med(who: str, i: int) -> float:
        return statistics.median(r[i] for r in runs[who])

    steps = new_tokens - 1
    row = {
        "size": size, "batch": cell.batch, "images": cell.n_images, "prompt_tokens": len(cell.ours[0].ids),
        "same_tokens_as_hf": same,
        "prefill_ms": 1000 * med("ours", 0), "hf_prefill_ms": 1000 * med("hf", 0),
        "decode_tok_s": cell.batch * steps / med("ours", 1), "hf_decode_tok_s": cell.batch * steps / med("hf", 1),
        "weight_bytes": weight_bytes,
    }  # fmt: skip
    row["prefill_speedup_vs_hf"] = row["hf_prefill_ms"] / row["prefill_ms"]
    row["decode_speedup_vs_hf"] = row["decode_tok_s"] / row["hf_decode_tok_s"]
    if runs.get("int8"):
        row["int8_decode_speedup"] = med("ours", 1) / med("int8", 1)
        row["int8_prefill_speedup"] = med("ours", 0) / med("int8", 0)
    if runs.get("compiled"):
        row["compiled_decode_tok_s"] = cell.batch * steps / med("compiled", 1)
        row["compiled_decode_speedup_vs_hf"] = row["compiled_decode_tok_s"] / row["hf_decode_tok_s"]
    return row


def print_table(rows: list[dict]) -> None:
    head = f"{'size':>5} {'B':>2} {'img':>3} {'ids':>4} {'same':>5} {'prefill ms':>11} {'HF':>8} {'x':>5}"
    head += f" {'decode t/s':>10} {'HF':>8} {'x':>5} {'bw':>5} {'int8 x':>7} {'compiled t/s':>12} {'x HF':>5} {'bw':>5}"
    print(head)
    for r in rows:
        int8 = f"{r['int8_decode_speedup']:7.2f}" if "int8_decode_speedup" in r else f"{'-':>7}"
        if "compiled_decode_tok_s" in r:
            same = "" if r["compiled_same_tokens_as_hf"] else " (tokens differ from HF)"
            compiled = f" {r['compiled_decode_tok_s']:12.1f} {r['compiled_decode_speedup_vs_hf']:5.2f}"
            compiled += f" {r['compiled_decode_bandwidth_share']:5.0%}{same}"
        else:
            compiled = f" {'-':>12} {'-':>5} {'-':>5}"
        print(
            f"{r['size']:>5} {r['batch']:>2} {r['images']:>3} {r['prompt_tokens']:>4} {str(r['same_tokens_as_hf']):>5}"
            f" {r['prefill_ms']:11.1f} {r['hf_prefill_ms']:8.1f} {r['prefill_speedup_vs_hf']:5.2f}"
            f" {r['decode_tok_s']:10.1f} {r['hf_decode_tok_s']:8.1f} {r['decode_speedup_vs_hf']:5.2f}"
            f" {r['decode_bandwidth_share']:5.0%} {int8}{compiled}"
        )


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a tiny model, batch 1 and 2, 1 repetition: a smoke run")
    ap.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=None, help="default: demo 135m")
    ap.add_argument("--batches", nargs="+", type=int, default=None, help="default: 1 8")
    ap.add_argument("--images", nargs="+", type=int, default=[1, 4])
    ap.add_argument("--tokens", type=int, default=None, help="new tokens per row (default 32)")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions per cell (default 5)")
    ap.add_argument("--no-int8", dest="int8", action="store_false", help="skip the int8 column")
    ap.add_argument("--compile", action="store_true", help="add the compiled decode step (compile_decode=True)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    quick = {"sizes": ["tiny"], "batches": [1, 2], "tokens": 4, "reps": 1}
    full = {"sizes": ["demo", "135m"], "batches": [1, 8], "tokens": 32, "reps": 5}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.quick:
        args.images = [1]
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    tok = tokenizer()
    bandwidth = copy_bandwidth(16 if args.quick else 1024, 3 if args.quick else 7)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            rows += bench_size(size, Path(tmp), args, tok)
    for r in rows:  # steps/s x bytes per step: a step reads the weights once for the whole batch
        for speed in ("decode", "compiled_decode"):
            if f"{speed}_tok_s" in r:
                r[f"{speed}_bandwidth_share"] = r["weight_bytes"] * r[f"{speed}_tok_s"] / r["batch"] / bandwidth
    print_table(rows)

    def by_cell(key: str) -> dict:
        return {f"{r['size']}_b{r['batch']}_i{r['images']}": r[key] for r in rows}

    summary = {
        "bench": "generate", "threads": args.threads, "seed": args.seed, "new_tokens": args.tokens,
        "copy_bandwidth_gb_s": bandwidth / 1e9,
        "same_tokens_as_hf": all(r["same_tokens_as_hf"] for r in rows),
        "decode_speedup_vs_hf": by_cell("decode_speedup_vs_hf"),
        "prefill_speedup_vs_hf": by_cell("prefill_speedup_vs_hf"),
        "decode_bandwidth_share": by_cell("decode_bandwidth_share"),
        **(compiled_keys(by_cell) if args.compile else {}),
        "rows": rows,
    }  # fmt: skip
    print(json.dumps(summary))
    return summary


def compiled_keys(by_cell) -> dict:
    """The summary's keys for the compiled decode step (`--compile`)."""
    return {
        "compiled_same_tokens_as_hf": all(by_cell("compiled_same_tokens_as_hf").values()),
        "compiled_decode_speedup_vs_hf": by_cell("compiled_decode_speedup_vs_hf"),
        "compiled_decode_bandwidth_share": by_cell("compiled_decode_bandwidth_share"),
    }


if __name__ == "__main__":
    main()
