"""``prefix_affinity`` through the real proxy process, with real upstream processes: a prompt
goes where its prefix hashes (the same place a balancer built here computes, since placement
depends only on backend names), whether its body comes at once, in chunks, after a
``100 Continue`` or beyond the 64 KiB the proxy keeps; a hot key spills under load."""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import threading
import time

import pytest

from tests.support.procs import start_upstream, upstream_requests, wait_for
from tests.unit.balancing.conftest import FakeBackend, FakeRequest, build_balancer, pick

CONFIG = """
listen: [{{address: "127.0.0.1:{port}"}}]
log: {{access: false}}
pools:
  generate:
    balancer: {{algorithm: prefix_affinity, prefix_chars: 64}}
    health: {{enabled: false}}
    backends:
{backends}
"""
NAMES = ["u0", "u1", "u2", "u3"]
SHARED = "You are a helpful assistant. Answer the question below briefly. "  # 64 characters


@pytest.fixture(scope="module")
def upstream_ports(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prefix-upstreams")
    procs = {name: start_upstream(tmp, name) for name in NAMES}
    yield {name: port for name, (_, port) in procs.items()}
    for proc, _ in procs.values():
        proc.stop()


@pytest.fixture
def proxy(lbd, upstream_ports):
    backends = "\n".join(f'      - {{url: "http://127.0.0.1:{upstream_ports[name]}", name: {name}}}' for name in NAMES)
    return lbd(CONFIG, backends=backends)[1]


def owner(body: bytes, path: str = "/echo") -> str:
    """Where the prefix of ``body`` hashes, by a balancer built here with the proxy's options."""
    balancer = build_balancer("prefix_affinity", [FakeBackend(name) for name in NAMES], {"prefix_chars": 64})
    return pick(balancer, FakeRequest(path=path, body=body)).name


def prompt_body(topic: int, question: str) -> bytes:
    return json.dumps({"model": "m", "prompt": f"[{topic:03d}] {SHARED}{question}"}).encode()


def post(port: int, body: bytes, headers: dict | None = None) -> tuple[str, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/echo", body=body, headers={"content-type": "application/json", **(headers or {})})
        response = conn.getresponse()
        payload = json.loads(response.read())
        assert response.status == 200
        return response.getheader("x-lbd-backend"), payload
    finally:
        conn.close()


def raw_exchange(port: int, head: bytes, pieces: list[bytes], *, wait_for_continue: bool = False) -> tuple[int, dict, dict]:
    """Sends ``head`` and then each piece on its own, a little apart, so the proxy sees the
    head and the body arrive separately; returns status, headers and the JSON body."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        if wait_for_continue:
            assert sock.recv(1024).startswith(b"HTTP/1.1 100")
        for piece in pieces:
            time.sleep(0.05)  # only to split the writes; nothing depends on how long
            sock.sendall(piece)
        data = b""
        while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _length(data):
            received = sock.recv(65536)
            assert received, data
            data += received
    head_bytes, _, body = data.partition(b"\r\n\r\n")
    lines = head_bytes.split(b"\r\n")
    headers = {k.strip().lower().decode(): v.strip().decode() for k, _, v in (line.partition(b":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, json.loads(body)


def _length(data: bytes) -> int:
    for line in data.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 1 << 30


def test_each_prompt_prefix_stays_on_the_backend_it_hashes_to(proxy):
    used = set()
    for topic in range(24):
        expected = owner(prompt_body(topic, "first"))
        for question in ("first", "a different question", "and a third one, longer than the others"):
            body = prompt_body(topic, question)
            backend, payload = post(proxy, body)
            assert backend == expected, (topic, question)
            assert payload["body_sha256"] == hashlib.sha256(body).hexdigest()  # forwarded intact
        used.add(expected)
    assert len(used) >= 3  # the prefixes spread over the pool


def _topic_not_placed_like_its_path() -> int:
    """A prompt whose prefix hashes elsewhere than the path does: picking it before its body
    arrived (keyed by the path) would show."""
    return next(topic for topic in range(100) if owner(prompt_body(topic, "q")) != owner(b""))


def test_a_chunked_body_in_pieces_is_awaited_before_the_pick(proxy):
    body = prompt_body(_topic_not_placed_like_its_path(), "q")
    middle = len(body) // 2
    head = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    pieces = [b"%x\r\n%b\r\n" % (len(part), part) for part in (body[:middle], body[middle:])] + [b"0\r\n\r\n"]
    status, headers, payload = raw_exchange(proxy, head, pieces)
    assert status == 200 and headers["x-lbd-backend"] == owner(body)
    assert payload["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_a_body_sent_after_100_continue_is_awaited_before_the_pick(proxy):
    body = prompt_body(_topic_not_placed_like_its_path(), "q")
    head = (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nExpect: 100-continue\r\n"
            b"Connection: close\r\n\r\n" % len(body))
    status, headers, payload = raw_exchange(proxy, head, [body[:10], body[10:]], wait_for_continue=True)
    assert status == 200 and headers["x-lbd-backend"] == owner(body)
    assert payload["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_a_body_beyond_64_kib_is_keyed_by_what_was_kept_and_streams_whole(proxy):
    # The proxy picks on the first 64 KiB: JSON cut short, so the raw body's prefix is the key.
    bodies = (json.dumps({"prompt": f"[{topic}] {SHARED}" + "x" * 200_000}).encode() for topic in range(100))
    body = next(body for body in bodies if owner(body[:64 * 1024]) != owner(b""))
    expected = owner(body[:64 * 1024])
    for _ in range(3):
        backend, payload = post(proxy, body)
        assert backend == expected
        assert payload["body_length"] == len(body) and payload["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_requests_without_a_body_follow_their_path_and_a_hot_one_spills_under_load(proxy, upstream_ports):
    """GET /slow has no body: it is keyed by its path and goes to one backend while that one
    is idle. Eight at once overflow it: the n-th (n - 1 in flight) may only go where
    ``inflight + 1 <= ceil(1.25 * n / 4)``, so they spread along the walk, 3 at most on any
    backend. The upstreams' counters show them all in flight before any is answered."""
    home = owner(b"", path="/slow")
    conn = http.client.HTTPConnection("127.0.0.1", proxy, timeout=10)
    conn.request("GET", "/slow?delay=0")
    response = conn.getresponse()
    response.read()
    conn.close()
    assert response.getheader("x-lbd-backend") == home

    def slow() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", proxy, timeout=30)
        conn.request("GET", "/slow?delay=6")
        conn.getresponse().read()
        conn.close()

    before = {name: upstream_requests(port) for name, port in upstream_ports.items()}
    threads = [threading.Thread(target=slow) for _ in range(8)]
    for thread in threads:
        thread.start()
    arrived = lambda: {name: upstream_requests(port) - before[name] for name, port in upstream_ports.items()}
    wait_for(lambda: sum(arrived().values()) == 8, 6, what="eight slow requests in flight")
    spread = arrived()
    for thread in threads:
        thread.join()
    assert spread[home] == 3 and max(spread.values()) == 3 and sum(map(bool, spread.values())) == 3, spread
