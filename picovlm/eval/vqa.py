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
from dataclasses import dataclass
from typing import Any

from picovlm.data.records import DataError, ImageSource, Sample
from picovlm.text.tokens import IMAGE

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = re.compile(r"[^\w\s]")
_NUMBERS = {w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation and articles, number words to digits, collapse spaces."""
    text = _ARTICLES.sub(" ", _PUNCT.sub(" ", text.lower()))
    return " ".join(_NUMBERS.get(w, w) for w in text.split())


@dataclass
class Question:
    image: ImageSource
    question: str
    answer: str
    qtype: str
    id: str


def questions_from(samples: Iterable[Sample]) -> list[Question]:
    """Split each multi-turn test conversation into single questions with their types."""
    out = []
    for s in samples:
        if not s.images:
            raise DataError(f"{s.meta.get('source', 'a test sample')}: a VQA test conversation needs an image")
        qtypes = s.meta.get("question_types") or ["all"] * (len(s.messages) // 2)
        for k in range(0, len(s.messages) - 1, 2):
            q = s.messages[k]["content"].replace(IMAGE, "").strip()
            out.append(
                Question(
                    s.images[0], q, s.messages[k + 1]["content"], qtypes[k // 2], f"{s.meta.get('id', '')}#{k // 2}"
                )
            )
    return out


def score_vqa(questions: list[Question], predictions: list[str]) -> dict[str, Any]:
    """{"accuracy", "n", "by_type": {qtype: {"accuracy", "n"}}, "per_question": [right or not, ...]}."""
    right: dict[str, list[int]] = defaultdict(list)
    per_question = []
    for q, a in zip(questions, predictions, strict=True):
        ok = normalize_answer(a) == normalize_answer(q.answer)
        right[q.qtype].append(int(ok))
        per_question.append(ok)
    total = [x for v in right.values() for x in v]
    return {
        "accuracy": sum(total) / max(1, len(total)),
        "n": len(total),
        "by_type": {t: {"accuracy": sum(v) / len(v), "n": len(v)} for t, v in sorted(right.items())},
        "per_question": per_question,
    }
