"""VQAv2 accuracy, computed by the rules of the official evaluation script (GT-Vision-Lab/VQA,
PythonEvaluationTools/vqaEvaluation/vqaEval.py), so our numbers are the numbers papers report.

For one question with 10 human answers, a prediction scores the mean over the 10 leave-one-out
subsets of min(1, #humans in the subset who gave that answer / 3): 3 matching humans out of 9 is
full credit, which forgives disagreement among people.

The official rules (master of that repository), quirks included, since a different rule gives a
different number:
* Newlines and tabs become spaces and every answer, human or model, is stripped.
* When the 10 human answers disagree (more than one distinct string), the human answers and the
  prediction are normalized: `process_punctuation`, then `process_digit_article` (lowercase,
  number words to digits, "none" to "0", articles dropped, apostrophe-less contractions restored:
  "dont" -> "don't"). When all humans agree, nothing is normalized: "Yes" scores 0 against ten
  "yes". This is why LLaVA, lmms-eval and `picovlm eval` normalize answers (`normalize_prediction`)
  before writing a result file; `score` then applies the script's rules to the file as it is.
* Punctuation: each mark in `PUNCT` is deleted when it touches a space in the original text, or
  when the text has a digit-comma-digit ("1,000"); otherwise it becomes a space. Then periods not
  followed by a digit are deleted ("2.5" keeps its point), at most 32 of them, because the script
  passes `re.UNICODE` (= 32) where `re.sub` expects its `count`.
* Leave-one-out subsets drop the answers equal to the held-out one (compared as whole dicts, so
  with distinct answer_ids exactly one is dropped).
* Reported numbers are percentages rounded to 2 decimals; per question type and per answer type
  average the same per-question accuracies.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
_PERIOD = re.compile(r"\.(?!\d)")
_MAX_PERIODS = 32  # re.UNICODE's value, passed as `count` by the official script

NUMBER_WORDS = {w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten".split())} | {
    "none": "0"
}
ARTICLES = ("a", "an", "the")

# Contracted forms the script restores when written without an apostrophe. Each key of the map is
# one of these with exactly one apostrophe left out ("couldn't've" -> "couldnt've", "couldn'tve").
# The script's capitalised entries ("Im", "Ive", "Id've") never match, since the text is lowercased
# first, so they are not listed.
_CONTRACTED = """
ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't haven't
he'd he'd've he's how'd how'll how's isn't it'd it'd've it'll ma'am mightn't mightn't've might've
mustn't must've needn't not've o'clock oughtn't 'ow's'at shan't she'd've should've shouldn't
shouldn't've somebody'd've somebody'll somebody's someone'd someone'd've someone'll someone's
something'd something'd've something'll that's there'd there'd've there're there's they'd they'd've
they'll they're they've 'twas wasn't we'd've we've weren't what'll what're what's what've when's
where'd where's where've who'd who'd've who'll who's who've why'll why're why's won't would've
wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll you're you've
""".split()


def _contraction_map() -> dict[str, str]:
    out = {}
    for full in _CONTRACTED:
        for i, ch in enumerate(full):
            if ch == "'":
                out[full[:i] + full[i + 1 :]] = full
    out["somebody'd"] = "somebodyd"  # the script's table has this one backwards; kept for parity
    return out


CONTRACTIONS = _contraction_map()


def process_punctuation(text: str) -> str:
    """The official punctuation rule (see the module docstring)."""
    out = text
    glued = _DIGIT_COMMA_DIGIT.search(text) is not None
    for p in PUNCT:
        if glued or p + " " in text or " " + p in text:  # tested on the original text, as the script does
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out, count=_MAX_PERIODS)


def process_digit_article(text: str) -> str:
    """Lowercase; number words to digits; drop articles; restore contractions."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def normalize_prediction(answer: str) -> str:
    """A model's answer normalized as the script normalizes answers (what goes in a result file)."""
    return process_digit_article(process_punctuation(_clean(answer)))


def _clean(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def vqa_accuracy(prediction: str, answers: list[dict[str, Any]] | list[str]) -> float:
    """Accuracy in [0, 1] of one prediction against the human answers (dicts with "answer", or
    plain strings, taken as distinct answers)."""
    if not answers:
        raise ValueError("a VQA question needs at least one human answer")
    dicts = [a if isinstance(a, dict) else {"answer": a, "answer_id": i} for i, a in enumerate(answers)]
    dicts = [{**a, "answer": _clean(a["answer"])} for a in dicts]
    pred = _clean(prediction)
    if len({a["answer"] for a in dicts}) > 1:
        dicts = [{**a, "answer": process_digit_article(process_punctuation(a["answer"]))} for a in dicts]
        pred = process_digit_article(process_punctuation(pred))
    scores = []
    for held_out in dicts:
        matches = sum(1 for a in dicts if a != held_out and a["answer"] == pred)
        scores.append(min(1.0, matches / 3))
    return sum(scores) / len(scores)


def _percent(values: list[float]) -> float:
    return round(100 * sum(values) / len(values), 2)


def score_vqav2(annotations: list[dict[str, Any]], predictions: dict[int, str]) -> dict[str, Any]:
    """{"overall", "perQuestionType", "perAnswerType", "n", "per_question"} in percent, as the
    official script reports them. `annotations` are the VQAv2 annotation records of the questions
    to score; every one needs a prediction (question_id -> answer)."""
    missing = [a["question_id"] for a in annotations if a["question_id"] not in predictions]
    if missing:
        raise ValueError(f"no answer for {len(missing)} question(s), e.g. question_id {missing[0]}")
    if not annotations:
        raise ValueError("no questions to score")
    overall: list[float] = []
    by_qtype: dict[str, list[float]] = defaultdict(list)
    by_atype: dict[str, list[float]] = defaultdict(list)
    per_question = {}
    for ann in annotations:
        acc = vqa_accuracy(predictions[ann["question_id"]], ann["answers"])
        overall.append(acc)
        by_qtype[ann.get("question_type", "all")].append(acc)
        by_atype[ann.get("answer_type", "all")].append(acc)
        per_question[ann["question_id"]] = round(100 * acc, 2)
    return {
        "overall": _percent(overall),
        "perQuestionType": {k: _percent(v) for k, v in sorted(by_qtype.items())},
        "perAnswerType": {k: _percent(v) for k, v in sorted(by_atype.items())},
        "n": len(overall),
        "per_question": per_question,
    }
