"""The shared (Redis) rate limiter against a real redis-server, called directly: a request
task cancelled while it waits on Redis is cancelled, never handed a decision (Python 3.11's
``asyncio.wait_for``, which redis-py wraps around every socket write, can do that), and the
limiter still fails open on a timeout."""

from __future__ import annotations

import asyncio
import time

import pytest

from lbd.config.security import RateLimitConfig
from lbd.security.ratelimit import RedisLimiter
from tests.support.cancellation import cancel_at_many_moments
from tests.support.redis_server import RedisServer, silent_server


@pytest.fixture
def redis_url(tmp_path):
    server = RedisServer(tmp_path).start()
    yield server.url
    server.kill()


@pytest.mark.timeout(120)
def test_a_cancelled_take_is_cancelled_whenever_the_cancellation_lands(redis_url):
    async def scenario() -> None:
        limiter = RedisLimiter(RateLimitConfig(rate=1000.0, burst=1000, store=redis_url, redis_timeout=0.5), "p")
        assert (await limiter.take("t")).allowed
        cancelled, swallowed = await cancel_at_many_moments(lambda _: limiter.take("t"), 300)
        assert cancelled >= 100
        assert swallowed == 0, f"{swallowed} of {cancelled} cancellations turned into a decision"
        assert limiter.errors == 0
        started = time.monotonic()
        await limiter.close()
        assert time.monotonic() - started < 1.0
    asyncio.run(scenario())


@pytest.mark.timeout(60)
def test_a_server_that_never_answers_fails_open_within_the_timeout_and_closes_at_once():
    async def scenario() -> None:
        server, url = await silent_server()
        limiter = RedisLimiter(RateLimitConfig(rate=1.0, store=url, redis_timeout=0.1),
                               "p")
        for _ in range(3):
            started = time.monotonic()
            decision = await limiter.take("t")
            assert decision.allowed  # fail open
            assert time.monotonic() - started < 0.5
        assert limiter.errors == 3
        started = time.monotonic()
        await limiter.close()
        assert time.monotonic() - started < 1.5
        server.close()
    asyncio.run(scenario())


DAEMON_CONFIG = """
listen: [{{address: "127.0.0.1:{port}"}}]
admin: {{enabled: false}}
watch: {{enabled: false}}
log: {{level: warning, access: false}}
pools:
  limited:
    health: {{enabled: false}}
    rate_limit: {{rate: {rate}, by: pool, store: "{redis}", redis_timeout: 200ms}}
    backends: [{{url: "http://127.0.0.1:{upstream}"}}]
"""


@pytest.mark.timeout(120)
def test_reloads_and_shutdown_close_the_replaced_limiters(redis_url, upstreams, tmp_path):
    """Every reload builds the pools' limiters anew; the replaced ones' Redis connections
    were never closed (RedisLimiter.close was never called), one more set per reload, and
    none at shutdown. Counted on the Redis server (CLIENT LIST), lbd run in this process."""
    import redis.asyncio as redis

    from lbd.config import load_config
    from lbd.daemon import Daemon
    from tests.support.procs import free_port

    port = free_port()
    path = tmp_path / "lbd.yaml"

    def write(rate: int) -> None:
        path.write_text(DAEMON_CONFIG.format(port=port, rate=rate, redis=redis_url, upstream=upstreams["a"]))

    async def get() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        return answer

    async def scenario() -> None:
        counter = redis.from_url(redis_url, client_name="counter")

        async def lbd_connections() -> int:
            return sum(1 for client in await counter.client_list() if client.get("name") != "counter")

        async def settles_at(count: int, timeout: float = 5.0) -> None:
            deadline = time.monotonic() + timeout
            while (now := await lbd_connections()) != count:
                assert time.monotonic() < deadline, f"{now} connections from lbd to Redis, not {count}"
                await asyncio.sleep(0.05)

        write(1000)
        daemon = Daemon(load_config(path), path, shutdown_grace=1.0)
        running = asyncio.ensure_future(daemon.run())
        await asyncio.wait_for(daemon.ready.wait(), 30)
        await get()
        await settles_at(1)
        for rate in (2000, 3000, 4000):  # each reload: new limiters, the replaced ones closed
            write(rate)
            assert await daemon.reload()
            await get()
            await settles_at(1)
        write(5000)
        assert await daemon.reload()
        await get()  # the replaced limiter is still within its grace (about 0.7 s) at shutdown
        daemon.stop()
        assert await asyncio.wait_for(running, 30) == 0
        assert await lbd_connections() == 0  # at shutdown, the current and the retiring ones
        await counter.aclose()

    asyncio.run(scenario())
