"""Records about the same image(s) become one conversation, so an image is encoded once per use.

Why: many datasets store one question per record (VQAv2-style), or keep captions in a file of their
own beside the conversations (the built-in scenes). Trained as they are, every record encodes its
image again, and its few answer tokens pay for a full image prefix. Grouped, one image prefix serves
all of them; with `isolate_turns` each record's turns still train as if asked alone, so the result
is the same samples at a fraction of the tokens.

Records group when their inputs are equal (the same images, videos and audio clips); the first
record of a group keeps its text as it is (its placeholders say where the inputs go), the turns of
the others follow in the order the records came, their placeholders dropped (the inputs are already
there). A group that would not fit the context (`fits`) continues in a new conversation about the
same inputs.
"""

from __future__ import annotations

from collections.abc import Callable

from picovlm.data.batches import as_chat, strip_placeholders
from picovlm.data.records import Sample


def group_by_image(samples: list[Sample], fits: Callable[[Sample], bool] | None = None) -> list[Sample]:
    """One conversation per set of inputs (several when `fits` says one would be too long); records
    without any input pass through as they are."""
    groups: dict[tuple, list[Sample]] = {}
    out: list[Sample] = []
    for s in samples:
        key = (tuple(s.images), tuple((name, tuple(files)) for name, files in sorted(s.media.items())))
        if s.images or s.media:
            groups.setdefault(key, []).append(s)
        else:
            out.append(s)
    for group in groups.values():
        out += _merge(group, fits or (lambda _: True))
    return out


def _merge(group: list[Sample], fits: Callable[[Sample], bool]) -> list[Sample]:
    """The records of one image list as few conversations as `fits` allows, in order."""
    merged: list[Sample] = []
    current: Sample | None = None
    for s in group:
        if current is not None:
            longer = _append(current, s)
            if fits(longer):
                current = longer
                continue
            merged.append(current)
        current = _start(s)
    merged.append(current)
    return merged


def _start(s: Sample) -> Sample:
    meta = {**s.meta, "kind": "chat", "question_types": _types(s)}
    return Sample(list(s.images), as_chat(s), meta, dict(s.media))


def _append(conversation: Sample, s: Sample) -> Sample:
    turns = [{**m, "content": strip_placeholders(m["content"])} for m in as_chat(s)]
    meta = {**conversation.meta, "question_types": conversation.meta["question_types"] + _types(s)}
    meta["records"] = conversation.meta.get("records", 1) + 1
    return Sample(conversation.images, conversation.messages + turns, meta, conversation.media)


def _types(s: Sample) -> list[str]:
    """A type per turn (for scoring a grouped test set by type): a caption's turn is "caption"."""
    if s.meta.get("kind") == "caption":
        return ["caption"]
    return list(s.meta.get("question_types") or ["all"] * (len(s.messages) // 2))
