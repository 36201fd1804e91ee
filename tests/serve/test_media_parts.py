"""Videos and audio over the OpenAI API: `video_url` and `input_audio` parts, their limits, and answers."""

import base64

import httpx
import pytest

from picovlm.engine.pipeline import Pipeline
from picovlm.engine.sampling import SamplingParams
from picovlm.models.modalities import MODALITIES
from picovlm.serve.api import create_app
from picovlm.serve.config import ServeConfig
from picovlm.serve.protocol import APIError, Limits, decode_media, parse_chat_request
from picovlm.text.tokens import AUDIO, VIDEO
from tests.serve.helpers import running


def b64(path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


@pytest.fixture(scope="module")
def parts(tiny_av_run):
    data = tiny_av_run["data"]
    video, sound = data / "clips" / "test_000000.mp4", data / "sounds" / "test_000000.flac"
    return {
        "video": {"type": "video_url", "video_url": {"url": "data:video/mp4;base64," + b64(video)}},
        "audio": {"type": "input_audio", "input_audio": {"data": b64(sound), "format": "flac"}},
        "files": (video, sound),
    }


def request(*content, role="user"):
    return {"model": "m", "messages": [{"role": role, "content": [*content, {"type": "text", "text": "Which way?"}]}]}


def test_parts_become_placeholders_and_sources(parts):
    req = parse_chat_request(request(parts["video"], parts["audio"], parts["audio"]), "m", Limits())
    assert req.messages == [{"role": "user", "content": f"{VIDEO}\n{AUDIO}\n{AUDIO}\nWhich way?"}]
    assert [(m, p) for m, p, _ in req.media_sources] == [
        ("video", "messages[0].content[0].video_url"),
        ("audio", "messages[0].content[1].input_audio"),
        ("audio", "messages[0].content[2].input_audio"),
    ]


@pytest.mark.parametrize(
    "make, code, says",
    [
        (
            lambda p: request(p["audio"], role="assistant"),
            None,
            "only user messages may contain images, videos and audio",
        ),
        (lambda p: request(*[p["audio"]] * 3), "too_many_media", "3 videos and audio clips"),
        (
            lambda p: request({"type": "input_audio", "input_audio": {"data": 5}}),
            None,
            "input_audio.data must be a string",
        ),
        (lambda p: request({"type": "video_url", "video_url": {}}), None, "video_url.url must be a string"),
        (lambda p: request({"type": "text", "text": f"{VIDEO} sneaky"}), None, "may not contain the special token"),
    ],
)
def test_bad_requests_name_the_field(parts, make, code, says):
    with pytest.raises(APIError) as info:
        parse_chat_request(make(parts), "m", Limits(max_media=2))
    assert info.value.status == 400 and says in info.value.message and info.value.code == code


def test_media_is_checked_before_it_is_decoded(parts):
    video_url = parts["video"]["video_url"]["url"]
    audio = parts["audio"]["input_audio"]["data"]
    assert len(decode_media("video", "v", video_url, Limits()).times) == 8
    assert decode_media("audio", "a", audio, Limits()).seconds == pytest.approx(0.5)
    cases = [
        ("video", video_url, Limits(max_video_seconds=0.5), "invalid_video", "longer than the limit of 0.5 s"),
        ("audio", audio, Limits(max_audio_seconds=0.1), "invalid_audio", "longer than the limit of 0.1 s"),
        ("video", video_url, Limits(max_media_bytes=100), "media_too_large", "larger than 100 bytes"),
        ("video", "https://example.com/a.mp4", Limits(), "invalid_media_url", "URLs are not fetched"),
        ("audio", "not base64!", Limits(), "invalid_media", "not valid base64"),
        ("audio", base64.b64encode(b"noise" * 50).decode(), Limits(), "invalid_audio", "not a readable sound file"),
        (
            "video",
            "data:video/mp4;base64," + base64.b64encode(b"x" * 99).decode(),
            Limits(),
            "invalid_video",
            "not a readable video",
        ),
    ]
    for modality, data, limits, code, says in cases:
        with pytest.raises(APIError) as info:
            decode_media(modality, "messages[0].content[0]", data, limits)
        assert info.value.code == code and says in info.value.message and info.value.param == "messages[0].content[0]"


def test_the_server_answers_about_videos_and_sounds(tiny_av_run, parts, tiny_run):
    pipe = Pipeline.load(tiny_av_run["model"])
    with running(create_app(pipe, ServeConfig(model_name="av"))) as url:
        body = {**request(parts["video"], parts["audio"]), "model": "av", "max_tokens": 3, "temperature": 0}
        reply = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    video, sound = (MODALITIES[m].load(f) for m, f in zip(("video", "audio"), parts["files"], strict=True))
    messages = [{"role": "user", "content": f"{VIDEO}\n{AUDIO}\nWhich way?"}]
    expected = pipe.generate(
        [messages], [[]], SamplingParams(max_tokens=3, temperature=0), [{"video": [video], "audio": [sound]}]
    )
    assert reply.json()["choices"][0]["message"]["content"] == expected[0]

    with running(create_app(Pipeline.load(tiny_run["model"]), ServeConfig(model_name="img"))) as url:
        body = {**request(parts["audio"]), "model": "img"}
        refused = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "audio_not_supported"
