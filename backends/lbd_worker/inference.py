"""One inference request from its HTTP body to its answer, without a coroutine per request.

:class:`InferCall` is what the batcher resolves (it has a future's ``done``/``set_result``/
``set_exception``): the answer is encoded and written from there, on the loop, right after the
batch ran. Text requests are validated on the loop and tokenized on a thread by
:class:`Tokenizing`, every request that arrived while the last group was being tokenized in one
call of the tokenizer (which releases the GIL), so the loop does HTTP and JSON only.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any

from lbd_worker.batching import DynamicBatcher, Result
from lbd_worker.batching.queue import Entry
from lbd_worker.fasthttp import Exchange
from lbd_worker.metrics import ModelStats
from lbd_worker.models import Model, TextEmbeddingModel, Work
from lbd_worker.protocol import (
    HEADER_LENGTH, BadRequest, ExecutionFailed, InferenceError, InferRequest, Unavailable, encode_response,
)

if TYPE_CHECKING:
    from lbd_worker.server import WorkerServer

__all__ = ["InferCall", "Tokenizing", "failure_reason", "error_headers", "scheduling", "header_length"]

_log = logging.getLogger("lbd_worker.inference")
_HEADER_LENGTH = HEADER_LENGTH.encode()
_RETRY = b"Retry-After: 1\r\n"


class InferCall:
    """An admitted inference request: counted in flight until answered, exactly once."""

    __slots__ = ("server", "exchange", "model", "stats", "started", "inference", "priority", "timeout",
                 "batcher", "entry", "finished")

    def __init__(self, server: WorkerServer, exchange: Exchange, model: Model, stats: ModelStats) -> None:
        self.server, self.exchange, self.model, self.stats = server, exchange, model, stats
        self.started = server.clock.now()
        self.inference: InferRequest | None = None
        self.priority, self.timeout = 0, None
        self.batcher: DynamicBatcher | None = None
        self.entry: Entry | None = None
        self.finished = False
        server.inflight += 1
        exchange.on_lost = self.lost

    def submit(self, work: Work) -> None:
        """Queues ``work`` for its batch; a full queue or a closing model answers at once."""
        if self.finished:  # the client went away while it was tokenized
            return
        self.server.request_rows[self.model.name].observe(work.rows)
        batcher = self.batcher = self.server.batchers[self.model.name]
        try:
            self.entry = batcher.enqueue(work, self, priority=self.priority, timeout=self.timeout)
        except InferenceError as error:
            self.set_exception(error)

    # -- the batcher's side (a future's interface) ----------------------------------------
    def done(self) -> bool:
        return self.finished

    def set_result(self, result: Result) -> None:
        if self.finished:
            return
        inference, model = self.inference, self.model
        try:
            names = [output.name for output in inference.outputs] or [spec.name for spec in model.outputs]
            encoded = encode_response(model.name, model.version, inference,
                                      [(name, result.outputs[name]) for name in names])
        except Exception as error:  # noqa: BLE001 - the client gets a 500 that says why
            _log.exception("model %s: encoding a response failed", model.name)
            self.set_exception(ExecutionFailed(f"model '{model.name}': encoding the response failed: {error}"))
            return
        self._finish()
        stats = self.stats
        stats.request_success += 1
        stats.request_duration_us += (self.server.clock.now() - self.started) * 1e6
        headers = b"" if encoded.header_length is None else b"%s: %d\r\n" % (_HEADER_LENGTH, encoded.header_length)
        self.exchange.respond(200, encoded.body, encoded.content_type.encode(), headers)

    def set_exception(self, error: BaseException) -> None:
        if self.finished:
            return
        self._finish()
        if not isinstance(error, InferenceError):
            _log.error("model %s: %r", self.model.name, error)
            error = ExecutionFailed(f"model '{self.model.name}': {error}")
        self.stats.failures[failure_reason(error)] += 1
        self.exchange.respond_error(error.status, error.message, error_headers(error))

    def lost(self) -> None:
        """The client went away before its answer: out of the queue, counted CANCELED."""
        if self.finished:
            return
        self._finish()
        self.stats.failures["CANCELED"] += 1
        if self.entry is not None:
            self.batcher.discard(self.entry)  # type: ignore[union-attr]

    def _finish(self) -> None:
        self.finished = True
        self.server.inflight -= 1


class Tokenizing:
    """Tokenizes a text model's requests on ``executor``: one tokenizer call at a time per model,
    for every request that arrived while the previous call ran (as the batcher does with
    executions), so its cost per sentence falls as the load rises."""

    def __init__(self, model: TextEmbeddingModel, executor: Executor) -> None:
        self.model = model
        self._executor = executor
        self._waiting: list[tuple[InferCall, list[str]]] = []
        self._busy = False
        self._scheduled = False

    def add(self, call: InferCall, texts: list[str]) -> None:
        self._waiting.append((call, texts))
        if not self._busy and not self._scheduled:
            # at the end of this loop iteration: the requests that arrived with it go along
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._start)

    def _start(self) -> None:
        self._scheduled = False
        if self._busy or not self._waiting:
            return
        group, self._waiting = self._waiting, []
        self._busy = True
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, self.model.tokenize, [texts for _, texts in group])
        future.add_done_callback(lambda done: self._finished(group, done))

    def _finished(self, group: list[tuple[InferCall, list[str]]], done: asyncio.Future) -> None:
        self._busy = False
        if self._waiting:
            self._start()  # the next group goes to the tokenizer before this one is queued
        error = done.exception() if not done.cancelled() else Unavailable("tokenizing was cancelled")
        if error is not None:
            _log.error("model %s: tokenizing failed: %r", self.model.name, error)
            for call, _ in group:
                call.set_exception(ExecutionFailed(f"model '{self.model.name}': tokenizing failed: {error}"))
            return
        for (call, _), work in zip(group, done.result()):
            call.submit(work)


def failure_reason(error: InferenceError) -> str:
    """Triton's ``reason`` label for a failed request."""
    if isinstance(error, Unavailable):
        return "REJECTED"
    return "BACKEND" if isinstance(error, ExecutionFailed) else "OTHER"


def error_headers(error: InferenceError) -> bytes:
    return _RETRY if error.status == 503 else b""


def header_length(headers: dict[bytes, bytes]) -> int | None:
    value = headers.get(b"inference-header-content-length")
    if value is None:
        return None
    if not value.strip().isdigit():
        raise BadRequest(f"{HEADER_LENGTH} must be a byte count, not {value.decode('latin-1')!r}")
    return int(value)


def scheduling(parameters: dict[str, Any]) -> tuple[int, float | None]:
    """``priority`` (1 = high) and ``timeout`` (microseconds, as Triton) from request parameters."""
    priority, timeout = parameters.get("priority", 0), parameters.get("timeout")
    if not isinstance(priority, int) or isinstance(priority, bool) or priority < 0:
        raise BadRequest(f"parameter 'priority' must be a non-negative integer, not {priority!r}")
    if timeout is not None and (not isinstance(timeout, int) or isinstance(timeout, bool) or timeout < 0):
        raise BadRequest(f"parameter 'timeout' must be microseconds as a non-negative integer, not {timeout!r}")
    return priority, None if not timeout else timeout / 1e6
