"""The client side of the data plane: one protocol object per client connection.

It parses requests with httptools (llhttp: strict framing; conflicting or malformed lengths
and bad chunk sizes are parse errors) and runs one :class:`Exchange` at a time. Pipelined
requests wait in order with reading paused, so memory stays bounded.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

import httptools

from lbd.proxy.exchange import BODY_CHUNKED, BODY_NONE, Exchange
from lbd.proxy.http import error_response
from lbd.proxy.outbox import Corked, flush

if TYPE_CHECKING:
    from lbd.proxy.internal import Internal
    from lbd.proxy.server import ProxyServer

__all__ = ["ClientConnection"]

# TRACE reflects the request (cookies included) back: a cross-site tracing vector.
_REFUSED_METHODS = frozenset({b"TRACE", b"TRACK"})
# Reasons reading is paused; reading resumes when none is left.
_PAUSE_BODY, _PAUSE_PIPELINE, _PAUSE_UPSTREAM = 1, 2, 4


class _Reject(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class ClientConnection(Corked, asyncio.Protocol):
    __slots__ = (
        "_out",
        "server", "loop", "transport", "parser", "client_ip", "client_ip_bytes", "scheme",
        "http11", "current", "receiving", "queue", "closing", "last_active", "head_started",
        "_url", "_headers", "_header_bytes", "_paused", "_write_paused", "_body_bytes", "internal",
        "closing_reason", "carry",
    )

    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.client_ip = ""
        self.client_ip_bytes = b""
        self.scheme = b"http"
        self.http11 = True
        self.current: Exchange | None = None    # the exchange being answered
        self.receiving: Exchange | None = None  # the exchange whose body is being read
        self.queue: deque[Exchange] = deque()
        self.closing = False
        self.last_active = 0.0
        self.head_started = 0.0                 # > 0 while a request head is being read
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._paused = 0
        self._write_paused = False
        self._body_bytes = 0
        self._out: list[bytes] | None = None
        self.internal: Internal | None = None
        self.closing_reason: tuple[int, str, str] | None = None
        """A refusal to send once the request being answered is done (see :meth:`_reject`)."""
        """Set on the connections of requests lbd sends itself (:mod:`lbd.proxy.internal`)."""
        self.carry = None
        """A request the compiled lane tried first, for the first exchange (:mod:`lbd.proxy.lane`)."""

    # -- asyncio.Protocol --------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.adopt(transport)
        if not self.server.admit_connection(self):
            self.closing = True
            transport.abort()  # over a connection limit: refuse before reading a byte

    def adopt(self, transport: asyncio.BaseTransport) -> None:
        """Take ``transport`` (from ``connection_made``, or from the compiled lane, which
        admitted the connection already)."""
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0] if peer else "unix"
        self.client_ip_bytes = self.client_ip.encode()
        if transport.get_extra_info("ssl_object") is not None:
            self.scheme = b"https"
        self.last_active = self.loop.time()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.server.release_connection(self)
        for exchange in (self.current, self.receiving, *self.queue):
            if exchange is not None:
                exchange.on_client_lost()
        self.current = self.receiving = None
        self.queue.clear()
        flush()

    def data_received(self, data: bytes) -> None:
        if self.closing or self.closing_reason is not None:
            return
        self.last_active = self.loop.time()
        try:
            self._receive(data)
        finally:
            flush()

    def _receive(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            reject = exc.__context__
            if isinstance(reject, _Reject):
                self._reject(reject.status, reject.code, reject.message)
            else:
                raise
        except httptools.HttpParserUpgrade:
            # The request just parsed is the one asking to upgrade: it must not go on.
            self._reject(501, "upgrade_unsupported", "protocol upgrades are not supported", defer=False)
        except httptools.HttpParserError as exc:
            self._reject(400, "bad_request", f"malformed request: {exc}")

    def eof_received(self) -> bool | None:
        # As nginx does (proxy_ignore_client_abort off): a client that closes its side has
        # gone away; returning None closes the transport and connection_lost cancels the
        # upstream request. Half-closed clients that still wait for an answer are too rare
        # to keep a GPU busy for.
        return None

    def pause_writing(self) -> None:
        self._write_paused = True
        exchange = self.current
        if exchange is not None and exchange.upstream is not None:
            exchange.upstream.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        exchange = self.current
        if exchange is not None and exchange.upstream is not None:
            exchange.upstream.resume_reading()

    # -- httptools callbacks -----------------------------------------------------------
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._body_bytes = 0
        self.head_started = self.loop.time()

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_bytes += len(url)
        if len(self._url) > self.server.limits.max_url_size:
            raise _Reject(414, "uri_too_long", f"request target exceeds {self.server.limits.max_url_size} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self._headers
        headers.append((name, value))
        self._header_bytes += len(name) + len(value)
        limits = self.server.limits
        if self._header_bytes > limits.max_header_size:
            raise _Reject(431, "header_too_large", f"request head exceeds {limits.max_header_size} bytes")
        if len(headers) > limits.max_headers:
            raise _Reject(431, "too_many_headers", f"more than {limits.max_headers} header fields")

    def on_headers_complete(self) -> None:
        self.head_started = 0.0
        if self.closing:
            # Pipelined behind a request whose answer closed the connection (a refusal made
            # while its head was parsed, in the same read): never begun, never sent upstream.
            return
        parser = self.parser
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            raise _Reject(505, "http_version", f"HTTP/{version} is not supported; use HTTP/1.1")
        self.http11 = version == "1.1"
        method = parser.get_method()
        if method in _REFUSED_METHODS:
            raise _Reject(405, "method_not_allowed", f"{method.decode()} is not allowed through this proxy")
        exchange = Exchange(self, method, self._url, self._headers, parser.should_keep_alive())
        fields = exchange.fields
        if fields.problem is not None:
            raise _Reject(*fields.problem)
        if fields.host is None and self.http11:
            raise _Reject(400, "missing_host", "an HTTP/1.1 request must have a Host field")
        if exchange.body_mode != BODY_NONE:
            limit = self.server.limits.max_body_size
            if limit and exchange.fields.content_length > limit:
                raise _Reject(413, "body_too_large", f"request body exceeds {limit} bytes")
            self.receiving = exchange
        if self.current is None:
            self.current = exchange
            if self.carry is None:
                exchange.begin()
            else:
                carry, self.carry = self.carry, None
                exchange.inherit(carry)
        else:
            self.queue.append(exchange)
            self._pause(_PAUSE_PIPELINE)

    def on_body(self, body: bytes) -> None:
        exchange = self.receiving
        if exchange is None or not body:
            return  # an empty piece, forwarded chunked, would be the last-chunk marker
        self._body_bytes += len(body)
        limit = self.server.limits.max_body_size
        if limit and self._body_bytes > limit and exchange.body_mode == BODY_CHUNKED:
            raise _Reject(413, "body_too_large", f"request body exceeds {limit} bytes")
        exchange.on_request_body(body)

    def on_message_complete(self) -> None:
        exchange, self.receiving = self.receiving, None
        if exchange is not None:
            exchange.on_request_end()

    # -- used by exchanges ---------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if not self.closing:
            Corked.write(self, data)

    def exchange_done(self, exchange: Exchange) -> None:
        if exchange is not self.current:
            return
        self.current = None
        self.server.observe(exchange)
        if self.closing_reason is not None and not self.closing:
            self._refuse(*self.closing_reason)
            return
        if not exchange.keep_alive or self.closing:
            self.close_now()
            return
        if self.queue:
            self.current = following = self.queue.popleft()
            if not self.queue:
                self._resume(_PAUSE_PIPELINE)
            following.begin()

    def closing_after_current(self) -> None:
        if self.current is not None:
            self.current.keep_alive = False
        for exchange in self.queue:
            exchange.on_client_lost()
        self.queue.clear()

    def abort_after_write(self) -> None:
        """Close once what is written is flushed; the client sees the body cut short."""
        exchange, self.current = self.current, None
        if exchange is not None:
            self.server.observe(exchange)
        self.close_now()

    def pause_reading_for_body(self) -> None:
        self._pause(_PAUSE_BODY)

    def resume_reading_for_body(self) -> None:
        self._resume(_PAUSE_BODY)

    def pause_reading_for_upstream(self) -> None:
        self._pause(_PAUSE_UPSTREAM)

    def resume_reading_for_upstream(self) -> None:
        self._resume(_PAUSE_UPSTREAM)

    # -- internals -----------------------------------------------------------------------
    def _pause(self, reason: int) -> None:
        if not self._paused and not self.closing:
            self.transport.pause_reading()  # type: ignore[union-attr]
        self._paused |= reason

    def _resume(self, reason: int) -> None:
        if not self._paused & reason:
            return
        self._paused &= ~reason
        if not self._paused and not self.closing:
            self.transport.resume_reading()  # type: ignore[union-attr]

    def _reject(self, status: int, code: str, message: str, *, defer: bool = True) -> None:
        """A request the parser or the limits refuse: answer, then close (its framing is
        not trustworthy, so nothing after it on this connection is either)."""
        current = self.current
        if defer and current is not None and current is not self.receiving and not current.finished:
            # A bad request pipelined behind one already read whole: that one is answered
            # first, then this refusal, then the connection closes.
            for exchange in (self.receiving, *self.queue):
                if exchange is not None and exchange is not current:
                    exchange.on_client_lost()
            self.receiving = None
            self.queue.clear()
            current.keep_alive = False
            self._pause(_PAUSE_PIPELINE)
            self.closing_reason = (status, code, message)
            return
        if current is not None and current.response_started:
            self.abort_after_write()
            return
        for exchange in (current, self.receiving, *self.queue):
            if exchange is not None:
                exchange.on_client_lost()
        self.current = self.receiving = None
        self.queue.clear()
        self._refuse(status, code, message)

    def _refuse(self, status: int, code: str, message: str) -> None:
        self.write(error_response(status, code, message, self.server.request_ids.next(), keep_alive=False))
        self.server.count_rejected(status)
        self.close_now()

    def close_now(self) -> None:
        if not self.closing:
            self.flush_out()  # what the exchange wrote goes out before the FIN
            self.closing = True
            self.transport.close()  # type: ignore[union-attr]

    def body_stalled_for(self, now: float) -> float:
        """Seconds since a request body last made progress; 0 when none is being read, or
        when the proxy itself paused reading (back-pressure is not the client's fault)."""
        if self.receiving is None or self._paused:
            return 0.0
        return now - self.last_active

    def reject_stalled(self, status: int, code: str, message: str) -> None:
        self._reject(status, code, message)

    def idle_for(self, now: float) -> float:
        """Seconds without a request in progress; 0 while one is."""
        if self.current is not None or self.receiving is not None or self.head_started:
            return 0.0
        return now - self.last_active
