"""The modality registry: every kind of input a picovlm model reads besides text, and where a new one plugs in.

All of them take one road. A sample's text holds one placeholder per item; `expand_placeholders`
turns each into as many copies of itself as the item's encoder emits tokens (so lengths and positions
are known before anything is decoded), and the model overwrites each modality's copies with its
embeddings, in order (`merge_embeds`, models/vlm.py). The training loop, the engine, the server and
the eval harness never ask which modality they carry.

    name   placeholder  LLaVA data        decoded item  batch tensor (`VLM.inputs`)  embedded by (`VLM.encode`)
    image  <|image|>    "image", <image>  PIL image     pixels [n, 3, H, W]          tower -> projector
    video  <|video|>    "video", <video>  Video         [n, T, 3, H, W]              tower (the n*T frames as one
                                                                                     batch) -> TemporalPool -> projector
    audio  <|audio|>    "audio", <audio>  Audio         log-mel [n, n_mels, frames]  audio tower -> audio projector

Images travel as `pixels` (and, from a frozen tower's cache, `features`), the names every part of
picovlm and HF's formats use; every other modality travels as `VLM.forward(**{name: tensor})`.

Adding a modality (say "depth"):
  1. its placeholder token in text/tokens.py (`MEDIA_TOKENS`; tokenizers trained from then on have it);
  2. an entry in `MODALITIES` below: its name (also its LLaVA JSON field and its `VLM.forward` argument),
     token, LLaVA placeholder, how a file becomes a decoded item (`load`) and its caption prompt;
  3. its config in config.py (a field of VLMConfig) and its encoder in models/vlm.py: a branch in
     `VLM.inputs` (what turns decoded items into a batch tensor, and how many tokens one item becomes)
     and one in `VLM.encode` (what embeds that tensor), with its modules built in `VLM.__init__`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from picovlm.audio.wave import load_audio
from picovlm.text.tokens import AUDIO, IMAGE, VIDEO
from picovlm.video.decode import load_video
from picovlm.vision.image import load_image


@dataclass(frozen=True)
class Modality:
    """What every part of picovlm knows of one kind of input."""

    name: str  # also the LLaVA JSON field ("video": path or [paths]) and the VLM.forward argument
    token: str  # its placeholder in the model's text
    placeholder: str  # its placeholder in LLaVA-style data text
    load: Callable[[Path | bytes], Any]  # a file or its bytes -> the decoded item its processor reads
    caption_prompt: str  # the instruction a caption record is trained under
    plural: str  # in messages: "2 images", "no audio clips"


MODALITIES: dict[str, Modality] = {
    "image": Modality("image", IMAGE, "<image>", load_image, "Describe the image.", "images"),
    "video": Modality("video", VIDEO, "<video>", load_video, "Describe the video.", "videos"),
    "audio": Modality("audio", AUDIO, "<audio>", load_audio, "Describe the sound.", "audio clips"),
}
MEDIA = tuple(name for name in MODALITIES if name != "image")  # those that travel as VLM.forward(**media)


@dataclass(frozen=True)
class Input:
    """How a model takes one modality: its placeholder's id, how many tokens one item becomes, and
    what turns a list of decoded items into the batch tensor its encoder reads."""

    token_id: int
    num_tokens: int
    prepare: Callable[[list[Any]], torch.Tensor]


@dataclass(frozen=True)
class Slots:
    """One modality's placeholders in a text: its id and name, how many items come with the text, and
    how many tokens each becomes."""

    token_id: int
    name: str
    count: int
    tokens: int


def expand_placeholders(
    ids: list[int], loss_mask: list[int], slots: list[Slots], markers: tuple[int, int] | None = None
) -> tuple[list[int], list[int]]:
    """Replace each placeholder id by its modality's number of copies, between the (start, end) `markers`
    ids when given (`VLMConfig.image_markers`); mask 0 on all of them: no loss on inputs."""
    spans = {}
    for s in slots:
        found = ids.count(s.token_id)
        if found != s.count:
            m = MODALITIES[s.name]
            raise ValueError(f"text has {found} {m.token} placeholders but {s.count} {m.plural} were given")
        start, end = ([markers[0]], [markers[1]]) if markers is not None else ([], [])
        spans[s.token_id] = start + [s.token_id] * s.tokens + end
    out_ids: list[int] = []
    out_mask: list[int] = []
    for i, m in zip(ids, loss_mask, strict=True):
        if i in spans:
            out_ids += spans[i]
            out_mask += [0] * len(spans[i])
        else:
            out_ids.append(i)
            out_mask.append(m)
    return out_ids, out_mask
