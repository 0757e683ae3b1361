"""lbd_worker.fasthttp on a loopback socket, with a stub handler: framing, order of pipelined
answers, body encodings and limits, HEAD, Expect, malformed requests, and clients that leave."""

from __future__ import annotations

import asyncio
import gzip
import zlib

import pytest

from lbd_worker.fasthttp import Exchange, HttpServer, Limits


class Stub:
    """Echoes ``METHOD path body`` as text; ``/later/N`` answers only when :meth:`release` says."""

    def __init__(self) -> None:
        self.held: dict[str, Exchange] = {}
        self.lost: list[str] = []

    def common_headers(self) -> bytes:
        return b"x-lbd-queue-depth: 0\r\nx-lbd-inflight: %d\r\n" % len(self.held)

    def handle(self, exchange: Exchange) -> None:
        request = exchange.request
        if request.path.startswith("/later/"):
            self.held[request.path] = exchange
            exchange.on_lost = lambda: self.lost.append(request.path)
            return
        if request.path == "/boom":
            raise RuntimeError("bug")
        exchange.respond(200, b"%s %s %s" % (request.method.encode(), request.path.encode(), request.body),
                         b"text/plain")

    def release(self, path: str) -> None:
        self.held.pop(path).respond(200, path.encode(), b"text/plain")


async def _serve(stub: Stub, **limits) -> tuple[HttpServer, int]:
    server = HttpServer(stub, Limits(**limits))
    _, port = await server.start("127.0.0.1", 0)
    return server, port


async def _exchange(port: int, data: bytes, *, until_eof: bool = False, timeout: float = 2.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    out = b""
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), timeout if until_eof else 0.3)
            if not chunk:
                return out + b"<EOF>"
            out += chunk
    except asyncio.TimeoutError:
        return out
    finally:
        writer.close()


def _post(path: str, body: bytes, *extra: str) -> bytes:
    head = [f"POST {path} HTTP/1.1", "Host: x", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def _run(scenario):
    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_answers_carry_length_and_common_headers_and_keep_the_connection():
    async def scenario():
        server, port = await _serve(Stub())
        out = await _exchange(port, _post("/a", b"one") + b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
        assert out.count(b"HTTP/1.1 200 OK\r\n") == 2 and not out.endswith(b"<EOF>")
        assert b"Content-Length: 11\r\n" in out and b"x-lbd-inflight: 0\r\n" in out
        assert out.endswith(b"GET /b ")
        await server.close()
    _run(scenario)


def test_pipelined_requests_are_answered_in_order_however_late():
    async def scenario():
        stub = Stub()
        server, port = await _serve(stub)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_post("/later/1", b"") + _post("/later/2", b"") + _post("/now", b"x"))
        while len(stub.held) < 2:
            await asyncio.sleep(0.01)
        stub.release("/later/2")  # the second is ready first: it waits for the first
        await asyncio.sleep(0.05)
        stub.release("/later/1")
        data = b""
        while data.count(b"HTTP/1.1 200") < 3:
            data += await asyncio.wait_for(reader.read(65536), 2)
        assert data.index(b"/later/1") < data.index(b"/later/2") < data.index(b"POST /now x")
        writer.close()
        await server.close()
    _run(scenario)


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "raw-deflate"])
def test_compressed_request_bodies(encoding):
    body = b"hello " * 100
    packed = {"gzip": gzip.compress(body), "deflate": zlib.compress(body),
              "raw-deflate": zlib.compress(body)[2:-4]}[encoding]
    header = "Content-Encoding: " + ("deflate" if encoding == "raw-deflate" else encoding)

    async def scenario():
        server, port = await _serve(Stub())
        out = await _exchange(port, _post("/z", packed, header))
        assert out.endswith(b"POST /z " + body)
        await server.close()
    _run(scenario)


def test_limits_and_bad_encodings_are_json_errors():
    async def scenario():
        server, port = await _serve(Stub(), max_body_size=100)
        too_long = await _exchange(port, _post("/a", b"x" * 101), until_eof=True)
        assert too_long.startswith(b"HTTP/1.1 413 ") and b'{"error":' in too_long and too_long.endswith(b"<EOF>")
        bomb = gzip.compress(b"0" * 10_000)
        assert (await _exchange(port, _post("/a", bomb, "Content-Encoding: gzip"))).startswith(b"HTTP/1.1 413 ")
        unknown = await _exchange(port, _post("/a", b"xx", "Content-Encoding: br"))
        assert unknown.startswith(b"HTTP/1.1 415 ") and b"br" in unknown
        broken = await _exchange(port, _post("/a", b"not gzip", "Content-Encoding: gzip"))
        assert broken.startswith(b"HTTP/1.1 400 ")
        await server.close()
    _run(scenario)


def test_malformed_requests_get_400_and_a_closed_connection():
    async def scenario():
        server, port = await _serve(Stub())
        out = await _exchange(port, b"NOT HTTP AT ALL\r\n\r\n", until_eof=True)
        assert out.startswith(b"HTTP/1.1 400 ") and b"Connection: close" in out and out.endswith(b"<EOF>")
        await server.close()
    _run(scenario)


def test_head_expect_http10_and_handler_bugs():
    async def scenario():
        server, port = await _serve(Stub())
        head = await _exchange(port, b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and b"Content-Length: 8\r\n" in head and head.endswith(b"\r\n\r\n")
        expect = await _exchange(port, b"POST /e HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
        assert expect == b"HTTP/1.1 100 Continue\r\n\r\n"
        old = await _exchange(port, b"GET /v HTTP/1.0\r\n\r\n", until_eof=True)
        assert b"Connection: close" in old and old.endswith(b"GET /v <EOF>")
        bug = await _exchange(port, b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\n")
        assert bug.startswith(b"HTTP/1.1 500 ") and b"internal error: bug" in bug
        await server.close()
    _run(scenario)


@pytest.mark.parametrize("leave", ["close", "half-close"])
def test_a_client_that_leaves_is_reported_lost(leave):
    async def scenario():
        stub = Stub()
        server, port = await _serve(stub)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_post("/later/gone", b""))
        while not stub.held:
            await asyncio.sleep(0.01)
        if leave == "close":
            writer.close()
        else:
            writer.write_eof()
        while not stub.lost:
            await asyncio.sleep(0.01)
        assert stub.lost == ["/later/gone"]
        stub.release("/later/gone")  # too late: nothing is written, nothing breaks
        writer.close()
        await server.close()
    _run(scenario)


def test_close_stops_listening_and_closes_idle_connections():
    async def scenario():
        server, port = await _serve(Stub())
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await server.close()
        assert await asyncio.wait_for(reader.read(), 2) == b""
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)
        writer.close()
    _run(scenario)
