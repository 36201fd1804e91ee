"""Each question-answer turn of a conversation trained as if it were asked alone, all of them sharing
one copy of the conversation's images.

Why: in a multi-turn conversation a later question can often be answered from the earlier turns'
text ("is there a red circle?" - "yes", then "what colour is the circle?"), so the LM learns to read
the text, not the image, and fails when the question comes alone. An isolated conversation is laid
out as `prefix, turn 1, turn 2, ...`: the prefix runs up to the last image token (the images and
what precedes them); each turn sees the prefix and itself only (`segment_ids`), and its positions
restart right after the prefix. `alone_ids` makes each later turn's tokens those of the same question
asked alone, so that what a turn trains on is token for token what a user's single question is.
"""

from __future__ import annotations

import zlib

import torch

from picovlm.data.records import ImageRef, ImageSource, Sample
from picovlm.models.processor import Encoded, VLMProcessor
from picovlm.text.padding import IGNORE_INDEX
from picovlm.text.tokens import PLACEHOLDERS


def stable_draw(sample: Sample) -> float:
    """A pseudo-random number in [0, 1) drawn from the sample's content: the same in every run,
    epoch and resume, so a share of the samples can be picked once and for all. Its inputs count by
    file name, not by the folder they are in: a dataset moved, or cloned to another path, draws the
    same share (with full paths, the demo trained another model in every folder)."""
    images = [file_name(s) for s in sample.images]
    media = {k: [file_name(p) for p in v] for k, v in sample.media.items()}
    content = (images, sample.messages, media) if media else (images, sample.messages)
    return zlib.crc32(repr(content).encode()) / 2**32


def file_name(source: ImageSource) -> str:
    """The last part of a source's name: a file's name, or a tar member's."""
    name = source.name if isinstance(source, ImageRef) else str(source)
    return name.replace("\\", "/").rsplit("/", 1)[-1]


def alone_chats(messages: list[dict[str, str]]) -> list[list[dict[str, str]]] | None:
    """The conversation's turns, each as a one-turn chat asked the way a single question is (the
    inputs of the first message, a newline, the question: what `picovlm eval` and `Pipeline.ask`
    send); None when that does not apply: roles that do not alternate user/assistant from the start,
    or inputs (placeholders) outside the first message."""
    roles = [m["role"] for m in messages]
    if len(messages) < 4 or roles != ["user", "assistant"] * (len(messages) // 2):  # an odd count differs too
        return None
    if any(p in m["content"] for m in messages[1:] for p in PLACEHOLDERS):
        return None
    first = messages[0]["content"]
    head = first[: max((first.rfind(p) + len(p) for p in PLACEHOLDERS if p in first), default=0)]
    chats = [messages[:2]]
    for k in range(2, len(messages), 2):
        question = messages[k]["content"].strip()
        chats.append([{"role": "user", "content": f"{head}\n{question}" if head else question}, messages[k + 1]])
    return chats


def prefix_length(ids: list[int], input_ids: set[int]) -> int:
    """Tokens up to and including the last input token (image, its end marker, ...); 1 (the first
    token) when there is none."""
    last = max((i for i, t in enumerate(ids) if t in input_ids), default=0)
    return last + 1


def alone_ids(
    processor: VLMProcessor, messages: list[dict[str, str]], n_images: int, counts: dict[str, int], input_ids: set[int]
) -> Encoded | None:
    """The ids and loss mask of `prefix, turn 1, turn 2, ...` where every turn's tokens are those of its
    question asked alone after the shared prefix; None where `alone_chats` does not apply or a turn's
    prefix would differ from the first's (then the conversation's own encoding is isolated as it is)."""
    chats = alone_chats(messages)
    if chats is None:
        return None
    encoded = [processor.encode_conversation_ids(chat, n_images, counts) for chat in chats]
    n = prefix_length(encoded[0].ids, input_ids)
    if any(e.ids[:n] != encoded[0].ids[:n] for e in encoded[1:]):
        return None
    ids, mask = encoded[0].ids[:n], encoded[0].loss_mask[:n]
    for e in encoded:
        ids, mask = ids + e.ids[n:], mask + e.loss_mask[n:]
    return Encoded(ids, mask, None)


def isolated_turns(
    ids: torch.Tensor, labels: torch.Tensor, image_id: int | list[int], image_end_id: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions, segments) [B, T] of isolated conversations. Segment 0 is the shared prefix, up to
    the last image token (with image markers, the `image_end_id` that closes it; the first token if
    there is no image; `image_id` may list every modality's placeholder, and then the prefix ends
    after the last input of any kind); each turn after it (a turn ends with its labelled answer) is a
    segment that sees segment 0 and itself only, its positions restarting right after the prefix.
    """
    B, T = ids.shape
    index = torch.arange(T).expand(B, T)
    is_image = torch.isin(ids, torch.tensor(image_id if isinstance(image_id, list) else [image_id]))
    if image_end_id is not None:
        is_image |= ids == image_end_id
    prefix = torch.where(is_image.any(1), (index * is_image).amax(1) + 1, torch.ones(B, dtype=torch.long))[:, None]
    labelled = labels != IGNORE_INDEX
    after_answer = torch.cat([torch.zeros(B, 1, dtype=torch.bool), labelled[:, :-1] & ~labelled[:, 1:]], dim=1)
    turn = index >= prefix
    starts = turn & ((index == prefix) | after_answer)
    segments = starts.long().cumsum(1)
    turn_start = torch.where(starts, index, torch.zeros_like(index)).cummax(1).values
    return torch.where(turn, prefix + index - turn_start, index), segments
