"""One request's way through the proxy, as a callback-driven state machine.

No coroutine and no task on the common path: the client protocol's parser callbacks call
into the exchange, which writes to a pooled upstream connection, whose parser callbacks
call back into the exchange, which writes to the client. Bytes in, bytes out, within one
``data_received`` where possible. Only a new upstream connection takes a task.

Invariants:
- ``backend.inflight`` is incremented once per attempt and decremented exactly once, in
  :meth:`_end_attempt`.
- An upstream connection goes back to the pool only after a complete response to a
  completely sent request, with keep-alive on both readings.
- Once the response head reached the client, a failure can only close the connection
  (the client sees a truncated body); before that, it gets a JSON error with a status.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from lbd.proxy.http import (
    CONTINUE_100, F_CONNECTION, F_CONTENT_LENGTH, F_EXPECT, F_HOST, F_REQUEST_ID, F_TRANSFER_ENCODING, F_XFF,
    FIELDS, LAST_CHUNK, chunk, connection_tokens, error_response, status_line, strip_fields,
)
from lbd.proxy.outbox import flush
from lbd.proxy.upstream import UpstreamConnection

if TYPE_CHECKING:
    from lbd.proxy.downstream import ClientConnection
    from lbd.proxy.pool import Backend, Pool

__all__ = ["Exchange"]

BODY_NONE, BODY_LENGTH, BODY_CHUNKED = 0, 1, 2
# Request bodies up to this size are kept so the request can be sent again on a fresh
# connection when a pooled one turns out to be closed by the backend.
REPLAY_LIMIT = 64 * 1024
_NO_BODY_STATUS = frozenset({204, 304})


async def _open(loop: asyncio.AbstractEventLoop, backend: Backend, timeout: float) -> tuple:
    # Made inside the task so that a task cancelled before it ran leaves no coroutine behind.
    factory = lambda: UpstreamConnection(backend)  # noqa: E731
    return await asyncio.wait_for(loop.create_connection(factory, backend.host, backend.port), timeout)


class Exchange:
    __slots__ = (
        "client", "method", "url", "headers", "request_id", "keep_alive", "body_mode",
        "request_done", "pool", "backend", "upstream", "tried", "started", "deadline",
        "_head", "_buffer", "_buffered", "_replayable", "_timer", "_connecting",
        "response_started", "response_chunked", "finished", "status", "_host", "_path",
        "_attempt_started", "_expect_continue", "served_by", "content_length",
    )

    def __init__(self, client: ClientConnection, method: bytes, url: bytes,
                 headers: list[tuple[bytes, bytes]], keep_alive: bool) -> None:
        self.client = client
        self.method = method
        self.url = url
        self.headers = headers
        self.keep_alive = keep_alive
        self.body_mode = BODY_NONE
        self.content_length = 0
        self.request_done = True
        self.request_id = b""
        self.pool: Pool | None = None
        self.backend: Backend | None = None
        self.upstream: UpstreamConnection | None = None
        self.tried: set[Backend] = set()
        self.started = 0.0
        self.deadline = 0.0
        self._head = b""
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._replayable = True
        self._timer: asyncio.TimerHandle | None = None
        self._connecting: asyncio.Task | None = None
        self._attempt_started = 0.0
        self._expect_continue = False
        self.response_started = False
        self.response_chunked = False
        self.finished = False
        self.status = 0
        self._host: bytes | None = None
        self._path: str | None = None
        self.served_by = ""

    # -- RequestView (what balancers and the router read) ----------------------------------
    @property
    def client_ip(self) -> str:
        return self.client.client_ip

    @property
    def path(self) -> str:
        if self._path is None:
            self._path = self.url.partition(b"?")[0].decode("latin-1")
        return self._path

    @property
    def host(self) -> str:
        """The Host header without its port, lower-cased ("" when absent)."""
        if self._host is None:
            return ""
        host = self._host.decode("latin-1").lower()
        if host.startswith("["):
            return host.partition("]")[0] + "]"
        return host.partition(":")[0]

    @property
    def is_head(self) -> bool:
        return self.method == b"HEAD"

    def header(self, name: str) -> str | None:
        wanted = name.lower().encode("latin-1")
        for key, value in self.headers:
            if key.lower() == wanted:
                return value.decode("latin-1")
        return None

    def cookie(self, name: str) -> str | None:
        cookies = self.header("cookie")
        if cookies is None:
            return None
        for part in cookies.split(";"):
            key, sep, value = part.strip().partition("=")
            if sep and key == name:
                return value
        return None

    # -- start ---------------------------------------------------------------------------
    def begin(self) -> None:
        """Route, build the upstream request head, and start the first attempt."""
        client = self.client
        runtime = client.server.runtime
        self.started = time.monotonic()
        now = client.loop.time()
        self.pool = pool = runtime.router.route(self)
        if pool is None:
            self.fail(404, "no_route", f"no pool serves {self.path}")
            return
        total = pool.timeouts.total
        self.deadline = now + total if total > 0 else float("inf")
        if self._expect_continue:
            client.write(CONTINUE_100)
        self._attempt()

    def prepare(self) -> None:
        """One pass over the client's fields: the request head as sent upstream
        (hop-by-hop fields removed, forwarding fields added), the body's framing, and the
        fields routing needs."""
        out = [self.method, b" ", self.url, b" HTTP/1.1\r\n"]
        forwarded_for = request_id = named = None
        fields = FIELDS
        for name, value in self.headers:
            kind = fields.get(name.lower())
            if kind is None:
                out += (name, b": ", value, b"\r\n")
            elif kind == F_CONTENT_LENGTH:
                self.body_mode = BODY_LENGTH if value.strip() != b"0" else BODY_NONE
                self.content_length = int(value)  # llhttp already checked the digits
                out += (name, b": ", value, b"\r\n")
            elif kind == F_HOST:
                self._host = value
                out += (name, b": ", value, b"\r\n")
            elif kind == F_TRANSFER_ENCODING:
                self.body_mode = BODY_CHUNKED  # llhttp refused any coding but a final chunked
            elif kind == F_CONNECTION:
                named = connection_tokens(value)
            elif kind == F_XFF:
                forwarded_for = value
            elif kind == F_REQUEST_ID:
                request_id = value
            elif kind == F_EXPECT:
                self._expect_continue = value.lower() == b"100-continue"
        if named is not None:
            out = strip_fields(out, 4, named)
        client = self.client
        self.request_id = request_id or client.server.request_ids.next()
        ip = client.client_ip_bytes
        out += (b"x-forwarded-for: ", forwarded_for + b", " + ip if forwarded_for else ip,
                b"\r\nx-forwarded-proto: ", client.scheme, b"\r\nx-request-id: ", self.request_id,
                b"\r\ntransfer-encoding: chunked\r\n\r\n" if self.body_mode == BODY_CHUNKED else b"\r\n\r\n")
        self._head = b"".join(out)
        self.request_done = self.body_mode == BODY_NONE

    # -- attempts ----------------------------------------------------------------------
    def _attempt(self) -> None:
        pool = self.pool
        backend = pool.select(self, self.tried)  # type: ignore[union-attr]
        if backend is None:
            if self.tried:
                self.fail(502, "upstream_failed", f"every backend of pool {pool.name!r} failed")
            else:
                self.fail(503, "no_backend", f"no backend of pool {pool.name!r} is available")
            return
        self.backend = backend
        self.tried.add(backend)
        backend.inflight += 1
        backend.requests += 1
        self._attempt_started = time.monotonic()
        conn = backend.take_idle()
        if conn is not None:
            self._attach(conn)
        else:
            self._connect(backend)

    def _connect(self, backend: Backend) -> None:
        loop = self.client.loop
        timeout = min(self.pool.timeouts.connect, self.deadline - loop.time())  # type: ignore[union-attr]
        task = self._connecting = loop.create_task(_open(loop, backend, max(timeout, 0.001)))
        task.add_done_callback(self._on_connected)

    def _on_connected(self, task: asyncio.Task) -> None:
        try:
            self._connected(task)
        finally:
            flush()

    def _connected(self, task: asyncio.Task) -> None:
        if self._connecting is not task:
            if not task.cancelled() and task.exception() is None:
                task.result()[1].close()  # the exchange moved on (client gone): drop it
            return
        self._connecting = None
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            self._attach(task.result()[1])
        elif isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
            self._attempt_failed("connect_timeout", f"connecting to {self.backend.name} timed out")  # type: ignore[union-attr]
        else:
            self._attempt_failed("connect_failed", f"cannot connect to {self.backend.name}: {exc}")  # type: ignore[union-attr]

    def _attach(self, conn: UpstreamConnection) -> None:
        self.upstream = conn
        conn.attach(self)
        data = self._buffer
        head = self._head if self._host is not None else self._with_host(conn.backend)
        conn.write(head + b"".join(data) if data else head)
        if not self._replayable:
            self._buffer = []
            self._buffered = 0
        self.client.resume_reading_for_body()
        loop = self.client.loop
        limit = min(loop.time() + self.pool.timeouts.per_try, self.deadline)  # type: ignore[union-attr]
        self._timer = loop.call_at(limit, self._on_head_timeout)

    def _with_host(self, backend: Backend) -> bytes:
        """HTTP/1.0 clients may omit Host; HTTP/1.1 upstreams require it (RFC 9112 3.2)."""
        line_end = self._head.index(b"\r\n") + 2
        return b"%bhost: %b:%d\r\n%b" % (self._head[:line_end], backend.host.encode(), backend.port,
                                          self._head[line_end:])

    def _end_attempt(self, ok: bool) -> None:
        backend = self.backend
        if backend is None:
            return
        self.backend = None
        backend.inflight -= 1
        if not ok:
            backend.failures += 1
        self.pool.balancer.observe(backend, time.monotonic() - self._attempt_started, ok)  # type: ignore[union-attr]

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _attempt_failed(self, code: str, message: str) -> None:
        """An attempt failed before any response byte reached the client."""
        self._cancel_timer()
        self._end_attempt(False)
        status = 504 if code.endswith("timeout") else 502
        self.fail(status, code, message)

    # -- request body (from the client) --------------------------------------------------
    def on_request_body(self, data: bytes) -> None:
        if self.finished:
            return
        conn = self.upstream
        framed = chunk(data) if self.body_mode == BODY_CHUNKED else data
        if self._replayable:
            self._buffered += len(framed)
            if self._buffered > REPLAY_LIMIT:
                self._replayable = False
            if conn is None or self._replayable:
                self._buffer.append(framed)
        if conn is not None:
            conn.write(framed)
        elif self._buffered > REPLAY_LIMIT:
            self.client.pause_reading_for_body()  # bounded until the connection is there

    def on_request_end(self) -> None:
        self.request_done = True
        if self.finished:
            return
        if self.body_mode == BODY_CHUNKED:
            conn = self.upstream
            if conn is None or self._replayable:
                self._buffer.append(LAST_CHUNK)  # sent on attach, or kept for a replay
            if conn is not None:
                conn.write(LAST_CHUNK)

    # -- response (from the upstream) ----------------------------------------------------
    def on_response_head(self, status: int, headers: list[tuple[bytes, bytes]],
                         upstream_keep_alive: bool, version: str) -> None:
        self._cancel_timer()
        self.status = status
        self.response_started = True
        self._end_attempt(True)
        client = self.client
        if not self.request_done:
            self.keep_alive = False  # the backend answered early; the rest cannot be framed
        out = [status_line(status)]
        has_length = request_id_seen = False
        named = None
        fields = FIELDS
        for name, value in headers:
            kind = fields.get(name.lower())
            if kind is None:
                out += (name, b": ", value, b"\r\n")
            elif kind == F_CONTENT_LENGTH:
                has_length = True
                out += (name, b": ", value, b"\r\n")
            elif kind == F_REQUEST_ID:
                request_id_seen = True
                out += (name, b": ", value, b"\r\n")
            elif kind == F_CONNECTION:
                named = connection_tokens(value)
            elif kind == F_HOST or kind == F_XFF or kind == F_EXPECT:
                out += (name, b": ", value, b"\r\n")
            # other hop-by-hop fields (transfer-encoding included) are dropped: the
            # framing towards the client is decided below
        if named is not None:
            out = strip_fields(out, 1, named)
        bodiless = self.is_head or status in _NO_BODY_STATUS
        if not bodiless and not has_length:
            if client.http11:
                self.response_chunked = True
                out.append(b"transfer-encoding: chunked\r\n")
            else:
                self.keep_alive = False  # HTTP/1.0 client: the end of the body is the close
        self.served_by = backend_name = self.upstream.backend.name if self.upstream else ""
        out += (b"x-lbd-backend: ", backend_name.encode(), b"\r\n")
        if not request_id_seen:
            out += (b"x-request-id: ", self.request_id, b"\r\n")
        if not self.keep_alive:
            out.append(b"connection: close\r\n\r\n")
        elif not client.http11:
            out.append(b"connection: keep-alive\r\n\r\n")
        else:
            out.append(b"\r\n")
        client.write(b"".join(out))

    def on_response_body(self, data: bytes) -> None:
        if self.response_chunked:
            data = chunk(data)
        self.client.write(data)

    def on_response_end(self, conn: UpstreamConnection, upstream_keep_alive: bool) -> None:
        if self.response_chunked:
            self.client.write(LAST_CHUNK)
        self.upstream = None
        conn.detach()
        if upstream_keep_alive and self.request_done:
            conn.backend.put_idle(conn, self.client.loop.time())
        else:
            conn.close()
        self._finish()

    # -- failures ------------------------------------------------------------------------
    def on_upstream_lost(self, conn: UpstreamConnection, exc: Exception | None) -> None:
        if conn is not self.upstream:
            return
        self.upstream = None
        if self.response_started:
            self._abort_response()
            return
        if conn.uses > 1 and not conn.received_anything and self._replayable:
            # A pooled connection the backend had closed while it sat idle: the request
            # never reached it. Send it again on a fresh connection to the same backend.
            self._cancel_timer()
            self._connect(self.backend)  # type: ignore[arg-type]
            return
        reason = f"backend {conn.backend.name} closed the connection" + (f": {exc}" if exc else "")
        self._attempt_failed("upstream_reset", reason)

    def on_upstream_failed(self, code: str, message: str, conn: UpstreamConnection) -> None:
        if conn is not self.upstream:
            return
        self.upstream = None
        if self.response_started:
            self._abort_response()
        else:
            self._attempt_failed(code, message)

    def _on_head_timeout(self) -> None:
        try:
            self._head_timed_out()
        finally:
            flush()

    def _head_timed_out(self) -> None:
        self._timer = None
        conn, self.upstream = self.upstream, None
        if conn is not None:
            conn.close()
        name = self.backend.name if self.backend else "?"
        overall = self.client.loop.time() >= self.deadline
        self._attempt_failed("timeout", f"{'request' if overall else 'try'} timed out waiting for {name}")

    def _abort_response(self) -> None:
        """The response head is out: the only honest signal left is closing the connection."""
        self._end_attempt(False)
        self.keep_alive = False
        self.finished = True
        self.client.abort_after_write()

    def pause_client_reading(self) -> None:
        self.client.pause_reading_for_upstream()

    def resume_client_reading(self) -> None:
        self.client.resume_reading_for_upstream()

    def on_client_lost(self) -> None:
        """The client went away: stop everything it asked for."""
        if self.finished:
            return
        self.finished = True
        self._cancel_timer()
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        conn, self.upstream = self.upstream, None
        if conn is not None:
            conn.close()
        self._end_attempt(False)

    def fail(self, status: int, code: str, message: str) -> None:
        """Answer with a JSON error; only possible before the response head went out."""
        if not self.request_done:
            self.keep_alive = False
        self.status = status
        self.client.write(error_response(status, code, message, self.request_id or
                                         self.client.server.request_ids.next(), keep_alive=self.keep_alive))
        self._finish()

    def _finish(self) -> None:
        self.finished = True
        self._cancel_timer()
        self.client.exchange_done(self)
