"""`picovlm demo --preset native`: a VQ tokenizer and one GPT that reads and draws, trained from scratch and scored.

Builds the shapes data, trains the native recipe (presets.native_stages: the `vq` tokenizer, then the
`native` model), and scores it through the same harness as the adapter demo: VQA accuracy per question
type and caption metrics on the test split, beside the adapter demo's numbers when its eval.json is
there. Then it draws the first test captions, judges each drawing per attribute (the drawing judge,
eval/drawing_judge.py, trained here on the data's scene generator unless one is given), adds a CLIP
score and an FID in CLIP space when a CLIP checkpoint is there (the adapter demo's clip stage), and
measures how well the tokenizer keeps the test images (eval/reconstruction.py).

    from picovlm.demo_native import run_native_demo
    run_native_demo(Path("runs/native"), Path("data/native"))  # prints a report, returns its last-line summary
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from picovlm.config import RecipeConfig, save_json
from picovlm.demo import _header, build_data, clear_old_run, score, score_captions, seeded, train_from_scratch
from picovlm.demo_drawings import draw_and_judge, first_test_captions, save_grid
from picovlm.engine.pipeline import Pipeline
from picovlm.eval.benchmarks import scene_config_of
from picovlm.eval.drawing import judge_drawings
from picovlm.eval.drawing_judge import DrawingJudge, train_judge
from picovlm.eval.embedder import ClipEmbedder
from picovlm.eval.reconstruction import run_reconstruction
from picovlm.presets import PRESETS
from picovlm.train.stages import checkpoint_dir
from picovlm.vision.image import load_image

ATTRIBUTES = ("shape", "color", "count", "position")
OUTPUTS = (
    "drawings.json",
    "drawings.png",
    "drawing.json",
    *(f"vq.{x}" for x in ("json", "md", "predictions.jsonl", "samples.png")),
)


def _shown(x: float | None) -> str:
    return "" if x is None else f"{x:.3f}"


def adapter_results(path: Path) -> tuple[dict, dict | None] | None:
    """The adapter demo's VQA metrics (its eval.json) and caption metrics (captions.json beside it)."""
    if not path.is_file():
        return None
    captions = path.with_name("captions.json")
    return json.loads(path.read_text()), json.loads(captions.read_text()) if captions.is_file() else None


def comparison(vqa: dict, captions: dict | None, adapter: tuple[dict, dict | None] | None) -> str:
    """VQA accuracy per type, overall, and CIDEr-D / BLEU-4: the native model's, the adapter's beside."""
    other_vqa, other_captions = adapter or ({}, None)
    other_types = other_vqa.get("by_type", {})
    rows = [(t, r["accuracy"], other_types.get(t, {}).get("accuracy")) for t, r in vqa["by_type"].items()]
    rows.append(("overall", vqa["accuracy"], other_vqa.get("accuracy")))
    for key, name in (("CIDEr", "CIDEr-D"), ("Bleu_4", "BLEU-4")):
        rows.append((f"caption {name}", (captions or {}).get(key), (other_captions or {}).get(key)))
    lines = ["  metric              native   adapter", "  " + "-" * 38]
    lines += [f"  {name:<18} {_shown(a):>7}   {_shown(b):>7}" for name, a, b in rows]
    n = other_vqa.get("n")
    lines.append(f"  (n={vqa['n']} test questions" + (f"; the adapter's eval.json: n={n})" if adapter else ")"))
    return "\n".join(lines)


def get_judge(data: Path, out: Path, given: Path | None, steps: int) -> DrawingJudge:
    """The judge at `given`, or one trained on the data's scene generator and saved to out/judge."""
    if given is not None:
        return DrawingJudge.load(given)
    print(f"training the drawing judge ({steps} steps on fresh scenes of {data}'s generator)", flush=True)
    judge = train_judge(scene_config_of(data), steps=steps)
    judge.save(out / "judge")
    return judge


def judge_table(drawn: dict, real: dict) -> str:
    """Per attribute, the share the judge found right in the drawings and in the real test images of
    the same prompts (the judge's own ceiling)."""
    lines = ["  attribute   drawn   real images      n", "  " + "-" * 38]
    for key in ATTRIBUTES:
        lines.append(f"  {key:<10} {_shown(drawn[key]):>6}  {_shown(real[key]):>11}  {drawn[f'n_{key}']:>5}")
    return "\n".join(lines)


def score_drawings(pipe: Pipeline, data: Path, out: Path, judge: DrawingJudge, clip: Path, n: int) -> dict[str, Any]:
    """Draw the first `n` test captions, judge them (and the real images), save the grid; the metrics."""
    prompts, real_paths = first_test_captions(data, n)
    drawings = draw_and_judge(pipe, prompts, judge, out)
    images, real = [d.image for d in drawings], [load_image(p) for p in real_paths]
    embedder = ClipEmbedder.load(clip) if (clip / "config.json").is_file() else None
    drawn = judge_drawings(images, prompts, judge, embedder, real)
    results = {"drawn": drawn, "real": judge_drawings(real, prompts, judge)}
    save_json(results, out / "drawing.json")
    print(judge_table(drawn, results["real"]))
    if embedder is None:
        print(f"  no CLIP score or FID: no CLIP checkpoint at {clip} (`make demo` trains one; or --clip DIR)")
    else:
        print(f"  CLIP score {drawn['clip_score']:.2f}   FID in CLIP space {drawn['fid_clip']:.3f}   ({clip})")
    title = f"picovlm native demo: {len(drawings)} test captions drawn (green: every attribute judged right)"
    save_grid(drawings, title, out / "drawings.png")
    print(f"saved {out / 'drawings.png'}; each drawing and its judged attributes in {out / 'drawings.json'}")
    return results


def reconstruction(out: Path, data: Path, progress: bool) -> dict[str, Any]:
    """How well the run's tokenizer keeps the test images (vq.json and the files beside it)."""
    vq = run_reconstruction(checkpoint_dir(out, "vq"), data / "test.json", out / "vq.json", progress=progress)
    m = vq["metrics"]
    print(f"  tokenizer on the {m['n']} test images: PSNR {m['psnr']:.2f} dB (5th percentile {m['psnr_p05']:.2f}),")
    print(f"  codes used {m['codes_used']:.3f} of {m['codebook_size']}, perplexity {m['perplexity']:.1f}")
    return m


def clear_native_run(out: Path, recipe: RecipeConfig) -> None:
    """What an earlier demo wrote to `out` (the adapter demo's files, then the drawings and vq.*)."""
    clear_old_run(out, recipe)
    for name in OUTPUTS:
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / "drawings", ignore_errors=True)


def score_reading(
    pipe: Pipeline, model: Path, data: Path, out: Path, limit: int | None, compare: Path, progress: bool
) -> tuple[dict, dict | None, tuple[dict, dict | None] | None]:
    """VQA and caption metrics through the adapter demo's harness calls, and the table beside the
    adapter's numbers (None when its eval.json is not at `compare`)."""
    vqa = score(pipe, model, data, out, limit, progress)
    captions = score_captions(pipe, data / "test_captions.jsonl", out, limit, progress)
    adapter = adapter_results(compare)
    print(f"\nthe native model beside the adapter demo's ({compare}):")
    print(comparison(vqa, captions, adapter))
    if adapter is None:
        print(f"  no adapter numbers: {compare} not found (`make demo` writes runs/demo/eval.json; or --compare FILE)")
    return vqa, captions, adapter


def run_native_demo(
    out: Path = Path("runs/native"),
    data: Path = Path("data/native"),
    preset: str = "native",
    progress: bool = True,
    seed: int | None = None,
    compare: Path = Path("runs/demo/eval.json"),
    clip: Path = Path("runs/demo/clip/model"),
    judge: Path | None = None,
) -> dict:
    """Data -> train (vq, then native, from scratch) -> VQA and captions (beside the adapter's at
    `compare`) -> drawings judged (CLIP score with the checkpoint at `clip`, if there) -> tokenizer
    reconstruction. Writes eval.json, captions.json, predictions.jsonl, drawing.json, drawings.json,
    drawings/, drawings.png and vq.json to `out`; prints its summary last (one JSON line)."""
    start = time.perf_counter()
    out, data, chosen = Path(out), Path(data), PRESETS[preset]
    recipe = seeded(chosen.recipe(str(data)), seed)
    build_data(data, chosen.data(), preset)
    clear_native_run(out, recipe)
    began = time.perf_counter()
    model = train_from_scratch(recipe, out, progress)
    train_seconds = time.perf_counter() - began
    pipe = Pipeline.load(model)
    vqa, captions, adapter = score_reading(pipe, model, data, out, chosen.eval_limit, Path(compare), progress)
    _header(4, f"draw the first {chosen.draw_prompts} test captions and judge them; the tokenizer's reconstruction")
    judged_by = get_judge(data, out, judge, chosen.judge_steps)
    drawing = score_drawings(pipe, data, out, judged_by, Path(clip), chosen.draw_prompts)
    vq = reconstruction(out, data, progress)
    summary = {
        "accuracy": vqa["accuracy"],
        "by_type": {t: r["accuracy"] for t, r in vqa["by_type"].items()},
        "n_test_questions": vqa["n"],
        **({"captions": {k: captions[k] for k in ("CIDEr", "Bleu_4", "n")}} if captions else {}),
        "drawing": drawing["drawn"],
        "drawing_real_images": {k: drawing["real"][k] for k in ATTRIBUTES},
        "reconstruction": {k: vq[k] for k in ("psnr", "psnr_p05", "codes_used", "perplexity")},
        **({"adapter": {"accuracy": adapter[0]["accuracy"], "n_test_questions": adapter[0]["n"]}} if adapter else {}),
        "train_seconds": round(train_seconds, 1),
        "seconds": round(time.perf_counter() - start, 1),
        "model": str(model),
        **({"seed": seed} if seed is not None else {}),
    }
    print(json.dumps(summary))
    return summary
