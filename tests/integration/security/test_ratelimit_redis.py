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
from tests.support.redis_server import RedisServer


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
        swallowed = cancelled = 0
        for round_ in range(300):
            task = asyncio.ensure_future(limiter.take("t"))
            for _ in range(round_ % 15):  # one loop iteration each: a different moment
                await asyncio.sleep(0)
            if task.done():
                continue
            task.cancel()
            await asyncio.wait({task})
            cancelled += 1
            swallowed += not task.cancelled()
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
        async def black_hole(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while await reader.read(1 << 16):
                pass  # reads every command, answers none
            writer.close()
        server = await asyncio.start_server(black_hole, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        limiter = RedisLimiter(RateLimitConfig(rate=1.0, store=f"redis://127.0.0.1:{port}/0", redis_timeout=0.1),
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
