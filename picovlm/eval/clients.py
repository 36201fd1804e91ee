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
from typing import Protocol

from PIL import Image

from picovlm.engine.pipeline import Pipeline
from picovlm.engine.sampling import SamplingParams
from picovlm.text.tokens import IMAGE


class VLMClient(Protocol):
    def generate(self, images: list[list[Image.Image]], prompts: list[str], max_tokens: int) -> list[str]:
        """Greedy answers, one per prompt; prompt i is about the images images[i] (in order)."""
        ...


class PipelineClient:
    """A picovlm checkpoint: the images go in front of the prompt, one <|image|> each."""

    def __init__(self, pipe: Pipeline):
        self.pipe = pipe

    @classmethod
    def load(cls, path: str | Path) -> PipelineClient:
        return cls(Pipeline.load(path))

    def generate(self, images: list[list[Image.Image]], prompts: list[str], max_tokens: int) -> list[str]:
        batch = [
            [{"role": "user", "content": f"{IMAGE * len(ims)}\n{p}"}] for ims, p in zip(images, prompts, strict=True)
        ]
        return self.pipe.generate(batch, images, SamplingParams(max_tokens=max_tokens, temperature=0.0))


def data_url(image: Image.Image) -> str:
    """The image as a base64 PNG data URL, as OpenAI-style `image_url` content parts carry it."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class EndpointClient:
    """Any OpenAI-compatible chat server: one POST {url}/v1/chat/completions per prompt, greedy
    (temperature 0), images as base64 data URLs in `image_url` parts before the text part."""

    def __init__(self, url: str, model: str = "default", timeout: float = 120.0, api_key: str | None = None):
        self.url = url.rstrip("/")
        if self.url.endswith("/v1"):
            self.url = self.url[: -len("/v1")]
        self.model, self.timeout, self.api_key = model, timeout, api_key

    def request_body(self, images: list[Image.Image], prompt: str, max_tokens: int) -> dict:
        content = [{"type": "image_url", "image_url": {"url": data_url(im)}} for im in images]
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

    def generate(self, images: list[list[Image.Image]], prompts: list[str], max_tokens: int) -> list[str]:
        return [self._post(self.request_body(ims, p, max_tokens)) for ims, p in zip(images, prompts, strict=True)]
