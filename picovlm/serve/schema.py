"""The routes' OpenAPI description, served at /openapi.json: what clients and fuzzers (schemathesis)
read to know what to send and what comes back.

These models describe, they do not validate: protocol.py does, so that every refusal is OpenAI's
error object naming the field (FastAPI's own validation would answer 422 in a shape of its own). The
description says what protocol.py accepts, field by field and range by range, and the fuzz test
(tests/serve/test_fuzz.py) holds the two together: requests drawn from it get no 5xx, and answers
match it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field

from picovlm.serve.protocol import SEED_RANGE

# ---------------------------------------------------------------------------- the request


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ImageURL(BaseModel):
    url: str = Field(description="a base64 data URL (data:image/png;base64,...); http(s) only if the server allows")
    detail: str | None = Field(None, description="ignored")


class ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: ImageURL


class SystemMessage(BaseModel):
    role: Literal["system", "developer"]
    content: str | list[TextPart] | None = Field(None, description="put in front of the next user message")


class UserMessage(BaseModel):
    role: Literal["user"]
    content: str | list[TextPart | ImagePart] | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str | list[TextPart] | None = None


Message = Annotated[SystemMessage | UserMessage | AssistantMessage, Field(discriminator="role")]
StopString = Annotated[str, Field(min_length=1)]


class StreamOptions(BaseModel):
    include_usage: bool | None = None


class ChatCompletionRequest(BaseModel):
    """POST /v1/chat/completions. Fields not listed here are ignored; OpenAI fields this server cannot
    honour (tools, logprobs, n > 1, penalties, ...) are refused unless set to their default."""

    model: str = Field(description="the served model's name (GET /v1/models)")
    messages: list[Message] = Field(min_length=1, description="the last one from the user")
    max_completion_tokens: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=1, description="default: what the context leaves")
    temperature: float | None = Field(None, ge=0, le=2, description="default 1; 0 is greedy")
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0, description="extension: sample from the k likeliest tokens (0: off)")
    stop: StopString | Annotated[list[StopString], Field(max_length=4)] | None = None
    seed: int | None = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    stream: bool | None = None
    stream_options: StreamOptions | None = Field(None, description="only with stream=true")
    n: Literal[1] | None = None
    ignore_eos: bool | None = Field(None, description="extension: decode exactly max_tokens tokens (benchmarks)")


# ---------------------------------------------------------------------------- the answers


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class AnswerMessage(BaseModel):
    role: Literal["assistant"]
    content: str | list[TextPart | ImagePart] = Field(
        description="the answer's text; a list of parts when a native model drew: text parts, and image parts "
        "(PNG data URLs) where it drew"
    )


class Choice(BaseModel):
    index: int
    message: AnswerMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok"]
    model: str
    running: int = Field(description="requests being decoded")
    waiting: int = Field(description="requests queued for a row")
    rows: int = Field(description="rows of the decoding batch (equals running, unless a slot leaked)")


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses` entry of a route that answers these error statuses with OpenAI's error object."""
    return {status: {"model": ErrorResponse} for status in statuses}


class StreamEvent(BaseModel):
    """One server-sent event of a streamed answer (before OpenAPI 3.2, the `schema` of an event stream
    describes each event)."""

    data: str = Field(description="a chat.completion.chunk as JSON, then [DONE]; or an error object, last")
    event: str | None = None


STREAM = {"text/event-stream": {"schema": StreamEvent.model_json_schema()}}
CHAT_ROUTE: dict[str, Any] = {
    "responses": {200: {"model": ChatCompletion, "content": STREAM}, **errors(400, 401, 404, 413, 500, 503)},
    "openapi_extra": {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ChatCompletionRequest"}}},
        }
    },
}


def install(app: FastAPI, model_name: str, auth: bool) -> None:
    """Make `app.openapi()` (which FastAPI serves at its openapi_url) FastAPI's own schema of the routes,
    plus the request body (`ChatCompletionRequest`), the served model's name where one is named, and,
    with `auth`, the bearer key on the /v1 routes."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            request = ChatCompletionRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(request.pop("$defs"))
            request["properties"]["model"]["enum"] = [model_name]
            components["ChatCompletionRequest"] = request
            (name,) = schema["paths"]["/v1/models/{name}"]["get"]["parameters"]
            name["schema"]["enum"] = [model_name]  # the one that exists (others: 404)
            if auth:
                schema["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
                for path, operations in schema["paths"].items():
                    if path.startswith("/v1/"):
                        for operation in operations.values():
                            operation["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
