"""The official `openai` client against a real server: answers, streaming, usage, errors, and
concurrent requests decoded together in one batch (with the same answers as alone)."""

import threading
import time

import httpx
import openai
import pytest

from picovlm.engine.sampling import SamplingParams
from picovlm.text.tokens import IMAGE
from picovlm.vision.image import load_image

QUESTIONS = ["what colour?", "what shape?", "how many?", "describe the picture"]


@pytest.fixture(scope="module")
def client(server):
    url, _ = server
    return openai.OpenAI(base_url=f"{url}/v1", api_key="sekret", max_retries=0, timeout=30)


def ask(question, image_url):
    return [
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": image_url}}, {"type": "text", "text": question}],
        }
    ]


def test_answer_matches_the_pipeline(client, pipe, tiny_run, image_url):
    image = load_image(tiny_run["data"] / "images" / "test_000000.png")
    for question in QUESTIONS[:2]:
        expected = pipe.generate(
            [[{"role": "user", "content": f"{IMAGE}\n{question}"}]], [[image]], SamplingParams(max_tokens=8)
        )[0]
        r = client.chat.completions.create(model="tiny", messages=ask(question, image_url), temperature=0, max_tokens=8)
        assert r.choices[0].message.content == expected
        assert r.choices[0].finish_reason in ("stop", "length") and r.object == "chat.completion"
        n_prompt = len(pipe.processor.encode_prompt([{"role": "user", "content": f"{IMAGE}\n{question}"}], [image]).ids)
        assert r.usage.prompt_tokens == n_prompt and 1 <= r.usage.completion_tokens <= 8
        assert r.usage.total_tokens == n_prompt + r.usage.completion_tokens


def test_stream_with_usage(client, image_url):
    kwargs = dict(model="tiny", messages=ask("describe the picture", image_url), max_tokens=12, seed=5, temperature=1)
    whole = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content  # same seed, same answer, streamed or not
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_errors_arrive_as_openai_exceptions(client, server, image_url):
    url, _ = server
    assert [m.id for m in client.models.list()] == ["tiny"]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="other", messages=ask("hi", image_url))
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=ask("hi", "data:image/png;base64,aGVsbG8="))
    assert e.value.code == "invalid_image"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()


def test_concurrent_requests_share_a_batch(client, server, image_url):
    _, app = server
    scheduler = app.state.scheduler
    prompts = [ask(q, image_url) for q in QUESTIONS] * 2
    opts = dict(model="tiny", temperature=0, max_tokens=24, extra_body={"ignore_eos": True})
    alone = [client.chat.completions.create(messages=m, **opts).choices[0].message.content for m in prompts[:4]]
    scheduler.stats["max_rows"] = 0
    results: dict[int, str] = {}

    def worker(i):
        stream = client.chat.completions.create(messages=prompts[i], stream=True, **opts)
        results[i] = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(results) == list(range(len(prompts)))
    assert [results[i] for i in range(len(prompts))] == alone * 2  # batching does not change answers
    assert scheduler.stats["max_rows"] >= 2  # they were decoded together, not one after another


def test_disconnect_frees_the_slot(server, image_url, monkeypatch):
    url, app = server
    scheduler = app.state.scheduler
    real_step = scheduler.batch.step

    def slow_step():  # slow decoding down so the client surely leaves mid-answer
        time.sleep(0.02)
        return real_step()

    monkeypatch.setattr(scheduler.batch, "step", slow_step)
    cancelled = scheduler.stats["cancelled"]
    payload = {
        "model": "tiny",
        "messages": ask("describe", image_url),
        "stream": True,
        "max_tokens": 90,
        "ignore_eos": True,
    }
    with httpx.stream(
        "POST", f"{url}/v1/chat/completions", json=payload, headers={"Authorization": "Bearer sekret"}, timeout=30
    ) as r:
        events = (line for line in r.iter_lines() if line.startswith("data: "))
        assert '"role"' in next(events) and '"content"' in next(events)  # the answer has begun
        assert scheduler.running == 1
    deadline = time.monotonic() + 5
    while scheduler.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert scheduler.running == 0 and scheduler.stats["cancelled"] == cancelled + 1
