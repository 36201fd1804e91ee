"""The HTTP server: OpenAI-compatible routes and the chat page, over one `Scheduler`.

    GET  /                      the chat page (static/index.html: no build step, nothing from a CDN)
    GET  /health                liveness and load
    GET  /v1/models             the one model served
    POST /v1/chat/completions   chat, streamed (server-sent events) or whole

A request handler only validates (protocol.py), decodes images and tokenizes (in a worker thread,
off the event loop), then submits to the scheduler and relays its events. Every failure leaves as an
OpenAI error object; an unexpected one is logged here and the client gets a plain 500 without a
traceback, and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from picovlm.engine.pipeline import Pipeline
from picovlm.engine.sampling import SamplingParams
from picovlm.serve.protocol import (
    APIError,
    ChatRequest,
    Limits,
    chunk,
    completion,
    decode_image,
    new_id,
    parse_chat_request,
    usage,
)
from picovlm.serve.scheduler import Event, QueueFull, Scheduler
from picovlm.text.chat import render_prompt

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"


@dataclass
class Prepared:
    ids: list[int]
    pixels: torch.Tensor
    params: SamplingParams


def prepare(pipe: Pipeline, req: ChatRequest, limits: Limits) -> Prepared:
    """Count tokens (refusing what cannot fit before decoding any image), decode images, encode."""
    try:
        text_ids = render_prompt(pipe.tokenizer, req.messages)
    except ValueError as e:
        raise APIError(400, str(e), "messages") from None
    context = pipe.processor.max_len
    n_prompt = len(text_ids) + len(req.image_sources) * (pipe.processor.tokens_per_image - 1)
    max_tokens = req.max_tokens if req.max_tokens is not None else context - n_prompt
    if n_prompt + max(max_tokens, 1) > context:
        raise APIError(
            400,
            f"the prompt is {n_prompt} tokens ({len(req.image_sources)} images x "
            f"{pipe.processor.tokens_per_image} included); with {max_tokens} new tokens it exceeds "
            f"the model's context of {context}",
            "messages",
            "context_length_exceeded",
        )
    images = [decode_image(param, url, limits) for param, url in req.image_sources]
    try:
        enc = pipe.processor.encode_prompt(req.messages, images, reserve=max_tokens)
        params = SamplingParams(
            max_tokens=max_tokens,
            temperature=req.temperature,
            top_k=req.top_k,
            top_p=req.top_p,
            stop=req.stop,
            seed=req.seed,
        )
    except ValueError as e:
        raise APIError(400, str(e)) from None
    return Prepared(enc.ids, enc.pixels, params)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refusing more than `limit` bytes without reading them all first."""
    too_large = APIError(413, f"the request body is larger than {limit} bytes", code="request_too_large")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise too_large
    return bytes(body)


def _sse(obj: dict | str) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n"


def create_app(
    pipe: Pipeline,
    model_name: str = "picovlm",
    api_key: str | None = None,
    limits: Limits | None = None,
    max_batch: int = 16,
) -> FastAPI:
    """The app; its scheduler thread starts and stops with the app's lifespan."""
    limits = limits or Limits()
    scheduler = Scheduler(pipe, max_batch=max_batch)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        scheduler.start()
        yield
        scheduler.close()

    app = FastAPI(title="picovlm", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.scheduler = scheduler

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(APIError(e.status_code, str(e.detail), code=None).body(), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        body = APIError(500, "internal server error", type="server_error").body()
        return JSONResponse(body, status_code=500)

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise APIError(401, "missing or incorrect API key (send Authorization: Bearer KEY)", code="invalid_api_key")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": model_name, "running": scheduler.running, "waiting": scheduler.waiting}

    def model_card() -> dict:
        return {"id": model_name, "object": "model", "created": 0, "owned_by": "picovlm"}

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        check_key(request)
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str, request: Request) -> dict:
        check_key(request)
        if name != model_name:
            raise APIError(404, f"the model {name!r} does not exist", "model", "model_not_found")
        return model_card()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        check_key(request)
        raw = await _read_body(request, limits.max_body_bytes)
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise APIError(400, f"the request body is not valid JSON ({e})", code="invalid_json") from None
        req = parse_chat_request(body, model_name, limits)
        prep = await run_in_threadpool(prepare, pipe, req, limits)

        loop, events = asyncio.get_running_loop(), asyncio.Queue()
        try:
            handle = scheduler.submit(
                prep.ids,
                prep.pixels,
                prep.params,
                emit=lambda ev: loop.call_soon_threadsafe(events.put_nowait, ev),
                ignore_eos=req.ignore_eos,
            )
        except QueueFull as e:
            raise APIError(503, str(e), code="server_overloaded", type="server_error") from None
        cid = new_id()

        async def relay() -> AsyncIterator[list[Event]]:
            """The request's events, all that are ready at once (one write for several tokens when the
            client falls behind); if the client leaves first (cancellation), its row is freed."""
            finished = False
            try:
                while not finished:
                    ready = [await events.get()]
                    while not events.empty():
                        ready.append(events.get_nowait())
                    finished = ready[-1].finish_reason is not None
                    yield ready
            finally:
                if not finished:
                    handle.cancel()

        if not req.stream:
            pieces, last = [], Event()
            async for ready in relay():
                pieces += [e.text for e in ready]
                last = ready[-1]
            if last.error is not None:
                raise APIError(500, f"generation failed: {last.error}", type="server_error")
            return completion(
                cid, model_name, "".join(pieces), last.finish_reason, handle.prompt_tokens, last.completion_tokens
            )

        def piece(delta: dict | None, finish: str | None = None, use: dict | None = None) -> str:
            return _sse(chunk(cid, model_name, delta, finish, use, with_usage_field=req.include_usage))

        async def stream() -> AsyncIterator[str]:
            yield piece({"role": "assistant", "content": ""})
            async for ready in relay():
                out = []
                for event in ready:
                    if event.error is not None:
                        yield _sse(APIError(500, f"generation failed: {event.error}", type="server_error").body())
                        return
                    if event.text:
                        out.append(piece({"content": event.text}))
                    if event.finish_reason is not None:
                        out.append(piece({}, event.finish_reason))
                        if req.include_usage:
                            out.append(piece(None, use=usage(handle.prompt_tokens, event.completion_tokens)))
                yield "".join(out)
            yield _sse("[DONE]")

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    return app


def run_server(
    model: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    name: str = "picovlm",
    api_key: str | None = None,
    limits: Limits | None = None,
    max_batch: int = 16,
) -> None:
    """Load a checkpoint and serve it until interrupted."""
    import uvicorn

    pipe = Pipeline.load(model)
    app = create_app(pipe, name, api_key=api_key, limits=limits, max_batch=max_batch)
    started = time.time()
    log.info("serving %s as %r on http://%s:%d", model, name, host, port)
    uvicorn.run(app, host=host, port=port, log_level="info")
    log.info("stopped after %.0f s", time.time() - started)
