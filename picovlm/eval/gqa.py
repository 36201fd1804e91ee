"""GQA accuracy: exact match of the answer, overall and per question type.

The official GQA script compares the predicted string with the gold one as they are
(`predicted == gold`); GQA's gold answers are lowercase words without a final period, so, as LLaVA's
conversion script does before scoring, `normalize_gqa` lowercases a model's answer, strips it and
drops a trailing period. The other GQA metrics (consistency, validity, plausibility, grounding,
distribution) need the scene graphs and balanced choices of the real benchmark and are not computed.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any


def normalize_gqa(answer: str) -> str:
    return answer.strip().rstrip(".").strip().lower()


def gqa_exact_match(prediction: str, gold: str) -> bool:
    """Whether the normalized prediction equals the gold answer (as the official script compares)."""
    return normalize_gqa(prediction) == gold


def score_gqa(questions: dict[str, dict[str, Any]], predictions: dict[str, str]) -> dict[str, Any]:
    """{"accuracy", "n", "structural": {type: acc}, "semantic": {type: acc}}, accuracies in percent.

    `questions` is GQA's question file (question id -> {"answer", "types": {"structural",
    "semantic"}, ...}); every question needs a prediction."""
    if not questions:
        raise ValueError("no questions to score")
    missing = [q for q in questions if q not in predictions]
    if missing:
        raise ValueError(f"no answer for {len(missing)} question(s), e.g. questionId {missing[0]}")
    right: list[bool] = []
    groups: dict[str, dict[str, list[bool]]] = {"structural": defaultdict(list), "semantic": defaultdict(list)}
    for qid, q in questions.items():
        ok = gqa_exact_match(predictions[qid], q["answer"])
        right.append(ok)
        for group, by_type in groups.items():
            by_type[q.get("types", {}).get(group, "all")].append(ok)

    def pct(v: list[bool]) -> float:
        return round(100 * sum(v) / len(v), 2)

    return {
        "accuracy": pct(right),
        "n": len(right),
        **{g: {t: pct(v) for t, v in sorted(by_type.items())} for g, by_type in groups.items()},
    }
