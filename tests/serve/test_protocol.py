"""The OpenAI request format: what is accepted, what is refused, and with which field named."""

import base64

import pytest

from picovlm.serve.protocol import (
    APIError,
    Limits,
    chunk,
    completion,
    decode_image,
    decode_json,
    parse_chat_request,
)
from picovlm.text.tokens import IMAGE
from tests.serve.helpers import png_url

LIMITS = Limits(max_images=2, max_image_pixels=100 * 100, max_image_bytes=50_000)


def body(**fields):
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}


def test_parts_system_and_sampling_fields():
    messages = [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": "data:x"}}, {"type": "text", "text": "Q?"}],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "A."}]},
        {"role": "user", "content": "And?"},
    ]
    req = parse_chat_request(
        body(
            messages=messages,
            max_completion_tokens=7,
            max_tokens=99,
            temperature=0,
            top_p=0.5,
            stop="x",
            seed=3,
            stream=True,
            stream_options={"include_usage": True},
            user="ignored",
        ),
        "m",
        LIMITS,
    )
    assert req.messages == [
        {"role": "user", "content": f"Be brief.\n\n{IMAGE}\nQ?"},
        {"role": "assistant", "content": "A."},
        {"role": "user", "content": "And?"},
    ]
    assert req.image_sources == [("messages[1].content[0].image_url", "data:x")]
    assert (req.max_tokens, req.temperature, req.top_p, req.stop, req.seed) == (7, 0.0, 0.5, ("x",), 3)
    assert req.stream and req.include_usage
    plain = parse_chat_request(body(), "m", LIMITS)
    assert (plain.max_tokens, plain.temperature, plain.stream, plain.stop) == (None, 1.0, False, ())


@pytest.mark.parametrize(
    "fields, status, param, code",
    [
        ({"model": "other"}, 404, "model", "model_not_found"),
        ({"model": None}, 400, "model", None),
        ({"messages": []}, 400, "messages", None),
        ({"messages": [{"role": "assistant", "content": "x"}]}, 400, "messages", None),
        ({"messages": [{"role": "tool", "content": "x"}]}, 400, "messages[0].role", None),
        ({"messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content", None),
        ({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}, 400, "messages[0].content[0]", None),
        ({"messages": [{"role": "user", "content": "a <|image|> b"}]}, 400, "messages[0].content", None),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:x"}}] * 3}]},
            400,
            "messages",
            "too_many_images",
        ),
        ({"n": 2}, 400, "n", "unsupported_parameter"),
        ({"logprobs": True}, 400, "logprobs", "unsupported_parameter"),
        ({"temperature": 3}, 400, "temperature", None),
        ({"temperature": "hot"}, 400, "temperature", None),
        ({"top_p": 0}, 400, "top_p", None),
        ({"max_tokens": 0}, 400, "max_tokens", None),
        ({"max_tokens": True}, 400, "max_tokens", None),
        ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop", None),
        ({"stream": "yes"}, 400, "stream", None),
        ({"stream_options": {"include_usage": True}}, 400, "stream_options", None),
        ({"seed": 1.5}, 400, "seed", None),
        ({"ignore_eos": True}, 400, "max_tokens", None),
        # what Python's json lets through: NaN and infinities, integers torch refuses, lone surrogates
        ({"temperature": float("nan")}, 400, "temperature", None),
        ({"temperature": float("-inf")}, 400, "temperature", None),
        ({"top_p": float("nan")}, 400, "top_p", None),
        ({"top_k": float("inf")}, 400, "top_k", None),
        ({"max_tokens": float("nan")}, 400, "max_tokens", None),
        ({"seed": float("nan")}, 400, "seed", None),
        ({"seed": 2**64}, 400, "seed", None),
        ({"seed": -(2**63) - 1}, 400, "seed", None),
        ({"messages": [{"role": "user", "content": "a\ud800"}]}, 400, "messages[0].content", None),
        (
            {"messages": [{"role": "system", "content": [{"type": "text", "text": "\udfff"}]}, {"role": "user"}]},
            400,
            "messages[0].content[0]",
            None,
        ),
        ({"stop": ["ok", "\ud800"]}, 400, "stop", None),
        ({"stream": True, "stream_options": {"include_usage": 1}}, 400, "stream_options.include_usage", None),
    ],
)
def test_refusals_name_the_field(fields, status, param, code):
    with pytest.raises(APIError) as e:
        parse_chat_request(body(**fields), "m", LIMITS)
    err = e.value.body()["error"]
    assert (e.value.status, err["param"], err["code"]) == (status, param, code)
    assert err["type"] == "invalid_request_error" and err["message"]


def test_seeds_torch_takes_are_taken():
    for seed in (-(2**63), -1, 0, 2**64 - 1):
        assert parse_chat_request(body(seed=seed), "m", LIMITS).seed == seed


def test_values_are_quoted_short():
    """A value quoted back in a message is cut short, however long or deep (repr of 900 nested lists
    would raise RecursionError)."""
    deep: list = []
    for _ in range(900):
        deep = [deep]
    for role in (deep, "x" * 1_000_000):
        with pytest.raises(APIError) as e:
            parse_chat_request(body(messages=[{"role": role, "content": "hi"}]), "m", LIMITS)
        assert len(e.value.message) < 200


def test_messages_longer_than_the_context_can_hold_are_refused_by_length():
    limits = Limits(max_prompt_chars=10)
    ok = parse_chat_request(body(messages=[{"role": "user", "content": "x" * 10}]), "m", limits)
    assert ok.messages[0]["content"] == "x" * 10
    too_long = [{"role": "system", "content": "x" * 6}, {"role": "user", "content": "x" * 5}]
    with pytest.raises(APIError) as e:
        parse_chat_request(body(messages=too_long), "m", limits)
    assert (e.value.status, e.value.param, e.value.code) == (400, "messages", "context_length_exceeded")


def test_fitted_limits():
    """(context - 1) tokens of the longest kind are the most characters that can leave room for an answer;
    limits set by hand stay."""
    fitted = Limits().fitted(context=128, max_token_chars=13)
    assert fitted.max_prompt_chars == 127 * 13 and fitted.max_json_values == 10 * (128 + 127 * 13) + 1024
    by_hand = Limits(max_prompt_chars=5, max_json_values=7)
    assert by_hand.fitted(128, 13) == by_hand


@pytest.mark.parametrize(
    "data, limits, status, message",
    [
        (b"[" * 100_000 + b"]" * 100_000, Limits(), 400, "nested too deeply"),  # RecursionError
        (b'{"n": ' + b"9" * 5000 + b"}", Limits(), 400, "digits"),  # Python's int conversion limit
        (b"\xff\xfe", Limits(), 400, "not valid JSON"),
        (b"{NaN", Limits(), 400, "not valid JSON"),
        (b"[" + b"[]," * 10 + b"[]]", Limits(max_json_values=10), 400, "more than 10 JSON values"),
    ],
)
def test_bodies_that_cannot_be_decoded(data, limits, status, message):
    with pytest.raises(APIError) as e:
        decode_json(data, limits)
    assert e.value.status == status and message in e.value.message and "\n" not in e.value.message
    assert decode_json(b'{"a": [1, 2]}', Limits(max_json_values=3)) == {"a": [1, 2]}


def test_not_an_object():
    with pytest.raises(APIError, match="JSON object"):
        parse_chat_request([1, 2], "m", LIMITS)


@pytest.mark.parametrize(
    "url, code",
    [
        ("https://example.com/cat.png", "image_url_not_allowed"),
        ("file:///etc/passwd", "invalid_image_url"),
        ("data:image/png,rawnotbase64", "invalid_image_url"),
        ("data:image/png;base64,@@@@", "invalid_image"),
        ("data:image/png;base64," + base64.b64encode(b"not an image").decode(), "invalid_image"),
        (png_url((101, 100)), "image_too_large"),  # more pixels than the limit: refused from the header
        ("data:image/png;base64," + "A" * 80_000, "image_too_large"),  # more bytes than the limit
    ],
)
def test_bad_images(url, code):
    with pytest.raises(APIError) as e:
        decode_image("messages[0].content[0].image_url", url, LIMITS)
    assert e.value.code == code and e.value.param == "messages[0].content[0].image_url"
    assert "\n" not in e.value.message


def test_good_image():
    assert decode_image("p", png_url((100, 100)), LIMITS).size == (100, 100)


def test_response_objects():
    done = completion("id1", "m", "hi", "stop", 3, 2)
    assert done["choices"][0]["message"] == {"role": "assistant", "content": "hi"}
    assert done["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert chunk("id1", "m", None, usage={"x": 1}, with_usage_field=True)["choices"] == []
    assert "usage" not in chunk("id1", "m", {"content": "a"})
