"""The data plane against real upstream processes: forwarding, headers, keep-alive,
streaming both ways, errors and timeouts."""

from __future__ import annotations

import http.client
import json
import socket
import time

import pytest

TWO = """
listen: [{{address: "127.0.0.1:{port}"}}]
log: {{access: false}}
pools:
  web:
    timeouts: {{connect: 500ms, per_try: {per_try}, total: 5s}}
    backends:
      - {{url: "http://127.0.0.1:{a}"}}
      - {{url: "http://127.0.0.1:{b}"}}
"""


@pytest.fixture
def proxy(lbd, upstreams):
    _, port = lbd(TWO, per_try="2s", **upstreams)
    return port


def request(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
            conn: http.client.HTTPConnection | None = None):
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    return response, response.read(), conn


def test_round_robin_over_both_upstreams_with_backend_header(proxy, upstreams):
    seen = []
    for _ in range(4):
        response, body, _ = request(proxy, "POST", "/echo", b'{"x": 1}', {"content-type": "application/json"})
        assert response.status == 200
        assert json.loads(body)["body"] == '{"x": 1}'
        seen.append((response.getheader("x-upstream"), response.getheader("x-lbd-backend")))
    assert sorted(seen) == sorted([("a", f"127.0.0.1:{upstreams['a']}"), ("b", f"127.0.0.1:{upstreams['b']}")] * 2)
    assert seen[0] != seen[1]


def test_forwarding_headers_and_hop_by_hop_removed(proxy):
    headers = {
        "Connection": "keep-alive, x-private", "X-Private": "secret", "Keep-Alive": "timeout=5",
        "TE": "trailers", "Proxy-Connection": "keep-alive", "Upgrade-Insecure-Requests": "1",
        "X-Forwarded-For": "203.0.113.7", "X-Custom": "kept",
    }
    response, body, _ = request(proxy, "GET", "/echo", headers=headers)
    received = {k.lower(): v for k, v in json.loads(body)["headers"]}
    for gone in ("connection", "x-private", "keep-alive", "te", "proxy-connection"):
        assert gone not in received, gone
    assert received["x-custom"] == "kept"
    assert received["upgrade-insecure-requests"] == "1"  # an end-to-end field that only looks like Upgrade
    assert received["x-forwarded-for"] == "203.0.113.7, 127.0.0.1"
    assert received["x-forwarded-proto"] == "http"
    assert received["x-request-id"] == response.getheader("x-request-id")
    assert len(received["x-request-id"]) > 8


def test_request_id_is_propagated(proxy):
    response, body, _ = request(proxy, "GET", "/echo", headers={"X-Request-ID": "req-42"})
    received = {k.lower(): v for k, v in json.loads(body)["headers"]}
    assert received["x-request-id"] == "req-42"
    assert response.getheader("x-request-id") == "req-42"


def test_generated_request_ids_are_unique(proxy):
    ids = {request(proxy, "GET", "/echo")[0].getheader("x-request-id") for _ in range(20)}
    assert len(ids) == 20


def test_keep_alive_on_both_sides(proxy):
    conn = http.client.HTTPConnection("127.0.0.1", proxy, timeout=10)
    client_socket = None
    upstream_ports: dict[str, set[int]] = {}
    for _ in range(10):
        response, body, conn = request(proxy, "GET", "/echo", conn=conn)
        assert response.status == 200
        client_socket = client_socket or conn.sock
        assert conn.sock is client_socket  # one client connection throughout
        upstream_ports.setdefault(response.getheader("x-upstream"), set()).add(json.loads(body)["peer_port"])
    # five requests each, sequentially: each upstream saw a single pooled connection
    assert {name: len(ports) for name, ports in upstream_ports.items()} == {"a": 1, "b": 1}


def test_chunked_request_body_is_streamed_through(proxy):
    pieces = [b"x" * 1000, b"y" * 5000, b"z" * 17]
    conn = http.client.HTTPConnection("127.0.0.1", proxy, timeout=10)
    conn.request("POST", "/echo", body=iter(pieces), encode_chunked=True,
                 headers={"Transfer-Encoding": "chunked"})
    response = conn.getresponse()
    payload = json.loads(response.read())
    assert payload["body_length"] == 6017
    import hashlib
    assert payload["body_sha256"] == hashlib.sha256(b"".join(pieces)).hexdigest()


def test_chunked_response_passes_through(proxy):
    response, body, _ = request(proxy, "GET", "/bytes?size=300000&chunked=1")
    assert response.status == 200
    assert response.getheader("transfer-encoding") == "chunked"
    assert len(body) == 300000
    assert body[:256] == bytes(range(256))


def test_server_sent_events_arrive_as_they_are_sent(proxy):
    with socket.create_connection(("127.0.0.1", proxy), timeout=5) as sock:
        sock.sendall(b"GET /sse?n=4&interval=0.3 HTTP/1.1\r\nHost: x\r\n\r\n")
        arrivals, buffer = [], b""
        while buffer.count(b"data: ") < 4:
            data = sock.recv(65536)
            assert data, "connection closed early"
            if b"data: " in data:
                arrivals.append(time.monotonic())
            buffer += data
    # each event is flushed on its own: four arrivals spread over ~0.9 s, not one burst
    assert len(arrivals) >= 3
    assert arrivals[-1] - arrivals[0] > 0.5


def test_head_response_has_no_body_and_connection_is_reused(proxy):
    conn = http.client.HTTPConnection("127.0.0.1", proxy, timeout=5)
    response, body, conn = request(proxy, "HEAD", "/bytes?size=1000", conn=conn)
    assert response.status == 200 and body == b""
    assert response.getheader("content-length") == "1000"
    response, body, conn = request(proxy, "GET", "/bytes?size=10", conn=conn)
    assert response.status == 200 and len(body) == 10


def test_upstream_closing_after_response_is_fine(proxy):
    for _ in range(4):
        response, body, _ = request(proxy, "GET", "/close")
        assert response.status == 200 and json.loads(body) == {"closing": True}


def test_pipelined_requests_are_answered_in_order(proxy):
    with socket.create_connection(("127.0.0.1", proxy), timeout=5) as sock:
        sock.sendall(b"GET /echo?n=1 HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"POST /echo?n=2 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
                     b"GET /echo?n=3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.count(b"HTTP/1.1 200") == 3
    assert data.index(b'"n=1"') < data.index(b'"n=2"') < data.index(b'"n=3"')


def test_http10_client_gets_close_delimited_body(proxy):
    with socket.create_connection(("127.0.0.1", proxy), timeout=5) as sock:
        sock.sendall(b"GET /bytes?size=5000&chunked=1 HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"chunked" not in head.lower()
    assert len(body) == 5000


def test_expect_100_continue(proxy):
    with socket.create_connection(("127.0.0.1", proxy), timeout=5) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        interim = sock.recv(65536)
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(b"hello")
        data = interim[len(b"HTTP/1.1 100 Continue\r\n\r\n"):]
        while b'"body"' not in data:
            data += sock.recv(65536)
        assert b'"body": "hello"' in data
        assert b"expect" not in data.lower().split(b"\r\n\r\n", 1)[1]  # not forwarded


def test_malformed_request_gets_400_json_and_close(proxy):
    with socket.create_connection(("127.0.0.1", proxy), timeout=5) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert json.loads(body)["code"] == "bad_request"


def test_per_try_timeout_answers_504_on_time(lbd, upstreams):
    _, port = lbd(TWO, per_try="300ms", **upstreams)
    started = time.monotonic()
    response, body, _ = request(port, "GET", "/slow?delay=3")
    elapsed = time.monotonic() - started
    assert response.status == 504
    assert json.loads(body)["code"] == "timeout"
    assert 0.25 < elapsed < 1.5


DEAD = TWO.replace("{{url: \"http://127.0.0.1:{b}\"}}", "{{url: \"http://127.0.0.1:{dead}\"}}").replace(
    "    backends:", "    retry: {{attempts: {attempts}}}\n    health: {{enabled: false}}\n    backends:")


def test_dead_backend_answers_502_with_reason_when_retries_are_off(lbd, upstreams):
    from tests.support.procs import free_port
    _, port = lbd(DEAD, per_try="2s", a=upstreams["a"], dead=free_port(), attempts=1)
    statuses = []
    for _ in range(4):
        response, body, _ = request(port, "GET", "/echo")
        statuses.append(response.status)
        if response.status != 200:
            payload = json.loads(body)
            assert payload["code"] == "connect_failed" and "cannot connect" in payload["error"]
    assert sorted(statuses) == [200, 200, 502, 502]


def test_connect_failure_is_retried_on_the_other_backend(lbd, upstreams):
    from tests.support.procs import free_port
    _, port = lbd(DEAD, per_try="2s", a=upstreams["a"], dead=free_port(), attempts=3)
    attempts = []
    for _ in range(4):
        response, body, _ = request(port, "POST", "/echo", b"{}")
        assert response.status == 200 and response.getheader("x-upstream") == "a"
        attempts.append(response.getheader("x-lbd-attempts"))
    assert "2" in attempts  # the round robin sent some to the dead one first
