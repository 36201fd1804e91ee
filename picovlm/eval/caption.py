"""Captioning metrics as the COCO caption evaluation computes them: BLEU-1..4, METEOR, ROUGE-L and
CIDEr-D, by the `pycocoevalcap` package (the COCO evaluation code, packaged); nothing here
re-implements a metric.

Like COCOEvalCap, captions are first tokenized by the Stanford PTB tokenizer (lowercased,
punctuation dropped) and METEOR runs the METEOR 1.5 jar: both need Java. Without Java the
pure-Python scorers still run (BLEU, ROUGE-L, CIDEr-D) on a simple tokenizer that lowercases and
drops the same punctuation; METEOR is skipped and the result says so in "notes", since those
numbers can differ slightly from the official ones. SPICE is not computed (it downloads Stanford
CoreNLP models on first use, and picovlm runs offline).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from functools import cache
from typing import Any

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS, PTBTokenizer

NO_JAVA = "Java not found: captions tokenized by a simple Python tokenizer, METEOR skipped"
_TOKEN = re.compile(r"\.\.\.|--|''|``|[\w']+|[^\w\s]")


@cache
def java_available() -> bool:
    """Whether a working `java` is on PATH (the PTB tokenizer and METEOR need it)."""
    if shutil.which("java") is None:
        return False
    try:
        return subprocess.run(["java", "-version"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@cache
def meteor_scorer() -> Any:
    """One METEOR process per Python process: its JVM takes seconds to start and load paraphrases."""
    from pycocoevalcap.meteor.meteor import Meteor

    return Meteor()


def simple_tokenize(text: str) -> str:
    """The fallback tokenizer: lowercase, split off punctuation, drop what PTB's wrapper drops."""
    return " ".join(t for t in _TOKEN.findall(text.lower().replace("\n", " ")) if t not in PUNCTUATIONS)


def score_captions(
    references: dict[Any, list[str]],
    predictions: dict[Any, str],
    use_java: bool | None = None,
    meteor: bool = True,
) -> dict[str, Any]:
    """COCO caption metrics of one predicted caption per image against its references.

    Returns {"Bleu_1", ..., "METEOR", "ROUGE_L", "CIDEr", "n", "notes", "per_image"}: corpus
    scores as COCOEvalCap reports them (fractions; CIDEr-D is on its 0-10 scale). use_java=None
    uses Java when it is found; meteor=False skips METEOR (its JVM takes ~15 s to start)."""
    missing = [k for k in references if k not in predictions]
    if missing:
        raise ValueError(f"no caption for {len(missing)} image(s), e.g. image_id {missing[0]}")
    if not references:
        raise ValueError("no images to score")
    empty = [k for k, refs in references.items() if not refs]
    if empty:
        raise ValueError(f"image_id {empty[0]} has no reference captions")
    java = java_available() if use_java is None else use_java
    notes = []
    gts = {k: [{"caption": c} for c in refs] for k, refs in references.items()}
    res = {k: [{"caption": predictions[k]}] for k in references}
    if java:
        tokenizer = PTBTokenizer()
        gts, res = tokenizer.tokenize(gts), tokenizer.tokenize(res)
    else:
        notes.append(NO_JAVA)
        gts = {k: [simple_tokenize(c["caption"]) for c in v] for k, v in gts.items()}
        res = {k: [simple_tokenize(c["caption"]) for c in v] for k, v in res.items()}
    scores: dict[str, tuple[float, list[float]]] = {}
    bleu, bleu_per = Bleu(4).compute_score(gts, res, verbose=0)
    for n in range(4):
        scores[f"Bleu_{n + 1}"] = (bleu[n], bleu_per[n])
    if java and meteor:
        scores["METEOR"] = meteor_scorer().compute_score(gts, res)
    elif java:
        notes.append("METEOR skipped (meteor=False)")
    scores["ROUGE_L"] = Rouge().compute_score(gts, res)
    scores["CIDEr"] = Cider().compute_score(gts, res)
    out = {name: float(total) for name, (total, _) in scores.items()}
    per_image = {k: {name: float(per[i]) for name, (_, per) in scores.items()} for i, k in enumerate(gts)}
    return {**out, "n": len(gts), "notes": notes, "per_image": per_image}
