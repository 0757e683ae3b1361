"""Correctness checks for the cython lane: raw sockets against lane_proxy.py, two test upstreams.

Usage: python check.py        (exit status 0 when every check passed)

The test upstreams (asyncio, in this process, in a thread) echo what they received as JSON:
the request head, the body, which upstream and which of its connections answered, and the
request's number on that connection. Paths: /chunked answers chunked in several writes (with a
chunk extension and a trailer), /eof answers without a length and closes, /split writes its
head and body in pieces, /reset closes without answering, /slow answers after 3 s. Every
response also carries hop-by-hop headers the proxy must drop (Keep-Alive, Connection naming
X-Secret, X-Secret) and an X-Request-ID of its own that the proxy must replace.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


# --------------------------------------------------------------------------- test upstreams

class Upstream:
    def __init__(self) -> None:
        self.ports: list[int] = []
        self.connections = 0
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), daemon=True).start()
        ready.wait()

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)

        async def start() -> None:
            for _ in range(2):
                server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
                self.ports.append(server.sockets[0].getsockname()[1])
        self.loop.run_until_complete(start())
        ready.set()
        self.loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn_id = self.connections
        port = writer.get_extra_info("sockname")[1]
        number = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                number += 1
                match = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
                body = await reader.readexactly(int(match.group(1))) if match else b""
                path = head.split(b" ")[1].decode()
                echo = json.dumps({"head": head.decode(), "body": body.decode(), "port": port,
                                   "conn": conn_id, "n": number}).encode()
                extra = (b"Keep-Alive: timeout=5\r\nConnection: keep-alive, X-Secret\r\n"
                         b"X-Secret: 1\r\nX-Request-ID: upstream-own\r\n")
                if path == "/reset":
                    writer.close()
                    return
                if path == "/slow":
                    await asyncio.sleep(3)
                if path == "/chunked":
                    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n" + extra +
                                 b"\r\n")
                    for piece in (echo[:10], echo[10:]):
                        writer.write(b"%x;ext=1\r\n%s\r\n" % (len(piece), piece))
                        await writer.drain()
                        await asyncio.sleep(0.05)
                    writer.write(b"0\r\nX-Trailer: t\r\n\r\n")
                elif path == "/eof":
                    writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + echo)
                    await writer.drain()
                    writer.close()
                    return
                elif path == "/split":
                    whole = (b"HTTP/1.1 201 Created\r\nContent-Length: %d\r\n" % len(echo) +
                             extra + b"\r\n" + echo)
                    for i in range(0, len(whole), 7):
                        writer.write(whole[i:i + 7])
                        await writer.drain()
                        await asyncio.sleep(0.002)
                else:
                    status = b"204 No Content" if path == "/nocontent" else b"200 OK"
                    payload = b"" if path == "/nocontent" else echo
                    length = b"" if path == "/nocontent" else b"Content-Length: %d\r\n" % len(echo)
                    writer.write(b"HTTP/1.1 " + status + b"\r\n" + length + extra + b"\r\n" +
                                 (b"" if head.startswith(b"HEAD ") else payload))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


# --------------------------------------------------------------------------- client helpers

class Response:
    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes,
                 raw_head: bytes) -> None:
        self.status, self.headers, self.body, self.raw_head = status, headers, body, raw_head

    def get(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self) -> dict:
        return json.loads(self.body)


def read_response(sock: socket.socket, head_request: bool = False) -> Response:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response head: {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:]]
    response = Response(status, headers, b"", head)
    lengths = response.get("content-length")
    if head_request or status in (204, 304):
        return response
    if response.get("transfer-encoding"):
        while not rest.endswith(b"0\r\nX-Trailer: t\r\n\r\n") and not rest.endswith(b"0\r\n\r\n"):
            rest += sock.recv(65536)
        body, text = b"", rest
        while True:
            size_line, _, text = text.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            body, text = body + text[:size], text[size + 2:]
        response.body = body
        response.raw_body = rest
    elif lengths:
        while len(rest) < int(lengths[0]):
            rest += sock.recv(65536)
        response.body = rest
    else:
        while chunk := sock.recv(65536):
            rest += chunk
        response.body = rest
    return response


def is_closed(sock: socket.socket, wait: float = 1.0) -> bool:
    sock.settimeout(wait)
    try:
        return sock.recv(1) == b""
    except socket.timeout:
        return False
    except ConnectionError:
        return True
    finally:
        sock.settimeout(5)


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def request(port: int, raw: bytes, head: bool = False) -> Response:
    with connect(port) as sock:
        sock.sendall(raw)
        return read_response(sock, head)


def start_lane(upstreams: list[str], timeout: str = "60") -> tuple[subprocess.Popen, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, LANE_TIMEOUT_S=timeout)
    process = subprocess.Popen([sys.executable, str(HERE / "lane_proxy.py"), str(port),
                                *upstreams], env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return process, port
        except OSError:
            if process.poll() is not None:
                sys.exit("lane_proxy.py exited")
            time.sleep(0.05)
    sys.exit("lane_proxy.py did not listen")


# --------------------------------------------------------------------------- checks

FAILED: list[str] = []


def check(name: str, ok: bool, detail: object = "") -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {name}{'' if ok else f': {detail}'}")
    if not ok:
        FAILED.append(name)


def run_checks(port: int, up_ports: list[int], ups: Upstream) -> None:
    GET = b"GET /x?y=1 HTTP/1.1\r\nHost: a\r\n\r\n"

    # keep-alive on both sides, round robin, pooled upstream connections
    before = ups.connections
    with connect(port) as sock:
        seen = []
        for _ in range(6):
            sock.sendall(GET)
            r = read_response(sock)
            seen.append((r.json()["port"], r.json()["conn"], r.status))
        check("keep-alive client connection answers 6 GETs", all(s[2] == 200 for s in seen), seen)
        check("round robin alternates the upstreams",
              [s[0] for s in seen] == [seen[0][0], seen[1][0]] * 3 and seen[0][0] != seen[1][0],
              seen)
        check("upstream connections pooled (2 for 6 requests)",
              ups.connections - before == 2 and len({s[1] for s in seen}) == 2, seen)
        check("x-lbd-backend names the upstream",
              r.get("x-lbd-backend") == [f"127.0.0.1:{seen[-1][0]}"], r.headers)
        check("client connection still open", not is_closed(sock, 0.2))

    # request id: generated, the same upstream and on the response
    r = request(port, GET)
    rid = r.get("x-request-id")
    up_rid = re.findall(r"(?i)\r\nx-request-id: *([^\r]*)", r.json()["head"])
    check("X-Request-ID generated (32 hex) and sent upstream",
          len(rid) == 1 and re.fullmatch(r"[0-9a-f]{32}", rid[0]) is not None and up_rid == rid,
          (rid, up_rid))
    r2 = request(port, GET)
    check("generated X-Request-IDs differ", r2.get("x-request-id") != rid)
    r = request(port, b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-ID: abc-123\r\n\r\n")
    check("X-Request-ID propagated", r.get("x-request-id") == ["abc-123"] and
          re.findall(r"(?i)\r\nx-request-id: *([^\r]*)", r.json()["head"]) == ["abc-123"],
          (r.headers, r.json()["head"]))

    # hop-by-hop removal and added headers, request side
    r = request(port, b"GET /h HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Foo\r\n"
                      b"X-Foo: 1\r\nKeep-Alive: 300\r\nTE: trailers\r\nTrailer: X-T\r\n"
                      b"Upgrade: h2c\r\nProxy-Connection: keep-alive\r\n"
                      b"Proxy-Authorization: Basic eA==\r\nX-Keep: yes\r\n"
                      b"X-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Proto: https\r\n\r\n")
    head = r.json()["head"].lower()
    dropped = [h for h in ("connection:", "x-foo:", "keep-alive:", "\r\nte:", "trailer:",
                           "upgrade:", "proxy-connection:", "proxy-authorization:")
               if h in head]
    check("request hop-by-hop headers dropped", not dropped, (dropped, head))
    check("other request headers kept", "x-keep: yes" in head and "host: a" in head, head)
    check("X-Forwarded-For appended", "x-forwarded-for: 1.2.3.4, 127.0.0.1\r\n" in head, head)
    check("X-Forwarded-Proto replaced", head.count("x-forwarded-proto") == 1 and
          "x-forwarded-proto: http\r\n" in head, head)
    check("upstream request line is HTTP/1.1", head.startswith("get /h http/1.1\r\n"), head)
    r = request(port, GET)
    check("X-Forwarded-For added", "x-forwarded-for: 127.0.0.1\r\n" in r.json()["head"].lower())
    # response side
    names = [k.lower() for k, _ in r.headers]
    check("response hop-by-hop headers dropped",
          not {"keep-alive", "connection", "x-secret"} & set(names), r.headers)
    check("upstream's own X-Request-ID replaced", len(r.get("x-request-id")) == 1 and
          r.get("x-request-id") != ["upstream-own"], r.headers)

    # POST with head and body split across writes
    body = b'{"model":"minilm","inputs":[{"name":"text","data":["hello world"]}]}' * 3
    with connect(port) as sock:
        raw = (b"POST /post HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        cuts = [0, 5, 20, 41, len(raw) - len(body) - 1, len(raw) - len(body) + 30,
                len(raw) - 2, len(raw)]
        for a, b in zip(cuts, cuts[1:]):
            sock.sendall(raw[a:b])
            time.sleep(0.03)
        r = read_response(sock)
        check("POST split across 7 writes: body arrives whole",
              r.status == 200 and r.json()["body"] == body.decode(), r.body[:200])
        sock.sendall(b"POST /p2 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhe")
        time.sleep(0.05)
        sock.sendall(b"llo")
        r = read_response(sock)
        check("second POST on the same connection, body split",
              r.json()["body"] == "hello" and r.json()["head"].startswith("POST /p2"), r.body)
        sock.sendall(b"POST /p3 HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
        r = read_response(sock)
        check("POST with Content-Length: 0", r.status == 200 and r.json()["body"] == "")

    # chunked response passes through; the connection stays usable on both sides
    with connect(port) as sock:
        sock.sendall(b"GET /chunked HTTP/1.1\r\nHost: a\r\n\r\n")
        r = read_response(sock)
        check("chunked response passed through (extension and trailer kept)",
              r.status == 200 and r.json()["head"].startswith("GET /chunked") and
              b";ext=1\r\n" in r.raw_body and r.raw_body.endswith(b"0\r\nX-Trailer: t\r\n\r\n"),
              r.raw_body[:100])
        first_conn = r.json()["conn"]
        sock.sendall(GET)
        r = read_response(sock)
        sock.sendall(GET)
        r = read_response(sock)
        check("after a chunked response: same client and upstream connections reused",
              r.status == 200 and r.json()["conn"] == first_conn, (first_conn, r.json()))

    # response head and body dribbled in 7-byte pieces
    with connect(port) as sock:
        sock.sendall(b"GET /split HTTP/1.1\r\nHost: a\r\n\r\n")
        r = read_response(sock)
        check("response split across many reads", r.status == 201 and
              r.json()["head"].startswith("GET /split"), r.body[:100])
        sock.sendall(GET)
        check("keep-alive after the split response", read_response(sock).status == 200)

    # read-until-close response
    with connect(port) as sock:
        sock.sendall(b"GET /eof HTTP/1.1\r\nHost: a\r\n\r\n")
        r = read_response(sock)
        check("read-until-close response: body whole, Connection: close",
              r.json()["head"].startswith("GET /eof") and r.get("connection") == ["close"],
              r.headers)

    # HEAD and 204: no body, keep-alive
    with connect(port) as sock:
        sock.sendall(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n")
        r = read_response(sock, head_request=True)
        check("HEAD: Content-Length kept, no body", r.status == 200 and r.get("content-length"))
        sock.sendall(b"GET /nocontent HTTP/1.1\r\nHost: a\r\n\r\n")
        r = read_response(sock)
        check("204", r.status == 204)
        sock.sendall(GET)
        r = read_response(sock)
        check("keep-alive after HEAD and 204", r.status == 200 and r.body.startswith(b"{"))

    # HTTP/1.0
    with connect(port) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        r = read_response(sock)
        check("HTTP/1.0 without keep-alive: Connection: close and closed",
              r.get("connection") == ["close"] and is_closed(sock), r.headers)
    with connect(port) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        r = read_response(sock)
        ok = r.get("connection") == ["keep-alive"]
        sock.sendall(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        check("HTTP/1.0 keep-alive", ok and read_response(sock).status == 200, r.headers)
    with connect(port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        r = read_response(sock)
        check("HTTP/1.1 Connection: close honoured", r.get("connection") == ["close"] and
              is_closed(sock), r.headers)

    # pipelined: first answered, then closed
    with connect(port) as sock:
        sock.sendall(GET + GET)
        r = read_response(sock)
        check("pipelined request: first answered with Connection: close, then closed",
              r.status == 200 and r.get("connection") == ["close"] and is_closed(sock))

    # outside the subset
    bad = {
        "bare LF": b"GET / HTTP/1.1\nHost: a\n\n",
        "obs-fold": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n",
        "bare CR": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n",
        "space before colon": b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
        "two Content-Length": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n"
                              b"Content-Length: 1\r\n\r\nab",
        "bad Content-Length": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1x\r\n\r\n",
        "no Host in 1.1": b"GET / HTTP/1.1\r\nX: y\r\n\r\n",
        "two Hosts": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "absolute-form": b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
        "HTTP/2.0": b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
        "bad method": b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n",
        "control char in target": b"GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n",
    }
    for name, raw in bad.items():
        r = request(port, raw)
        check(f"400 for {name}", r.status == 400 and r.get("connection") == ["close"], r.status)
    r = request(port, b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"1\r\na\r\n0\r\n\r\n")
    check("501 for a chunked request", r.status == 501, r.status)
    r = request(port, b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n")
    check("431 for a 40 KB head", r.status == 431, r.status)

    # upstream closes without answering: 502 with a JSON body
    r = request(port, b"GET /reset HTTP/1.1\r\nHost: a\r\n\r\n")
    check("502 JSON when the upstream closes before answering",
          r.status == 502 and r.json() == {"error": "upstream unreachable"}, (r.status, r.body))
    r = request(port, GET)
    check("next request fine after a 502", r.status == 200)


def main() -> int:
    ups = Upstream()
    lane, port = start_lane([f"127.0.0.1:{p}" for p in ups.ports])
    try:
        run_checks(port, ups.ports, ups)
    finally:
        lane.terminate()
        lane.wait()
    # unreachable upstream and the deadline, each with its own lane
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    lane, port = start_lane([f"127.0.0.1:{dead}"])
    try:
        r = request(port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        check("502 JSON when the upstream is unreachable",
              r.status == 502 and r.json() == {"error": "upstream unreachable"}, r.status)
    finally:
        lane.terminate()
        lane.wait()
    lane, port = start_lane([f"127.0.0.1:{p}" for p in ups.ports], timeout="1")
    try:
        started = time.monotonic()
        r = request(port, b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
        took = time.monotonic() - started
        check("504 after the 1 s deadline", r.status == 504 and 0.9 < took < 2.0, (r.status, took))
        r = request(port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        check("fine after a 504", r.status == 200)
    finally:
        lane.terminate()
        lane.wait()
    print(f"{'FAILED: ' + ', '.join(FAILED) if FAILED else 'all checks passed'}")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
