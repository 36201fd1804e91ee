"""Multiple-choice accuracy (MMStar / MMBench style: a question, options A-D, one right letter),
with an option parser and MMBench's circular evaluation.

Option parser (`parse_option`), first rule that decides wins:
1. The answer is an option letter, or starts with one and a mark: "B", "B.", "(B)", "B)", "B: a cat".
2. Exactly one of the option letters appears as a capital letter standing alone anywhere
   ("The answer is C."); two or more different letters is ambiguous ("A or B"). A sentence that
   starts with the article "A" therefore picks A when no other letter stands alone.
3. Exactly one option's text appears in the answer (case-insensitive), e.g. "a red circle"; when
   one option's text contains another's ("red" / "red circle") the longest match wins.
Otherwise the answer is unparsed (None) and counts as wrong; `unparsed` in the metrics counts them.

Circular evaluation (MMBench): a question with n options is asked n times, its options rotated
each time (A B C D, B C D A, ...), and counts as right only when every rotation is answered
right, which removes the gain of a model that always says "A".
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any

_LEADING = re.compile(r"^\s*\(?([A-H])\s*(?:[).:,]|$)")


@dataclass
class MCItem:
    """One multiple-choice question; `options` maps letters to texts, `answer` is a letter."""

    index: str
    question: str
    options: dict[str, str]
    answer: str
    image: Any = None  # a path or PIL image, for the harness
    category: str = "all"
    hint: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def prompt(self) -> str:
        """The LLaVA/MMBench prompt: hint, question, lettered options, then the instruction."""
        lines = [self.hint] if self.hint else []
        lines += [self.question, *(f"{k}. {v}" for k, v in self.options.items())]
        lines.append("Answer with the option's letter from the given choices directly.")
        return "\n".join(lines)


def parse_option(answer: str, options: dict[str, str]) -> str | None:
    """The option letter a free-text answer picks, or None (see the module docstring)."""
    m = _LEADING.match(answer)
    if m and m.group(1) in options:
        return m.group(1)
    standalone = {x for x in re.findall(r"\b([A-H])\b", answer) if x in options}
    if len(standalone) == 1:
        return standalone.pop()
    if len(standalone) > 1:
        return None
    text = answer.lower()
    hits = [(len(v), k) for k, v in options.items() if v.strip() and v.strip().lower() in text]
    if not hits:
        return None
    hits.sort(reverse=True)
    if len(hits) > 1 and hits[0][0] == hits[1][0]:
        return None
    return hits[0][1]


def circular_variants(item: MCItem) -> list[MCItem]:
    """The n rotations of an item's options (the first is the item itself), answers re-lettered."""
    letters, texts = list(item.options), list(item.options.values())
    right = texts[letters.index(item.answer)]
    out = []
    for shift in range(len(texts)):
        rotated = texts[shift:] + texts[:shift]
        out.append(
            replace(item, options=dict(zip(letters, rotated, strict=True)), answer=letters[rotated.index(right)])
        )
    return out


def score_multiple_choice(items: list[MCItem], answers: list[str], circular: bool = False) -> dict[str, Any]:
    """{"accuracy", "n", "unparsed", "per_category"}; accuracy is a fraction. With circular=True,
    `items` holds every rotation and a question (grouped by `index`) counts only if all are right."""
    if len(items) != len(answers):
        raise ValueError(f"{len(answers)} answers for {len(items)} questions")
    if not items:
        raise ValueError("no questions to score")
    right: dict[str, bool] = {}
    category: dict[str, str] = {}
    unparsed = 0
    for item, answer in zip(items, answers, strict=True):
        picked = parse_option(answer, item.options)
        unparsed += picked is None
        ok = picked == item.answer
        key = item.index if circular else f"{item.index}#{len(right)}"
        right[key] = right.get(key, True) and ok
        category[key] = item.category
    per_cat: dict[str, list[bool]] = defaultdict(list)
    for key, ok in right.items():
        per_cat[category[key]].append(ok)
    return {
        "accuracy": sum(right.values()) / len(right),
        "n": len(right),
        "unparsed": unparsed,
        "circular": circular,
        "per_category": {c: sum(v) / len(v) for c, v in sorted(per_cat.items())},
    }
