"""Short-answer VQA accuracy on held-out data: exact match after normalization, per question type.

Every question of a test record is asked on its own (image + question, no earlier turns), so a
model cannot lean on answers it gave before; the score is the fraction answered exactly right.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from picovlm.data.formats import ImageSource, Sample, load_samples, open_image
from picovlm.engine.pipeline import Pipeline
from picovlm.engine.sampling import SamplingParams
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
        qtypes = s.meta.get("question_types") or ["all"] * (len(s.messages) // 2)
        for k in range(0, len(s.messages) - 1, 2):
            q = s.messages[k]["content"].replace(IMAGE, "").strip()
            out.append(
                Question(
                    s.images[0], q, s.messages[k + 1]["content"], qtypes[k // 2], f"{s.meta.get('id', '')}#{k // 2}"
                )
            )
    return out


def evaluate_vqa(
    pipe: Pipeline,
    data: str | Path,
    batch_size: int = 32,
    limit: int | None = None,
    predictions: Path | None = None,
    progress: bool = True,
) -> dict:
    """{"accuracy", "n", "by_type": {qtype: {"accuracy", "n"}}}; each prediction optionally to JSONL."""
    qs = questions_from(load_samples(data, on_error="raise"))[:limit]
    params = SamplingParams(max_tokens=16)
    right: dict[str, list[int]] = defaultdict(list)
    records = []
    for i in tqdm(range(0, len(qs), batch_size), desc="eval", disable=not progress):
        chunk = qs[i : i + batch_size]
        prompts = [[{"role": "user", "content": f"{IMAGE}\n{q.question}"}] for q in chunk]
        answers = pipe.generate(prompts, [[open_image(q.image)] for q in chunk], params)
        for q, a in zip(chunk, answers, strict=True):
            ok = normalize_answer(a) == normalize_answer(q.answer)
            right[q.qtype].append(int(ok))
            records.append(
                {
                    "id": q.id,
                    "type": q.qtype,
                    "question": q.question,
                    "answer": q.answer,
                    "prediction": a,
                    "correct": ok,
                }
            )
    if predictions:
        Path(predictions).write_text("".join(json.dumps(r) + "\n" for r in records))
    total = [x for v in right.values() for x in v]
    return {
        "accuracy": sum(total) / max(1, len(total)),
        "n": len(total),
        "by_type": {t: {"accuracy": sum(v) / len(v), "n": len(v)} for t, v in sorted(right.items())},
    }
