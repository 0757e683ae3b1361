"""What a client sent: its fields, the view balancers and the router read, and its body,
kept while small enough that the request can be sent again."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lbd.proxy.heads import BODY_CHUNKED, BODY_NONE, RequestFields, request_head
from lbd.proxy.http import LAST_CHUNK, chunk

if TYPE_CHECKING:
    from lbd.proxy.downstream import ClientConnection
    from lbd.proxy.upstream import UpstreamConnection

__all__ = ["Request", "REPLAY_LIMIT", "header_in", "cookie_in"]

# Request bodies up to this size are kept so the request can be sent again (a retry, or a
# pooled connection the backend had closed); larger ones stream and are not retried once sent.
REPLAY_LIMIT = 64 * 1024


class Request:
    __slots__ = ("client", "method", "url", "headers", "keep_alive", "fields", "request_done", "finished",
                 "_buffer", "_buffered", "_replayable", "_path", "_raw", "_body_waiter")

    upstream: UpstreamConnection | None

    def __init__(self, client: ClientConnection, method: bytes, url: bytes,
                 headers: list[tuple[bytes, bytes]], keep_alive: bool) -> None:
        self.client = client
        self.method = method
        self.url = url
        self.headers = headers
        self.keep_alive = keep_alive
        self.fields: RequestFields = request_head(method, url, headers, client.client_ip_bytes, client.scheme,
                                                  client.server.request_ids.next)
        self.request_done = self.fields.body_mode == BODY_NONE
        self.finished = False
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._replayable = True
        self._path: str | None = None
        self._raw: list[bytes] | None = [] if self.fields.body_mode == BODY_CHUNKED else None
        """A chunked body as sent, without its framing (``_buffer`` holds it framed)."""
        self._body_waiter = None
        """Called once the body is complete or too large to keep (a stage that needs it)."""

    # -- what balancers and the router read (lbd.balancing.base.RequestView) ---------------
    @property
    def request_id(self) -> bytes:
        return self.fields.request_id  # type: ignore[return-value]

    @property
    def body_mode(self) -> int:
        return self.fields.body_mode

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
        host = self.fields.host
        if host is None:
            return ""
        text = host.decode("latin-1").lower()
        return text.partition("]")[0] + "]" if text.startswith("[") else text.partition(":")[0]

    @property
    def is_head(self) -> bool:
        return self.method == b"HEAD"

    def header(self, name: str) -> str | None:
        return header_in(self.headers, name)

    def cookie(self, name: str) -> str | None:
        return cookie_in(self.header("cookie"), name)

    def body_prefix(self, size: int) -> bytes:
        """Up to ``size`` bytes of the body received and kept so far, without chunked
        framing: ``b""`` once a body too large to keep has been forwarded."""
        if self._raw is not None:
            parts = self._raw
        elif self.fields.body_mode == BODY_CHUNKED:
            # Past REPLAY_LIMIT only the framed pieces are kept, as chunk() made them
            # (LAST_CHUNK unframes to b"").
            parts = [part[part.index(b"\r\n") + 2:-2] for part in self._buffer]
        else:
            parts = self._buffer
        return b"".join(parts)[:size]

    # -- request body (from the client) --------------------------------------------------
    def _with_body(self, whole, too_large) -> None:
        """For a stage that reads the whole body: ``whole()`` once it is complete and kept,
        ``too_large()`` once it is known not to be (over REPLAY_LIMIT); at once when that is
        known already, else when :meth:`on_request_body` or :meth:`on_request_end` tells."""
        if not self._replayable:
            too_large()
        elif self.request_done:
            whole()
        else:
            def settled() -> None:
                self._body_waiter = None
                if not self.finished:
                    self._with_body(whole, too_large)

            self._body_waiter = settled

    @property
    def body(self) -> bytes | None:
        """The whole body, once received, if it was small enough to keep; else ``None``."""
        if not (self.request_done and self._replayable):
            return None
        if self.fields.body_mode == BODY_NONE:
            return b""
        return b"".join(self._raw if self._raw is not None else self._buffer)

    def on_request_body(self, data: bytes) -> None:
        if self.finished:
            return
        conn = self.upstream
        framed = chunk(data) if self.fields.body_mode == BODY_CHUNKED else data
        if self._replayable:
            self._buffered += len(framed)
            if self._buffered > REPLAY_LIMIT:
                self._replayable = False
                self._raw = None
                if conn is not None:
                    self._buffer = []  # sent when the connection was attached; no replay now
            elif self._raw is not None:
                self._raw.append(data)
        if conn is not None:
            if self._replayable:
                self._buffer.append(framed)  # kept for a replay
            conn.write(framed)
            return
        # No connection yet (being made, or queued): every piece waits for _attach, which
        # sends them all. Past REPLAY_LIMIT reading pauses, so at most a read more is held.
        self._buffer.append(framed)
        if not self._replayable:
            self.client.pause_reading_for_body()  # bounded until a connection takes it
            if self._body_waiter is not None:
                self._body_waiter()

    def on_request_end(self) -> None:
        self.request_done = True
        if not self.finished and self.fields.body_mode == BODY_CHUNKED:
            conn = self.upstream
            if conn is None or self._replayable:
                self._buffer.append(LAST_CHUNK)  # sent on attach, or kept for a replay
            if conn is not None:
                conn.write(LAST_CHUNK)
        if self._body_waiter is not None:
            self._body_waiter()


def header_in(headers: list[tuple[bytes, bytes]], name: str) -> str | None:
    """The first field ``name`` (any case) of ``headers``, decoded; both data planes'."""
    wanted = name.lower().encode("latin-1")
    for key, value in headers:
        if key.lower() == wanted:
            return value.decode("latin-1")
    return None


def cookie_in(cookies: str | None, name: str) -> str | None:
    """Cookie ``name`` of a ``Cookie`` field's value."""
    if cookies is None:
        return None
    for part in cookies.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            return value
    return None
