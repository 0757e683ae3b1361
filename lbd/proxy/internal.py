"""Requests lbd sends itself, through its own data plane, without a socket.

A job runner, a shadow copy or a cascade stage needs what a client's request gets: routing
(or a pool named outright), admission, the cache, the balancer, retries, breakers, the
access log and the metrics. :func:`dispatch` gets all of it by running an ordinary
:class:`~lbd.proxy.downstream.ClientConnection` over an in-memory transport: the request is
fed to its parser as bytes, and what it writes back is parsed as the response. Nothing on
the request path knows the difference except where :class:`Internal` says so (a pinned pool,
a tenant already authenticated).

::

    response = await dispatch(server, "POST", "/v2/models/minilm/infer", headers, body,
                              internal=Internal(pool="minilm"))
    response.status, response.headers, response.body
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httptools

from lbd.proxy.outbox import flush

if TYPE_CHECKING:
    from lbd.proxy.pool import Pool
    from lbd.proxy.request import Request
    from lbd.proxy.server import ProxyServer

__all__ = ["Internal", "InternalResponse", "InternalError", "dispatch", "MAX_RESPONSE"]

MAX_RESPONSE = 64 * 1024**2
"""An internal response larger than this is cut off with :class:`InternalError`."""

# Fields an internal request must not carry: dispatch frames the request itself.
_FRAMING = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive", "expect", "upgrade"})


@dataclass(frozen=True)
class Internal:
    """How an internal request differs from a client's.

    ``pool``: serve it from this pool, skipping the router (``None``: route as usual).
    ``tenant``: already authenticated as this tenant (the pool's API key is not asked for).
    ``client_ip``: the address the request stands for (the original client's), for
    ``X-Forwarded-For``, rate limits and the access log. ``tag`` names the caller
    (``job``, ``shadow``, ``cascade``...) for those who must not act twice on one request
    (a job's own run is not submitted as a job again).
    """

    pool: str | None = None
    tenant: str | None = None
    client_ip: str = "127.0.0.1"
    tag: str = "internal"

    def route(self, request: Request, server: ProxyServer) -> Pool | None:
        if self.pool is None:
            return server.runtime.router.route(request)  # type: ignore[arg-type]
        return server.runtime.pools.get(self.pool)


@dataclass(frozen=True)
class InternalResponse:
    status: int
    headers: tuple[tuple[str, str], ...]
    """Lower-case names, in the order sent."""
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


class InternalError(RuntimeError):
    """No response could be read (the connection was refused or the answer cut short)."""


class _Transport(asyncio.Transport):
    """The client side of an internal request: parses what the proxy writes as a response."""

    def __init__(self, client_ip: str, done: asyncio.Future[InternalResponse]) -> None:
        super().__init__()
        self._peer = (client_ip, 0)
        self._done = done
        self._parser = httptools.HttpResponseParser(self)
        self._headers: list[tuple[str, str]] = []
        self._body: list[bytes] = []
        self._size = 0
        self._closed = False
        self.protocol = None

    # -- asyncio.Transport, as the ClientConnection uses it ------------------------------------
    def write(self, data: bytes) -> None:
        if self._done.done():
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(f"unreadable internal response: {exc}")

    def get_extra_info(self, name: str, default=None):
        return self._peer if name == "peername" else default

    def is_closing(self) -> bool:
        return self._closed

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self._done.done():
            self._fail("the proxy closed the internal request before a whole response")
        protocol, self.protocol = self.protocol, None
        if protocol is not None:  # as the event loop would: the protocol learns it is gone
            asyncio.get_running_loop().call_soon(protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    # -- httptools callbacks ----------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > MAX_RESPONSE:
            self._fail(f"internal response larger than {MAX_RESPONSE} bytes")
            self.close()
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        if not self._done.done():
            status = self._parser.get_status_code()
            if status == 100:  # an interim 100 Continue: the real answer follows
                self._headers = []
                return
            self._done.set_result(InternalResponse(status, tuple(self._headers), b"".join(self._body)))

    def _fail(self, message: str) -> None:
        if not self._done.done():
            self._done.set_exception(InternalError(message))


async def dispatch(server: ProxyServer, method: str, target: str, headers: Iterable[tuple[str, str]],
                   body: bytes = b"", *, internal: Internal = Internal()) -> InternalResponse:
    """Send a request through this lbd's data plane and return the whole answer.

    Errors lbd itself answers (404 no route, 503 no backend, 504...) come back as responses,
    as a client would see them; :class:`InternalError` only when no answer could be read.
    Cancelling the call cancels the request (its upstream connection is closed).
    """
    from lbd.proxy.downstream import ClientConnection

    loop = asyncio.get_running_loop()
    done: asyncio.Future[InternalResponse] = loop.create_future()
    transport = _Transport(internal.client_ip, done)
    conn = ClientConnection(server)
    conn.internal = internal
    transport.protocol = conn
    host = "lbd.internal"
    head = [""]
    for name, value in headers:
        lowered = name.lower()
        if lowered == "host":
            host = value
        elif lowered not in _FRAMING:
            head.append(f"{name}: {value}\r\n")
    head[0] = f"{method} {target} HTTP/1.1\r\nhost: {host}\r\n"
    head.append(f"content-length: {len(body)}\r\nconnection: close\r\n\r\n")
    try:
        conn.connection_made(transport)
        if not conn.closing:  # else the connection was refused at once: done holds the error
            conn.data_received("".join(head).encode("latin-1") + body)
        return await done
    finally:
        if not done.done():
            done.cancel()
        if not transport.is_closing():
            transport.close()
        flush()
