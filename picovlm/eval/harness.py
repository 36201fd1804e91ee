"""Run an evaluation task end to end: read the data, ask the model in batches, score, write files.

The one path of every evaluation: `picovlm eval` (whatever the task), the demo's VQA score and
the Python API all come through `load_queries` -> `evaluate` (or `run_eval`, which adds the files).

    run_eval("vqav2", data="data/eval", model="runs/demo/instruct/model", out="runs/demo/eval/vqav2.json")
    run_eval("vqa", data="data/demo/test.json", model="runs/demo/instruct/model", out="eval/vqa.json")

writes, beside `out`:
    vqav2.json               {"task", "model", "data", "metrics", "notes", ...}
    vqav2.md                 the metrics as a markdown table
    vqav2.predictions.jsonl  one line per question: what was asked, the gold, the answer, its score
    vqav2.results.json       the answers in the benchmark's official result format (`picovlm score` reads it)
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from picovlm.eval.clients import EndpointClient, PipelineClient, VLMClient
from picovlm.eval.embedder import ClipEmbedder
from picovlm.eval.retrieval import retrieval_metrics
from picovlm.eval.tasks import EMBEDDING_TASKS, Caption, EvalTask, Query, make_task
from picovlm.eval.zeroshot import TEMPLATES, class_embeddings, topk_accuracy
from picovlm.vision.image import load_image

# Questions decoded together (images embedded together, for the CLIP tasks): the one default of
# `picovlm eval`, the harness and the demo; larger is faster and takes more memory.
BATCH_SIZE = 32


@dataclass
class Evaluation:
    """A task's outcome: its metrics, one row per query for predictions.jsonl (what was asked, the
    reference, the answer, its score) and the answers in the official result format (None for the
    embedding tasks, which have none)."""

    metrics: dict[str, Any]
    predictions: list[dict[str, Any]]
    official: list[dict[str, Any]] | None


def load_queries(
    task: EvalTask, data: str | Path, images: str | Path | None = None, limit: int | None = None
) -> list[Query]:
    """The task's queries from `data` (images in `images`, default: beside it); an error when there
    are none. Call it before loading a model, so that bad data fails fast."""
    queries = task.load(Path(data), Path(images) if images else None, limit)
    if not queries:
        raise ValueError(f"{data}: no {task.name} questions found")
    return queries


def evaluate(
    task: EvalTask, queries: list[Query], client: VLMClient, batch_size: int = BATCH_SIZE, progress: bool = True
) -> Evaluation:
    """Ask `client` every query, `batch_size` at a time, and score the answers."""
    answers = generate_answers(client, queries, task.max_tokens, batch_size, progress)
    metrics, per_query = task.score(queries, answers)
    rows = [{**q.record, "prediction": a, **p} for q, a, p in zip(queries, answers, per_query, strict=True)]
    return Evaluation(metrics, rows, task.result_rows(queries, answers))


def generate_answers(
    client: VLMClient, queries: list[Query], max_tokens: int, batch_size: int = BATCH_SIZE, progress: bool = True
) -> list[str]:
    """Answers to every query, `batch_size` at a time, with a progress bar."""
    answers: list[str] = []
    bar = tqdm(total=len(queries), desc="eval", unit="q", disable=not progress)
    for i in range(0, len(queries), batch_size):
        chunk = queries[i : i + batch_size]
        images, prompts, media = (
            [q.load_images() for q in chunk],
            [q.prompt for q in chunk],
            [q.load_media() for q in chunk],
        )
        extra = (media,) if any(media) else ()  # only when there are some: a client written for images keeps working
        answers += client.generate(images, prompts, max_tokens, *extra)
        bar.update(len(chunk))
    bar.close()
    return answers


# ---------------------------------------------------------------------------- CLIP tasks


def _embed_images(embedder: ClipEmbedder, paths: list[Path], batch_size: int, progress: bool) -> torch.Tensor:
    out = []
    for i in tqdm(range(0, len(paths), batch_size), desc="images", disable=not progress):
        out.append(embedder.encode_images([load_image(p) for p in paths[i : i + batch_size]]))
    return torch.cat(out)


def _embed_texts(embedder: ClipEmbedder, texts: list[str], batch_size: int) -> torch.Tensor:
    return torch.cat([embedder.encode_texts(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)])


def run_retrieval(
    embedder: ClipEmbedder, data: Path, images: Path | None, limit: int | None, batch_size: int, progress: bool
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Retrieval over the first `limit` images of a COCO captions file and all their captions."""
    queries = Caption().load(data, images, limit)
    texts = [(k, c) for k, q in enumerate(queries) for c in q.reference]
    img = _embed_images(embedder, [q.image for q in queries], batch_size, progress)
    txt = _embed_texts(embedder, [c for _, c in texts], batch_size)
    sim = (img @ txt.T).numpy()
    owner = [k for k, _ in texts]
    metrics = retrieval_metrics(sim, owner)
    best = sim.argmax(axis=1)
    rows = [
        {"image_id": q.key, "top_caption": texts[best[k]][1], "top_is_own": owner[best[k]] == k}
        for k, q in enumerate(queries)
    ]
    return metrics, rows


def evaluate_embeddings(
    task: str,
    model: str | Path | None,
    data: Path,
    images: Path | None,
    limit: int | None,
    batch_size: int,
    progress: bool,
) -> Evaluation:
    """`retrieval` or `zeroshot` on a CLIP checkpoint."""
    if model is None:
        raise ValueError(f"task {task!r} needs a CLIP checkpoint (--model runs/<x>/clip/model), not an endpoint")
    embedder = ClipEmbedder.load(model)
    torch.set_num_threads(min(torch.get_num_threads(), 4))
    run = run_retrieval if task == "retrieval" else run_zeroshot
    metrics, rows = run(embedder, data, images, limit, batch_size, progress)
    return Evaluation(metrics, rows, None)


def read_image_folder(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """ImageFolder layout: one sub-folder per class ("red_circle" is the class "red circle")."""
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder of class folders (ImageFolder layout)")
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if not folders:
        raise ValueError(f"{root}: no class folders")
    classes = [f.name.replace("_", " ") for f in folders]
    suffixes = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
    items = [(p, c) for c, f in enumerate(folders) for p in f.iterdir() if p.suffix.lower() in suffixes]
    items.sort(key=lambda x: (x[0].name, x[1]))  # mixes classes, so --limit keeps them all
    return classes, items


def run_zeroshot(
    embedder: ClipEmbedder,
    data: Path,
    images: Path | None,
    limit: int | None,
    batch_size: int,
    progress: bool,
    templates: tuple[str, ...] = TEMPLATES,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Zero-shot classification of the images of an ImageFolder (`data`, or its zeroshot/ folder)."""
    if images is not None:
        raise ValueError("zeroshot reads its images from the class folders under --data; --images does not apply")
    root = data / "zeroshot" if (data / "zeroshot").is_dir() else data
    classes, items = read_image_folder(root)
    items = items[:limit]
    if not items:
        raise ValueError(f"{root}: no images")
    img = _embed_images(embedder, [p for p, _ in items], batch_size, progress)
    cls = class_embeddings(lambda t: _embed_texts(embedder, t, batch_size), classes, templates)
    scores = (img @ cls.T).numpy()
    metrics = topk_accuracy(scores, [c for _, c in items], ks=(1, 5))
    metrics["templates"] = list(templates)
    rows = [
        {"image": str(p), "label": classes[c], "prediction": classes[int(np.argmax(s))]}
        for (p, c), s in zip(items, scores, strict=True)
    ]
    return metrics, rows


# ---------------------------------------------------------------------------- outputs


def flatten(metrics: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows = []
    for k, v in metrics.items():
        if k in ("notes", "templates"):
            continue
        if isinstance(v, dict):
            rows += flatten(v, f"{prefix}{k}/")
        else:
            rows.append((f"{prefix}{k}", v))
    return rows


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4f}" if abs(v) < 10 else f"{v:.2f}"
    return str(v)


def markdown_table(task: str, metrics: dict[str, Any]) -> str:
    lines = [f"| {task} | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in flatten(metrics)]
    return "\n".join(lines) + "\n"


def output_paths(out: Path) -> dict[str, Path]:
    stem = out.with_suffix("")
    return {
        "results": out,
        "markdown": stem.with_suffix(".md"),
        "predictions": Path(f"{stem}.predictions.jsonl"),
        "official": Path(f"{stem}.results.json"),
    }


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r, default=str) + "\n" for r in rows))


def run_eval(
    task: str,
    data: str | Path,
    out: str | Path,
    model: str | Path | None = None,
    endpoint: str | None = None,
    endpoint_model: str = "default",
    images: str | Path | None = None,
    limit: int | None = None,
    batch_size: int = BATCH_SIZE,
    progress: bool = True,
    client: VLMClient | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Evaluate one task; returns the results dict it writes to `out` (see the module docstring).
    `options` are the task's own (`make_task`); `client`, when given, answers instead of a model."""
    data, images = Path(data), Path(images) if images else None
    if task in EMBEDDING_TASKS:
        if options:
            raise ValueError(f"task {task!r} has no option {next(iter(options))!r}")
        if endpoint:
            raise ValueError(f"task {task!r} needs a CLIP checkpoint (--model runs/<x>/clip/model), not an endpoint")
        evaluation = evaluate_embeddings(task, model, data, images, limit, batch_size, progress)
    else:
        t = make_task(task, **options)
        queries = load_queries(t, data, images, limit)
        evaluation = evaluate(t, queries, client or connect(model, endpoint, endpoint_model), batch_size, progress)
    paths = output_paths(Path(out))
    notes = evaluation.metrics.pop("notes", [])
    results = {
        "task": task,
        "model": str(model) if model else None,
        "endpoint": endpoint,
        "data": str(data),
        "limit": limit,
        "metrics": evaluation.metrics,
        "notes": notes,
        "files": {k: str(v) for k, v in paths.items() if k != "official" or evaluation.official is not None},
    }
    write_outputs(paths, results, evaluation)
    return results


def write_outputs(paths: dict[str, Path], results: dict[str, Any], evaluation: Evaluation) -> None:
    """The files of the module docstring: results JSON, markdown table, predictions, official results."""
    paths["results"].parent.mkdir(parents=True, exist_ok=True)
    paths["results"].write_text(json.dumps(results, indent=2, default=str) + "\n")
    notes = "".join(f"\nNote: {n}\n" for n in results["notes"])
    paths["markdown"].write_text(markdown_table(results["task"], results["metrics"]) + notes)
    write_jsonl(paths["predictions"], evaluation.predictions)
    if evaluation.official is not None:
        paths["official"].write_text(json.dumps(evaluation.official) + "\n")


def connect(model: str | Path | None, endpoint: str | None, endpoint_model: str = "default") -> VLMClient:
    """The client of a picovlm checkpoint or of an OpenAI-compatible server."""
    if endpoint:
        return EndpointClient(endpoint, endpoint_model)
    if model is not None:
        return PipelineClient.load(model)
    raise ValueError("give --model or --endpoint")


def score_files(task: str, annotations: str | Path, results: str | Path, questions: str | Path | None = None) -> dict:
    """Score an official-format result file against official-format annotations (no model)."""
    if task in EMBEDDING_TASKS:
        raise ValueError(f"task {task!r} has no result file to score: it ranks embeddings (use `picovlm eval`)")
    t = make_task(task)
    return t.score_files(Path(annotations), Path(results), Path(questions) if questions else None)
