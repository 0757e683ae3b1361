"""The cache stage with the proxy run in this process, so the test can time a client's
disconnect against the lookup's last step (the real server, cache and upstream; no mocks)."""

from __future__ import annotations

import asyncio

import uvloop

from lbd.cache import build_cache
from lbd.config import load_config_text
from lbd.proxy.server import ProxyServer
from lbd.runtime import Runtime
from tests.support.procs import free_port

CONFIG = """
listen: [{{address: "127.0.0.1:{port}"}}]
log: {{access: false}}
pools:
  slow:
    cache: {{}}
    health: {{enabled: false}}
    retry: {{attempts: 1}}
    backends: [{{url: "http://127.0.0.1:{upstream}"}}]
"""
SLOW = b"GET /slow?delay=2 HTTP/1.1\r\nHost: x\r\n\r\n"


def run_with_proxy(upstream_port: int, scenario) -> None:
    async def main() -> None:
        port = free_port()
        config = load_config_text(CONFIG.format(port=port, upstream=upstream_port))
        runtime = Runtime.build(config)
        server = ProxyServer(runtime, asyncio.get_running_loop())
        server.cache = cache = build_cache(config.cache)
        await cache.start()
        await server.start()
        try:
            await scenario(server, port)
        finally:
            await server.shutdown(1.0)
            await cache.close()

    uvloop.run(main())


async def until(condition, what: str, timeout: float = 5.0):
    async with asyncio.timeout(timeout):
        while not (found := condition()):
            await asyncio.sleep(0.005)
    return found


def exchange_of(server: ProxyServer, known: set):
    """The exchange of the one client connection not in ``known``, once it has one."""
    for conn in server.connections:
        if conn not in known and conn.current is not None:
            return conn
    return None


def test_a_client_gone_as_its_lookup_takes_the_lead_hands_it_back(upstreams) -> None:
    """The lookup ends leading (the request it followed gave up) in the same loop turn as
    its client goes away, before the stage resumes with the result: the client's
    connection_lost finds no lookup to cancel and no lead to release yet, and the result
    was then dropped with its lead (the key stayed in flight for good)."""
    async def scenario(server: ProxyServer, port: int) -> None:
        loop = asyncio.get_running_loop()
        cache = server.cache
        _, first_writer = await asyncio.open_connection("127.0.0.1", port)
        first_writer.write(SLOW)  # leads, and is upstream for 2 s
        first = await until(lambda: exchange_of(server, set()), "the first request")
        await until(lambda: first.current.cache_lookup is not None, "the first request leading")
        _, second_writer = await asyncio.open_connection("127.0.0.1", port)
        second_writer.write(SLOW)  # follows the first
        second = await until(lambda: exchange_of(server, {first}), "the second request")
        await until(lambda: second.current._pending is not None, "the second request looking up")
        await asyncio.sleep(0.05)
        assert not second.current._pending.done()  # following
        # The first gives up its lead (as when its answer cannot be stored); the second's
        # lookup wakes two turns later and ends leading; its client goes away in that turn,
        # just after it (transport.abort calls connection_lost on the next turn).
        cache.release(first.current.cache_lookup)
        loop.call_soon(second.transport.abort)
        await until(lambda: second not in server.connections, "the second client gone")
        await asyncio.sleep(0.05)
        assert len(cache._coalescer) == 0, "the gone request's lead is still held"
        # an identical request leads at once, instead of waiting coalesce_timeout (30 s)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(SLOW.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
        async with asyncio.timeout(8):
            answer = await reader.read()
        assert answer.startswith(b"HTTP/1.1 200") and b"x-lbd-cache: miss" in answer.lower(), answer
        for each in (first_writer, second_writer, writer):
            each.close()

    run_with_proxy(upstreams["a"], scenario)
