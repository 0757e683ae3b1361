"""What the tests comparing the compiled lane with the Python data plane share: a proxy
in this process on either plane (``with_proxy``, ``start_proxy``), a capturing upstream
(``Capture``), a client that reads responses (``send``, ``read_response``), and masks for what
differs per process (request ids).

Used by tests/integration/proxy/test_lane.py and test_lane_fuzz.py."""

from __future__ import annotations

import asyncio
import io
import json
import re

from lbd.config import load_config_text
from lbd.log import AccessLog
from lbd.proxy.server import ProxyServer
from lbd.runtime import Runtime
from tests.support.procs import free_port

CONFIG = """
listen: [{{address: "127.0.0.1:{port}"}}]
log: {{access: false}}
lane: {lane}
default_pool: web
pools:
  web:
    retry: {{attempts: {attempts}, backoff: {{base: 1ms, max: 2ms}}}}
    timeouts: {{connect: 500ms, per_try: {per_try}, total: 5s}}
    health: {{enabled: false}}
    outlier: {{enabled: false}}
    backends: [{backends}]
  keyed:
    match: {{path_prefix: /keyed}}
    auth: {{keys: [{{sha256: 85dbe15d75ef9308c7ae0f33c7a324cc6f4bf519a2ed2f3027bd33c140a4f9aa, tenant: t1}}]}}
    backends: [{backends}]
{extra}"""


class Capture:
    """A scripted upstream that records every request head it receives (``heads``), and each
    whole request, head and body as received (``requests``)."""

    def __init__(self, name: str = "cap") -> None:
        self.name = name
        self.heads: list[bytes] = []
        self.requests: list[bytes] = []
        self.server: asyncio.AbstractServer | None = None
        self.port = 0
        self.connections = 0
        self.fail_next = 0       # answer this many requests with 503
        self.kill_next = 0       # close this many connections without an answer

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, limit=1 << 20)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                length = re.search(rb"(?im)^content-length: *(\d+)", head)
                body = b""
                if length:
                    body = await reader.readexactly(int(length.group(1)))
                elif re.search(rb"(?im)^transfer-encoding: *chunked", head):
                    body = await reader.readuntil(b"0\r\n\r\n")
                self.requests.append(head + body)
                if self.kill_next:
                    self.kill_next -= 1
                    writer.transport.abort()
                    return
                method, target = head.split(b" ")[:2]
                if target.startswith(b"/hang"):
                    await asyncio.sleep(3)
                answer, close = self._answer(method, target.decode())
                writer.write(answer)
                await writer.drain()
                if close:
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    def _answer(self, method: bytes, target: str) -> tuple[bytes, bool]:
        if self.fail_next:
            self.fail_next -= 1
            return b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\nX-Up: %b\r\n\r\nbusy" % self.name.encode(), False
        path = target.partition("?")[0]
        up = b"X-Up: " + self.name.encode() + b"\r\n"
        if path == "/chunked":
            return (b"HTTP/1.1 200 OK\r\n" + up + b"Transfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n"
                    b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n"), False
        if path == "/nolen":
            return b"HTTP/1.1 200 OK\r\n" + up + b"Content-Type: text/plain\r\n\r\nuntil close", True
        if path == "/204":
            return b"HTTP/1.1 204 No Content\r\n" + up + b"\r\n", False
        if path == "/304":
            return b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nContent-Length: 10\r\n" + up + b"\r\n", False
        if path == "/hop":
            return (b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Drop\r\nX-Drop: 1\r\nKeep-Alive: timeout=5\r\n"
                    b"Proxy-Authenticate: Basic\r\nX-Keep:  spaced  \r\nUpgrade: h2c\r\n" + up +
                    b"Content-Length: 2\r\n\r\nok"), False
        if path == "/rid":
            return b"HTTP/1.1 200 OK\r\nX-Request-ID: upstream-id\r\nContent-Length: 2\r\n" + up + b"\r\nok", False
        if path == "/pclose":  # llhttp reads Proxy-Connection as Connection: not reused
            return b"HTTP/1.1 200 OK\r\nProxy-Connection: close\r\nContent-Length: 2\r\n" + up + b"\r\nok", False
        if path == "/close":
            return b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n" + up + b"\r\nok", True
        if path == "/status/500":
            return b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 3\r\n" + up + b"\r\nbad", False
        if path == "/weird":
            return b"HTTP/1.1 299 Whatever\r\nContent-Length: 0\r\nRetry-After: 3\r\n" + up + b"\r\n", False
        if path == "/big":
            size = int(target.partition("size=")[2] or 0)
            return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%b\r\n%b" % (size, up, b"x" * size), False
        body = b"ok" if method != b"HEAD" else b""
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n" + up + b"\r\n" + body, False


async def read_response(reader: asyncio.StreamReader, method: bytes = b"GET") -> tuple[bytes, bytes]:
    """One response: its head (with the blank line) and its body as sent (framing included)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    status = int(head.split(b" ")[1])
    if status == 100:
        head += await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        status = int(head.split(b"\r\n\r\n")[1].split(b" ")[1])
    length = re.search(rb"(?im)^content-length: *(\d+)", head)
    if method == b"HEAD" or status in (204, 304):
        return head, b""
    if re.search(rb"(?im)^transfer-encoding: *chunked", head):
        body = b""
        while not body.endswith(b"0\r\n\r\n") or not _chunked_complete(body):
            piece = await asyncio.wait_for(reader.read(65536), 5)
            if not piece:
                break
            body += piece
        return head, body
    if length:
        return head, await asyncio.wait_for(reader.readexactly(int(length.group(1))), 5)
    return head, await asyncio.wait_for(reader.read(), 5)


def _chunked_complete(body: bytes) -> bool:
    i = 0
    while True:
        end = body.find(b"\r\n", i)
        if end < 0:
            return False
        size = int(body[i:end].split(b";")[0], 16)
        if size == 0:
            return body[end + 2:end + 4] == b"\r\n"
        i = end + 2 + size + 2


def dechunk(body: bytes) -> bytes:
    out, i = b"", 0
    while True:
        end = body.find(b"\r\n", i)
        if end < 0:
            return out + b"(cut)"
        size = int(body[i:end], 16)
        if size == 0:
            return out
        out += body[end + 2:end + 2 + size]
        i = end + 2 + size + 2


def mask(head: bytes) -> bytes:
    """Request ids are generated per process and per request: compare their presence only."""
    return re.sub(rb"(?im)^(x-request-id: )[0-9a-f]{16}-[0-9a-f]+(\r\n)", rb"\1ID\2", head).replace(
        b'"request_id":"', b'"request_id":"').strip()


def mask_body(body: bytes) -> bytes:
    return re.sub(rb'"request_id":"[0-9a-f]{16}-[0-9a-f]+"', b'"request_id":"ID"', body)


def config_text(port: int, lane: str, upstreams: list, *, attempts: int = 1, per_try: str = "2s", names: str = "b",
                extra: str = "") -> str:
    """:data:`CONFIG` for a proxy on ``port`` in front of ``upstreams`` (anything with a
    ``port``), their backends named ``{names}0``, ``{names}1``..."""
    backends = ", ".join(f'{{url: "http://127.0.0.1:{up.port}", name: "{names}{i}"}}' for i, up in enumerate(upstreams))
    return CONFIG.format(port=port, lane=lane, attempts=attempts, per_try=per_try, backends=backends, extra=extra)


async def start_proxy(lane: str, caps: list[Capture], *, attempts: int = 1, per_try: str = "2s", names: str = "b",
                      extra: str = "") -> tuple[ProxyServer, int]:
    """A proxy in this loop on ``lane`` (``auto`` or ``off``) in front of ``caps`` (started),
    with ``extra`` top-level configuration: the server and its port."""
    port = free_port()
    config = load_config_text(config_text(port, lane, caps, attempts=attempts, per_try=per_try, names=names,
                                          extra=extra))
    server = ProxyServer(Runtime.build(config), asyncio.get_running_loop(), AccessLog(True, io.BytesIO()))
    await server.start()
    return server, port


async def with_proxy(lane: str, scenario, *, attempts: int = 1, per_try: str = "2s", upstreams: int = 1,
                     names: str = "b"):
    caps = [Capture(f"cap{i}") for i in range(upstreams)]
    for cap in caps:
        await cap.start()
    server, port = await start_proxy(lane, caps, attempts=attempts, per_try=per_try, names=names)
    try:
        return await scenario(server, port, caps)
    finally:
        await server.shutdown(0.5)
        for cap in caps:
            await cap.stop()


def access_entries(server) -> list[tuple]:
    """The access log's entries so far, without what differs per run (ids, durations, backends)."""
    server.access_log.flush()
    entries = [json.loads(line) for line in server.access_log._stream.getvalue().splitlines()]
    return [(e["method"], e["path"], e["status"], e["pool"], e["backend"] is not None, e["attempts"], e["cache"],
             e["tenant"], e["client"]) for e in entries]


async def send(port: int, requests: list[bytes], methods: list[bytes] | None = None) -> list[tuple[bytes, bytes]]:
    """Send each request on one connection, one after the other, reading each response."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answers = []
    try:
        for i, raw in enumerate(requests):
            writer.write(raw)
            await writer.drain()
            method = (methods or [raw.split(b" ")[0]] * len(requests))[i] if methods else raw.split(b" ")[0]
            try:
                answers.append(await read_response(reader, method))
            except (asyncio.IncompleteReadError, ConnectionError):
                answers.append((b"", b""))
                break
    finally:
        writer.close()
    return answers
