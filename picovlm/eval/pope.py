"""POPE (Polling-based Object Probing Evaluation): "Is there a <object> in the image?" asked of
objects that are and are not there; hallucination shows as saying "yes" to absent objects.

Metrics as POPE's own evaluation computes them, with "yes" the positive class: accuracy,
precision, recall, F1 and the yes-ratio (the fraction of answers that are "yes"; 0.5 on POPE's
balanced sets for an unbiased model).

Answer parser (`parse_yes_no`): exactly the rule of POPE's evaluation script (also used by LLaVA),
so numbers compare: keep the first sentence (text before the first "."), delete commas, split on
spaces, and answer "no" when a word is exactly "no", "No" or "not"; anything else is "yes".
Its blind spots are kept on purpose: "NO" and "No!" count as "yes", "isn't" too, and an empty
answer is "yes". `unparsed` in the metrics counts answers whose first sentence has none of the
words yes/no/not in any case, so a model that rambles is visible.
"""

from __future__ import annotations

import re
from typing import Any

_WORDS = re.compile(r"[a-z]+")


def parse_yes_no(answer: str) -> str:
    """ "yes" or "no", by POPE's rule (see the module docstring)."""
    words = answer.split(".")[0].replace(",", "").split(" ")
    return "no" if any(w in ("no", "No", "not") for w in words) else "yes"


def mentions_yes_or_no(answer: str) -> bool:
    return bool({"yes", "no", "not"} & set(_WORDS.findall(answer.split(".")[0].lower())))


def pope_metrics(predictions: list[str], labels: list[str]) -> dict[str, Any]:
    """Metrics of raw answers against "yes"/"no" labels; rates as fractions in [0, 1]."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    if not labels:
        raise ValueError("no questions to score")
    bad = sorted({lab for lab in labels if lab not in ("yes", "no")})
    if bad:
        raise ValueError(f"POPE labels must be 'yes' or 'no', got {bad[0]!r}")
    parsed = [parse_yes_no(p) for p in predictions]
    tp = sum(p == "yes" and lab == "yes" for p, lab in zip(parsed, labels, strict=True))
    fp = sum(p == "yes" and lab == "no" for p, lab in zip(parsed, labels, strict=True))
    tn = sum(p == "no" and lab == "no" for p, lab in zip(parsed, labels, strict=True))
    fn = sum(p == "no" and lab == "yes" for p, lab in zip(parsed, labels, strict=True))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "accuracy": (tp + tn) / len(labels),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "yes_ratio": (tp + fp) / len(labels),
        "n": len(labels),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "unparsed": sum(not mentions_yes_or_no(p) for p in predictions),
    }
