"""Evaluation tasks: how each benchmark's files are read, what is asked, and how answers are scored.

A generation task (`vqa`, `vqav2`, `gqa`, `caption`, `pope`, `mmstar`) turns its files into
`Query`s (image + prompt, and the reference its answer is scored against), and scores the answers
a `VLMClient` gives; it also writes the answers in the benchmark's official result format and
scores such a file with no model (`score_files`), so `picovlm eval` and `picovlm score` compose.
An embedding task (`retrieval`, `zeroshot`) runs on a CLIP checkpoint instead (eval/harness.py).

A task is a frozen dataclass whose fields are its options (`make_task` refuses any other), and it
keeps nothing between `load` and `score`: what scoring needs travels in the queries.

`--data` is either a folder written by `picovlm eval-data` (each task finds its file by name) or
a benchmark file (or folder of the real benchmark's files, by their usual names); for `vqa`, a
LLaVA-style test file. Images are looked up next to the data: in `images/` beside it, by file name
or COCO-style image id, unless `--images` says where they are.
"""

from __future__ import annotations

import base64
import binascii
import csv
import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from picovlm.data.batches import CAPTION_PROMPT
from picovlm.data.formats import load_samples
from picovlm.data.records import ImageRef
from picovlm.eval.caption import score_captions
from picovlm.eval.gqa import normalize_gqa, score_gqa
from picovlm.eval.multiple_choice import MCItem, circular_variants, parse_option, score_multiple_choice
from picovlm.eval.pope import parse_yes_no, pope_metrics
from picovlm.eval.vqa import questions_from, score_vqa
from picovlm.eval.vqav2 import normalize_prediction, score_vqav2
from picovlm.models.modalities import MODALITIES
from picovlm.vision.image import load_image

SHORT_ANSWER = "\nAnswer the question using a single word or phrase."  # LLaVA's VQAv2/GQA/POPE suffix


@dataclass
class Query:
    """One request: an image (a path, encoded bytes or an image in an archive) and a prompt.

    `record` is what predictions.jsonl shows of it; `reference` is what its answer is scored against
    (an annotation, the gold answer, the question with its options), kept here so that a task needs
    no state of its own between `load` and `score`.
    """

    key: Any
    image: Path | bytes | ImageRef | None  # None: a question about a video or sound alone
    prompt: str
    record: dict[str, Any]
    reference: Any
    media: dict[str, list[Path]] = dataclasses.field(default_factory=dict)  # its videos and audio clips

    def load_image(self) -> Image.Image:
        if isinstance(self.image, ImageRef):
            return self.image.load()
        return load_image(self.image, name=f"image of {self.key}" if isinstance(self.image, bytes) else None)

    def load_images(self) -> list[Image.Image]:
        return [] if self.image is None else [self.load_image()]

    def load_media(self) -> dict[str, list[Any]]:
        """Its videos and audio clips, decoded (`Modality.load`)."""
        return {name: [MODALITIES[name].load(p) for p in paths] for name, paths in self.media.items()}


# ---------------------------------------------------------------------------- reading files


def read_json(path: Path) -> Any:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """A JSON Lines file (or a JSON list, which some benchmarks ship under the same name)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: file not found")
    text = Path(path).read_text()
    if text.lstrip().startswith("["):
        return read_json(path)
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: invalid JSON ({e.msg})") from None
    return rows


def _need(record: Any, keys: tuple[str, ...], where: str) -> None:
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = [k for k in keys if k not in record]
    if missing:
        raise ValueError(f"{where}: missing {', '.join(repr(k) for k in missing)}")


def _pick(data: Path, names: tuple[str, ...], what: str) -> Path:
    """`data` itself when it is a file, else the first of `names` (globs) found in the folder."""
    if data.is_file():
        return data
    if not data.is_dir():
        raise FileNotFoundError(f"{data}: not found")
    for pattern in names:
        found = sorted(data.glob(pattern))
        if found:
            return found[0]
    raise FileNotFoundError(f"{data}: no {what} file ({' or '.join(names)}); make one with `picovlm eval-data`")


def find_image(roots: list[Path], names: list[str]) -> Path:
    """The first existing root/name, or root/images/name (COCO, GQA and POPE ship images apart)."""
    for root in roots:
        for name in names:
            for path in (root / name, root / "images" / name):
                if path.is_file():
                    return path
    return roots[0] / "images" / names[0]  # load_image then reports it missing, with its name


def _roots(data_file: Path, images: Path | None) -> list[Path]:
    return [images] if images else [data_file.parent]


def _coco_names(image_id: int, subtype: str) -> list[str]:
    stems = [f"{image_id:012d}", f"COCO_{subtype}_{image_id:012d}", f"{subtype}/COCO_{subtype}_{image_id:012d}"]
    return [s + ext for s in stems for ext in (".jpg", ".png")]


def _results_list(path: Path, keys: tuple[str, ...]) -> list[dict[str, Any]]:
    rows = read_jsonl(path)
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a JSON list of results")
    for i, r in enumerate(rows):
        _need(r, keys, f"{path}: result {i}")
    return rows


def _subset_note(scored: int, total: int, what: str) -> list[str]:
    return [f"scored {scored} of the {total} {what} (the result file answers only those)"] if scored < total else []


# ---------------------------------------------------------------------------- tasks


class EvalTask:
    """What every generation task does; `name` is its registry key, `max_tokens` its answers' length."""

    name = ""
    max_tokens = 16

    def load(self, data: Path, images: Path | None, limit: int | None) -> list[Query]:
        """The first `limit` questions of the data, images looked up in `images` (default: beside it)."""
        raise NotImplementedError

    def score(self, queries: list[Query], answers: list[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """(metrics, one dict per query merged into its predictions.jsonl line)."""
        raise NotImplementedError

    def result_rows(self, queries: list[Query], answers: list[str]) -> list[dict[str, Any]]:
        """The answers in the benchmark's official result format."""
        raise NotImplementedError

    def score_files(self, annotations: Path, results: Path, questions: Path | None) -> dict[str, Any]:
        """The metrics of an official-format result file, against the benchmark's annotations."""
        raise NotImplementedError


@dataclass(frozen=True)
class VQA(EvalTask):
    """Short-answer VQA on a LLaVA-style test file (the demo's score): exact match after
    normalization, per question type (and per modality, where the file has videos or audio: the
    questions' records may show any of them), each question asked on its own; `--images` is where the
    file's image names are resolved (default: its folder). Its result file is VQAv2-shaped:
    [{"question_id": "<record id>#<turn>", "answer"}]."""

    name, max_tokens = "vqa", 16
    prompt_suffix: str = ""

    def load(self, data, images, limit):
        out = []
        for q in questions_from(load_samples(data, on_error="raise", image_root=images))[:limit]:
            record = {"id": q.id, "type": q.qtype, "question": q.question, "answer": q.answer}
            if q.media:
                record["modality"] = q.modality
            out.append(Query(q.id, q.image, q.question + self.prompt_suffix, record, q, q.media))
        return out

    def result_rows(self, queries, answers):
        return [{"question_id": q.key, "answer": a} for q, a in zip(queries, answers, strict=True)]

    def score(self, queries, answers):
        m = score_vqa([q.reference for q in queries], answers)
        return m, [{"correct": ok} for ok in m.pop("per_question")]

    def score_files(self, annotations, results, questions):
        asked = questions_from(load_samples(annotations, on_error="raise", check_images=False))
        by_id = {q.id: q for q in asked}
        if len(by_id) < len(asked):
            raise ValueError(f"{annotations}: question ids repeat; give every test record its own 'id'")
        rows = _results_list(results, ("question_id", "answer"))
        unknown = [r["question_id"] for r in rows if r["question_id"] not in by_id]
        if unknown:
            raise ValueError(f"{results}: question_id {unknown[0]!r} is not in {annotations}")
        m = score_vqa([by_id[r["question_id"]] for r in rows], [r["answer"] for r in rows])
        m.pop("per_question")
        return {**m, "notes": _subset_note(len(rows), len(by_id), "questions")}


@dataclass(frozen=True)
class VQAv2(EvalTask):
    """VQAv2 accuracy (official rules), per question and answer type."""

    name, max_tokens = "vqav2", 16
    prompt_suffix: str = SHORT_ANSWER

    def _files(self, data: Path) -> tuple[Path, Path]:
        if data.is_file():  # the questions file; its annotations beside it
            q = data
            name = q.name.replace("OpenEnded_", "").replace("questions", "annotations")
            return q, q.with_name(name)
        q = _pick(data, ("vqav2_questions.json", "v2_OpenEnded_*questions.json"), "VQAv2 questions")
        a = _pick(data, ("vqav2_annotations.json", "v2_*annotations.json"), "VQAv2 annotations")
        return q, a

    @staticmethod
    def read_annotations(path: Path) -> dict[int, dict[str, Any]]:
        d = read_json(path)
        _need(d, ("annotations",), str(path))
        out = {}
        for i, a in enumerate(d["annotations"]):
            _need(a, ("question_id", "answers"), f"{path}: annotation {i}")
            if not a["answers"]:
                raise ValueError(f"{path}: annotation {i} (question_id {a['question_id']}) has no answers")
            out[a["question_id"]] = a
        return out

    def load(self, data: Path, images: Path | None, limit: int | None) -> list[Query]:
        qfile, afile = self._files(data)
        qd = read_json(qfile)
        _need(qd, ("questions",), str(qfile))
        anns = self.read_annotations(afile)
        subtype = qd.get("data_subtype", "")
        out = []
        for i, q in enumerate(qd["questions"][:limit]):
            _need(q, ("question_id", "image_id", "question"), f"{qfile}: question {i}")
            ann = anns.get(q["question_id"])
            if ann is None:
                raise ValueError(f"{afile}: no annotation for question_id {q['question_id']}")
            image = find_image(_roots(qfile, images), _coco_names(q["image_id"], subtype))
            record = {"question_id": q["question_id"], "question": q["question"]}
            record["answers"] = [a["answer"] for a in ann["answers"]]
            out.append(Query(q["question_id"], image, q["question"] + self.prompt_suffix, record, ann))
        return out

    def result_rows(self, queries, answers):
        return [
            {"question_id": q.key, "answer": normalize_prediction(a)} for q, a in zip(queries, answers, strict=True)
        ]

    def score(self, queries, answers):
        rows = self.result_rows(queries, answers)
        m = score_vqav2([q.reference for q in queries], {r["question_id"]: r["answer"] for r in rows})
        per = m.pop("per_question")
        return m, [{"answer": r["answer"], "accuracy": per[q.key]} for q, r in zip(queries, rows, strict=True)]

    def score_files(self, annotations, results, questions):
        anns = self.read_annotations(annotations)
        rows = _results_list(results, ("question_id", "answer"))
        unknown = [r["question_id"] for r in rows if r["question_id"] not in anns]
        if unknown:
            raise ValueError(f"{results}: question_id {unknown[0]} is not in {annotations}")
        if questions is not None:
            qids = {q["question_id"] for q in read_json(questions).get("questions", [])}
            stray = [r["question_id"] for r in rows if r["question_id"] not in qids]
            if stray:
                raise ValueError(f"{results}: question_id {stray[0]} is not in {questions}")
        preds = {r["question_id"]: r["answer"] for r in rows}
        m = score_vqav2([anns[q] for q in preds], preds)
        m.pop("per_question")
        return {**m, "notes": _subset_note(len(preds), len(anns), "annotated questions")}


@dataclass(frozen=True)
class GQA(EvalTask):
    """GQA exact-match accuracy, per structural and semantic type."""

    name, max_tokens = "gqa", 16
    prompt_suffix: str = SHORT_ANSWER

    @staticmethod
    def read_questions(path: Path) -> dict[str, dict[str, Any]]:
        d = read_json(path)
        if not isinstance(d, dict):
            raise ValueError(f"{path}: expected GQA's {{questionId: question}} object")
        for qid, q in d.items():
            _need(q, ("imageId", "question", "answer"), f"{path}: question {qid}")
        return d

    def load(self, data, images, limit):
        qfile = _pick(data, ("gqa_questions.json", "*testdev*questions*.json", "*questions*.json"), "GQA questions")
        out = []
        for qid, q in list(self.read_questions(qfile).items())[:limit]:
            image = find_image(_roots(qfile, images), [f"{q['imageId']}.jpg", f"{q['imageId']}.png"])
            record = {"questionId": qid, "question": q["question"], "gold": q["answer"]}
            out.append(Query(qid, image, q["question"] + self.prompt_suffix, record, q))
        return out

    def result_rows(self, queries, answers):
        return [{"questionId": q.key, "prediction": normalize_gqa(a)} for q, a in zip(queries, answers, strict=True)]

    def score(self, queries, answers):
        rows = self.result_rows(queries, answers)
        m = score_gqa({q.key: q.reference for q in queries}, {r["questionId"]: r["prediction"] for r in rows})
        return m, [{"correct": r["prediction"] == q.reference["answer"]} for q, r in zip(queries, rows, strict=True)]

    def score_files(self, annotations, results, questions):
        qs = self.read_questions(annotations)
        rows = _results_list(results, ("questionId", "prediction"))
        preds = {str(r["questionId"]): r["prediction"] for r in rows}
        unknown = [q for q in preds if q not in qs]
        if unknown:
            raise ValueError(f"{results}: questionId {unknown[0]} is not in {annotations}")
        m = score_gqa({q: qs[q] for q in preds}, preds)
        return {**m, "notes": _subset_note(len(preds), len(qs), "questions")}


@dataclass(frozen=True)
class Caption(EvalTask):
    """COCO caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D) via pycocoevalcap, on COCO-format
    annotations or on a caption file picovlm trains on (`{"image", "text"}` lines, several per image:
    the demo's `test_captions.jsonl`). `meteor=False` skips METEOR (its JVM takes ~15 s to start)."""

    name, max_tokens = "caption", 48
    prompt: str = CAPTION_PROMPT
    meteor: bool = True

    @staticmethod
    def read_annotations(path: Path) -> tuple[dict[int, dict], dict[int, list[str]]]:
        d = read_json(path)
        _need(d, ("images", "annotations"), str(path))
        images = {}
        for i, im in enumerate(d["images"]):
            _need(im, ("id",), f"{path}: image {i}")
            images[im["id"]] = im
        refs: dict[int, list[str]] = {k: [] for k in images}
        for i, a in enumerate(d["annotations"]):
            _need(a, ("image_id", "caption"), f"{path}: annotation {i}")
            if a["image_id"] not in refs:
                raise ValueError(f"{path}: annotation {i} refers to unknown image_id {a['image_id']}")
            refs[a["image_id"]].append(a["caption"])
        return images, {k: v for k, v in refs.items() if v}

    @staticmethod
    def read_caption_file(path: Path, images: Path | None) -> tuple[dict[int, dict], dict[int, list[str]]]:
        """A picovlm caption file as COCO's two tables: images (by a running id) and their references."""
        ims: dict[int, dict] = {}
        refs: dict[int, list[str]] = {}
        ids: dict[Any, int] = {}
        for s in load_samples(path, on_error="raise", image_root=images):
            if s.meta.get("kind") != "caption":
                raise ValueError(f"{s.meta['source']}: not a caption record (expected {{'image', 'text'}})")
            image_id = ids.setdefault(s.images[0], len(ids))
            ims.setdefault(image_id, {"id": image_id, "file_name": str(s.images[0])})
            refs.setdefault(image_id, []).append(s.messages[-1]["content"])
        return ims, refs

    def load(self, data, images, limit):
        if data.is_file() and data.suffix == ".jsonl":
            ims, refs = self.read_caption_file(data, images)
            return [
                Query(k, Path(ims[k]["file_name"]), self.prompt, {"image_id": k, "references": refs[k]}, refs[k])
                for k in list(refs)[:limit]
            ]
        afile = _pick(data, ("captions.json", "captions_*.json"), "COCO captions")
        ims, refs = self.read_annotations(afile)
        out = []
        for image_id in list(refs)[:limit]:
            im = ims[image_id]
            names = [im["file_name"]] if "file_name" in im else _coco_names(image_id, "val2014")
            record = {"image_id": image_id, "references": refs[image_id]}
            out.append(Query(image_id, find_image(_roots(afile, images), names), self.prompt, record, refs[image_id]))
        return out

    def result_rows(self, queries, answers):
        return [{"image_id": q.key, "caption": a.strip()} for q, a in zip(queries, answers, strict=True)]

    def score(self, queries, answers):
        preds = {q.key: a.strip() for q, a in zip(queries, answers, strict=True)}
        m = score_captions({q.key: q.reference for q in queries}, preds, meteor=self.meteor)
        per = m.pop("per_image")
        return m, [per[q.key] for q in queries]

    def score_files(self, annotations, results, questions):
        _, refs = self.read_annotations(annotations)
        rows = _results_list(results, ("image_id", "caption"))
        preds = {r["image_id"]: r["caption"] for r in rows}
        unknown = [k for k in preds if k not in refs]
        if unknown:
            raise ValueError(f"{results}: image_id {unknown[0]} has no references in {annotations}")
        m = score_captions({k: refs[k] for k in preds}, preds)
        m.pop("per_image")
        m["notes"] = m["notes"] + _subset_note(len(preds), len(refs), "captioned images")
        return m


@dataclass(frozen=True)
class POPE(EvalTask):
    """POPE object hallucination: accuracy, precision, recall, F1, yes-ratio per setting."""

    name, max_tokens = "pope", 8
    prompt_suffix: str = SHORT_ANSWER

    @staticmethod
    def setting(path: Path) -> str:
        return path.stem.rsplit("_", 1)[-1]

    @staticmethod
    def read(path: Path) -> list[dict[str, Any]]:
        rows = read_jsonl(path)
        for i, r in enumerate(rows):
            _need(r, ("question_id", "image", "text", "label"), f"{path}: record {i + 1}")
            if r["label"] not in ("yes", "no"):
                raise ValueError(f"{path}: record {i + 1}: label must be 'yes' or 'no', got {r['label']!r}")
        return rows

    def load(self, data, images, limit):
        if not data.exists():
            raise FileNotFoundError(f"{data}: not found")
        files = [data] if data.is_file() else sorted(data.glob("*pope_*.json*"))
        if not files:
            raise FileNotFoundError(
                f"{data}: no POPE files (*pope_<setting>.jsonl); make them with `picovlm eval-data`"
            )
        out = []
        for f in files:
            for r in self.read(f)[:limit]:  # --limit applies to each setting
                record = {"setting": self.setting(f), "question_id": r["question_id"], "text": r["text"]}
                record["label"] = r["label"]
                image = find_image(_roots(f, images), [r["image"]])
                key = (self.setting(f), r["question_id"])
                out.append(Query(key, image, r["text"] + self.prompt_suffix, record, r["label"]))
        return out

    def result_rows(self, queries, answers):
        return [
            {"setting": q.key[0], "question_id": q.key[1], "text": a} for q, a in zip(queries, answers, strict=True)
        ]

    @staticmethod
    def _by_setting(labels: list[tuple[str, str]], answers: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for s in sorted({s for s, _ in labels}):
            pick = [i for i, (t, _) in enumerate(labels) if t == s]
            out[s] = pope_metrics([answers[i] for i in pick], [labels[i][1] for i in pick])
        if len(out) > 1:
            keys = ("accuracy", "precision", "recall", "f1", "yes_ratio")
            out["mean"] = {k: sum(m[k] for m in out.values()) / len(out) for k in keys}
        return out

    def score(self, queries, answers):
        m = self._by_setting([(q.key[0], q.reference) for q in queries], answers)
        return m, [{"parsed": parse_yes_no(a)} for a in answers]

    def score_files(self, annotations, results, questions):
        labels = {r["question_id"]: r["label"] for r in self.read(annotations)}
        rows = _results_list(results, ("question_id", "text"))
        unknown = [r["question_id"] for r in rows if r["question_id"] not in labels]
        if unknown:
            raise ValueError(f"{results}: question_id {unknown[0]} is not in {annotations}")
        setting = self.setting(annotations)
        m = self._by_setting([(setting, labels[r["question_id"]]) for r in rows], [r["text"] for r in rows])
        return {**m, "notes": _subset_note(len(rows), len(labels), "questions")}


@dataclass(frozen=True)
class MMStar(EvalTask):
    """Multiple choice (MMStar/MMBench TSV or JSONL, options A-D), optionally MMBench's circular
    evaluation (`circular`: every rotation of the options must be answered right)."""

    name, max_tokens = "mmstar", 8
    circular: bool = False

    @staticmethod
    def read(path: Path, images: Path | None = None) -> list[MCItem]:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: file not found")
        if path.suffix == ".tsv":
            csv.field_size_limit(sys.maxsize)
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f, delimiter="\t"))
        else:
            rows = read_jsonl(path)
        items = []
        for n, r in enumerate(rows, 2 if path.suffix == ".tsv" else 1):
            where = f"{path}:{n}"
            _need(r, ("question", "answer"), where)
            options = {k: str(r[k]) for k in "ABCDEFGH" if r.get(k) not in (None, "") and str(r[k]) != "nan"}
            if len(options) < 2 or r["answer"] not in options:
                raise ValueError(f"{where}: needs options A, B, ... and an answer among them, got {r['answer']!r}")
            if r.get("image_path"):
                image: Path | bytes = find_image(_roots(path, images), [r["image_path"]])
            elif r.get("image"):
                try:
                    image = base64.b64decode(r["image"], validate=True)
                except (binascii.Error, ValueError):
                    image = find_image(_roots(path, images), [r["image"]])  # a file name, not base64
            else:
                raise ValueError(f"{where}: no 'image' (base64) or 'image_path'")
            hint = r.get("hint") or ""
            hint = "" if str(hint) == "nan" else str(hint)
            cat = str(r.get("category") or "all")
            items.append(MCItem(str(r.get("index", n)), str(r["question"]), options, r["answer"], image, cat, hint))
        return items

    def load(self, data, images, limit):
        path = _pick(data, ("mmstar.tsv", "*.tsv", "*.jsonl"), "multiple-choice TSV/JSONL")
        items = self.read(path, images)[:limit]
        if self.circular:
            items = [v for it in items for v in circular_variants(it)]
        out = []
        for k, it in enumerate(items):
            record = {"index": it.index, "question": it.question, "options": it.options, "gold": it.answer}
            key = f"{it.index}" if not self.circular else f"{it.index}/{k}"
            out.append(Query(key, it.image, it.prompt(), record, it))
        return out

    def result_rows(self, queries, answers):
        return [{"index": q.record["index"], "prediction": a} for q, a in zip(queries, answers, strict=True)]

    def score(self, queries, answers):
        items = [q.reference for q in queries]
        m = score_multiple_choice(items, answers, self.circular)
        per = [parse_option(a, it.options) for a, it in zip(answers, items, strict=True)]
        return m, [{"parsed": p, "correct": p == it.answer} for p, it in zip(per, items, strict=True)]

    def score_files(self, annotations, results, questions):
        items = {it.index: it for it in self.read(annotations)}
        rows = _results_list(results, ("index", "prediction"))
        unknown = [r["index"] for r in rows if str(r["index"]) not in items]
        if unknown:
            raise ValueError(f"{results}: index {unknown[0]} is not in {annotations}")
        m = score_multiple_choice([items[str(r["index"])] for r in rows], [r["prediction"] for r in rows])
        return {**m, "notes": _subset_note(len(rows), len(items), "questions")}


GENERATION_TASKS: dict[str, type[EvalTask]] = {t.name: t for t in (VQA, VQAv2, GQA, Caption, POPE, MMStar)}
# On a CLIP checkpoint (eval/harness.py): image-text retrieval Recall@1/5/10 and mean/median rank
# over a COCO captions file; zero-shot classification top-1/top-5 with prompt templates (ImageFolder).
EMBEDDING_TASKS = ("retrieval", "zeroshot")
TASK_NAMES = sorted([*GENERATION_TASKS, *EMBEDDING_TASKS])


def make_task(name: str, **options: Any) -> EvalTask:
    """The generation task `name` with `options`, which must be fields of its dataclass: an option
    it does not have is an error, not silently dropped (`--circular` means nothing to vqav2)."""
    if name not in GENERATION_TASKS:
        raise ValueError(f"unknown task {name!r}; choose from {', '.join(TASK_NAMES)}")
    cls = GENERATION_TASKS[name]
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in options if k not in known]
    if unknown:
        has = f"its options: {', '.join(known)}" if known else "it has none"
        raise ValueError(f"task {name!r} has no option {unknown[0]!r} ({has})")
    return cls(**options)
