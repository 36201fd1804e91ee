"""Serving a native model: a drawn image comes back as an image part (a PNG data URL) where it was
drawn, whole or streamed; the drawing can be sent back with the conversation; a drawing that fails
fails its own request only."""

import base64
import io
import json

import httpx
import pytest
from PIL import Image

from picovlm.engine.parts import AnswerParts
from picovlm.engine.sampling import SamplingParams
from picovlm.serve.api import create_app
from picovlm.serve.config import ServeConfig
from picovlm.serve.scheduler import Scheduler
from tests.native.helpers import drawing_pipeline
from tests.serve.helpers import png_url, running

ASK = {"model": "native", "messages": [{"role": "user", "content": "draw a red circle"}], "max_tokens": 24, "seed": 0}


@pytest.fixture(scope="module")
def native_pipe(tiny_native_run):
    return drawing_pipeline(tiny_native_run["model"])


@pytest.fixture(scope="module")
def native_server(native_pipe):
    with running(create_app(native_pipe, ServeConfig(model_name="native"))) as url:
        yield url


def post(url, payload):
    return httpx.post(f"{url}/v1/chat/completions", json=payload, timeout=30)


def png_of(part) -> Image.Image:
    head, _, data = part["image_url"]["url"].partition(",")
    assert part["type"] == "image_url" and head == "data:image/png;base64"
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    assert image.format == "PNG"
    return image


def test_the_answer_holds_the_drawn_image(native_server):
    content = post(native_server, ASK).json()["choices"][0]["message"]["content"]
    assert isinstance(content, list) and png_of(content[0]).size == (32, 32)
    assert all(p["type"] == "text" and p["text"] for p in content[1:])


def test_streaming_sends_the_image_in_one_chunk(native_server):
    whole = post(native_server, ASK).json()["choices"][0]["message"]["content"]
    with httpx.stream("POST", f"{native_server}/v1/chat/completions", json={**ASK, "stream": True}) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    deltas = [c["choices"][0]["delta"].get("content") for c in map(json.loads, events[:-1]) if c["choices"]]
    images = [d for d in deltas if isinstance(d, list)]
    assert len(images) == 1 and len(images[0]) == 1 and images[0][0] == whole[0]
    assert "".join(d for d in deltas if isinstance(d, str)) == "".join(p["text"] for p in whole[1:])


def test_a_drawing_goes_back_with_the_conversation(native_server, server):
    answer = post(native_server, ASK).json()["choices"][0]["message"]
    follow_up = [*ASK["messages"], answer, {"role": "user", "content": [{"type": "text", "text": "and now?"}]}]
    r = post(native_server, {**ASK, "messages": follow_up, "max_tokens": 4})
    assert r.status_code == 200, r.text
    users_image = [{"type": "image_url", "image_url": {"url": png_url((40, 30))}}, {"type": "text", "text": "what?"}]
    r = post(native_server, {**ASK, "messages": [{"role": "user", "content": users_image}], "max_tokens": 4})
    assert r.status_code == 200, r.text
    url, _ = server  # an adapter model: images in answers are refused, as before
    payload = {**ASK, "model": "tiny", "messages": follow_up}
    r = httpx.post(f"{url}/v1/chat/completions", json=payload, headers={"Authorization": "Bearer sekret"})
    assert r.status_code == 400 and "only user messages" in r.json()["error"]["message"]


def test_a_drawing_that_fails_fails_its_request_alone(native_pipe, monkeypatch):
    """Two requests in one batch; the first span to close fails to decode: that request ends with an
    error, the other gets its image, and the scheduler goes on."""
    real, calls = AnswerParts.decode, []

    def flaky(self, codes):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("the VQ decoder broke")
        return real(self, codes)

    monkeypatch.setattr(AnswerParts, "decode", flaky)
    enc = native_pipe.processor.encode_prompt(ASK["messages"], [])
    scheduler = Scheduler(native_pipe, max_batch=4)
    handles = [scheduler.submit(enc.ids, None, SamplingParams(max_tokens=24, seed=s)) for s in (0, 1)]
    scheduler.start()
    try:
        events = [list(h.events(timeout=30)) for h in handles]
        assert events[0][-1].finish_reason == "error" and events[1][-1].finish_reason in ("stop", "length")
        assert "VQ decoder broke" in events[0][-1].error
        assert sum(e.image is not None for e in events[1]) == 1 and scheduler.running == 0
        assert len(scheduler.batch) == 0
    finally:
        scheduler.close()
