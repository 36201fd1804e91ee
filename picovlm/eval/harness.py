"""Run an evaluation task end to end: read the data, ask the model in batches, score, write files.

    run_eval("vqav2", data="data/eval", model="runs/demo/instruct/model", out="runs/demo/eval/vqav2.json")

writes, beside `out`:
    vqav2.json               {"task", "model", "data", "metrics", "notes", ...}
    vqav2.md                 the metrics as a markdown table
    vqav2.predictions.jsonl  one line per question: what was asked, the gold, the answer, its score
    vqav2.results.json       the answers in the benchmark's official result format (`picovlm score` reads it)
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from picovlm.eval.clients import EndpointClient, PipelineClient, VLMClient
from picovlm.eval.embedder import ClipEmbedder
from picovlm.eval.retrieval import retrieval_metrics
from picovlm.eval.tasks import EMBEDDING_TASKS, GENERATION_TASKS, TASK_NAMES, Caption, Query, Task, find_image
from picovlm.eval.zeroshot import TEMPLATES, class_embeddings, topk_accuracy
from picovlm.vision.image import load_image


def make_task(name: str, **options: Any) -> Task:
    if name not in GENERATION_TASKS:
        raise ValueError(f"unknown task {name!r}; choose from {', '.join(TASK_NAMES)}")
    cls = GENERATION_TASKS[name]
    accepted = cls.__init__.__code__.co_varnames[1 : cls.__init__.__code__.co_argcount]
    return cls(**{k: v for k, v in options.items() if k in accepted and v is not None})


def generate_answers(
    client: VLMClient, queries: list[Query], max_tokens: int, batch_size: int = 16, progress: bool = True
) -> list[str]:
    """Answers to every query, `batch_size` at a time, with a progress bar."""
    answers: list[str] = []
    bar = tqdm(total=len(queries), desc="eval", unit="q", disable=not progress)
    for i in range(0, len(queries), batch_size):
        chunk = queries[i : i + batch_size]
        answers += client.generate([[q.load_image()] for q in chunk], [q.prompt for q in chunk], max_tokens)
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
    texts = [(k, c) for k, q in enumerate(queries) for c in q.record["references"]]
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
    limit: int | None,
    batch_size: int,
    progress: bool,
    templates: tuple[str, ...] = TEMPLATES,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
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


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
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
    batch_size: int = 16,
    progress: bool = True,
    client: VLMClient | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Evaluate one task; returns the results dict it writes to `out` (see the module docstring)."""
    data, out = Path(data), Path(out)
    images = Path(images) if images else None
    paths = output_paths(out)
    if task in EMBEDDING_TASKS:
        if endpoint or model is None:
            raise ValueError(f"task {task!r} needs a CLIP checkpoint (--model runs/<x>/clip/model), not an endpoint")
        embedder = ClipEmbedder.load(model)
        torch.set_num_threads(min(torch.get_num_threads(), 4))
        if task == "retrieval":
            metrics, rows = run_retrieval(embedder, data, images, limit, batch_size, progress)
        else:
            metrics, rows = run_zeroshot(embedder, data, limit, batch_size, progress)
        official = None
    else:
        t = make_task(task, **options)
        queries = t.load(data, images, limit)  # before the model loads: bad data fails fast
        if not queries:
            raise ValueError(f"{data}: no {task} questions found")
        if client is None:
            if endpoint:
                client = EndpointClient(endpoint, endpoint_model)
            elif model is not None:
                client = PipelineClient.load(model)
            else:
                raise ValueError("give --model or --endpoint")
        answers = generate_answers(client, queries, t.max_tokens, batch_size, progress)
        metrics, per_item = t.score(queries, answers)
        rows = [{**q.record, "prediction": a, **p} for q, a, p in zip(queries, answers, per_item, strict=True)]
        official = t.result_rows(queries, answers)
    notes = metrics.pop("notes", [])
    results = {
        "task": task,
        "model": str(model) if model else None,
        "endpoint": endpoint,
        "data": str(data),
        "limit": limit,
        "metrics": metrics,
        "notes": notes,
        "files": {k: str(v) for k, v in paths.items() if k != "official" or official is not None},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    paths["markdown"].write_text(markdown_table(task, metrics) + "".join(f"\nNote: {n}\n" for n in notes))
    _write_jsonl(paths["predictions"], rows)
    if official is not None:
        paths["official"].write_text(json.dumps(official) + "\n")
    return results


def score_files(task: str, annotations: str | Path, results: str | Path, questions: str | Path | None = None) -> dict:
    """Score an official-format result file against official-format annotations (no model)."""
    if task in EMBEDDING_TASKS:
        raise ValueError(f"task {task!r} has no result file to score: it ranks embeddings (use `picovlm eval`)")
    t = make_task(task)
    return t.score_files(Path(annotations), Path(results), Path(questions) if questions else None)


__all__ = ["run_eval", "score_files", "markdown_table", "find_image", "generate_answers", "make_task"]
