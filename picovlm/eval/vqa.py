"""Short-answer VQA accuracy on held-out data: exact match after normalization, per question type.

Every question of a test record is asked on its own (image + question, no earlier turns), so a
model cannot lean on answers it gave before; the score is the fraction answered exactly right.
The harness's `vqa` task (eval/tasks.py) reads a LLaVA-style test file into these questions and
asks them; this file says what a question is and how its answers are scored.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from picovlm.data.records import DataError, ImageSource, Sample
from picovlm.text.tokens import PLACEHOLDERS

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = re.compile(r"[^\w\s]")
_NUMBERS = {w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation and articles, number words to digits, collapse spaces."""
    text = _ARTICLES.sub(" ", _PUNCT.sub(" ", text.lower()))
    return " ".join(_NUMBERS.get(w, w) for w in text.split())


@dataclass
class Question:
    image: ImageSource | None  # None: the question is about a video or sound only
    question: str
    answer: str
    qtype: str
    id: str
    media: dict[str, list[ImageSource]] = field(default_factory=dict)  # its videos, audio clips
    modality: str = "image"  # what it shows ("video", "image+audio", ...): results are grouped by it


def questions_from(samples: Iterable[Sample]) -> list[Question]:
    """Split each multi-turn test conversation into single questions with their types."""
    out = []
    for s in samples:
        if not s.images and not s.media:
            where = s.meta.get("source", "a test sample")
            raise DataError(f"{where}: a VQA test conversation needs an image (or a video, or an audio clip)")
        qtypes = s.meta.get("question_types") or ["all"] * (len(s.messages) // 2)
        for k in range(0, len(s.messages) - 1, 2):
            q = s.messages[k]["content"]
            for token in PLACEHOLDERS:
                q = q.replace(token, "")
            qid, image = f"{s.meta.get('id', '')}#{k // 2}", s.images[0] if s.images else None
            answer, qtype = s.messages[k + 1]["content"], qtypes[k // 2]
            out.append(Question(image, q.strip(), answer, qtype, qid, s.media, s.modalities))
    return out


def score_vqa(questions: list[Question], predictions: list[str]) -> dict[str, Any]:
    """{"accuracy", "n", "by_type": {qtype: {"accuracy", "n"}}, "per_question": [right or not, ...]}, and,
    when the questions show more than images alone, "by_modality": {"video": {"accuracy", "n", "by_type"}, ...}."""
    per_question = [
        normalize_answer(a) == normalize_answer(q.answer) for q, a in zip(questions, predictions, strict=True)
    ]
    out = {**_accuracy(questions, per_question), "per_question": per_question}
    modalities = sorted({q.modality for q in questions})
    if modalities != ["image"]:
        out["by_modality"] = {
            m: _accuracy(
                *zip(*[(q, ok) for q, ok in zip(questions, per_question, strict=True) if q.modality == m], strict=True)
            )
            for m in modalities
        }
    return out


def _accuracy(questions: Iterable[Question], right: Iterable[bool]) -> dict[str, Any]:
    by_type: dict[str, list[int]] = defaultdict(list)
    for q, ok in zip(questions, right, strict=True):
        by_type[q.qtype].append(int(ok))
    total = [x for v in by_type.values() for x in v]
    return {
        "accuracy": sum(total) / max(1, len(total)),
        "n": len(total),
        "by_type": {t: {"accuracy": sum(v) / len(v), "n": len(v)} for t, v in sorted(by_type.items())},
    }
