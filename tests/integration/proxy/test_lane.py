"""The compiled lane (lbd/proxy/_lane.pyx) against the Python data plane: the same requests
through both (``lane: auto`` and ``lane: off``), to a capturing upstream, must give the same
heads upstream and to the client (request ids aside); the lane hands over what it does not
serve, retries go through Python with the lane's first try inherited.

The proxy runs in this process (so the test can read the lane's counters), on real sockets."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading

import pytest
import uvloop

from lbd.config import load_config_text
from lbd.runtime import Runtime
from tests.support.lane import (access_entries, config_text, dechunk, mask, mask_body, read_response, send,
                                start_proxy, with_proxy)

pytestmark = pytest.mark.usefixtures("compiled_lane")


def anonymous(answers: list[tuple[bytes, bytes]]) -> list[bytes]:
    return [re.sub(rb"\b(b|cap)[01]\b", rb"\1N", h + b) for h, b in answers]


def run(scenario, **kw):
    return uvloop.run(with_proxy_both(scenario, **kw))


async def with_proxy_both(scenario, **kw):
    lane = await with_proxy("auto", scenario, **kw)
    python = await with_proxy("off", scenario, **kw)
    return lane, python


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
    # found by test_lane_fuzz.py: llhttp reads Proxy-Connection as Connection (close: no keep-alive)
    b"GET /plain HTTP/1.1\r\nHost: h\r\nProxy-Connection: close\r\n\r\n",
    b"GET /plain HTTP/1.1\r\nHost: h\r\nConnection: close\t\r\n\r\n",  # llhttp versions differ on the tab
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


async def send_at_once(port: int, data: bytes) -> bytes:
    """``data`` in one write; everything the proxy answers until it closes (ids masked)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    got = b""
    try:
        while piece := await asyncio.wait_for(reader.read(65536), 5):
            got += piece
    finally:
        writer.close()
    return re.sub(rb"[0-9a-f]{16}-[0-9a-f]+", b"ID", got)


CLOSING = b"GET /plain HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
# Found by test_lane_fuzz.py. llhttp reads every byte it is given: a refusal pipelined behind a
# request closes the connection after that request's answer (and drops the requests between),
# bytes after a Connection: close request are one ("Data after Connection: close"). The lane
# hands such a connection over before the request goes.
PIPELINED = [
    PLAIN[2] + b"hello",
    PLAIN[2] + PLAIN[2] + b"hello",
    PLAIN[2] + b"GET /" + b"u" * 9000,
    CLOSING + PLAIN[2],
    PLAIN[2] + CLOSING + PLAIN[2],
    PLAIN[1] + b"GET /plain HTTP/1.1\r\nBad Name: x\r\n\r\n",
]


def test_a_connection_with_a_refusal_pipelined_behind_a_request_is_pythons_before_the_request_goes():
    async def scenario(server, port, caps):
        answers = [await send_at_once(port, data) for data in PIPELINED]
        answers.append(await send_at_once(port, PLAIN[2] + PLAIN[2] + CLOSING))  # the lane's
        counters = (server.lane.served, server.lane.handed_over) if server.lane_on else None
        return [mask(h) for h in caps[0].heads], answers, counters

    (lane_up, lane_answers, counters), (py_up, py_answers, _) = run(scenario)
    assert lane_up == py_up
    for data, a, b in zip(PIPELINED, lane_answers, py_answers):
        assert a == b, data[:80]
    assert lane_answers[-1] == py_answers[-1] and lane_answers[-1].count(b"HTTP/1.1 200") == 3
    assert b"connection: close\r\n\r\nHTTP/1.1 400" in lane_answers[0]  # HEAD: no body
    assert counters == (3, len(PIPELINED))


def test_a_request_whose_body_is_to_come_is_refused_at_the_head_as_python_does():
    """Python routes at the head: a 401 (or 404) goes out before the body is in. The lane
    routes when the body is in: it asks first, and hands such a request over."""
    async def scenario(server, port, caps):
        return await send_at_once(port, b"POST /keyed HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\nabc")

    lane, python = run(scenario)
    assert lane == python and lane.startswith(b"HTTP/1.1 401")


def test_a_request_pipelined_behind_a_refusal_that_closes_is_not_sent_upstream():
    """The Python path: a refusal made while a head is parsed (401) closes the connection; a
    request parsed from the same read behind it was begun all the same, and sent upstream
    when a pooled connection was at hand (found by test_lane_fuzz.py)."""
    async def scenario(server, port, caps):
        await send(port, [b"GET /plain HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n"])  # pools one (Python's)
        answer = await send_at_once(port, b"POST /keyed HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nok" + PLAIN[2])
        await asyncio.sleep(0.05)
        return answer, len(caps[0].heads)

    lane, python = run(scenario)
    assert lane == python
    answer, upstream = lane
    assert answer.startswith(b"HTTP/1.1 401") and answer.count(b"HTTP/1.1") == 1 and upstream == 1


def test_an_upstream_connection_answering_proxy_connection_close_is_not_reused():
    async def scenario(server, port, caps):
        answers = await send(port, [b"GET /pclose HTTP/1.1\r\nHost: h\r\n\r\n", PLAIN[2]])
        await asyncio.sleep(0.05)
        counters = (server.lane.served, server.lane.handed_over) if server.lane_on else None
        return [(mask(h), b) for h, b in answers], caps[0].connections, counters

    (lane_answers, lane_conns, counters), (py_answers, py_conns, _) = run(scenario)
    assert lane_answers == py_answers and b"proxy-connection" not in lane_answers[0][0].lower()
    assert lane_conns == py_conns == 2 and counters == (2, 0)


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
        text = config_text(port, "auto", caps)
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
        text = config_text(port, "off", caps)
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


class ThreadUpstream:
    """A keep-alive upstream on blocking sockets in threads: it answers 200 "ok" to requests
    without a body, counts them, and what its first connection received."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self.requests = 0
        self.first_connection_bytes = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            first = not self.accepted
            self.accepted.append(conn)
            threading.Thread(target=self._serve, args=(conn, first), daemon=True).start()

    def _serve(self, conn: socket.socket, first: bool) -> None:
        data = b""
        try:
            while True:
                while b"\r\n\r\n" not in data:
                    piece = conn.recv(65536)
                    if not piece:
                        return
                    if first:
                        self.first_connection_bytes += len(piece)
                    data += piece
                _, _, data = data.partition(b"\r\n\r\n")  # requests without a body
                self.requests += 1
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        except OSError:
            return

    def close_connections(self) -> None:
        for conn in self.accepted:
            try:
                conn.shutdown(socket.SHUT_RDWR)  # the FIN now (a close alone waits for the thread's recv)
            except OSError:
                pass
            conn.close()
        self.accepted.clear()

    def stop(self) -> None:
        self.close_connections()
        self.listener.close()


def test_a_new_connection_carries_nothing_until_create_connection_returned_it():
    """uvloop's ``create_connection`` calls ``connection_made`` before it returns; when the
    glue's ``wait_for`` connect timeout lands in between (a loop held up: the heap settling
    at start, a loaded machine), it closes the transport without calling ``connection_lost``
    and raises, and the glue books a connect failure. The lane used to send the request from
    ``connection_made``: the answer came back on a connection booked as failed, which sat in
    the idle list with its transport closed until the glue's callback, and the next request
    that took it raised on the write; uvloop then dropped that client's connection (the
    chaos test's "Server disconnected"). Now nothing goes out before create_connection has
    returned the connection, as in the Python path: the failed connect is a connect failure
    with nothing sent, and Python's retry answers both requests."""
    upstream = ThreadUpstream()
    request = b"GET /plain HTTP/1.1\r\nHost: h\r\n\r\n"

    async def scenario():
        loop = asyncio.get_running_loop()
        server, port = await start_proxy("auto", [upstream], attempts=2)
        glue = server.lane
        window = asyncio.Event()
        made: list = []
        real_connect = glue._connect

        async def late_timeout(conn, backend, timeout):
            if made:
                return await real_connect(conn, backend, timeout)
            transport, _ = await loop.create_connection(conn, backend.host, backend.port)
            made.append(transport)
            await asyncio.sleep(0.1)  # whatever went out on it is answered meanwhile
            # What uvloop does when the timeout lands here: the transport closed behind the
            # protocol's back, the glue told a little later.
            transport.set_protocol(asyncio.Protocol())
            transport.abort()
            window.set()
            await asyncio.sleep(0.1)
            raise asyncio.TimeoutError()

        glue._connect = late_timeout
        errors: list[dict] = []
        loop.set_exception_handler(lambda _, context: errors.append(context))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(request)
            await window.wait()
            writer.write(request)  # on the same connection: the lane's idle upstream, or pipelined
            answers = []
            for _ in range(2):
                try:
                    answers.append(await read_response(reader))
                except (asyncio.IncompleteReadError, ConnectionError):
                    answers.append((b"", b""))
            return (answers, upstream.requests, upstream.first_connection_bytes,
                    [b.inflight for b in server.runtime.pools["web"].backends], access_entries(server), errors)
        finally:
            writer.close()
            await server.shutdown(0.5)

    try:
        answers, requests, first_bytes, inflight, entries, errors = uvloop.run(scenario())
    finally:
        upstream.stop()
    assert [h.split(b"\r\n")[0] for h, _ in answers] == [b"HTTP/1.1 200 OK"] * 2, answers
    assert errors == [] and first_bytes == 0 and requests == 2 and inflight == [0]
    assert [(e[2], e[5]) for e in entries] == [(200, 2), (200, 1)]  # a connect failure, then the retry
