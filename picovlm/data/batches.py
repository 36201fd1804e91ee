"""Samples -> padded tensor batches, for each training task, in a resumable order.

`BatchStream` draws batches from a fixed per-epoch permutation seeded by (seed, epoch), so its state
is two integers and the samples it left out: resuming a run replays exactly the batches an
uninterrupted run would see.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
from PIL import Image

from picovlm.data.isolation import alone_ids, isolated_turns, stable_draw
from picovlm.data.records import TOO_LONG, BadRecord, DataError, ImageSource, Sample, open_image
from picovlm.models.clip import Captions
from picovlm.models.modalities import MODALITIES
from picovlm.models.processor import Encoded, VLMProcessor
from picovlm.text.chat import render_conversation
from picovlm.text.padding import IGNORE_INDEX, pad_right
from picovlm.text.tokenizer import Tokenizer
from picovlm.text.tokens import PLACEHOLDERS
from picovlm.vision.image import ImageError, ImageProcessor

CAPTION_PROMPT = MODALITIES["image"].caption_prompt
Batch = dict[str, torch.Tensor]


class UnreadableImage(ImageError):
    """An image that could not be decoded when a batch needed it; `source` says which."""

    def __init__(self, source: ImageSource, message: str):
        super().__init__(message)
        self.source = source


class ImageCache:
    """Decoded images kept in memory: small datasets are read from disk once, not once per epoch.

    Keys are image paths or `ImageRef`s (a tar member, a dataset cell); past `max_items` images are
    decoded each time they are used, so a large dataset is streamed rather than held.
    """

    def __init__(self, max_items: int = 100_000):
        self.max_items, self.images = max_items, {}

    def __call__(self, source: ImageSource) -> Image.Image:
        im = self.images.get(source)
        if im is None:
            try:
                im = open_image(source)
            except ImageError as e:  # the header passed at load time; the pixels did not
                raise UnreadableImage(source, str(e)) from None
            if len(self.images) < self.max_items:
                self.images[source] = im
        return im


class MediaCache:
    """Each video's or audio clip's batch tensor (`VLM.inputs[name].prepare` of the decoded file:
    sampled, decoded frames; a log-mel spectrogram), computed once and kept (up to `max_bytes`).

    Why: decoding a clip and sampling its frames, or computing a spectrogram, costs more than a small
    model's training step, and gives the same tensor every epoch (it depends only on the file and the
    model's settings). Past `max_bytes`, new items are prepared each time they are used.
    """

    def __init__(self, prepare: Callable[[dict[str, list]], dict[str, torch.Tensor]], max_bytes: int = 2 << 30):
        """`prepare`: decoded items by modality -> batch tensors by modality (`VLMProcessor.prepare`)."""
        self.prepare, self.max_bytes = prepare, max_bytes
        self.tensors: dict[tuple[str, ImageSource], torch.Tensor] = {}
        self.stored = 0

    def __call__(self, name: str, sources: list[ImageSource]) -> torch.Tensor:
        """[len(sources), ...]: the items' batch tensor, in order."""
        out = []
        for source in sources:
            tensor = self.tensors.get((name, source))
            if tensor is None:
                tensor = self.prepare({name: [MODALITIES[name].load(source)]})[name][0]
                if self.stored + tensor.nbytes <= self.max_bytes:
                    self.tensors[name, source] = tensor
                    self.stored += tensor.nbytes
            out.append(tensor)
        return torch.stack(out)


def strip_placeholders(text: str) -> str:
    """The text without its image, video and audio placeholders."""
    for token in PLACEHOLDERS:
        text = text.replace(token, "")
    return text.strip()


def as_chat(sample: Sample) -> list[dict[str, str]]:
    """A caption sample becomes a one-turn chat (image, video or audio clip + its modality's
    instruction -> caption), as LLaVA's alignment stage does; chat samples pass through."""
    if sample.meta.get("kind") == "caption":
        modality = MODALITIES[sample.modalities]  # a caption has exactly one input
        return [{"role": "user", "content": f"{modality.token}\n{modality.caption_prompt}"}, *sample.messages]
    return sample.messages


def context_length(sample: Sample, processor: VLMProcessor) -> int:
    """The tokens a sample takes in the LM's context once each image (video, audio clip) is expanded to
    its tokens."""
    ids, _ = render_conversation(processor.tokenizer, as_chat(sample))
    inputs = len(sample.images) * (processor.tokens_per_placeholder - 1)
    inputs += sum(
        len(items) * (processor.tokens_per(name) - 1) for name, items in sample.media.items() if name in processor.media
    )
    return len(ids) + inputs


def first_turns(sample: Sample, answers: int) -> Sample:
    """A chat sample cut after its first `answers` question-answer turns, with the images (videos,
    audio clips) those turns show (each modality's are numbered in the order of their placeholders)
    and their question types."""
    messages = sample.messages[: 2 * answers]
    shown = {name: sum(m["content"].count(MODALITIES[name].token) for m in messages) for name in MODALITIES}
    meta = dict(sample.meta)
    if "question_types" in meta:
        meta["question_types"] = meta["question_types"][:answers]
    media = {name: items[: shown[name]] for name, items in sample.media.items() if shown[name]}
    return Sample(sample.images[: shown["image"]], messages, meta, media)


def fit_context(sample: Sample, processor: VLMProcessor, truncate: bool) -> Sample:
    """The sample if it fits the LM's context; else, with `truncate`, the most whole turns of it that
    fit (a cut after an answer: never inside an image's tokens), with meta["truncated"] saying so.
    Raises BadRecord (TOO_LONG) when it does not fit even its first answer, or without `truncate`."""
    length, limit = context_length(sample, processor), processor.max_len
    if length <= limit:
        return sample
    answers = len(sample.messages) // 2 if truncate and sample.meta.get("kind") != "caption" else 0
    for keep in range(answers - 1, 0, -1):
        cut = first_turns(sample, keep)
        if context_length(cut, processor) <= limit:
            cut.meta["truncated"] = f"cut after answer {keep} of {answers}: {length} tokens, the context is {limit}"
            return cut
    raise BadRecord(f"too long: {length} tokens (images included), longer than the context of {limit}", TOO_LONG)


def as_caption(sample: Sample) -> Sample:
    """A sample as a contrastive stage pairs it: one image and one text. A conversation becomes its
    question-answer turns in one text ("What colour is the circle? red. Is there a square? no."):
    what is said about an image describes it too, so a dataset of questions alone can still pretrain
    its tower. Raises BadRecord for a sample without exactly one image or without any answer."""
    if len(sample.images) != 1 or sample.media:
        raise BadRecord(
            f"the clip stage pairs one image with one text; this record shows {sample.modalities}"
            f" ({len(sample.images)} images)"
        )
    if sample.meta.get("kind") == "caption":
        return sample
    turns = [strip_placeholders(m["content"]) for m in sample.messages]
    text = " ".join(f"{q} {a}." for q, a in zip(turns[0::2], turns[1::2], strict=False)).strip()
    if not text:
        raise BadRecord("no question-answer turn to make a caption of")
    return Sample(sample.images, [{"role": "assistant", "content": text}], {**sample.meta, "kind": "caption"})


class TowerFeatures:
    """A frozen vision tower's output per image, computed once and kept (up to `max_bytes`).

    Why: a stage that does not train the tower (alignment, and instruction tuning as the demo runs
    it) would otherwise run it again on every image in every epoch for the same result. The tower
    runs in its current mode, on its own device, without gradients; features are kept on the CPU in
    float32. Past `max_bytes`, new images are encoded each time they are used.
    """

    def __init__(self, tower: nn.Module, images: ImageCache, max_bytes: int = 2 << 30):
        self.tower, self.images, self.max_bytes = tower, images, max_bytes
        self.features: dict[ImageSource, torch.Tensor] = {}
        self.stored = 0

    @torch.no_grad()
    def __call__(self, sources: list[ImageSource]) -> torch.Tensor:
        """[len(sources), patches, dim] features, in order."""
        missing = [s for s in dict.fromkeys(sources) if s not in self.features]
        fresh: dict[ImageSource, torch.Tensor] = {}
        if missing:
            param = next(self.tower.parameters())
            pixels = self.tower.processor([self.images(s) for s in missing]).to(param.device, param.dtype)
            for s, f in zip(missing, self.tower(pixels).float().cpu(), strict=True):
                fresh[s] = f
                if self.stored + f.nbytes <= self.max_bytes:
                    self.features[s] = f
                    self.stored += f.nbytes
        return torch.stack([self.features[s] if s in self.features else fresh[s] for s in sources])


def encode(processor: VLMProcessor, sample: Sample, input_ids: set[int], alone: bool) -> Encoded:
    """A sample's ids and loss mask; `alone` (an isolated conversation): each later turn's tokens those
    of its question asked alone (`alone_ids`), where that applies."""
    counts = {k: len(v) for k, v in sample.media.items()}
    chat = as_chat(sample)
    spliced = alone_ids(processor, chat, len(sample.images), counts, input_ids) if alone else None
    if spliced is not None and len(spliced.ids) <= processor.max_len:
        return spliced
    return processor.encode_conversation_ids(chat, len(sample.images), counts)


class Encodings:
    """Each sample's ids and loss mask (`encode`), computed once per sample and kept.

    Why: a sample renders to the same tokens in every epoch (whether its turns are isolated is a fixed
    draw per sample, `stable_draw`), and rendering and tokenizing a conversation again each time it is
    drawn cost ~4% of a demo instruct step. Keyed by the sample object, which the stream keeps alive.
    """

    def __init__(self):
        self.kept: dict[tuple[int, bool], tuple[Sample, Encoded]] = {}

    def __call__(self, processor: VLMProcessor, sample: Sample, input_ids: set[int], alone: bool) -> Encoded:
        hit = self.kept.get((id(sample), alone))
        if hit is None or hit[0] is not sample:
            hit = self.kept[id(sample), alone] = (sample, encode(processor, sample, input_ids, alone))
        return hit[1]


def vlm_batch(
    samples: list[Sample],
    processor: VLMProcessor,
    images: ImageCache,
    features: TowerFeatures | None = None,
    isolate_turns: float = 0.0,
    media: MediaCache | None = None,
    encodings: Encodings | None = None,
) -> Batch:
    """ids, labels (IGNORE_INDEX off the assistant tokens) and the pixels of all images in order, or,
    given a frozen tower's `features`, their tower features instead of the pixels; each other
    modality's batch tensor under its name ("video", "audio": `VLM.forward`'s arguments), from `media`;
    with `isolate_turns`, also the "position_ids" and "segment_ids" of `isolated_turns`. `encodings`
    keeps each sample's tokens for the next time it is drawn."""
    # the text needs only the number of each input, so nothing is decoded for it (past ImageCache's
    # limit, images with features would otherwise be read from disk again just to be counted)
    end = processor.markers[1] if processor.markers else None
    inputs = [processor.tokenizer.image_id, *(m.token_id for m in processor.media.values())]
    isolated = [bool(isolate_turns) and stable_draw(s) < isolate_turns for s in samples]
    marks = {*inputs, *([end] if end is not None else [])}
    tokens = encodings or encode
    encoded = [tokens(processor, s, marks, alone) for s, alone in zip(samples, isolated, strict=True)]
    ids = pad_right([e.ids for e in encoded], processor.tokenizer.pad_id)
    labels = pad_right(
        [[i if m else IGNORE_INDEX for i, m in zip(e.ids, e.loss_mask, strict=True)] for e in encoded], IGNORE_INDEX
    )
    batch = {"ids": ids, "labels": labels}
    if isolate_turns:
        positions, segments = isolated_turns(ids, labels, inputs, end)
        # a fixed share of the conversations (the same in every epoch: `stable_draw`) stays whole
        whole = ~torch.tensor(isolated)[:, None]
        positions = torch.where(whole, torch.arange(ids.shape[1]).expand_as(ids), positions)
        batch["position_ids"], batch["segment_ids"] = positions, segments.masked_fill(whole, 0)
    sources = [p for s in samples for p in s.images]
    if features is not None:
        if sources:  # a batch of videos or sounds alone has no image features to look up
            batch["features"] = features(sources)
    else:
        batch["pixels"] = processor.image_processor([images(p) for p in sources])
    media = media or MediaCache(processor.prepare)
    for name in processor.media:
        items = [p for s in samples for p in s.inputs(name)]
        if items:
            batch[name] = media(name, items)
    return batch


def _strip(text: str) -> str:
    for token in PLACEHOLDERS:
        text = text.replace(token, "")
    return text.strip()


def text_batch(samples: list[Sample], tokenizer: Tokenizer, max_len: int) -> Batch:
    """Text-only LM pretraining: the conversations without their images, loss on every token."""
    rows = []
    for s in samples:
        messages = [{**m, "content": _strip(m["content"])} for m in as_chat(s)]
        rows.append(render_conversation(tokenizer, messages)[0][:max_len])
    ids = pad_right(rows, tokenizer.pad_id)
    return {"ids": ids, "labels": ids.masked_fill(ids == tokenizer.pad_id, IGNORE_INDEX)}


def clip_batch(samples: list[Sample], captions: Captions, image_processor: ImageProcessor, images: ImageCache) -> Batch:
    """Image/caption pairs: pixels, right-padded caption ids and their lengths. `captions` is the text
    encoder's own tokenization (`CLIPModel.captions`): picovlm's BPE ending in <|end|>, or an HF
    encoder's tokenizer."""
    ids, lengths = captions([s.messages[-1]["content"] for s in samples])
    return {"pixels": image_processor([images(s.images[0]) for s in samples]), "ids": ids, "lengths": lengths}


def clap_batch(samples: list[Sample], captions: Captions, clips: MediaCache) -> Batch:
    """Audio/caption pairs for the `clap` stage: each sample's clip as the audio tower reads it (log-mels,
    from `clips`), and the captions as `clip_batch` makes them."""
    ids, lengths = captions([s.messages[-1]["content"] for s in samples])
    return {"mels": clips("audio", [s.inputs("audio")[0] for s in samples]), "ids": ids, "lengths": lengths}


def by_length(order: list[int], lengths: list[int], batch_size: int, rng: random.Random, window: int = 64) -> list[int]:
    """`order` rearranged so that each run of `batch_size` holds samples of like length, and padding to
    the longest of a batch wastes little: each window of `window` batches of the shuffled order is
    sorted by length and cut into batches, and the batches (of all windows) are shuffled, so that
    batch lengths do not rise and fall in a pattern. The samples that fill no whole batch come last
    (`BatchStream` drops them, as it drops the ragged tail of a plain epoch)."""
    span = batch_size * window
    batches = []
    for start in range(0, len(order), span):
        chunk = sorted(order[start : start + span], key=lambda i: lengths[i])
        batches += [chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size)]
    whole = [b for b in batches if len(b) == batch_size]
    rng.shuffle(whole)
    return [i for b in whole for i in b] + [i for b in batches if len(b) < batch_size for i in b]


class BatchStream:
    """Endless batches of `batch_size` samples; each epoch is a new seeded permutation.

    A sample whose image cannot be decoded (found when a batch needs it) is left out of that batch
    and every later one, and reported once to `on_reject(sample, message)`; the batch goes on with
    the others. The samples left out are part of the state, so a resumed run neither trips on them
    again nor loses count of them.
    """

    def __init__(
        self,
        samples: list[Sample],
        batch_size: int,
        make_batch: Callable[[list[Sample]], Batch],
        seed: int = 0,
        on_reject: Callable[[Sample, str], None] | None = None,
        lengths: list[int] | None = None,
        group_by_length: bool = False,
        micro_batch: int = 0,
    ):
        """`lengths`: each sample's tokens, which `group_by_length` (batches of samples of like length,
        `by_length`) and `micro_batch` (`next_parts`) need."""
        if len(samples) < batch_size:
            raise ValueError(f"{len(samples)} samples are fewer than one batch of {batch_size}")
        if (group_by_length or micro_batch) and lengths is None:
            raise ValueError("group_by_length and micro_batch need each sample's length")
        self.samples, self.batch_size, self.make_batch, self.seed = samples, batch_size, make_batch, seed
        self.lengths, self.group_by_length, self.micro_batch = lengths, group_by_length, micro_batch
        self.on_reject = on_reject
        self.share = slice(0, None, 1)  # of each batch drawn: this rank's samples (`shard`)
        self.epoch, self.cursor = 0, 0
        self.rejected: dict[int, str] = {}  # sample index -> why it was left out
        self._order = self._permutation()

    def _permutation(self) -> list[int]:
        order = list(range(len(self.samples)))
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        rng.shuffle(order)
        return by_length(order, self.lengths, self.batch_size, rng) if self.group_by_length else order

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> Batch:
        """This rank's share of the next batch, as one batch."""
        return self._next(lambda picked: [picked])[0]

    def next_parts(self) -> list[Batch]:
        """This rank's share of the next batch in parts of at most `micro_batch` samples of like length
        (its samples sorted by length, then cut): each part is padded only to its own longest, and the
        parts' gradients, weighted by their labelled tokens, sum to the whole share's. Without
        `micro_batch`, the share as one part."""
        return self._next(self._cut)

    def _cut(self, picked: list[int]) -> list[list[int]]:
        if not self.micro_batch or len(picked) <= self.micro_batch:
            return [picked]
        ordered = sorted(picked, key=lambda i: self.lengths[i])
        return [ordered[k : k + self.micro_batch] for k in range(0, len(ordered), self.micro_batch)]

    def _next(self, cut: Callable[[list[int]], list[list[int]]]) -> list[Batch]:
        while len(self.rejected) < len(self.samples):
            picked = [i for i in self._draw()[self.share] if i not in self.rejected]
            made = [batch for part in cut(picked) if (batch := self._make(part)) is not None]
            if made:
                return made
        raise DataError(f"no sample left to train on: all {len(self.samples)} have an unreadable image")

    def _make(self, picked: list[int]) -> Batch | None:
        """The batch of the `picked` samples whose images can be read (None if none of them is left)."""
        while picked:
            try:
                return self.make_batch([self.samples[i] for i in picked])
            except UnreadableImage as e:
                picked = self._reject_users_of(picked, e)
        return None

    def shard(self, rank: int, world: int) -> None:
        """Make batches of the samples `rank::world` of each batch drawn: the `world` ranks of a
        data-parallel run see disjoint shares of the same global batches (whose order and state stay
        those of one process: a checkpoint resumes at any number of ranks)."""
        if world > self.batch_size:
            raise ValueError(f"a batch of {self.batch_size} cannot be shared by {world} processes")
        self.share = slice(rank, None, world)

    def _draw(self) -> list[int]:
        if self.cursor + self.batch_size > len(self._order):  # drop the ragged tail, start a new epoch
            self.epoch, self.cursor = self.epoch + 1, 0
            self._order = self._permutation()
        picked = self._order[self.cursor : self.cursor + self.batch_size]
        self.cursor += self.batch_size
        return picked

    def _reject_users_of(self, picked: list[int], error: UnreadableImage) -> list[int]:
        """Leave out the picked samples that show the unreadable image; the rest of `picked`."""
        users = [i for i in picked if error.source in self.samples[i].images]
        if not users:  # not an image of this batch: nothing to leave out
            raise error
        for i in users:
            self._reject(i, str(error))
        return [i for i in picked if i not in self.rejected]

    def _reject(self, index: int, message: str) -> None:
        self.rejected[index] = message
        if self.on_reject is not None:
            self.on_reject(self.samples[index], message)

    def rewind(self) -> BatchStream:
        """Back to the first batch of the first epoch (the samples left out stay out): the same
        validation batches at every evaluation, each bad image reported once."""
        self.epoch, self.cursor = 0, 0
        self._order = self._permutation()
        return self

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "cursor": self.cursor, "rejected": dict(self.rejected)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self._order = self._permutation()
        for index, message in state.get("rejected", {}).items():  # a checkpoint of before has none
            self._reject(int(index), message)
