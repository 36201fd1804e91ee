"""The HTTP surface: every kind of bad request gets OpenAI's error object and the right status, no
traceback, and the server keeps answering."""

import base64
import functools
import io
import json
import weakref
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image

from picovlm.engine import batch
from picovlm.serve import api
from picovlm.serve.protocol import decode_image
from tests.serve.helpers import png_url

AUTH = {"Authorization": "Bearer sekret"}


def chat(url, payload=None, content=None, headers=AUTH):
    return httpx.post(f"{url}/v1/chat/completions", json=payload, content=content, headers=headers, timeout=30)


def user(*parts):
    return [{"role": "user", "content": list(parts)}]


def image(url):
    return {"type": "image_url", "image_url": {"url": url}}


def text(t):
    return {"type": "text", "text": t}


@functools.cache
def bomb_url() -> str:
    """A small PNG whose header says 7000 x 7000 (49 Mpx, over the 40 Mpx limit)."""
    buf = io.BytesIO()
    Image.new("1", (7000, 7000)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def cases(image_url):
    ok = {"model": "tiny", "messages": user(image(image_url), text("what colour?"))}
    return {
        "malformed JSON": (dict(content=b'{"model": "tiny", "messages": [}'), 400, "invalid_json"),
        "not UTF-8": (dict(content=b"\xff\xfe"), 400, "invalid_json"),
        "unknown model": (dict(payload={**ok, "model": "gpt-4o"}), 404, "model_not_found"),
        "undecodable image": (
            dict(payload={**ok, "messages": user(image("data:image/png;base64,aGVsbG8="))}),
            400,
            "invalid_image",
        ),
        "decompression bomb": (
            dict(payload={**ok, "messages": user(image(bomb_url()), text("hi"))}),
            400,
            "image_too_large",
        ),
        "image URL": (
            dict(payload={**ok, "messages": user(image("http://127.0.0.1:1/x.png"))}),
            400,
            "image_url_not_allowed",
        ),
        "too many images": (dict(payload={**ok, "messages": user(*[image(image_url)] * 9)}), 400, "too_many_images"),
        "prompt too long": (
            dict(payload={**ok, "messages": user(text("what is in the picture " * 60))}),
            400,
            "context_length_exceeded",
        ),
        "max_tokens too large": (dict(payload={**ok, "max_tokens": 1000}), 400, "context_length_exceeded"),
        "body too large": (dict(content=b"x" * 2_000_001), 413, "request_too_large"),
        "no API key": (dict(payload=ok, headers={}), 401, "invalid_api_key"),
        "wrong API key": (dict(payload=ok, headers={"Authorization": "Bearer nope"}), 401, "invalid_api_key"),
        # what used to be 500s: Python's json reads NaN, lone surrogates, any nesting, any integer
        "NaN temperature": (dict(content=raw(ok, temperature=float("nan"))), 400, None),
        "seed of 2**64": (dict(payload={**ok, "seed": 2**64}), 400, None),
        "lone surrogate": (dict(content=raw(ok, messages=user(text("a\ud800")))), 400, None),
        "nested 100000 deep": (dict(content=b'{"messages": ' + b"[" * 100_000), 400, "request_too_complex"),
        "nested under the value bound": (dict(content=b"[" * 5000 + b"]" * 5000), 400, "invalid_json"),
        "a number of 5000 digits": (dict(content=b'{"max_tokens": ' + b"9" * 5000 + b"}"), 400, "invalid_json"),
        "a 1 MB prompt": (dict(payload={**ok, "messages": user(text("x" * 10**6))}), 400, "context_length_exceeded"),
    }


def raw(payload: dict, **fields) -> bytes:
    """`payload` with `fields` as Python's json writes it: NaN, and lone surrogates escaped (httpx refuses both)."""
    return json.dumps({**payload, **fields}).encode()


@pytest.mark.parametrize(
    "case",
    [
        "malformed JSON",
        "not UTF-8",
        "unknown model",
        "undecodable image",
        "decompression bomb",
        "image URL",
        "too many images",
        "prompt too long",
        "max_tokens too large",
        "body too large",
        "no API key",
        "wrong API key",
        "NaN temperature",
        "seed of 2**64",
        "lone surrogate",
        "nested 100000 deep",
        "nested under the value bound",
        "a number of 5000 digits",
        "a 1 MB prompt",
    ],
)
def test_errors(case, server, image_url):
    url, _ = server
    kwargs, status, code = cases(image_url)[case]
    r = chat(url, **kwargs)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and set(error) == {"message", "type", "param", "code"}
    assert "Traceback" not in r.text and "\n" not in error["message"]


def test_still_serving_after_errors_and_a_crash(server, image_url, monkeypatch):
    url, _ = server

    def broken(*args):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(api, "parse_chat_request", broken)
    r = chat(url, {"model": "tiny", "messages": user(text("hi"))})
    assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
    assert "secret" not in r.text and "Traceback" not in r.text
    monkeypatch.undo()
    r = chat(url, {"model": "tiny", "messages": user(image(image_url), text("what colour?")), "max_tokens": 3})
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("stop", "length")


def test_routes(server):
    url, _ = server
    assert httpx.get(f"{url}/health").json()["status"] == "ok"  # no key needed to check liveness
    assert httpx.get(f"{url}/v1/models", headers=AUTH).json()["data"][0]["id"] == "tiny"
    assert httpx.get(f"{url}/v1/models").status_code == 401
    missing = httpx.get(f"{url}/v1/nothing", headers=AUTH)
    assert missing.status_code == 404 and "error" in missing.json()
    assert httpx.get(f"{url}/v1/chat/completions", headers=AUTH).status_code == 405
    page = httpx.get(url)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "http://" not in page.text and "https://" not in page.text  # nothing loaded from elsewhere


def test_small_image_is_fine(server):
    url, _ = server
    payload = {"model": "tiny", "messages": user(image(png_url((300, 200))), text("hi")), "max_tokens": 2}
    assert chat(url, payload).status_code == 200


def test_a_full_queue_is_a_503(server, image_url, monkeypatch):
    url, app = server
    monkeypatch.setattr(app.state.scheduler, "max_waiting", 0)
    r = chat(url, {"model": "tiny", "messages": user(image(image_url), text("what colour?"))})
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "server_overloaded" and r.json()["error"]["type"] == "server_error"


def test_a_failed_decode_step_reaches_the_client(server, image_url, monkeypatch):
    """Whole: a 500 error object. Streamed: the stream began (200), so an error event ends it, no [DONE]."""
    url, app = server

    def broken(admitted):
        raise RuntimeError("boom")

    monkeypatch.setattr(app.state.scheduler, "_step", broken)
    payload = {"model": "tiny", "messages": user(image(image_url), text("what colour?")), "max_tokens": 3}
    r = chat(url, payload)
    assert r.status_code == 500 and r.json()["error"] == {
        "message": "generation failed: RuntimeError: boom",
        "type": "server_error",
        "param": None,
        "code": None,
    }
    with httpx.stream("POST", f"{url}/v1/chat/completions", json={**payload, "stream": True}, headers=AUTH) as r:
        events = [line.removeprefix("data: ") for line in r.iter_lines() if line.startswith("data: ")]
    assert r.status_code == 200 and json.loads(events[0])["choices"][0]["delta"]["role"] == "assistant"
    assert json.loads(events[-1])["error"]["message"] == "generation failed: RuntimeError: boom"
    assert "[DONE]" not in events
    monkeypatch.undo()
    assert chat(url, payload).status_code == 200  # and the server goes on


def test_one_bad_request_never_fails_the_batch(server, image_url):
    """Six good requests sent together with one whose temperature is NaN: it alone is refused (400), and
    the six get exactly the answers they get alone."""
    url, _ = server
    good = [
        {"model": "tiny", "messages": user(image(image_url), text(q)), "max_tokens": 8, "temperature": 1.0, "seed": i}
        for i, q in enumerate(["what colour?", "what shape?", "how many?"] * 2)
    ]
    alone = [chat(url, p).json()["choices"][0]["message"]["content"] for p in good]
    assert any(alone)
    bad = raw(good[0], temperature=float("nan"))
    with ThreadPoolExecutor(7) as pool:
        answers = [pool.submit(chat, url, p) for p in good]
        refused = pool.submit(chat, url, None, bad)
        answers = [a.result() for a in answers]
    assert refused.result().status_code == 400 and refused.result().json()["error"]["param"] == "temperature"
    assert [r.status_code for r in answers] == [200] * 6
    assert [r.json()["choices"][0]["message"]["content"] for r in answers] == alone


def test_an_over_long_prompt_is_refused_before_it_is_tokenized(server, pipe, monkeypatch):
    """A prompt longer than any that fits the context is refused by its length: the tokenizer never sees
    it (a 10 MB prompt took 13 s of tokenizing, holding the GIL, and 0.8 GB)."""
    url, _ = server
    seen: list[int] = []
    encode = pipe.tokenizer.encode
    monkeypatch.setattr(pipe.tokenizer, "encode", lambda t: seen.append(len(t)) or encode(t))
    bound = (pipe.processor.max_len - 1) * pipe.tokenizer.max_token_chars
    r = chat(url, {"model": "tiny", "messages": user(text("what is in the picture " * 60_000))})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert all(n <= bound for n in seen)
    fits_by_length = "what is in the picture " * (bound // 30)  # tokenized: too many tokens all the same
    r = chat(url, {"model": "tiny", "messages": user(text(fits_by_length))})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert max(seen) >= len(fits_by_length)


def test_images_are_decoded_one_at_a_time(server, image_url, monkeypatch):
    """Each image is preprocessed as soon as it is decoded: a request holds one full-size image at most."""
    url, _ = server
    alive, most = [0], [0]

    def decode(*args):
        im = decode_image(*args)
        alive[0] += 1
        most[0] = max(most[0], alive[0])
        weakref.finalize(im, lambda: alive.__setitem__(0, alive[0] - 1))
        return im

    monkeypatch.setattr(api, "decode_image", decode)
    r = chat(url, {"model": "tiny", "messages": user(*[image(image_url)] * 4, text("hi")), "max_tokens": 2})
    assert r.status_code == 200 and most == [1]


def test_openapi_schema(server):
    """The schema clients and fuzzers read: the routes, the request body (the served model's name), the key."""
    url, _ = server
    doc = httpx.get(f"{url}/openapi.json").json()
    assert {"/health", "/v1/models", "/v1/models/{name}", "/v1/chat/completions"} <= set(doc["paths"])
    chat_route = doc["paths"]["/v1/chat/completions"]["post"]
    body = chat_route["requestBody"]["content"]["application/json"]["schema"]
    request = doc["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]
    assert request["properties"]["model"]["enum"] == ["tiny"] and set(request["required"]) == {"model", "messages"}
    assert {"200", "400", "401", "413", "500", "503"} <= set(chat_route["responses"])
    assert chat_route["security"] == [{"bearer": []}] and "security" not in doc["paths"]["/health"]["get"]
    assert httpx.get(f"{url}/docs").status_code == 404  # its page would load scripts from a CDN


def test_a_row_whose_sampling_raises_ends_alone(server, image_url, monkeypatch):
    """Decoded together: six good requests and one whose sampling raises (top_k=13 marks it). That one
    gets an error event, as its stream had begun; the six get exactly the answers they get alone."""
    url, _ = server
    good = [
        {"model": "tiny", "messages": user(image(image_url), text(q)), "max_tokens": 8, "temperature": 1.0, "seed": i}
        for i, q in enumerate(["what colour?", "what shape?", "how many?"] * 2)
    ]
    alone = [chat(url, p).json()["choices"][0]["message"]["content"] for p in good]

    def sample_next(logits, p, generator):
        if p.top_k == 13:
            raise RuntimeError("this row's sampler broke")
        return real(logits, p, generator)

    real = batch.sample_next
    monkeypatch.setattr(batch, "sample_next", sample_next)
    bad = {**good[0], "top_k": 13, "seed": None, "stream": True}

    def streamed(payload):
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=payload, headers=AUTH, timeout=30) as r:
            return r.status_code, [line[6:] for line in r.iter_lines() if line.startswith("data: ")]

    with ThreadPoolExecutor(7) as pool:
        answers = [pool.submit(chat, url, p) for p in good]
        failed = pool.submit(streamed, bad)
        answers = [a.result() for a in answers]
    status, events = failed.result()
    assert status == 200 and json.loads(events[-1])["error"]["message"].endswith("this row's sampler broke")
    assert [r.status_code for r in answers] == [200] * 6
    assert [r.json()["choices"][0]["message"]["content"] for r in answers] == alone
