"""The HTTP server: OpenAI-compatible routes and the chat page, over one `Scheduler`.

    GET  /                      the chat page (static/index.html: no build step, nothing from a CDN)
    GET  /health                liveness and load
    GET  /openapi.json          the OpenAPI schema of the routes (schema.py)
    GET  /v1/models             the one model served
    POST /v1/chat/completions   chat, streamed (server-sent events) or whole

A request handler only validates (protocol.py), decodes images and tokenizes, then submits to the
scheduler and relays its events. Decoding images and tokenizing run in a small pool of worker threads,
off the event loop; each request holds one full-size decoded image at most, and text too long for the
context is refused by its length before it is tokenized (`Limits.fitted`), so the memory and time a
request can take are bounded, and /health answers while it is prepared. Every failure leaves as an
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
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from picovlm.engine.pipeline import Pipeline
from picovlm.engine.sampling import SamplingParams
from picovlm.models.modalities import MODALITIES
from picovlm.serve import schema
from picovlm.serve.config import ServeConfig
from picovlm.serve.protocol import (
    APIError,
    ChatRequest,
    Limits,
    chunk,
    completion,
    content_of,
    decode_image,
    decode_json,
    decode_media,
    image_part,
    new_id,
    parse_chat_request,
    usage,
)
from picovlm.serve.scheduler import Event, Handle, QueueFull, Scheduler
from picovlm.text.chat import render_prompt

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy may hold pieces back


# ---------------------------------------------------------------------------- a request, before the scheduler


@dataclass
class Prepared:
    ids: list[int]
    pixels: torch.Tensor | None  # None: a native model (its images are in `ids`, as codes)
    params: SamplingParams
    media: dict[str, torch.Tensor] = field(default_factory=dict)  # videos, audio: `VLM.forward(**media)`


def prepare(pipe: Pipeline, req: ChatRequest, limits: Limits) -> Prepared:
    """Count tokens (refusing what cannot fit before decoding any input), decode the inputs, encode.
    Each image is preprocessed as soon as it is decoded, so one full-size image is held at a time
    (eight 36-megapixel PNGs, 1.2 MB of request, took the server from 0.3 to 1.55 GB at once); a video
    is probed only, its sampled frames decoded by `prepare`."""
    max_tokens = _new_tokens(pipe, req)
    if pipe.draws:
        return _prepare_native(pipe, req, limits, max_tokens)
    proc = pipe.processor
    pixels = [proc.image_processor([decode_image(param, url, limits)]) for param, url in req.image_sources]
    media: dict[str, list] = {}
    for modality, param, data in req.media_sources:
        media.setdefault(modality, []).append(decode_media(modality, param, data, limits))
    try:
        counts = {name: len(items) for name, items in media.items()}
        enc = proc.encode_prompt_ids(req.messages, len(pixels), reserve=max_tokens, counts=counts)
        tensors = proc.prepare(media)
        params = _sampling(req, max_tokens)
    except ValueError as e:
        raise APIError(400, str(e)) from None
    return Prepared(enc.ids, torch.cat(pixels) if pixels else proc.image_processor([]), params, tensors)


def _prepare_native(pipe: Pipeline, req: ChatRequest, limits: Limits, max_tokens: int) -> Prepared:
    """`prepare` for a native model: each image (the user's, or one it drew earlier in the
    conversation) becomes its codes as soon as it is decoded; no pixels reach the model."""
    proc = pipe.processor
    codes = [proc.encode_images([decode_image(param, url, limits)])[0] for param, url in req.image_sources]
    try:
        enc = proc.encode_prompt_codes(req.messages, codes, reserve=max_tokens)
        params = _sampling(req, max_tokens)
    except ValueError as e:
        raise APIError(400, str(e)) from None
    return Prepared(enc.ids, None, params)


def _sampling(req: ChatRequest, max_tokens: int) -> SamplingParams:
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=req.temperature,
        top_k=req.top_k,
        top_p=req.top_p,
        stop=req.stop,
        seed=req.seed,
    )


def _new_tokens(pipe: Pipeline, req: ChatRequest) -> int:
    """How many tokens the answer may have: max_tokens, or what the context leaves; refused if the
    prompt (each image counted as its tokens) and that many new tokens do not fit."""
    try:
        text_ids = render_prompt(pipe.tokenizer, req.messages, drawn_images=pipe.draws)
    except ValueError as e:
        raise APIError(400, str(e), "messages") from None
    context, per_image = pipe.processor.max_len, pipe.processor.tokens_per_placeholder
    n_prompt = len(text_ids) + len(req.image_sources) * (per_image - 1)
    for modality, param, _ in req.media_sources:  # each becomes its tokens (what the model does not read: refused)
        if modality not in pipe.processor.media:
            raise APIError(
                400, f"this model reads no {MODALITIES[modality].plural}", param, f"{modality}_not_supported"
            )
        n_prompt += pipe.processor.tokens_per(modality) - 1
    max_tokens = req.max_tokens if req.max_tokens is not None else context - n_prompt
    if n_prompt + max(max_tokens, 1) > context:
        raise APIError(
            400,
            f"the prompt is {n_prompt} tokens ({len(req.image_sources)} images x {per_image} included); "
            f"with {max_tokens} new tokens it exceeds the model's context of {context}",
            "messages",
            "context_length_exceeded",
        )
    return max_tokens


async def _read_json(request: Request, limits: Limits) -> object:
    """The decoded JSON body, refusing more than `limits.max_body_bytes` without reading them all first."""
    limit = limits.max_body_bytes
    too_large = APIError(413, f"the request body is larger than {limit} bytes", code="request_too_large")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise too_large
    return decode_json(bytes(body), limits)


# ---------------------------------------------------------------------------- a request in the scheduler


class Answer:
    """One submitted request as the event loop sees it: the scheduler thread puts its events on an
    asyncio queue, and the answer is read off it whole or as server-sent events."""

    def __init__(self, scheduler: Scheduler, prep: Prepared, req: ChatRequest, model_name: str):
        """Submit the request (a full queue is a 503, for the client to retry)."""
        loop, self.events = asyncio.get_running_loop(), asyncio.Queue()
        try:
            self.handle: Handle = scheduler.submit(
                prep.ids,
                prep.pixels,
                prep.params,
                emit=lambda ev: loop.call_soon_threadsafe(self.events.put_nowait, ev),
                ignore_eos=req.ignore_eos,
                media=prep.media,
            )
        except QueueFull as e:
            raise APIError(503, str(e), code="server_overloaded", type="server_error") from None
        self.id, self.model_name, self.include_usage = new_id(), model_name, req.include_usage

    async def ready(self) -> AsyncIterator[list[Event]]:
        """The events, all that are ready at once (one write for several tokens when the client
        falls behind); if the client leaves first (cancellation), its row is freed."""
        finished = False
        try:
            while not finished:
                ready = [await self.events.get()]
                while not self.events.empty():
                    ready.append(self.events.get_nowait())
                finished = ready[-1].finish_reason is not None
                yield ready
        finally:
            if not finished:
                self.handle.cancel()

    async def whole(self) -> dict:
        """The `chat.completion` object, once the answer is complete."""
        parts, last = [], Event()
        async for ready in self.ready():
            parts += [p for e in ready for p in (e.text, e.image) if p is not None]
            last = ready[-1]
        if last.error is not None:
            raise APIError(500, f"generation failed: {last.error}", type="server_error")
        content = content_of(parts)  # text, or text and image parts where the model drew
        return completion(
            self.id, self.model_name, content, last.finish_reason, self.handle.prompt_tokens, last.completion_tokens
        )

    async def stream(self) -> AsyncIterator[str]:
        """Server-sent `chat.completion.chunk`s: the role, the text pieces, the finish (and usage), [DONE].
        An image a native model drew comes whole, in the chunk of the step that closed its span, as a
        delta whose content is a list of one image part (text deltas stay strings)."""
        yield self._chunk({"role": "assistant", "content": ""})
        async for ready in self.ready():
            failed = next((e for e in ready if e.error is not None), None)
            if failed is not None:
                yield _sse(APIError(500, f"generation failed: {failed.error}", type="server_error").body())
                return
            yield "".join(self._chunks(event) for event in ready)
        yield _sse("[DONE]")

    def _chunks(self, event: Event) -> str:
        out = self._chunk({"content": event.text}) if event.text else ""
        if event.image is not None:
            out += self._chunk({"content": [image_part(event.image)]})
        if event.finish_reason is not None:
            out += self._chunk({}, event.finish_reason)
            if self.include_usage:
                out += self._chunk(None, use=usage(self.handle.prompt_tokens, event.completion_tokens))
        return out

    def _chunk(self, delta: dict | None, finish: str | None = None, use: dict | None = None) -> str:
        return _sse(chunk(self.id, self.model_name, delta, finish, use, with_usage_field=self.include_usage))


def _sse(obj: dict | str) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n"


# ---------------------------------------------------------------------------- routes


class Routes:
    """The route handlers, over one pipeline, its scheduler, the pool that prepares requests and the
    config (no global state). The limits are the config's, fitted to the model's context."""

    def __init__(self, pipe: Pipeline, scheduler: Scheduler, pool: ThreadPoolExecutor, cfg: ServeConfig):
        self.pipe, self.scheduler, self.pool, self.cfg = pipe, scheduler, pool, cfg
        self.limits = cfg.limits.fitted(pipe.processor.max_len, pipe.tokenizer.max_token_chars)

    def check_key(self, request: Request) -> None:
        key = self.cfg.api_key
        if key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise APIError(401, "missing or incorrect API key (send Authorization: Bearer KEY)", code="invalid_api_key")

    async def page(self) -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    async def health(self) -> dict:
        s = self.scheduler
        return {
            "status": "ok",
            "model": self.cfg.model_name,
            "running": s.running,
            "waiting": s.waiting,
            "rows": len(s.batch),
        }

    def model_card(self) -> dict:
        return {"id": self.cfg.model_name, "object": "model", "created": 0, "owned_by": "picovlm"}

    async def models(self, request: Request) -> dict:
        self.check_key(request)
        return {"object": "list", "data": [self.model_card()]}

    async def model(self, name: str, request: Request) -> dict:
        self.check_key(request)
        if name != self.cfg.model_name:
            raise APIError(404, f"the model {name!r} does not exist", "model", "model_not_found")
        return self.model_card()

    async def chat_completions(self, request: Request) -> dict | StreamingResponse:
        """Validate, tokenize and decode the images off the event loop, submit, then answer."""
        self.check_key(request)
        limits = self.limits
        body = await _read_json(request, limits)
        req = parse_chat_request(body, self.cfg.model_name, limits, drawn_images=self.pipe.draws)
        prep = await asyncio.get_running_loop().run_in_executor(self.pool, prepare, self.pipe, req, limits)
        answer = Answer(self.scheduler, prep, req, self.cfg.model_name)
        if not req.stream:
            return await answer.whole()
        return StreamingResponse(answer.stream(), media_type="text/event-stream", headers=STREAM_HEADERS)

    def add_to(self, app: FastAPI) -> None:
        app.get("/", include_in_schema=False)(self.page)
        app.get("/health", response_model=schema.Health)(self.health)
        app.get("/v1/models", response_model=schema.ModelList, responses=schema.errors(401))(self.models)
        app.get("/v1/models/{name:path}", response_model=schema.ModelCard, responses=schema.errors(401, 404))(
            self.model
        )
        # a dict or a stream: described by schema.CHAT_ROUTE, not checked by FastAPI
        app.post("/v1/chat/completions", response_model=None, **schema.CHAT_ROUTE)(self.chat_completions)


# ---------------------------------------------------------------------------- errors


async def _api_error(request: Request, e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
    """Starlette's own errors (unknown route 404, wrong method 405) in OpenAI's shape too."""
    return JSONResponse(APIError(e.status_code, str(e.detail), code=None).body(), status_code=e.status_code)


async def _unexpected(request: Request, e: Exception) -> JSONResponse:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    body = APIError(500, "internal server error", type="server_error").body()
    return JSONResponse(body, status_code=500)


# ---------------------------------------------------------------------------- the app


def create_app(pipe: Pipeline, cfg: ServeConfig | None = None) -> FastAPI:
    """The app; its scheduler thread starts and stops with the app's lifespan."""
    cfg = cfg or ServeConfig()
    scheduler = Scheduler(pipe, max_batch=cfg.max_batch)
    pool = ThreadPoolExecutor(cfg.prepare_threads, thread_name_prefix="picovlm-prepare")  # threads start on use

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        scheduler.start()
        yield
        scheduler.close()
        pool.shutdown(cancel_futures=True)

    # no docs pages: they load their scripts from a CDN
    app = FastAPI(title="picovlm", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    app.state.scheduler = scheduler
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
    Routes(pipe, scheduler, pool, cfg).add_to(app)
    schema.install(app, cfg.model_name, auth=cfg.api_key is not None)
    return app


def run_server(
    model: str | Path, cfg: ServeConfig | None = None, quantize: str | None = None, compile_decode: bool = False
) -> None:
    """Load a checkpoint (`quantize`, `compile_decode`: see `Pipeline.load`) and serve it until interrupted."""
    import uvicorn

    cfg = cfg or ServeConfig()
    pipe = Pipeline.load(model, quantize=quantize, compile_decode=compile_decode)
    app = create_app(pipe, cfg)
    started = time.time()
    log.info("serving %s as %r on http://%s:%d", model, cfg.model_name, cfg.host, cfg.port)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="info")
    log.info("stopped after %.0f s", time.time() - started)
