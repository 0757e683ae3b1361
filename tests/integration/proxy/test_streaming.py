"""Large bodies stream through in bounded memory; a client that leaves cancels upstream."""

from __future__ import annotations

import hashlib
import json
import re
import socket
import subprocess
import threading
import time

import pytest

from tests.support.procs import wait_for

ONE = """
listen: [{{address: "127.0.0.1:{port}"}}]
log: {{access: false}}
pools:
  web:
    timeouts: {{per_try: 60s, total: 120s}}
    backends: [{{url: "http://127.0.0.1:{a}"}}]
"""


def peak_rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_one_gib_upload_and_download_in_bounded_memory(lbd, upstreams, tmp_path):
    proc, port = lbd(ONE, **upstreams)
    before = peak_rss_kib(proc.pid)
    size = 1024**3
    # Download: curl reads 1 GiB through the proxy; count and hash on the fly.
    download = subprocess.run(
        f"curl -sS --fail http://127.0.0.1:{port}/bytes?size={size} | sha256sum",
        shell=True, capture_output=True, text=True, timeout=180)
    assert download.returncode == 0, download.stderr
    pattern = bytes(range(256)) * 256
    expected = hashlib.sha256()
    for _ in range(size // len(pattern)):
        expected.update(pattern)
    assert download.stdout.split()[0] == expected.hexdigest()
    # Upload: 1 GiB from a pipe (chunked, with Expect: 100-continue), hashed by the upstream.
    upload = subprocess.run(
        f"head -c {size} /dev/zero | curl -sS --fail -X POST -T - http://127.0.0.1:{port}/sink",
        shell=True, capture_output=True, text=True, timeout=180)
    assert upload.returncode == 0, upload.stderr
    result = json.loads(upload.stdout)
    zeros = hashlib.sha256()
    block = bytes(1024 * 1024)
    for _ in range(1024):
        zeros.update(block)
    assert result == {"bytes": size, "sha256": zeros.hexdigest()}
    grown_mib = (peak_rss_kib(proc.pid) - before) / 1024
    assert grown_mib < 64, f"lbd's peak RSS grew by {grown_mib:.0f} MiB moving 2 GiB"


class RawUpstream:
    """A raw TCP upstream on a free port: one thread per connection runs ``_handle``."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.server.close()


class HangingUpstream(RawUpstream):
    """Reads a request, never answers, and records when the proxy closes the connection."""

    def __init__(self) -> None:
        self.requests = 0
        self.closed = 0
        super().__init__()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                if b"\r\n\r\n" in data:
                    self.requests += 1
            self.closed += 1


def test_client_going_away_cancels_the_upstream_request(lbd):
    hanging = HangingUpstream()
    try:
        _, port = lbd(ONE, a=hanging.port)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET /anything HTTP/1.1\r\nHost: x\r\n\r\n")
            wait_for(lambda: hanging.requests == 1, 5, what="request reached upstream")
        wait_for(lambda: hanging.closed == 1, 5, what="upstream connection closed after the client left")
    finally:
        hanging.close()


class StaleKeepAliveUpstream(RawUpstream):
    """Answers the first request on each connection with keep-alive, then closes the
    connection without answering the second: the race a pooled connection can lose."""

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            conn.recv(65536)  # the next request arrives; close without answering


def test_request_on_a_pooled_connection_the_backend_closed_is_resent(lbd):
    upstream = StaleKeepAliveUpstream()
    try:
        _, port = lbd(ONE, a=upstream.port)
        import http.client
        for _ in range(3):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("POST", "/x", body=b"payload")
            response = conn.getresponse()
            assert (response.status, response.read()) == (200, b"ok")
        assert upstream.connections == 3
    finally:
        upstream.close()


@pytest.mark.parametrize("delay", [0.0])
def test_connect_timeout_answers_504(lbd, delay):
    # A listening socket whose backlog is full: the kernel drops further SYNs, so a
    # connect hangs, which is what an unreachable host looks like.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(server.getsockname())
        fillers.append(filler)
    time.sleep(0.1)
    try:
        config = ONE.replace("timeouts: {{per_try: 60s, total: 120s}}", "timeouts: {{connect: 300ms}}")
        _, port = lbd(config, a=server.getsockname()[1])
        import http.client
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        started = time.monotonic()
        conn.request("GET", "/x")
        response = conn.getresponse()
        body = json.loads(response.read())
        assert response.status == 504 and body["code"] == "connect_timeout"
        assert 0.25 < time.monotonic() - started < 2.0
    finally:
        for filler in fillers:
            filler.close()
        server.close()


BODY_WHILE_CONNECTING = """
listen: [{{address: "127.0.0.1:{port}"}}]
log: {{access: false}}
lane: {lane}
pools:
  web:
    timeouts: {{connect: 5s, per_try: 10s, total: 20s}}
    health: {{enabled: false}}
    backends: [{{url: "http://127.0.0.1:{a}"}}]
"""


@pytest.mark.parametrize("lane", ["off", "auto"])
@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_past_the_replay_limit_that_arrives_while_connecting_reaches_the_upstream_whole(
        upstreams, monkeypatch, lane, chunked):
    """The upstream connection is held back (only its timing: the connection is real) while
    the client streams a 1 MiB body in pieces, several chunks to a read when chunked: every
    piece buffered before the connection and past REPLAY_LIMIT must be sent once it is made
    (the chunks after the one that crossed the limit, in the same read, used to be dropped)."""
    import asyncio

    import uvloop

    from lbd.config import load_config_text
    from lbd.log import AccessLog
    from lbd.proxy import exchange
    from lbd.proxy.server import ProxyServer
    from lbd.runtime import Runtime
    from tests.support.procs import free_port

    monkeypatch.delenv("LBD_LANE", raising=False)
    real_open = exchange.open_connection
    size, piece, held = 1024 * 1024, 10_000, 250_000  # the limit falls inside a read
    body = bytes(range(256)) * (size // 256)

    def framed(data: bytes) -> bytes:
        if not chunked:
            return data
        return b"".join(b"%x\r\n%b\r\n" % (len(data[i:i + 3000]), data[i:i + 3000]) for i in range(0, len(data), 3000))

    async def scenario() -> dict:
        gate = asyncio.Event()

        async def held_open(loop, backend, timeout):
            await gate.wait()
            return await real_open(loop, backend, timeout)

        monkeypatch.setattr(exchange, "open_connection", held_open)
        port = free_port()
        config = load_config_text(BODY_WHILE_CONNECTING.format(port=port, lane=lane, a=upstreams["a"]))
        server = ProxyServer(Runtime.build(config), asyncio.get_running_loop(), AccessLog(False))
        await server.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % size
            writer.write(b"POST /sink HTTP/1.1\r\nHost: h\r\n%b\r\n\r\n" % framing)
            for offset in range(0, held, piece):  # separate reads, past REPLAY_LIMIT
                writer.write(framed(body[offset:offset + piece]))
                await asyncio.sleep(0.005)
            gate.set()
            writer.write(framed(body[held:]) + (b"0\r\n\r\n" if chunked else b""))
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
            answer = json.loads(await reader.readexactly(length))
            writer.close()
            return answer
        finally:
            await server.shutdown(0.5)

    answer = uvloop.run(scenario())
    assert answer == {"bytes": size, "sha256": hashlib.sha256(body).hexdigest()}
