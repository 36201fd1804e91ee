"""The request scheduler: one background thread owns the model and decodes every request in one batch.

Request handlers never touch the model. They `submit` an encoded prompt and receive `Event`s (text
pieces, then a finish reason) through a callback. The thread loops: admit waiting requests into the
running `DecodeBatch` (up to `max_batch` rows), drop rows whose client went away, run one decode
step for all rows, turn each row's new token into text. So requests that arrive together share
every forward pass, and a request that arrives mid-way joins at the next step instead of waiting
for the others to finish.

One request never fails another: a request whose prefill fails is tried again alone, and only a
request that fails alone is failed; a row whose draw or text raises ends that row only (the engine
isolates it). Only an error of the shared step itself (a bug) fails every running request, and the
thread starts over with an empty batch.

Text is produced here, not in the handlers: the engine turns each row's tokens into text pieces
(`TextStream`: detokenization, and stop strings held back until they are settled), and a stop string
ends the row at once, which frees its slot for the next request. So are a native model's drawings: an
image span in a row's answer becomes an image (engine/parts.py, the VQ decoder, on this thread, which
owns the model) on the event of the step that closes it; a span that fails to decode fails its
request alone.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from PIL import Image

from picovlm.engine.batch import DecodeBatch, Sequence, Step
from picovlm.engine.parts import AnswerParts
from picovlm.engine.pipeline import Pipeline
from picovlm.engine.sampling import SamplingParams

log = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    """Too many requests are waiting; the client should retry later."""


@dataclass
class Event:
    """What a request receives: a piece of text, the image that step drew (after the text), and on the
    last event why it ended.

    finish_reason is "stop" (end of answer or a stop string), "length" (max_tokens), or "error".
    """

    text: str = ""
    finish_reason: str | None = None
    completion_tokens: int = 0
    error: str | None = None
    image: Image.Image | None = None


@dataclass
class Handle:
    """A submitted request, as its submitter sees it."""

    key: int
    prompt_tokens: int
    _cancelled: threading.Event = field(default_factory=threading.Event, repr=False)
    _queue: queue.Queue | None = field(default=None, repr=False)

    def cancel(self) -> None:
        """The client is gone: the scheduler frees the row before its next step."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """For submitters without a callback: the events, until the last one."""
        assert self._queue is not None, "events() needs a request submitted without `emit`"
        while True:
            event = self._queue.get(timeout=timeout)
            yield event
            if event.finish_reason is not None:
                return


@dataclass
class _Request:
    handle: Handle
    seq: Sequence
    emit: Callable[[Event], None]
    parts: AnswerParts
    done: bool = False  # its last event was sent

    def deliver(self, event: Event) -> None:
        try:
            self.emit(event)
        except Exception:  # the receiver is gone (e.g. its event loop closed): nothing to tell
            log.debug("could not deliver an event of request %s", self.handle.key)


class Scheduler:
    """Owns the model; decodes all submitted requests together in a background thread."""

    def __init__(self, pipe: Pipeline, max_batch: int, max_waiting: int = 256):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.pipe, self.max_batch, self.max_waiting = pipe, max_batch, max_waiting
        self.batch = DecodeBatch(pipe.model, pipe.tokenizer)
        self._waiting: deque[_Request] = deque()
        self._running: dict[int, _Request] = {}
        self._wake = threading.Condition()
        self._ids = itertools.count()
        self._closed = False
        self._thread: threading.Thread | None = None
        self.stats = {"completed": 0, "cancelled": 0, "errors": 0, "steps": 0, "tokens": 0, "max_rows": 0}

    # ---------------------------------------------------------------- submitting (any thread)

    def submit(
        self,
        ids: list[int],
        pixels: torch.Tensor | None,
        params: SamplingParams,
        emit: Callable[[Event], None] | None = None,
        ignore_eos: bool = False,
        media: dict[str, torch.Tensor] | None = None,
    ) -> Handle:
        """Queue a prompt (ids with placeholders expanded; `media`: its videos' and audio clips' tensors);
        events go to `emit` (called from the scheduler thread, so it must be quick and thread-safe) or,
        without it, to `handle.events()`."""
        handle = Handle(next(self._ids), len(ids))
        if emit is None:
            handle._queue = queue.Queue()
            emit = handle._queue.put
        seq = Sequence(handle.key, ids, pixels, params, ignore_stop=ignore_eos, media=media or {})
        request = _Request(handle, seq, emit, AnswerParts(self.pipe.model))
        with self._wake:
            if self._closed:
                raise RuntimeError("the scheduler is closed")
            if len(self._waiting) >= self.max_waiting:
                raise QueueFull(f"{len(self._waiting)} requests are already waiting; try again later")
            self._waiting.append(request)
            self._wake.notify()
        return handle

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    # ---------------------------------------------------------------- the thread

    def start(self) -> Scheduler:
        self._thread = threading.Thread(target=self._loop, name="picovlm-scheduler", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._closed and not self._waiting and not self._running:
                    self._wake.wait()
                if self._closed:
                    break
                admitted = []
                while self._waiting and len(self._running) + len(admitted) < self.max_batch:
                    admitted.append(self._waiting.popleft())
            try:
                self._step(admitted)
            except Exception as e:  # a bug, not a bad request (those fail in submit's caller): keep serving
                log.exception("decode step failed")
                for r in [*admitted, *self._running.values()]:
                    self._finish(r, _failure(e))
                self._running.clear()
                self.batch = DecodeBatch(self.pipe.model, self.pipe.tokenizer)
        for r in [*self._waiting, *self._running.values()]:
            self._finish(r, Event(finish_reason="error", error="the server is shutting down"))

    def _step(self, admitted: list[_Request]) -> None:
        self.stats["cancelled"] += sum(r.handle.cancelled for r in admitted)
        admitted = [r for r in admitted if not r.handle.cancelled]
        if admitted:
            self._admit(admitted)
        gone = {k for k, r in self._running.items() if r.handle.cancelled}
        if gone:
            self.batch.remove(gone)
            for k in gone:
                del self._running[k]
            self.stats["cancelled"] += len(gone)
        if not self._running:
            return
        self.stats["max_rows"] = max(self.stats["max_rows"], len(self.batch))
        steps = self.batch.step()  # rows that ended have left the batch already
        self.stats["steps"] += 1
        self.stats["tokens"] += len(steps)
        for step in steps:
            self._deliver(self._running[step.key], step)

    def _deliver(self, r: _Request, step: Step) -> None:
        """Turn a row's step into its event: text, an image it finished drawing, its end or its failure."""
        error, image = step.error, None
        if error is None:
            try:
                image = next((p for p in r.parts.push(step) if isinstance(p, Image.Image)), None)
            except Exception as e:  # a span that does not decode: this request fails, alone
                error = e
                if not step.finished:
                    self.batch.remove({step.key})
        if error is not None:
            log.warning("request %s failed alone", step.key, exc_info=error)
            del self._running[step.key]
            self._finish(r, _failure(error, r.seq.generated))
        elif step.finished:
            del self._running[step.key]  # before telling the client, so it never sees its slot still taken
            self._finish(r, Event(step.text, step.finished, r.seq.generated, image=image))
        elif step.text or image is not None:
            r.deliver(Event(step.text, None, r.seq.generated, image=image))

    def _admit(self, admitted: list[_Request]) -> None:
        """Prefill the admitted requests together; if that fails, each alone, so that only a request
        that fails alone is failed (a prefill that fails changes nothing in the running batch)."""
        try:
            self.batch.add([r.seq for r in admitted])
        except Exception as e:
            if len(admitted) > 1:
                for r in admitted:
                    self._admit([r])
                return
            log.warning("request %s failed alone", admitted[0].handle.key, exc_info=e)
            self._finish(admitted[0], _failure(e))
            return
        self._running.update((r.handle.key, r) for r in admitted)

    def _finish(self, r: _Request, event: Event) -> None:
        """Send the last event (once: a request failed alone may be among those a failed step ends)."""
        if r.done:
            return
        r.done = True
        self.stats["completed" if event.error is None else "errors"] += 1
        r.deliver(event)


def _failure(e: Exception, completion_tokens: int = 0) -> Event:
    return Event(finish_reason="error", completion_tokens=completion_tokens, error=f"{type(e).__name__}: {e}")
