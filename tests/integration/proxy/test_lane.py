"""The compiled lane (lbd/proxy/_lane.pyx) against the Python data plane: the same requests
through both (``lane: auto`` and ``lane: off``), to a capturing upstream, must give the same
heads upstream and to the client (request ids aside); the lane hands over what it does not
serve, retries go through Python with the lane's first try inherited.

The proxy runs in this process (so the test can read the lane's counters), on real sockets."""

from __future__ import annotations

import asyncio
import io
import json
import re

import pytest
import uvloop

from lbd.config import load_config_text
from lbd.log import AccessLog
from lbd.proxy import lane as lane_module
from lbd.proxy.server import ProxyServer
from lbd.runtime import Runtime
from tests.support.procs import free_port

pytestmark = pytest.mark.skipif(not lane_module.available(), reason="the compiled lane is not built")

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
"""

PIPELINE_GAP = 0.05


class Capture:
    """A scripted upstream that records every request head it receives."""

    def __init__(self, name: str = "cap") -> None:
        self.name = name
        self.heads: list[bytes] = []
        self.server: asyncio.AbstractServer | None = None
        self.port = 0
        self.connections = 0
        self.fail_next = 0       # answer this many requests with 503
        self.kill_next = 0       # close this many connections without an answer

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
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
                if length:
                    await reader.readexactly(int(length.group(1)))
                elif re.search(rb"(?im)^transfer-encoding: *chunked", head):
                    await reader.readuntil(b"0\r\n\r\n")
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


async def with_proxy(lane: str, scenario, *, attempts: int = 1, per_try: str = "2s", upstreams: int = 1,
                     names: str = "b"):
    caps = [Capture(f"cap{i}") for i in range(upstreams)]
    for cap in caps:
        await cap.start()
    port = free_port()
    backends = ", ".join(f'{{url: "http://127.0.0.1:{cap.port}", name: "{names}{i}"}}' for i, cap in enumerate(caps))
    config = load_config_text(CONFIG.format(port=port, lane=lane, attempts=attempts, per_try=per_try, backends=backends))
    server = ProxyServer(Runtime.build(config), asyncio.get_running_loop(), AccessLog(True, io.BytesIO()))
    await server.start()
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


def anonymous(answers: list[tuple[bytes, bytes]]) -> list[bytes]:
    return [re.sub(rb"\b(b|cap)[01]\b", rb"\1N", h + b) for h, b in answers]


def run(scenario, **kw):
    return uvloop.run(with_proxy_both(scenario, **kw))


async def with_proxy_both(scenario, **kw):
    lane = await with_proxy("auto", scenario, **kw)
    python = await with_proxy("off", scenario, **kw)
    return lane, python


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


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv("LBD_LANE", raising=False)


PLAIN = [
    b"GET /plain?q=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t\r\nX-Sp:   spaced  \r\nX-Empty:\r\n"
    b"X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: https\r\nConnection: keep-alive\r\n"
    b"Keep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Authorization: x\r\nRetry-After: 1\r\n\r\n",
    b"POST /plain HTTP/1.1\r\nHost: example.com:8080\r\nContent-Type: application/json\r\n"
    b"Content-Length: 11\r\n\r\n{\"x\": true}",
    b"HEAD /plain HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /chunked HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /204 HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /304 HTTP/1.1\r\nHost: h\r\nIf-None-Match: \"x\"\r\n\r\n",
    b"GET /hop HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /rid HTTP/1.1\r\nHost: h\r\nX-Request-ID: client-id-1\r\n\r\n",
    b"GET /plain HTTP/1.1\r\nHost: h\r\nX-Request-ID:\r\nX-Forwarded-For:\r\n\r\n",
    b"PUT /plain HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
    b"DELETE /plain HTTP/1.1\r\nhost: h\r\nCONTENT-LENGTH: 3\r\n\r\nabc",
    b"GET /status/500 HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /weird HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /nolen HTTP/1.1\r\nHost: h\r\n\r\n",
]


def test_heads_upstream_and_to_the_client_are_the_same_as_the_python_path():
    async def scenario(server, port, caps):
        answers = []
        for raw in PLAIN:
            answers += await send(port, [raw])
        answers += await send(port, [PLAIN[0], PLAIN[1], PLAIN[7], b"GET /close HTTP/1.1\r\nHost: h\r\n\r\n"])
        answers += await send(port, [b"GET /plain HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"])
        counters = (server.lane.served, server.lane.handed_over) if server.lane_on else None
        return [mask(h) for h in caps[0].heads], [(mask(h), b) for h, b in answers], counters, access_entries(server)

    (lane_up, lane_answers, counters, lane_log), (py_up, py_answers, _, py_log) = run(scenario)
    assert lane_log == py_log and len(lane_log) == len(PLAIN) + 5
    assert counters is not None and counters[0] == len(PLAIN) + 5 and counters[1] == 0
    assert len(lane_up) == len(py_up)
    for a, b in zip(lane_up, py_up):
        assert a == b
    for (head_a, body_a), (head_b, body_b) in zip(lane_answers, py_answers):
        assert head_a == head_b
        if b"chunked" in head_a:
            assert dechunk(body_a) == dechunk(body_b)
        else:
            assert body_a == body_b
    # spot checks of what both give
    assert b"x-forwarded-for: 203.0.113.9, 127.0.0.1\r\n" in lane_up[0]
    assert b"X-Forwarded-Proto: https\r\n" in lane_up[0] and b"x-forwarded-proto: http\r\n" in lane_up[0]
    assert b"keep-alive" not in lane_up[0].lower().replace(b"connection: keep-alive", b"")
    assert b"x-drop" not in lane_answers[6][0].lower()
    assert b"X-Request-ID: upstream-id" in lane_answers[7][0]


ODD_IDS = [b'say "hi"', b"back\\slash", b"tab\there", b"a/b?c=d&e", b"{}[]:,~"]


def test_access_lines_the_lane_formats_are_the_python_paths_field_for_field():
    async def scenario(server, port, caps):
        for rid in ODD_IDS:
            await send(port, [b"GET /plain/x.json?secret=1 HTTP/1.1\r\nHost: h\r\nX-Request-ID: " + rid + b"\r\n\r\n"])
        await send(port, [b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nok"])
        server.access_log.flush()
        lines = server.access_log._stream.getvalue().splitlines()
        counters = (server.lane.served, server.lane.handed_over) if server.lane_on else None
        return [json.loads(line) for line in lines], lines, counters

    (lane_log, lane_lines, counters), (py_log, _, _) = run(scenario, names="café-")
    assert counters == (len(ODD_IDS) + 1, 0)  # the lane served every one: its lines are C's
    assert len(lane_log) == len(py_log) == len(ODD_IDS) + 1
    assert [list(e) for e in lane_log] == [list(e) for e in py_log]  # the same keys in the same order
    assert [e["request_id"] for e in lane_log[:len(ODD_IDS)]] == [rid.decode() for rid in ODD_IDS]
    assert re.fullmatch(r"[0-9a-f]{16}-[0-9a-f]+", lane_log[-1]["request_id"])  # generated: differs per run
    assert lane_log[0]["path"] == "/plain/x.json" and lane_log[0]["attempts"] == 1
    assert lane_log[-1]["backend"] == "café-0"  # names written as UTF-8
    for lane, python in zip(lane_log, py_log):
        assert abs(lane["ts"] - python["ts"]) < 60 and 0 <= lane["duration_ms"] < 10_000
        for varies in ("ts", "duration_ms", "request_id" if lane is lane_log[-1] else "ts"):
            lane.pop(varies, None), python.pop(varies, None)
        assert lane == python
    assert all(line.count(b"\n") == 0 and b"secret" not in line for line in lane_lines)


HANDOVER = [
    b"GET /plain HTTP/1.0\r\nHost: h\r\n\r\n",
    b"POST /plain HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"POST /plain HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok",
    b"GET http://other.example/plain HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /plain HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: a\r\nX-Forwarded-For: b\r\n\r\n",
    b"GET /plain HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Private\r\nX-Private: 1\r\n\r\n",
    b"GET /plain HTTP/1.1\r\nHost: h\r\nx-lbd-timeout-ms: 1000\r\n\r\n",
    b"GET /plain HTTP/1.1\r\nHost: h\r\nPrefer: respond-async\r\n\r\n",
    b"GET /plain HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    b"TRACE /plain HTTP/1.1\r\nHost: h\r\n\r\n",
    b"FOO /plain HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /plain HTTP/1.1\r\n\r\n",
    b"GET /plain HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET /plain HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
    b"GET /pl\"ain HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /plain HTTP/1.1\r\nHost: h\r\nX-Bad: caf\xc3\xa9\r\n\r\n",
    b"GET /plain HTTP/1.1\r\nHost: h\r\nBad Name: x\r\n\r\n",
    b"GET /keyed HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /keyed HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer secret-key\r\n\r\n",
    b"POST /plain HTTP/1.1\r\nHost: h\r\nContent-Length: 70000\r\n\r\n" + b"y" * 70000,
    b"GET /plain HTTP/1.1\r\nHost: h\r\nX-Long: " + b"z" * 70000 + b"\r\n\r\n",
    b"GET /" + b"u" * 9000 + b" HTTP/1.1\r\nHost: h\r\n\r\n",
]


def test_handover_on_a_connection_that_served_lane_requests_answers_as_python():
    async def scenario(server, port, caps):
        answers = []
        for raw in HANDOVER:
            answers.append(await send(port, [PLAIN[2], raw, PLAIN[2]]))
        counters = (server.lane.served, server.lane.handed_over) if server.lane_on else None
        return [mask(h) for h in caps[0].heads], [[(mask(h), mask_body(b)) for h, b in a] for a in answers], counters

    (lane_up, lane_answers, counters), (py_up, py_answers, _) = run(scenario)
    assert counters is not None and counters[1] == len(HANDOVER)
    assert lane_up == py_up
    for raw, a, b in zip(HANDOVER, lane_answers, py_answers):
        assert a == b, raw[:60]


def test_a_503_is_retried_by_python_with_the_lanes_try_inherited():
    async def scenario(server, port, caps):
        caps[0].fail_next = caps[1].fail_next = 1  # whichever comes first (the round robin starts anywhere)
        answers = await send(port, [b"GET /plain HTTP/1.1\r\nHost: h\r\n\r\n", PLAIN[2]])
        pool = server.runtime.pools["web"]
        return ([(mask(h), b) for h, b in answers], [b.inflight for b in pool.backends], pool.budget.spent,
                server.metrics._retries.get("web", 0), server.requests, access_entries(server))

    lane, python = run(scenario, attempts=3, upstreams=2)
    assert anonymous(lane[0]) == anonymous(python[0]) and lane[1:] == python[1:]  # the round robin starts anywhere
    answers, inflight, spent, retries, requests, entries = lane
    assert [e[5] for e in entries] == [3, 1] and [e[2] for e in entries] == [200, 200]
    assert b"x-lbd-attempts: 3" in answers[0][0] and answers[0][1] == b"ok"
    assert inflight == [0, 0] and spent == 2 and retries == 2 and requests == 2


def test_a_killed_connection_is_retried_and_a_503_forwarded_when_no_attempt_is_left():
    async def scenario(server, port, caps):
        caps[0].kill_next = 1
        caps[1].kill_next = 1
        first = await send(port, [b"GET /plain HTTP/1.1\r\nHost: h\r\n\r\n"])
        caps[0].fail_next = caps[1].fail_next = 5
        second = await send(port, [b"GET /plain HTTP/1.1\r\nHost: h\r\n\r\n"])
        pool = server.runtime.pools["web"]
        return ([(mask(h), mask_body(b)) for h, b in first + second], [b.inflight for b in pool.backends],
                [b.failures for b in pool.backends], server.metrics._retries.get("web", 0), access_entries(server))

    lane, python = run(scenario, attempts=2, upstreams=2)
    assert anonymous(lane[0]) == anonymous(python[0]) and lane[1:] == python[1:]
    answers, inflight, failures, retries, entries = lane
    assert answers[0][0].startswith(b"HTTP/1.1 502") and answers[1][0].startswith(b"HTTP/1.1 503")
    assert inflight == [0, 0] and retries == 2 and failures == [2, 2]
    assert [(e[2], e[5]) for e in entries] == [(502, 2), (503, 2)]


def test_keep_alive_reuses_upstream_connections_and_pipelined_requests_are_answered_in_order():
    async def scenario(server, port, caps):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"".join(b"GET /plain?i=%d HTTP/1.1\r\nHost: h\r\n\r\n" % i for i in range(5)))
        answers = [await read_response(reader) for _ in range(5)]
        writer.close()
        more = await send(port, [PLAIN[2]] * 5)
        return ([mask(h) for h in caps[0].heads], [(mask(h), b) for h, b in answers + more], caps[0].connections,
                access_entries(server))

    (lane_up, lane_answers, lane_conns, lane_log), (py_up, py_answers, py_conns, py_log) = run(scenario)
    assert lane_up == py_up and lane_answers == py_answers and lane_log == py_log and len(lane_log) == 10
    assert [h.split(b" ")[1] for h in lane_up[:5]] == [b"/plain?i=%d" % i for i in range(5)]
    assert lane_conns == 1


def test_a_big_response_streams_through_with_back_pressure():
    size = 8 * 1024 * 1024

    async def scenario(server, port, caps):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1024)
        writer.write(b"GET /big?size=%d HTTP/1.1\r\nHost: h\r\n\r\n" % size)
        head = await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(0.3)  # a slow reader: the proxy must not buffer it all
        got = 0
        while got < size:
            piece = await reader.read(1 << 20)
            assert piece
            got += len(piece)
        writer.close()
        return mask(head), got

    lane, python = run(scenario)
    assert lane == python


def test_client_abort_closes_the_upstream_request_and_books_no_verdict():
    async def scenario(server, port, caps):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        caps[0].kill_next = 0
        writer.write(b"GET /plain HTTP/1.1\r\nHost: h\r\n\r\n")
        await read_response(reader)
        writer.transport.abort()
        await asyncio.sleep(0.1)
        pool = server.runtime.pools["web"]
        return [b.inflight for b in pool.backends], len(server.connections)

    lane, python = run(scenario)
    assert lane == python == ([0], 0)


def test_reload_switches_a_pool_from_the_lane_to_python():
    async def scenario(server, port, caps):
        first = await send(port, [PLAIN[2]])
        config = server.runtime.config
        text = CONFIG.format(port=port, lane="auto", attempts=1, per_try="2s",
                             backends=f'{{url: "http://127.0.0.1:{caps[0].port}", name: b0}}')
        text = text.replace("    retry:", "    rate_limit: {rate: 1000}\n    retry:", 1)
        runtime = Runtime.build(load_config_text(text), previous=server.runtime)
        assert config.lane == "auto" or not server.lane_on
        server.swap(runtime)
        second = await send(port, [PLAIN[2]])
        counters = (server.lane.served, server.lane.handed_over) if server.lane_on else None
        return [mask(h) for h, _ in first], counters, second[0][0].split(b"\r\n")[0]

    (lane_first, counters, status), _ = run(scenario)
    assert counters == (1, 1) and status == b"HTTP/1.1 200 OK"


DAEMON = """
listen: [{{address: "127.0.0.1:{port}"}}]
lane: auto
pools:
  web:
    backends: [{{url: "http://127.0.0.1:{a}"}}]
"""


def test_the_daemon_drains_lane_requests_on_sigterm(lbd, upstreams, monkeypatch):
    """A real lbd process with the lane on: a request in flight at SIGTERM is answered (with
    ``connection: close``), an idle keep-alive connection is closed, the process exits 0."""
    import signal
    import socket
    import threading

    proc, port = lbd(DAEMON, a=upstreams["a"])
    idle = socket.create_connection(("127.0.0.1", port))
    idle.sendall(b"GET /echo HTTP/1.1\r\nHost: h\r\n\r\n")
    assert idle.recv(65536).startswith(b"HTTP/1.1 200")
    result: dict[str, bytes] = {}

    def slow() -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /slow?delay=1 HTTP/1.1\r\nHost: h\r\n\r\n")
            data = b""
            while True:
                piece = sock.recv(65536)
                if not piece:
                    break
                data += piece
            result["answer"] = data

    thread = threading.Thread(target=slow)
    thread.start()
    import time
    time.sleep(0.3)
    proc.signal(signal.SIGTERM)
    thread.join(10)
    assert result["answer"].startswith(b"HTTP/1.1 200") and b"connection: close" in result["answer"].lower()
    idle.settimeout(5)
    assert idle.recv(65536) == b""
    assert proc.wait(15) == 0
    assert "compiled lane on" in proc.output()


def test_a_try_that_times_out_is_retried_by_python_and_answered_504_at_the_end():
    async def scenario(server, port, caps):
        answers = await send(port, [b"GET /hang HTTP/1.1\r\nHost: h\r\n\r\n"])
        pool = server.runtime.pools["web"]
        return ([(mask(h), mask_body(b)) for h, b in answers], [b.inflight for b in pool.backends],
                sorted(b.failures for b in pool.backends), access_entries(server))

    lane, python = run(scenario, attempts=2, upstreams=2, per_try="200ms")
    assert anonymous(lane[0]) == anonymous(python[0]) and lane[1:] == python[1:]
    answers, inflight, failures, entries = lane
    assert answers[0][0].startswith(b"HTTP/1.1 504") and b'"code":"timeout"' in answers[0][1]
    assert inflight == [0, 0] and failures == [1, 1] and [(e[2], e[5]) for e in entries] == [(504, 2)]


def test_a_later_try_on_a_kept_alive_connection_times_out_on_its_own_clock():
    """The lane keeps one timer handle per connection across requests: the handle armed for
    the first request fires during the second, which must still get its whole per-try time."""
    async def scenario(server, port, caps):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /plain HTTP/1.1\r\nHost: h\r\n\r\n")
        first = await read_response(reader)
        await asyncio.sleep(0.25)  # the first request's handle is due 0.15 s into the second
        started = asyncio.get_running_loop().time()
        writer.write(b"GET /hang HTTP/1.1\r\nHost: h\r\n\r\n")
        second = await read_response(reader)
        elapsed = asyncio.get_running_loop().time() - started
        writer.close()
        return first[0].split(b" ")[1], second[0].split(b" ")[1], elapsed

    lane, python = run(scenario, per_try="400ms")
    for first, second, elapsed in (lane, python):
        assert (first, second) == (b"200", b"504")
        assert 0.38 <= elapsed < 1.5, elapsed


def test_a_refused_connection_is_retried_on_another_backend():
    async def scenario(server, port, caps):
        await caps[0].stop()  # b0 refuses connections from now on
        answers = [await send(port, [b"GET /plain HTTP/1.1\r\nHost: h\r\n\r\n"]) for _ in range(2)]
        pool = server.runtime.pools["web"]
        return ([a[0][0].split(b"\r\n")[0] for a in answers], [b.inflight for b in pool.backends],
                sorted(e[5] for e in access_entries(server)))

    lane, python = run(scenario, attempts=2, upstreams=2)
    for result in (lane, python):  # the round robin starts anywhere: b1 first, or b0 (refused) first
        assert result[0] == [b"HTTP/1.1 200 OK"] * 2 and result[1] == [0, 0] and result[2] in ([1, 2], [2, 2])


def test_lane_follows_the_file_on_reload_for_new_connections():
    async def scenario(server, port, caps):
        before = await send(port, [PLAIN[2]])
        served = server.lane.served
        text = CONFIG.format(port=port, lane="off", attempts=1, per_try="2s",
                             backends=f'{{url: "http://127.0.0.1:{caps[0].port}", name: b0}}')
        server.swap(Runtime.build(load_config_text(text), previous=server.runtime))
        after_off = await send(port, [PLAIN[2]])
        still = server.lane.served
        server.swap(Runtime.build(load_config_text(text.replace("lane: off", "lane: auto")), previous=server.runtime))
        after_on = await send(port, [PLAIN[2]])
        return served, still, server.lane.served, [mask(h) for h, _ in before + after_off + after_on]

    async def only_lane():
        return await with_proxy("auto", scenario)

    served, still, again, heads = uvloop.run(only_lane())
    assert (served, still, again) == (1, 1, 2)
    assert heads[0] == heads[1] == heads[2]
