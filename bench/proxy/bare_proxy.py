"""The smallest honest Python reverse proxy: asyncio Protocols + httptools + uvloop.

It is the benchmark's ceiling for Python, not a product: it shows how fast the request path can
be when it does only what every proxy must (parse both sides, drop hop-by-hop headers, keep-alive
on both sides, pooled upstream connections, round robin per request, streamed bodies with
back-pressure) and nothing else (no routing, timeouts, retries, added headers or metrics).

Usage: python bare_proxy.py LISTEN_PORT HOST:PORT [HOST:PORT ...]

Invariants: one request in flight per client connection (a pipelined request closes the
connection: clients such as wrk, browsers and HTTP libraries do not pipeline); an upstream
connection serves one client request at a time and goes back to its pool only after a
complete, keep-alive response.
"""

from __future__ import annotations

import asyncio
import itertools
import sys

import httptools
import uvloop

_HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"proxy-authenticate", b"proxy-authorization",
})
_BAD_GATEWAY_BODY = b'{"error":"upstream unreachable"}'
_BAD_GATEWAY = (b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                % (len(_BAD_GATEWAY_BODY), _BAD_GATEWAY_BODY))


def _head(first_line: bytes, headers: list[tuple[bytes, bytes]], rechunk: bool,
          extra: bytes = b"") -> bytes:
    """Serialise a head without hop-by-hop headers (Content-Length passes through as is)."""
    parts = [first_line]
    for name, value in headers:
        if name.lower() not in _HOP_BY_HOP:
            parts += (name, b": ", value, b"\r\n")
    if rechunk:
        parts.append(b"Transfer-Encoding: chunked\r\n")
    parts += (extra, b"\r\n")
    return b"".join(parts)


def _has(headers: list[tuple[bytes, bytes]], wanted: bytes) -> bool:
    return any(name.lower() == wanted for name, _ in headers)


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class UpstreamPool:
    """Idle keep-alive connections per upstream address, handed out round robin."""

    def __init__(self, loop: asyncio.AbstractEventLoop, addresses: list[tuple[str, int]]) -> None:
        self._loop = loop
        self._idle: dict[tuple[str, int], list[UpstreamConnection]] = {a: [] for a in addresses}
        self._next = itertools.cycle(addresses).__next__

    def pick(self) -> tuple[tuple[str, int], UpstreamConnection | None]:
        address = self._next()
        idle = self._idle[address]
        while idle:
            connection = idle.pop()
            if not connection.transport.is_closing():
                return address, connection
        return address, None

    async def connect(self, address: tuple[str, int]) -> UpstreamConnection:
        _, connection = await self._loop.create_connection(
            lambda: UpstreamConnection(self, address), *address)
        return connection

    def release(self, connection: UpstreamConnection) -> None:
        self._idle[connection.address].append(connection)

    def forget(self, connection: UpstreamConnection) -> None:
        idle = self._idle[connection.address]
        if connection in idle:
            idle.remove(connection)


class ClientConnection(asyncio.Protocol):
    """One downstream connection: parses requests, streams each to a pooled upstream."""

    def __init__(self, pool: UpstreamPool) -> None:
        self._pool = pool
        self._parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self._upstream: UpstreamConnection | None = None
        self._out: list[bytes] = []        # bytes for the upstream, flushed once per read
        self._connecting = False
        self._in_flight = False
        self._rechunk = False
        self.keep_alive = True

    # asyncio callbacks
    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()
            return
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        upstream, self._upstream = self._upstream, None
        if upstream is not None:   # client went away mid-request: drop the upstream request too
            upstream.client = None
            upstream.transport.close()

    def pause_writing(self) -> None:
        if self._upstream is not None:
            self._upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        if self._upstream is not None:
            self._upstream.transport.resume_reading()

    # httptools callbacks
    def on_message_begin(self) -> None:
        if self._in_flight:        # pipelined request: not supported, see module docstring
            self.transport.close()
            raise httptools.HttpParserError("pipelining not supported")
        self._in_flight = True
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.keep_alive = self._parser.should_keep_alive()
        first = b"%s %s HTTP/1.1\r\n" % (self._parser.get_method(), self._url)
        # A request has a body only with Content-Length or Transfer-Encoding (RFC 9112 6.3).
        self._rechunk = _has(self._headers, b"transfer-encoding")
        self._out.append(_head(first, self._headers, self._rechunk))
        address, self._upstream = self._pool.pick()
        if self._upstream is None:
            self._connecting = True
            asyncio.get_running_loop().create_task(self._connect(address))
        else:
            self._upstream.client = self

    def on_body(self, body: bytes) -> None:
        self._out.append(_chunk(body) if self._rechunk else body)

    def on_message_complete(self) -> None:
        if self._rechunk:
            self._out.append(b"0\r\n\r\n")
        # No pause_reading() until the response is done: that is two epoll_ctl calls per request.
        # A pipelined request instead closes the connection in on_message_begin.

    # proxy logic
    def _flush(self) -> None:
        if self._out and not self._connecting and self._upstream is not None:
            self._upstream.transport.write(b"".join(self._out))
            self._out.clear()

    async def _connect(self, address: tuple[str, int]) -> None:
        try:
            upstream = await self._pool.connect(address)
        except OSError:
            self.transport.write(_BAD_GATEWAY)
            self.transport.close()
            return
        self._connecting = False
        if self.transport.is_closing():
            upstream.transport.close()
            return
        self._upstream = upstream
        upstream.client = self
        self._flush()

    def response_done(self) -> None:
        self._upstream = None
        self._in_flight = False
        if not self.keep_alive:
            self.transport.close()

    def upstream_failed(self, head_sent: bool) -> None:
        self._upstream = None
        if not head_sent:
            self.transport.write(_BAD_GATEWAY)
        self.transport.close()


class UpstreamConnection(asyncio.Protocol):
    """One pooled connection to an upstream: parses responses, streams them to the client."""

    def __init__(self, pool: UpstreamPool, address: tuple[str, int]) -> None:
        self._pool = pool
        self.address = address
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.client: ClientConnection | None = None
        self._out: list[bytes] = []        # bytes for the client, flushed once per read
        self._head_sent = False
        self._rechunk = False

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()
            return
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._pool.forget(self)
        client, self.client = self.client, None
        if client is not None:
            client.upstream_failed(self._head_sent)

    def pause_writing(self) -> None:
        if self.client is not None:
            self.client.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.client is not None:
            self.client.transport.resume_reading()

    def on_message_begin(self) -> None:
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_sent = False

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        first = b"HTTP/1.1 %d %s\r\n" % (status, self._reason)
        keep = b"" if self.client is None or self.client.keep_alive else b"Connection: close\r\n"
        bodiless = status < 200 or status in (204, 304)
        self._rechunk = not bodiless and not _has(self._headers, b"content-length")
        self._out.append(_head(first, self._headers, self._rechunk, keep))
        self._head_sent = True

    def on_body(self, body: bytes) -> None:
        self._out.append(_chunk(body) if self._rechunk else body)

    def on_message_complete(self) -> None:
        if self._rechunk:
            self._out.append(b"0\r\n\r\n")
        self._flush()
        client, self.client = self.client, None
        if self._parser.should_keep_alive():
            self._pool.release(self)
        else:
            self.transport.close()
        if client is not None:
            client.response_done()

    def _flush(self) -> None:
        if self._out:
            if self.client is not None and not self.client.transport.is_closing():
                self.client.transport.write(b"".join(self._out))
            self._out.clear()


async def _serve(port: int, addresses: list[tuple[str, int]]) -> None:
    loop = asyncio.get_running_loop()
    pool = UpstreamPool(loop, addresses)
    server = await loop.create_server(lambda: ClientConnection(pool), "127.0.0.1", port,
                                      backlog=4096, reuse_address=True)
    async with server:
        await server.serve_forever()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        sys.exit(__doc__)
    uvloop.run(_serve(int(argv[0]), [_address(a) for a in argv[1:]]))


if __name__ == "__main__":
    main(sys.argv[1:])
