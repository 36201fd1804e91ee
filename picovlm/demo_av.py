"""`picovlm demo --preset av`: one model that reads videos and sounds, trained from scratch and scored.

Builds the moving-shapes clips and the sounds (data/av.py), trains every stage of the av recipe
(presets.av_stages: lm, clip, clap, align, the single-frame baseline `frame`, then `instruct`), and
reports exact-match accuracy per modality and question type, with, beside each video question type,
the single-frame baseline's: the same questions asked of a model shown only the clip's middle frame.
Where the two agree, one frame was enough; the gap on direction, speed, events and counts is what the
model reads from time. The audio tower's contrastive stage is scored too (audio -> caption R@K).

    from picovlm.demo_av import run_av_demo
    run_av_demo(Path("runs/av"), Path("data/av"))  # prints a report, returns the summary it prints last
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from picovlm.audio.wave import load_audio
from picovlm.config import save_json
from picovlm.data.av import AVData, build_av_dataset, same_build
from picovlm.data.clips import TIME_TYPES
from picovlm.data.formats import load_samples
from picovlm.demo import _header, seeded, train_from_scratch
from picovlm.engine.pipeline import Pipeline
from picovlm.eval.clients import PipelineClient
from picovlm.eval.embedder import ClipEmbedder
from picovlm.eval.harness import evaluate, load_queries, write_jsonl
from picovlm.eval.tasks import VQA
from picovlm.eval.zeroshot import topk_accuracy
from picovlm.presets import PRESETS
from picovlm.train.stages import checkpoint_dir

TESTS = {"video": "test_video.json", "audio": "test_audio.json", "frame": "test_frame.json"}


def score_file(pipe: Pipeline, path: Path, out: Path, progress: bool) -> dict:
    """VQA metrics of one test file, its predictions written to `out`, and the seconds per question."""
    task = VQA()
    queries = load_queries(task, path)
    start = time.perf_counter()
    evaluation = evaluate(task, queries, PipelineClient(pipe), progress=progress)
    seconds = (time.perf_counter() - start) / len(queries)
    write_jsonl(out, evaluation.predictions)
    return {**evaluation.metrics, "seconds_per_question": seconds}


def audio_retrieval(clap: Path, data: Path) -> dict:
    """Audio -> caption R@1/R@5 of the clap stage's model over the test sounds: each clip against every
    distinct test caption (many clips share one: "Two loud low beeps.")."""
    embedder = ClipEmbedder.load(clap)
    samples = load_samples(data / "test_audio_captions.jsonl", on_error="raise")
    captions = sorted({s.messages[-1]["content"] for s in samples})
    clips = embedder.encode_images([load_audio(s.inputs("audio")[0]) for s in samples])
    texts = embedder.encode_texts(captions)
    labels = [captions.index(s.messages[-1]["content"]) for s in samples]
    m = topk_accuracy((clips @ texts.T).numpy(), labels, ks=(1, 5))
    return {"R@1": m["top1"], "R@5": m["top5"], "n_clips": len(samples), "n_captions": len(captions)}


def table(results: dict) -> list[tuple[str, str, str, float, int, float | None]]:
    """(modality, question type, needs time?, accuracy, n, single-frame accuracy) rows, totals last."""
    rows = []
    frame = results["frame"]["by_type"]
    for modality in ("video", "audio"):
        r = results[modality]
        for qtype, t in r["by_type"].items():
            time_ = ("yes" if qtype in TIME_TYPES else "no") if modality == "video" else ""
            base = frame[qtype]["accuracy"] if modality == "video" else None
            rows.append((modality, qtype, time_, t["accuracy"], t["n"], base))
        if modality == "video":
            for needs, label in ((True, "needs time"), (False, "one frame")):
                kinds = [k for k in r["by_type"] if (k in TIME_TYPES) == needs]
                n = sum(r["by_type"][k]["n"] for k in kinds)
                acc = sum(r["by_type"][k]["accuracy"] * r["by_type"][k]["n"] for k in kinds) / max(1, n)
                base = sum(frame[k]["accuracy"] * frame[k]["n"] for k in kinds) / max(1, n)
                rows.append((modality, f"({label})", "", acc, n, base))
        rows.append(
            (
                modality,
                "(all)",
                "",
                r["accuracy"],
                r["n"],
                results["frame"]["accuracy"] if modality == "video" else None,
            )
        )
    return rows


def format_table(rows: list[tuple]) -> str:
    lines = ["  modality  question type  needs time  accuracy      n  single frame", "  " + "-" * 64]
    for modality, qtype, needs, acc, n, base in rows:
        shown = f"{base:.3f}" if base is not None else ""
        lines.append(f"  {modality:<9} {qtype:<14} {needs:<11} {acc:>8.3f} {n:>6}  {shown:>12}")
    return "\n".join(lines)


def ensure_av_dataset(data: Path, preset: AVData) -> bool:
    """Build the clips and sounds into `data` unless a finished build of the same settings is there."""
    if same_build(data, preset):
        return False
    build_av_dataset(data, preset)
    return True


def run_av_demo(
    out: Path = Path("runs/av"),
    data: Path = Path("data/av"),
    preset: str = "av",
    progress: bool = True,
    seed: int | None = None,
) -> dict:
    """Data -> train (every stage, from scratch) -> score per modality and type -> report; writes
    `out/eval.json` and predictions beside it, and prints its summary last (one JSON line). `seed`
    replaces every stage's seed."""
    start = time.perf_counter()
    out, data = Path(out), Path(data)
    chosen = PRESETS[preset]
    recipe, av = seeded(chosen.recipe(str(data)), seed), chosen.data()
    _header(1, f"data: {av.n_train} train / {av.n_val} val / {av.n_test} test clips and as many sounds in {data}")
    print("built" if ensure_av_dataset(data, av) else f"reusing the dataset already there (same preset {preset!r})")
    speech = json.loads((data / "sound_config.json").read_text())["speech"]
    missing = " (espeak-ng is not installed)" if av.sounds.speech and not speech else ""
    print(f"spoken digits: {'yes (espeak-ng)' if speech else 'none' + missing}")
    trained = time.perf_counter()
    model = train_from_scratch(recipe, out, progress)
    seconds = {"train": time.perf_counter() - trained}
    samples = sum(s.steps * s.batch_size * s.grad_accum for s in recipe.stages)

    _header(3, f"evaluate {model} and the single-frame baseline {checkpoint_dir(out, 'frame')}")
    scored = time.perf_counter()
    results = {}
    pipe, baseline = Pipeline.load(model), Pipeline.load(checkpoint_dir(out, "frame"))
    for name, file in TESTS.items():
        results[name] = score_file(
            baseline if name == "frame" else pipe, data / file, out / f"{name}.predictions.jsonl", progress
        )
    results["audio_retrieval"] = audio_retrieval(checkpoint_dir(out, "clap"), data)
    seconds["eval"] = time.perf_counter() - scored
    save_json(results, out / "eval.json")

    _header(4, "results (exact match; single frame: the same video questions, shown only the middle frame)")
    rows = table(results)
    print(format_table(rows))
    r = results["audio_retrieval"]
    print(
        f"  audio -> caption retrieval (clap stage): R@1 {r['R@1']:.3f}, R@5 {r['R@5']:.3f} "
        f"({r['n_clips']} clips, {r['n_captions']} distinct captions)"
    )
    per = {k: results[k]["seconds_per_question"] * 1000 for k in ("video", "audio")}
    print(
        f"  time per sample: training {seconds['train'] / samples * 1000:.1f} ms (all stages, {samples} samples); "
        f"answering {per['video']:.1f} ms per video question, {per['audio']:.1f} ms per audio question"
    )
    summary = {
        "accuracy": {m: results[m]["accuracy"] for m in ("video", "audio")},
        "single_frame": results["frame"]["accuracy"],
        "by_type": {f"{m}/{t}": v["accuracy"] for m in ("video", "audio") for t, v in results[m]["by_type"].items()},
        "single_frame_by_type": {t: v["accuracy"] for t, v in results["frame"]["by_type"].items()},
        "audio_retrieval": r,
        "ms_per_train_sample": round(seconds["train"] / samples * 1000, 2),
        "ms_per_question": {k: round(v, 2) for k, v in per.items()},
        "speech": speech,
        "seconds": round(time.perf_counter() - start, 1),
        "model": str(model),
    }
    print(json.dumps(summary))
    return summary
