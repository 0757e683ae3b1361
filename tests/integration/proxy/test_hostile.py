"""A corpus of malformed and hostile requests, each with the status it must get; none of
them may reach a backend, and the proxy keeps serving."""

from __future__ import annotations

import json
import socket
import time

import pytest

from tests.support.procs import upstream_requests

CONFIG = """
listen: [{{address: "127.0.0.1:{port}"}}]
log: {{access: false}}
client: {{max_url_size: 1KiB, max_header_size: 4KiB, max_headers: 20, max_body_size: 1MiB,
          header_timeout: 1s, body_timeout: 1s, max_connections_per_ip: {per_ip}}}
pools:
  web:
    health: {{enabled: false}}
    backends: [{{url: "http://127.0.0.1:{a}"}}]
"""

H = b"Host: x\r\n"
CORPUS = [
    # framing ambiguity (request smuggling)
    ("content-length and chunked", b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("two different lengths", b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 4\r\nContent-Length: 5\r\n\r\nabcde", 400),
    ("two equal lengths", b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 4\r\nContent-Length: 4\r\n\r\nabcd", 400),
    ("length list", b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 4, 4\r\n\r\nabcd", 400),
    ("negative length", b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: -1\r\n\r\n", 400),
    ("signed length", b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: +4\r\n\r\nabcd", 400),
    ("hex length", b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 0x4\r\n\r\nabcd", 400),
    ("identity then chunked", b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n", 501),
    ("chunked then identity", b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", 400),
    ("unknown coding", b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 501),
    ("space before colon", b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400),
    ("two transfer-encodings", b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("obsolete line folding", b"GET /echo HTTP/1.1\r\n" + H + b"X-A: a\r\n b\r\n\r\n", 400),
    ("folded transfer-encoding", b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: x\r\n chunked\r\n\r\n0\r\n\r\n", 400),
    ("bare LF", b"GET /echo HTTP/1.1\nHost: x\n\n", 400),
    ("bare CR", b"GET /echo HTTP/1.1\r\nHost: x\rX-A: b\r\n\r\n", 400),
    ("invalid chunk size", b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk size overflow", b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk without CRLF", b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabcX0\r\n\r\n", 400),
    ("NUL in chunk extension", b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n3;\x00\r\nabc\r\n0\r\n\r\n", 400),
    # request line and fields
    ("HTTP/0.9", b"GET /echo\r\n\r\n", 505),
    ("HTTP/2.0 in HTTP/1 syntax", b"GET /echo HTTP/2.0\r\n" + H + b"\r\n", 505),
    ("bad version", b"GET /echo HTTP/1.x\r\n" + H + b"\r\n", 400),
    ("lower-case method", b"get /echo HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("space in field name", b"GET /echo HTTP/1.1\r\n" + H + b"X A: b\r\n\r\n", 400),
    ("NUL in field value", b"GET /echo HTTP/1.1\r\n" + H + b"X-A: a\x00b\r\n\r\n", 400),
    ("control char in target", b"GET /ec\x01ho HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("space in target", b"GET /e ch HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("no Host in HTTP/1.1", b"GET /echo HTTP/1.1\r\n\r\n", 400),
    ("two Host fields", b"GET /echo HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("TRACE", b"TRACE /echo HTTP/1.1\r\n" + H + b"\r\n", 405),
    ("CONNECT", b"CONNECT evil:443 HTTP/1.1\r\nHost: evil\r\n\r\n", 501),
    ("h2c upgrade", b"GET /echo HTTP/1.1\r\n" + H + b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAA\r\n\r\n", 501),
    # sizes
    ("target too long", b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\n" + H + b"\r\n", 414),
    ("header section too large", b"GET /echo HTTP/1.1\r\n" + H + b"X-Big: " + b"a" * 5000 + b"\r\n\r\n", 431),
    ("too many fields", b"GET /echo HTTP/1.1\r\n" + H + b"".join(b"X-%d: 1\r\n" % i for i in range(30)) + b"\r\n", 431),
    ("declared body too large", b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 2000000\r\n\r\n", 413),
]


def send(port: int, raw: bytes, timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(raw)
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
    return data


@pytest.fixture(scope="module")
def hardened(tmp_path_factory, upstreams):
    from tests.support.procs import free_port, start_lbd
    port = free_port()
    proc = start_lbd(tmp_path_factory.mktemp("hostile"), CONFIG.format(port=port, a=upstreams["a"], per_ip=0), port)
    yield port
    proc.stop()


@pytest.mark.parametrize("name, raw, status", CORPUS, ids=[c[0] for c in CORPUS])
def test_hostile_request_is_refused_and_never_forwarded(hardened, upstreams, name, raw, status):
    before = upstream_requests(upstreams["a"])
    data = send(hardened, raw)  # the proxy closes the connection after refusing
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status), head[:60]
    assert b"connection: close" in head.lower()
    assert json.loads(body)["status"] == status
    assert upstream_requests(upstreams["a"]) == before, "a refused request reached the backend"
    assert send(hardened, b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").startswith(b"HTTP/1.1 200")


def test_absolute_form_target_is_forwarded_in_origin_form(hardened):
    data = send(hardened, b"GET http://models.example:8080/echo?q=1 HTTP/1.1\r\nHost: ignored\r\nConnection: close\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    echoed = json.loads(body)
    assert (echoed["path"], echoed["query"]) == ("/echo", "q=1")
    assert dict((k.lower(), v) for k, v in echoed["headers"])["host"] == "models.example:8080"


def test_slow_clients_get_408(hardened):
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", hardened), timeout=5) as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n")  # the head never ends
        data = sock.recv(65536)
    assert data.startswith(b"HTTP/1.1 408") and 0.9 < time.monotonic() - started < 3.5
    with socket.create_connection(("127.0.0.1", hardened), timeout=5) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")  # the body stalls
        data = sock.recv(65536)
    assert data.startswith(b"HTTP/1.1 408")


def test_per_client_connection_cap(lbd, upstreams):
    _, port = lbd(CONFIG, a=upstreams["a"], per_ip=2)
    held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(2)]
    try:
        time.sleep(0.1)
        third = socket.create_connection(("127.0.0.1", port), timeout=5)
        third.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            assert third.recv(65536) == b""  # refused: closed without an answer
        except ConnectionResetError:
            pass
        third.close()
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.1)
    assert send(port, b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").startswith(b"HTTP/1.1 200")
