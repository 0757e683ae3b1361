"""The upstream side of the data plane: one protocol object per pooled connection.

The connection parses responses with httptools and hands each event to the
:class:`~lbd.proxy.exchange.Exchange` it is attached to. While idle it belongs to its
backend's pool; a close while idle simply removes it from the pool.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import httptools

from lbd.proxy.outbox import Corked, flush

if TYPE_CHECKING:
    from lbd.proxy.exchange import Exchange
    from lbd.proxy.pool import Backend

__all__ = ["UpstreamConnection", "open_connection"]


class _StopParsing(Exception):
    """Raised from a parser callback to stop at the end of a HEAD response's head."""


class UpstreamConnection(Corked, asyncio.Protocol):
    __slots__ = ("_out", "backend", "transport", "parser", "exchange", "closed", "idle_since", "uses",
                 "_headers", "_received", "_paused")

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: Exchange | None = None
        self.closed = False
        self.idle_since = 0.0
        self.uses = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._received = False
        self._paused = False
        self._out: list[bytes] | None = None

    # -- asyncio.Protocol --------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._receive(data)
        finally:
            flush()

    def _receive(self, data: bytes) -> None:
        self._received = True
        if self.exchange is None:
            # Bytes on an idle connection: the backend broke framing. Never reuse it.
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if not isinstance(exc.__context__, _StopParsing):
                raise
            self.parser = httptools.HttpResponseParser(self)
        except httptools.HttpParserError as exc:
            exchange = self.exchange
            self.close()
            if exchange is not None:
                exchange.on_upstream_failed("protocol", f"malformed response from backend: {exc}", self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._out = None
        exchange = self.exchange
        if exchange is None:
            self.backend.forget(self)
        else:
            exchange.on_upstream_lost(self, exc)
            flush()

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.pause_client_reading()

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.resume_client_reading()

    # -- httptools callbacks -----------------------------------------------------------
    def on_message_begin(self) -> None:
        self._headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            return  # interim response (100 Continue): the real one follows
        exchange = self.exchange
        if exchange is None:
            return
        exchange.on_response_head(status, self._headers, self.parser.should_keep_alive(),
                                  self.parser.get_http_version())
        if exchange.is_head and self.exchange is exchange:
            # A response to HEAD has no body whatever its Content-Length says; httptools
            # cannot be told so, hence: finish here and start a fresh parser.
            exchange.on_response_end(self, self.parser.should_keep_alive())
            raise _StopParsing

    def on_body(self, body: bytes) -> None:
        exchange = self.exchange
        if exchange is not None:
            exchange.on_response_body(body)

    def on_message_complete(self) -> None:
        if 100 <= self.parser.get_status_code() < 200:
            return
        exchange = self.exchange
        if exchange is not None:
            exchange.on_response_end(self, self.parser.should_keep_alive())

    # -- used by the exchange ----------------------------------------------------------
    @property
    def received_anything(self) -> bool:
        return self._received

    def attach(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self._received = False
        self.uses += 1

    def detach(self) -> None:
        self.exchange = None
        if self._paused:
            self.resume_reading()

    def pause_reading(self) -> None:
        if not self._paused and not self.closed:
            self._paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]

    def resume_reading(self) -> None:
        if self._paused and not self.closed:
            self._paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.exchange = None
            if self.transport is not None:
                self.transport.abort()


async def open_connection(loop: asyncio.AbstractEventLoop, backend: Backend, timeout: float) -> tuple:
    # Made inside the task so that a task cancelled before it ran leaves no coroutine behind.
    factory = lambda: UpstreamConnection(backend)  # noqa: E731
    if backend.ssl is None:
        return await asyncio.wait_for(loop.create_connection(factory, backend.host, backend.port), timeout)
    return await asyncio.wait_for(loop.create_connection(
        factory, backend.host, backend.port, ssl=backend.ssl, server_hostname=backend.server_name or backend.host,
        ssl_handshake_timeout=timeout), timeout)
