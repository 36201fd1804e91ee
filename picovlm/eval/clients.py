"""What the harness talks to: anything that turns a batch of (images, prompt) into answers.

`VLMClient` is the whole contract, so the harness does not care whether a picovlm checkpoint, an
HF model wrapped by someone, or a remote OpenAI-compatible server answers:

    PipelineClient.load("runs/demo/instruct/model")     # a picovlm checkpoint, batched decoding
    EndpointClient("http://localhost:8000", model="x")  # POST {url}/v1/chat/completions
"""

from __future__ import annotations

import base64
import io
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from picovlm.audio.wave import wav_bytes
from picovlm.engine.pipeline import Pipeline
from picovlm.engine.sampling import SamplingParams
from picovlm.models.modalities import MODALITIES
from picovlm.models.processor import Media


class VLMClient(Protocol):
    def generate(
        self, images: list[list[Image.Image]], prompts: list[str], max_tokens: int, media: list[Media] | None = None
    ) -> list[str]:
        """Greedy answers, one per prompt; prompt i is about the images images[i] (in order) and the
        videos and audio clips media[i] (decoded, by modality)."""
        ...


def placeholders(images: list[Image.Image], media: Media) -> str:
    """The placeholders of a prompt's inputs, images first, each modality's in order."""
    counts = {"image": len(images), **{name: len(items) for name, items in media.items()}}
    return "".join(MODALITIES[name].token * n for name, n in counts.items())


class PipelineClient:
    """A picovlm checkpoint: the inputs go in front of the prompt, one placeholder each."""

    def __init__(self, pipe: Pipeline):
        self.pipe = pipe

    @classmethod
    def load(cls, path: str | Path) -> PipelineClient:
        return cls(Pipeline.load(path))

    def generate(
        self, images: list[list[Image.Image]], prompts: list[str], max_tokens: int, media: list[Media] | None = None
    ) -> list[str]:
        media = media or [{}] * len(prompts)
        batch = [
            [{"role": "user", "content": f"{placeholders(ims, md)}\n{p}"}]
            for ims, p, md in zip(images, prompts, media, strict=True)
        ]
        return self.pipe.generate(batch, images, SamplingParams(max_tokens=max_tokens, temperature=0.0), media)


def data_url(image: Image.Image) -> str:
    """The image as a base64 PNG data URL, as OpenAI-style `image_url` content parts carry it."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def media_part(name: str, item: Any) -> dict:
    """A video as a `video_url` part (a data URL of its file: mp4 or webm), an audio clip as OpenAI's
    `input_audio` part (base64 WAV)."""
    if name == "audio":
        return {
            "type": "input_audio",
            "input_audio": {"data": base64.b64encode(wav_bytes(item)).decode(), "format": "wav"},
        }
    if name == "video":
        data = item.source if isinstance(item.source, bytes) else Path(item.source).read_bytes()
        kind = "webm" if str(item.name).endswith(".webm") else "mp4"
        return {
            "type": "video_url",
            "video_url": {"url": f"data:video/{kind};base64," + base64.b64encode(data).decode()},
        }
    raise ValueError(f"no content part for {name!r} inputs")


class EndpointClient:
    """Any OpenAI-compatible chat server: one POST {url}/v1/chat/completions per prompt, greedy
    (temperature 0), images as base64 data URLs in `image_url` parts, then videos and audio clips
    (`media_part`), before the text part."""

    def __init__(self, url: str, model: str = "default", timeout: float = 120.0, api_key: str | None = None):
        self.url = url.rstrip("/")
        if self.url.endswith("/v1"):
            self.url = self.url[: -len("/v1")]
        self.model, self.timeout, self.api_key = model, timeout, api_key

    def request_body(self, images: list[Image.Image], prompt: str, max_tokens: int, media: Media | None = None) -> dict:
        content = [{"type": "image_url", "image_url": {"url": data_url(im)}} for im in images]
        content += [media_part(name, item) for name, items in (media or {}).items() for item in items]
        content.append({"type": "text", "text": prompt})
        return {
            "model": self.model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens,
            "temperature": 0.0,
        }

    def _post(self, body: dict) -> str:
        endpoint = f"{self.url}/v1/chat/completions"
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(endpoint, json.dumps(body).encode(), headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                reply = json.loads(r.read())
        except urllib.error.HTTPError as e:
            detail = e.read()[:200].decode(errors="replace")
            raise OSError(f"{endpoint}: HTTP {e.code} {e.reason}: {detail}") from None
        except urllib.error.URLError as e:
            raise OSError(f"{endpoint}: cannot connect ({e.reason})") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{endpoint}: reply is not JSON ({e})") from None
        try:
            return reply["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise ValueError(f"{endpoint}: reply has no choices[0].message.content: {str(reply)[:200]}") from None

    def generate(
        self, images: list[list[Image.Image]], prompts: list[str], max_tokens: int, media: list[Media] | None = None
    ) -> list[str]:
        media = media or [{}] * len(prompts)
        rows = zip(images, prompts, media, strict=True)
        return [self._post(self.request_body(ims, p, max_tokens, md)) for ims, p, md in rows]
