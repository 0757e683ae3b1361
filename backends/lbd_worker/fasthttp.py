"""A lean HTTP/1.1 server: one callback-driven asyncio Protocol per connection, on httptools.

The worker answers a few routes, mostly ``POST .../infer``, at thousands of requests a second
per process, so the per-request cost of the HTTP layer matters: this one parses with llhttp
(through httptools), hands each complete request to a handler as an :class:`Exchange`, and
writes each response as one buffer, with no coroutine, task or stream object per request.

The handler answers an exchange whenever it likes (at once, or once its batch ran);
pipelined requests are answered in order; a client that closes its side is gone, and the
requests it still waited for are reported lost (:attr:`Exchange.on_lost`). Request bodies may be ``gzip`` or ``deflate``
encoded; ``Expect: 100-continue`` is honoured. A request the parser refuses (malformed, head or
body over the limits, a protocol upgrade) is answered with ``{"error": ...}`` and the connection
is closed, since its framing can no longer be trusted.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections import deque
from dataclasses import dataclass
from http import HTTPStatus
from typing import Protocol as TypingProtocol

import httptools
import orjson

__all__ = ["Limits", "Request", "Exchange", "Handler", "HttpConnection", "HttpServer", "JSON"]

_log = logging.getLogger("lbd_worker.http")
JSON = b"application/json"
_STATUS_LINES = {status.value: b"HTTP/1.1 %d %s\r\n" % (status.value, status.phrase.encode())
                 for status in HTTPStatus}
_MAX_PIPELINE = 32
"""Requests of one connection in progress at once; reading pauses beyond it."""
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


@dataclass(frozen=True)
class Limits:
    max_body_size: int = 64 * 1024 * 1024
    """For the body as sent and once decompressed."""
    max_header_size: int = 64 * 1024
    """The request line and headers together."""


class Request:
    """One request, complete. Header names are lower-case bytes, values bytes."""

    __slots__ = ("method", "path", "query", "headers", "body")

    def __init__(self, method: str, path: str, query: str, headers: dict[bytes, bytes], body: bytes) -> None:
        self.method, self.path, self.query, self.headers, self.body = method, path, query, headers, body


class Handler(TypingProtocol):
    def handle(self, exchange: Exchange) -> None:
        """Answers ``exchange`` now or later (:meth:`Exchange.respond`); must not raise."""

    def common_headers(self) -> bytes:
        """Header lines (``b"name: value\\r\\n"`` each) every response carries, read when it is written."""


class Exchange:
    """A request and its answer. ``on_lost`` (if set) is called when the client goes away first."""

    __slots__ = ("connection", "request", "keep_alive", "head_only", "response", "on_lost")

    def __init__(self, connection: HttpConnection, request: Request, keep_alive: bool) -> None:
        self.connection = connection
        self.request = request
        self.keep_alive = keep_alive
        self.head_only = request.method == "HEAD"
        self.response: bytes | None = None
        self.on_lost = None

    @property
    def answered(self) -> bool:
        return self.response is not None

    def respond(self, status: int, body: bytes, content_type: bytes = JSON, headers: bytes = b"") -> None:
        """Sends the response (once; later calls are ignored). ``headers``: extra header lines."""
        if self.response is not None:
            return
        connection = self.connection
        close = not self.keep_alive
        head = b"%sContent-Type: %s\r\nContent-Length: %d\r\n%s%s%s\r\n" % (
            _STATUS_LINES.get(status) or b"HTTP/1.1 %d Unknown\r\n" % status, content_type, len(body),
            connection.handler.common_headers(), headers, b"Connection: close\r\n" if close else b"")
        self.response = head if self.head_only or not body else head + body
        self.on_lost = None
        connection.answered(self)

    def respond_error(self, status: int, message: str, headers: bytes = b"") -> None:
        self.respond(status, orjson.dumps({"error": message}), JSON, headers)


class _Reject(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class HttpConnection(asyncio.Protocol):
    __slots__ = ("handler", "limits", "server", "transport", "parser", "closing", "pending", "_url",
                 "_headers", "_head_size", "_body", "_body_size", "_paused")

    def __init__(self, handler: Handler, limits: Limits, server: HttpServer | None = None) -> None:
        self.handler, self.limits, self.server = handler, limits, server
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.closing = False
        self.pending: deque[Exchange] = deque()
        self._url = b""
        self._headers: dict[bytes, bytes] = {}
        self._head_size = 0
        self._body: list[bytes] = []
        self._body_size = 0
        self._paused = False

    # -- asyncio.Protocol --------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.server is not None:
            self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        if self.server is not None:
            self.server.connections.discard(self)
        pending, self.pending = self.pending, deque()
        for exchange in pending:
            if exchange.response is None and exchange.on_lost is not None:
                lost, exchange.on_lost = exchange.on_lost, None
                try:
                    lost()
                except Exception:  # noqa: BLE001 - one handler's bug must not hide the others' losses
                    _log.exception("on_lost failed")

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as error:
            reject = error.__context__
            if not isinstance(reject, _Reject):
                raise
            self._reject(reject.status, reject.message)
        except httptools.HttpParserUpgrade:
            self._reject(501, "protocol upgrades are not supported")
        except httptools.HttpParserError as error:
            self._reject(400, f"malformed request: {error}")

    def eof_received(self) -> bool | None:
        # A client that closes its side has gone away (as nginx assumes): closing ours reports
        # the requests still owed to it as lost, so queued ones leave the queue unrun.
        return None

    # -- httptools callbacks -----------------------------------------------------------
    def on_message_begin(self) -> None:
        self._url, self._headers, self._head_size = b"", {}, 0
        self._body, self._body_size = [], 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value)
        if self._head_size > self.limits.max_header_size:
            raise _Reject(431, f"the request head exceeds {self.limits.max_header_size} bytes")
        key = name.lower()
        previous = self._headers.get(key)
        self._headers[key] = value if previous is None else previous + b", " + value

    def on_headers_complete(self) -> None:
        length = self._headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limits.max_body_size:
            raise _Reject(413, f"the request body exceeds {self.limits.max_body_size} bytes")
        if self._headers.get(b"expect", b"").lower() == b"100-continue":
            self.transport.write(_CONTINUE)  # type: ignore[union-attr]

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self.limits.max_body_size:
            raise _Reject(413, f"the request body exceeds {self.limits.max_body_size} bytes")
        self._body.append(body)

    def on_message_complete(self) -> None:
        parser = self.parser
        url = self._url
        path, _, query = url.partition(b"?")
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        request = Request(parser.get_method().decode("latin-1"), path.decode("latin-1"),
                          query.decode("latin-1"), self._headers, body)
        exchange = Exchange(self, request, parser.should_keep_alive())
        self.pending.append(exchange)
        if len(self.pending) >= _MAX_PIPELINE and not self._paused:
            self._paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]
        encoding = self._headers.get(b"content-encoding")
        if encoding is not None and body:
            try:
                request.body = _decompress(body, encoding, self.limits.max_body_size)
            except _Reject as reject:
                exchange.respond_error(reject.status, reject.message)
                return
        try:
            self.handler.handle(exchange)
        except Exception as error:  # noqa: BLE001 - the handler's bug is the client's 500, not a dead socket
            _log.exception("handler failed on %s %s", request.method, request.path)
            exchange.respond_error(500, f"internal error: {error}")
        if not exchange.keep_alive:
            self.closing = True  # nothing after a request without keep-alive is read

    # -- writing -------------------------------------------------------------------------
    def answered(self, exchange: Exchange) -> None:
        """Writes the answers that are due, in request order."""
        pending, transport = self.pending, self.transport
        if transport is None or not pending or pending[0] is not exchange:
            return
        close = False
        while pending and pending[0].response is not None:
            done = pending.popleft()
            if not transport.is_closing():
                transport.write(done.response)  # type: ignore[arg-type]
            if not done.keep_alive:
                close = True
                break
        if close:
            self.closing = True
            transport.close()  # after what is written went out
        elif self._paused and len(pending) < _MAX_PIPELINE // 2:
            self._paused = False
            transport.resume_reading()

    def _reject(self, status: int, message: str) -> None:
        self.closing = True
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if not any(exchange.response is None for exchange in self.pending):
            # everything before is answered: the rejection goes after it, then the connection closes
            exchange = Exchange(self, Request("", "", "", {}, b""), False)
            self.pending.append(exchange)
            exchange.respond_error(status, message)
        else:
            transport.close()

    def _close_after_pending(self) -> None:
        self.closing = True
        if self.pending:
            self.pending[-1].keep_alive = False  # its answer says Connection: close, then we close
        elif self.transport is not None:
            self.transport.close()


def _decompress(body: bytes, encoding: bytes, limit: int) -> bytes:
    kind = encoding.strip().lower()
    if kind in (b"", b"identity"):
        return body
    if kind in (b"gzip", b"x-gzip"):
        windows = (16 + zlib.MAX_WBITS,)
    elif kind == b"deflate":
        windows = (zlib.MAX_WBITS, -zlib.MAX_WBITS)  # zlib-wrapped, as RFC 9110 says; raw, as some send
    else:
        raise _Reject(415, f"Content-Encoding {encoding.decode('latin-1')!r} is not supported "
                           "(gzip, deflate, identity)")
    for window in windows:
        inflater = zlib.decompressobj(window)
        try:
            data = inflater.decompress(body, limit + 1)
        except zlib.error:
            continue
        if len(data) > limit:
            raise _Reject(413, f"the request body exceeds {limit} bytes once decompressed")
        return data
    raise _Reject(400, f"the request body is not valid {kind.decode('latin-1')} data")


class HttpServer:
    """Listens and tracks its connections, so shutdown can close them."""

    def __init__(self, handler: Handler, limits: Limits) -> None:
        self.handler, self.limits = handler, limits
        self.connections: set[HttpConnection] = set()
        self._server: asyncio.base_events.Server | None = None

    async def start(self, host: str, port: int, *, backlog: int = 1024) -> tuple[str, int]:
        """Listens on ``host:port`` (port 0: any free one); the address it got."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: HttpConnection(self.handler, self.limits, self),
                                                host, port, reuse_address=True, backlog=backlog)
        address = self._server.sockets[0].getsockname()
        return address[0], address[1]

    async def close(self, grace: float = 2.0) -> None:
        """Stops listening and closes every connection: idle ones at once, the others once
        their answers are written, or after ``grace`` seconds."""
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection._close_after_pending()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.connections and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for connection in list(self.connections):  # answers that never came: the clients see a reset
            if connection.transport is not None:
                connection.transport.abort()
