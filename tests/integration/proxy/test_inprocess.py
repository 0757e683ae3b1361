"""The proxy server run in this process, so the test can reach into its runtime."""

from __future__ import annotations

import asyncio
import json

import uvloop

from lbd.config import load_config_text
from lbd.proxy.server import ProxyServer
from lbd.runtime import Runtime
from tests.support.procs import free_port

CONFIG = """
listen: [{{address: "127.0.0.1:{port}"}}]
log: {{access: false}}
client: {{max_header_size: 2KiB, max_body_size: 1KiB}}
pools:
  web:
    backends: [{{url: "http://127.0.0.1:{upstream}"}}, {{url: "http://127.0.0.1:{upstream}", name: second}}]
"""


async def exchange(port: int, raw: bytes) -> tuple[int, dict, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = {k.strip().lower().decode(): v.strip().decode() for k, _, v in (l.partition(b":") for l in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def run_with_proxy(upstream_port: int, scenario) -> None:
    async def main() -> None:
        port = free_port()
        runtime = Runtime.build(load_config_text(CONFIG.format(port=port, upstream=upstream_port)))
        server = ProxyServer(runtime, asyncio.get_running_loop())
        await server.start()
        try:
            await scenario(server, port)
        finally:
            await server.shutdown(1.0)

    uvloop.run(main())


def test_no_available_backend_is_503_with_reason(upstreams):
    async def scenario(server: ProxyServer, port: int) -> None:
        for backend in server.runtime.pools["web"].backends:
            backend.drained = True  # health alone would not do: with none healthy, the pool panics and tries all
        status, headers, body = await exchange(port, b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert status == 503
        payload = json.loads(body)
        assert payload["code"] == "no_backend" and "web" in payload["error"]
        assert headers["x-request-id"] == payload["request_id"]
        server.runtime.pools["web"].backends[1].drained = False
        status, headers, _ = await exchange(port, b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert (status, headers["x-lbd-backend"]) == (200, "second")

    run_with_proxy(upstreams["a"], scenario)


def test_request_limits_answer_431_and_413(upstreams):
    async def scenario(server: ProxyServer, port: int) -> None:
        big_header = b"x-big: " + b"a" * 3000 + b"\r\n"
        status, _, body = await exchange(port, b"GET /echo HTTP/1.1\r\nHost: x\r\n" + big_header + b"\r\n")
        assert status == 431 and json.loads(body)["code"] == "header_too_large"
        status, _, body = await exchange(port, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n")
        assert status == 413 and json.loads(body)["code"] == "body_too_large"
        chunked = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + b"400\r\n" + b"a" * 1024 + b"\r\n"
        status, _, body = await exchange(port, chunked + b"10\r\n" + b"b" * 16 + b"\r\n0\r\n\r\n")
        assert status == 413 and json.loads(body)["code"] == "body_too_large"

    run_with_proxy(upstreams["a"], scenario)


def test_inflight_counters_return_to_zero(upstreams):
    async def scenario(server: ProxyServer, port: int) -> None:
        await asyncio.gather(*(exchange(port, b"GET /slow?delay=0.2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                               for _ in range(10)))
        backends = server.runtime.pools["web"].backends
        assert [b.inflight for b in backends] == [0, 0]
        assert sum(b.requests for b in backends) == 10

    run_with_proxy(upstreams["a"], scenario)


def test_a_bad_request_pipelined_behind_a_good_one_waits_for_its_answer(upstreams):
    """The good request was read whole: it is answered, then the refusal, then the close."""
    async def scenario(server: ProxyServer, port: int) -> None:
        raw = (b"GET /slow?delay=0.3 HTTP/1.1\r\nHost: x\r\n\r\n"
               b"GET /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 5)  # to EOF: the proxy closes after the refusal
        writer.close()
        first, _, rest = data.partition(b"\r\n\r\n")
        assert first.startswith(b"HTTP/1.1 200"), data[:200]
        assert b'"slept": true' in rest
        refusal = rest[rest.index(b"HTTP/1.1 "):]
        assert refusal.startswith(b"HTTP/1.1 400") and b"connection: close" in refusal.lower()
        assert sum(b.inflight for b in server.runtime.pools["web"].backends) == 0

    run_with_proxy(upstreams["a"], scenario)
