"""The OpenAI chat-completions format, both ways: a request body -> what picovlm needs, and picovlm's
answer -> response and stream-chunk objects. Pure functions, no HTTP, so every rule is testable.

Only what a small VLM can honour is accepted: text and image parts (and, for a model that reads
them, audio as OpenAI's `input_audio` parts and videos as `video_url` parts holding a data URL of an
.mp4 or .webm, as vLLM takes them, with size and duration limits), one choice (n=1), sampling by
temperature/top_p (and top_k, an extension), stop strings, a seed. A field we cannot honour with
a non-default value is refused with a clear error instead of being silently ignored; fields that
do not change the answer (user, metadata, ...) are ignored.

Every problem becomes an `APIError`: an HTTP status plus OpenAI's error object
`{"error": {"message", "type", "param", "code"}}`, with `param` naming the offending field. That
includes what Python's own decoding lets through: NaN and infinities (JSON has neither, `json` reads
them), integers past what torch takes, lone UTF-16 surrogates ("\ud800" decodes to a string that no
encoder accepts), nesting past the recursion limit. Values are quoted back with `reprlib`, cut short.

Cost is bounded before it is spent: a body with more JSON values, or messages with more characters,
than any request that fits the model's context could have is refused before it is decoded or
tokenized (`Limits.fitted`).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import json
import math
import re
import reprlib
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from picovlm.audio.wave import AudioError, load_audio
from picovlm.text.tokens import AUDIO, IMAGE, MEDIA_TOKENS, SPECIAL_TOKENS, VIDEO
from picovlm.video.decode import VideoError, load_video
from picovlm.vision.image import MAX_IMAGE_PIXELS, ImageError, ImageTooLarge, load_image


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class Limits:
    """What one request may ask of the server."""

    max_images: int = 8  # per request, the whole conversation
    max_image_pixels: int = MAX_IMAGE_PIXELS  # checked from the header, before decoding
    max_image_bytes: int = 8 * 1024 * 1024  # encoded size of one image
    max_body_bytes: int = 32 * 1024 * 1024  # the whole JSON body
    allow_image_urls: bool = False  # fetch http(s) image URLs (off: the server reaches nothing on its own)
    url_timeout_s: float = 10.0
    max_media: int = 4  # videos and audio clips per request, the whole conversation
    max_media_bytes: int = 16 * 1024 * 1024  # encoded size of one video or audio clip
    max_video_seconds: float = 30.0  # read from the packets' timestamps before any frame is decoded
    max_audio_seconds: float = 30.0  # read from the header before any sample is decoded
    # bounds that follow from the model (`fitted`); None: not checked
    max_prompt_chars: int | None = None  # the messages' text, in characters
    max_json_values: int | None = None  # "," "[" "{" in the body: what decoding it costs, in Python objects

    def fitted(self, context: int, max_token_chars: int) -> Limits:
        """These limits with the bounds that a model's context implies, where they are not set.

        One token stands for at most `max_token_chars` characters, so messages of more than
        (context - 1) * max_token_chars characters are more than context - 1 tokens: no room is left for
        one new token, and they are refused without tokenizing them (a 10 MB prompt took 13 s of
        tokenizing, holding the GIL, and 0.8 GB). A request that fits has at most about ten JSON values
        per token or character (each message costs a token, each content part a character), plus the
        other fields; a body of more is refused before it is decoded (28 MB of `[],` decode to 0.7 GB of
        lists, in 8 s)."""
        chars = (context - 1) * max_token_chars
        return dataclasses.replace(
            self,
            max_prompt_chars=chars if self.max_prompt_chars is None else self.max_prompt_chars,
            max_json_values=10 * (context + chars) + 1024 if self.max_json_values is None else self.max_json_values,
        )


@dataclass
class ChatRequest:
    """A validated request: the conversation in picovlm's template form and how to sample."""

    messages: list[dict[str, str]]  # user/assistant turns; each image is an <|image|> in the text
    image_sources: list[tuple[str, str]]  # (param path, data or http(s) URL), in placeholder order
    max_tokens: int | None  # None: as many as the context leaves
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    stream: bool = False
    include_usage: bool = False
    ignore_eos: bool = False  # extension (as in vLLM): decode exactly max_tokens tokens, for benchmarks
    # (modality, param path, base64 data or data URL) of each video and audio clip, in placeholder order
    media_sources: list[tuple[str, str, str]] = field(default_factory=list)


SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed accepts
_SURROGATE = re.compile("[\ud800-\udfff]")  # in a str from `json`, always a lone one (pairs are joined)
_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^;,]*)*?),(?P<data>.*)$", re.DOTALL)
_UNSUPPORTED = {  # field -> the only value(s) we can honour
    "logprobs": (None, False),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "response_format": (None, {"type": "text"}),
    "frequency_penalty": (None, 0, 0.0),
    "presence_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}),
}


def _bad(message: str, param: str | None = None, code: str | None = None, status: int = 400) -> APIError:
    return APIError(status, message, param, code)


def _show(value: Any) -> str:
    """A client's value quoted in a message: short, whatever its size or depth."""
    return reprlib.repr(value)


def _number(body: dict, name: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(f"{name} must be a number, got {type(value).__name__}", name)
    if isinstance(value, float) and not math.isfinite(value):
        raise _bad(f"{name} must be a finite number, got {value}", name)
    if value > hi or value < lo or (lo_open and value == lo):
        interval = f"{'(' if lo_open else '['}{lo}, {hi}]"
        raise _bad(f"{name} must be in {interval}, got {_show(value)}", name)
    return float(value)


def _integer(body: dict, name: str, lo: int, hi: int | None = None) -> int | None:
    """An integer field; 2.0 is the integer 2, as JSON Schema has it (JSON has just numbers)."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"{name} must be an integer, got {_show(value)}", name)
    if value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise _bad(f"{name} must be {bound}, got {_show(value)}", name)
    return value


def _unicode(text: str, where: str) -> str:
    """`text`, unless it holds a lone surrogate (which the tokenizer and every encoder refuse)."""
    bad = None if text.isascii() else _SURROGATE.search(text)  # isascii: 26 MB in microseconds, not 0.1 s
    if bad is not None:
        raise _bad(f"{where} is not valid Unicode (a lone surrogate at character {bad.start()})", where)
    return text


USER_PARTS = frozenset({"image_url", "input_audio", "video_url"})  # what user messages may hold besides text
DRAWN_PARTS = frozenset({"image_url"})  # what a native model's answers may hold: the images it drew


def _text_of(
    content: Any, param: str, kinds: frozenset[str], images: list[tuple[str, str]], media: list[tuple[str, str, str]]
) -> str:
    """A message's content (a string or a list of parts; `kinds`: the part types other than text it may
    have) as template text with <|image|> (<|video|>, <|audio|>) placeholders; the image sources are
    appended to `images`, the others' to `media`."""
    if content is None:
        return ""
    if isinstance(content, str):
        return _part_text({"type": "text", "text": content}, param, kinds, images, media)
    if not isinstance(content, list):
        raise _bad(f"{param} must be a string or a list of content parts", param)
    return "\n".join(_part_text(part, f"{param}[{j}]", kinds, images, media) for j, part in enumerate(content))


def _media_part(kind: str, part: dict, where: str, media: list[tuple[str, str, str]]) -> str:
    """An `input_audio` part ({"data": base64, "format": "wav"}) or a `video_url` part ({"url": a data
    URL}): its source goes to `media`, its placeholder into the text."""
    spec = part.get(kind)
    if kind == "input_audio":
        data = spec.get("data") if isinstance(spec, dict) else None
        if not isinstance(data, str):
            raise _bad(f"{where}.input_audio.data must be a string (base64 audio)", f"{where}.input_audio")
        media.append(("audio", f"{where}.input_audio", data))
        return AUDIO
    url = spec.get("url") if isinstance(spec, dict) else spec
    if not isinstance(url, str):
        raise _bad(f"{where}.video_url.url must be a string (a data URL)", f"{where}.video_url")
    media.append(("video", f"{where}.video_url", url))
    return VIDEO


def _part_text(
    part: Any, where: str, kinds: frozenset[str], images: list[tuple[str, str]], media: list[tuple[str, str, str]]
) -> str:
    """One content part: its text, or <|image|> for an image (whose source goes to `images`), or the
    placeholder of a video or audio clip (whose source goes to `media`)."""
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise _bad(f"{where}.text must be a string", f"{where}.text")
        _unicode(text, where)
        for special in (*SPECIAL_TOKENS, *MEDIA_TOKENS):
            if special in text:
                raise _bad(f"{where}: text may not contain the special token {special}", where)
        return text
    if kind == "image_url" and kind in kinds:
        spec = part.get("image_url")
        url = spec.get("url") if isinstance(spec, dict) else spec
        if not isinstance(url, str):
            raise _bad(f"{where}.image_url.url must be a string (a data URL)", f"{where}.image_url")
        images.append((f"{where}.image_url", url))
        return IMAGE
    if kind in ("input_audio", "video_url") and kind in kinds:
        return _media_part(kind, part, where, media)
    if kind in USER_PARTS:
        raise _bad(
            f"{where}: only user messages may contain images, videos and audio (and a drawing model's answers, "
            "the images it drew)",
            where,
        )
    raise _bad(
        f"{where}: unsupported content part type {_show(kind)} (use 'text', 'image_url', 'input_audio' or 'video_url')",
        where,
    )


def parse_chat_request(body: Any, model_name: str, limits: Limits, drawn_images: bool = False) -> ChatRequest:
    """Validate a decoded JSON body; raise APIError saying which field is wrong and why.
    The checks run in a fixed order, so a body with several problems always names the same one.
    `drawn_images`: the model draws (a native model), so assistant messages may hold image parts, the
    images it drew, sent back with the conversation (decoded and counted as the user's are)."""
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object")
    _check_model(body, model_name)
    _refuse_unsupported(body)
    messages, images, media = _conversation(body.get("messages"), limits, DRAWN_PARTS if drawn_images else frozenset())
    max_tokens = _integer(body, "max_completion_tokens", 1)
    if max_tokens is None:
        max_tokens = _integer(body, "max_tokens", 1)
    stop = _stop_strings(body.get("stop"))
    stream = _boolean(body, "stream")
    options = body.get("stream_options")
    if options is not None and (not isinstance(options, dict) or (options and not stream)):
        raise _bad("stream_options is an object, and only allowed with stream=true", "stream_options")
    options = options or {}
    include_usage = _boolean(options, "include_usage", "stream_options.include_usage")
    seed = _integer(body, "seed", *SEED_RANGE)
    ignore_eos = _boolean(body, "ignore_eos")
    if ignore_eos and max_tokens is None:
        raise _bad("ignore_eos needs max_tokens", "max_tokens")
    return ChatRequest(
        messages=messages,
        image_sources=images,
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True),
        top_k=_integer(body, "top_k", 0) or 0,
        stop=stop,
        seed=seed,
        stream=stream,
        include_usage=include_usage,
        ignore_eos=ignore_eos,
        media_sources=media,
    )


def _check_model(body: dict, model_name: str) -> None:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model is required (see GET /v1/models)", "model")
    if model != model_name:
        raise APIError(
            404, f"the model {_show(model)} does not exist; this server has {model_name!r}", "model", "model_not_found"
        )


def _refuse_unsupported(body: dict) -> None:
    """A field we cannot honour, set to anything but its default, is an error (not silently ignored)."""
    for name, allowed in _UNSUPPORTED.items():
        if name in body and body[name] not in allowed:
            raise _bad(f"{name} is not supported by this server", name, "unsupported_parameter")
    n = _integer(body, "n", 1)
    if n not in (None, 1):
        raise _bad("only n=1 is supported", "n", "unsupported_parameter")


def _conversation(
    raw: Any, limits: Limits, answer_parts: frozenset[str] = frozenset()
) -> tuple[list[dict[str, str]], list[tuple[str, str]], list[tuple[str, str, str]]]:
    """(user/assistant messages in template form, image sources and video/audio sources in placeholder
    order). picovlm's template has no system turn: system/developer text is put in front of the next
    user message."""
    if not isinstance(raw, list) or not raw:
        raise _bad("messages must be a non-empty list", "messages")
    messages: list[dict[str, str]] = []
    images: list[tuple[str, str]] = []
    media: list[tuple[str, str, str]] = []
    system: list[str] = []
    chars = 0
    for i, m in enumerate(raw):
        param = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _bad(f"{param} must be an object with role and content", param)
        role = m.get("role")
        if role not in ("system", "developer", "user", "assistant"):
            raise _bad(f"{param}.role must be system, user or assistant, got {_show(role)}", f"{param}.role")
        kinds = USER_PARTS if role == "user" else answer_parts if role == "assistant" else frozenset()
        text = _text_of(m.get("content"), f"{param}.content", kinds, images, media)
        chars += len(text)
        if limits.max_prompt_chars is not None and chars > limits.max_prompt_chars:
            raise _bad(
                f"the messages are more than {limits.max_prompt_chars} characters: more than fit the model's "
                "context, whatever the tokenizer makes of them",
                "messages",
                "context_length_exceeded",
            )
        if role == "user":
            messages.append({"role": "user", "content": "\n\n".join([*system, text])})
            system = []
        elif role == "assistant":
            messages.append({"role": "assistant", "content": text})
        else:
            system.append(text)
    if not messages or messages[-1]["role"] != "user":
        raise _bad("the last message must be from the user", "messages")
    if len(images) > limits.max_images:
        raise _bad(
            f"{len(images)} images in the conversation; at most {limits.max_images} are allowed",
            "messages",
            "too_many_images",
        )
    if len(media) > limits.max_media:
        raise _bad(
            f"{len(media)} videos and audio clips in the conversation; at most {limits.max_media} are allowed",
            "messages",
            "too_many_media",
        )
    return messages, images, media


def _stop_strings(stop: Any) -> tuple[str, ...]:
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise _bad("stop must be a non-empty string or a list of at most 4 of them", "stop")
    return tuple(_unicode(s, "stop") for s in stop)


def _boolean(body: dict, name: str, param: str | None = None) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _bad(f"{param or name} must be a boolean", param or name)
    return value


def decode_json(data: bytes, limits: Limits) -> Any:
    """The request body, decoded; refused (before decoding, where it can be told) if it cannot be."""
    values = data.count(b",") + data.count(b"[") + data.count(b"{")
    if limits.max_json_values is not None and values > limits.max_json_values:
        raise _bad(
            f"the request body has more than {limits.max_json_values} JSON values: more than a request that fits "
            "the model's context can have",
            code="request_too_complex",
        )
    try:
        return json.loads(data)
    except RecursionError:
        raise _bad("the request body is nested too deeply", code="invalid_json") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _bad(f"the request body is not valid JSON ({e})", code="invalid_json") from None
    except ValueError:  # an integer of more digits than Python converts
        digits = sys.get_int_max_str_digits()
        raise _bad(f"the request body has a number of more than {digits} digits", code="invalid_json") from None


def image_bytes(param: str, url: str, limits: Limits) -> bytes:
    """The encoded image behind a data URL (or, when allowed, an http(s) URL)."""
    if url.startswith(("http://", "https://")):
        if not limits.allow_image_urls:
            raise _bad(
                "this server does not fetch image URLs; send the image inline as a base64 data URL "
                "(data:image/png;base64,...), or start the server with --allow-image-urls",
                param,
                "image_url_not_allowed",
            )
        return _fetch(param, url, limits)
    match = _DATA_URL.match(url)
    if match is None or ";base64" not in match["params"]:
        raise _bad("an image must be a base64 data URL (data:image/png;base64,...)", param, "invalid_image_url")
    data = match["data"]
    if len(data) * 3 // 4 > limits.max_image_bytes:
        raise _bad(f"the image is larger than {limits.max_image_bytes} bytes", param, "image_too_large")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise _bad("the image data URL is not valid base64", param, "invalid_image") from None


def _fetch(param: str, url: str, limits: Limits) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=limits.url_timeout_s) as response:  # noqa: S310 (http(s) only)
            data = response.read(limits.max_image_bytes + 1)
    except (OSError, ValueError) as e:
        raise _bad(f"could not fetch the image URL ({e})", param, "invalid_image_url") from None
    if len(data) > limits.max_image_bytes:
        raise _bad(f"the image is larger than {limits.max_image_bytes} bytes", param, "image_too_large")
    return data


def decode_image(param: str, url: str, limits: Limits) -> Image.Image:
    """A data URL -> RGB image, with the decompression-bomb guard of `load_image`."""
    data = image_bytes(param, url, limits)
    try:
        return load_image(data, max_pixels=limits.max_image_pixels, name=param)
    except ImageTooLarge as e:
        raise _bad(str(e), param, "image_too_large") from None
    except ImageError as e:
        raise _bad(str(e), param, "invalid_image") from None


def media_bytes(modality: str, param: str, data: str, limits: Limits) -> bytes:
    """The encoded file behind a video's data URL or an audio part's base64, within the size limit."""
    if data.startswith("data:"):
        match = _DATA_URL.match(data)
        if match is None or ";base64" not in match["params"]:
            raise _bad("a video must be a base64 data URL (data:video/mp4;base64,...)", param, "invalid_media_url")
        data = match["data"]
    elif modality == "video":
        raise _bad(
            "a video must be a base64 data URL (data:video/mp4;base64,...); URLs are not fetched",
            param,
            "invalid_media_url",
        )
    if len(data) * 3 // 4 > limits.max_media_bytes:
        raise _bad(f"the file is larger than {limits.max_media_bytes} bytes", param, "media_too_large")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise _bad("the data is not valid base64", param, "invalid_media") from None


def decode_media(modality: str, param: str, data: str, limits: Limits) -> Any:
    """A video's data URL -> a probed `Video`, an audio part's base64 -> `Audio`; too long, too large
    or unreadable ones are refused before any frame or sample is decoded."""
    raw = media_bytes(modality, param, data, limits)
    try:
        if modality == "video":
            return load_video(raw, max_seconds=limits.max_video_seconds, name=param)
        return load_audio(raw, max_seconds=limits.max_audio_seconds, name=param)
    except (VideoError, AudioError) as e:
        raise _bad(str(e), param, f"invalid_{modality}") from None


# ---------------------------------------------------------------------------- responses


def new_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def image_part(image: Image.Image) -> dict:
    """A drawn image as an OpenAI content part: a PNG in a base64 data URL (what requests send too)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()},
    }


def content_of(parts: list[str | Image.Image]) -> str | list[dict]:
    """An answer's content: its text, or, when the model drew, a list of parts (text parts, the image
    parts where it drew them), the way a user message with images is written."""
    if all(isinstance(p, str) for p in parts):
        return "".join(parts)
    out: list[dict] = []
    for part in parts:
        if isinstance(part, Image.Image):
            out.append(image_part(part))
        elif out and out[-1]["type"] == "text":
            out[-1]["text"] += part
        elif part:
            out.append({"type": "text", "text": part})
    return out


def completion(
    cid: str,
    model: str,
    content: str | list[dict],
    finish_reason: str,
    prompt_tokens: int,
    completion_tokens: int,
) -> dict:
    return {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish_reason,
                "logprobs": None,
            }
        ],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chunk(
    cid: str,
    model: str,
    delta: dict | None,
    finish_reason: str | None = None,
    usage: dict | None = None,
    with_usage_field: bool = False,
) -> dict:
    """A `chat.completion.chunk`; delta None gives the usage-only chunk (empty choices)."""
    out: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
    out["choices"] = (
        [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]
    )
    if with_usage_field:
        out["usage"] = usage
    return out
