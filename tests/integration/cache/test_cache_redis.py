"""Two lbd caches sharing one real Redis: entries, the semantic index, TTLs, purges, and
failing open when Redis dies or stalls."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import orjson
import redis.asyncio as redis

from lbd.cache import RequestInfo, ResponseCache
from lbd.cache.redis_store import RedisStore
from lbd.config.cache import PoolCacheConfig
from tests.support.cancellation import cancel_at_many_moments
from tests.support.redis_server import silent_server

JSON = [("content-type", "application/json")]
ROUTE = PoolCacheConfig.model_validate({"semantic": {}})


def kserve(text: str, key: str = "key-a") -> RequestInfo:
    body = orjson.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}]})
    return RequestInfo("minilm", "minilm", "1", "POST", "/v2/models/minilm/infer", {"x-api-key": key}, body)


def instance(url: str, prefix: str, embedder, timeout: float = 0.5, backoff: float = 0.05) -> ResponseCache:
    store = RedisStore(url, prefix=prefix, timeout=timeout, backoff_base=backoff, backoff_max=0.2)
    return ResponseCache(store, feed=store, embedders={"inprocess": embedder})


async def eventually(condition: Callable[[], object], timeout: float, what: str) -> float:
    """Polls ``condition`` (sync or async) until true; returns the seconds it took."""
    started = time.monotonic()
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return time.monotonic() - started
        assert time.monotonic() - started < timeout, f"{what} not within {timeout}s"
        await asyncio.sleep(0.01)


async def remember(cache: ResponseCache, info: RequestInfo, answer: bytes, route=ROUTE) -> None:
    lookup = await cache.lookup(info, route)
    assert lookup.hit is None
    assert await cache.store(lookup, 200, JSON, answer)


async def hit_kind(cache: ResponseCache, info: RequestInfo, route=ROUTE) -> str | None:
    lookup = await cache.lookup(info, route)
    cache.release(lookup)
    return lookup.hit.kind if lookup.hit else None


def test_entries_and_index_additions_reach_the_other_instance_within_a_second(redis_url, prefix, embedder) -> None:
    async def scenario() -> None:
        a, b = instance(redis_url, prefix, embedder), instance(redis_url, prefix, embedder)
        await a.start()
        await b.start()
        await asyncio.sleep(0.2)  # both follow the feed
        await remember(a, kserve("How do I reset my password?"), b"reset")
        assert await hit_kind(b, kserve("How do I reset my password?")) == "hit"
        took = await eventually(lambda: len(b.semantic.index) == 1, 1.0, "the index addition on b")
        assert took < 1.0
        lookup = await b.lookup(kserve("How can I reset my password?"), ROUTE)
        assert lookup.hit.kind == "hit-semantic" and lookup.hit.body == b"reset"
        assert await hit_kind(b, kserve("How can I reset my password?", key="key-b")) is None
        await a.close()
        await b.close()
    asyncio.run(scenario())


def test_a_starting_instance_loads_the_index(redis_url, prefix, embedder) -> None:
    async def scenario() -> None:
        a = instance(redis_url, prefix, embedder)
        for number, text in enumerate(["What is the capital of France?", "How tall is Mount Everest?",
                                       "Who wrote Hamlet?"]):
            await remember(a, kserve(text), str(number).encode())
        late = instance(redis_url, prefix, embedder)
        await late.start()
        await eventually(lambda: len(late.semantic.index) == 3, 5.0, "the index load")
        assert await hit_kind(late, kserve("Who was the author of Hamlet?")) == "hit-semantic"
        await a.close()
        await late.close()
    asyncio.run(scenario())


def test_ttls_are_enforced_by_redis(redis_url, prefix, embedder) -> None:
    short = PoolCacheConfig.model_validate({"exact": {"ttl": "1s"}, "semantic": {"ttl": "1s"}})
    async def scenario() -> None:
        a, b = instance(redis_url, prefix, embedder), instance(redis_url, prefix, embedder)
        await remember(a, kserve("short lived"), b"x", short)
        client = redis.Redis.from_url(redis_url)
        keys = [key async for key in client.scan_iter(match=prefix + "*") if b":e:" in key or b":v:" in key]
        ttls = [await client.pttl(key) for key in keys]
        assert len(ttls) == 2 and all(0 < ttl <= 1000 for ttl in ttls)  # entry and index record
        assert await hit_kind(b, kserve("short lived"), short) == "hit"
        await eventually(lambda: _gone(client, keys), 3.0, "expiry in redis")
        assert await hit_kind(b, kserve("short lived"), short) is None
        await client.aclose()
        await a.close()
        await b.close()
    asyncio.run(scenario())


async def _gone(client: redis.Redis, keys: list[bytes]) -> bool:
    return await client.exists(*keys) == 0


def test_purges_reach_every_instance(redis_url, prefix, embedder) -> None:
    async def scenario() -> None:
        a, b = instance(redis_url, prefix, embedder), instance(redis_url, prefix, embedder)
        await a.start()
        await b.start()
        await asyncio.sleep(0.2)
        await remember(a, kserve("tenant a asks", key="key-a"), b"a")
        await remember(a, kserve("tenant b asks", key="key-b"), b"b")
        await eventually(lambda: len(b.semantic.index) == 2, 1.0, "both additions on b")
        assert await a.purge(tenant="k:key-a") == 1
        await eventually(lambda: len(b.semantic.index) == 1, 1.0, "the purge on b")
        assert await hit_kind(b, kserve("tenant a asks", key="key-a")) is None
        assert await hit_kind(b, kserve("tenant b asks", key="key-b")) == "hit"
        await a.close()
        await b.close()
    asyncio.run(scenario())


def test_a_dead_redis_fails_open_quickly_and_is_used_again_after_restart(own_redis, prefix, embedder) -> None:
    async def scenario() -> None:
        cache = instance(own_redis.url, prefix, embedder, timeout=0.05, backoff=0.05)
        store: RedisStore = cache._store
        await cache.start()
        await remember(cache, kserve("before the outage"), b"1")
        own_redis.kill()
        started = time.monotonic()
        for _ in range(20):
            lookup = await cache.lookup(kserve("before the outage"), ROUTE)
            assert lookup.hit is None
            await cache.store(lookup, 200, JSON, b"2")  # a no-op, not an error
        assert time.monotonic() - started < 2.0  # 20 lookups + stores, each bounded
        assert store.stats.errors >= 1 and store.stats.skipped >= 1 and not store.stats.up
        own_redis.start()
        await eventually(lambda: _stores(cache), 5.0, "the store after the restart")
        assert store.stats.up and store.stats.reconnects >= 1
        await eventually(lambda: len(cache.semantic.index) >= 1, 5.0, "the index resync after the restart")
        await cache.close()
    asyncio.run(scenario())


async def _stores(cache: ResponseCache) -> bool:
    lookup = await cache.lookup(kserve("after the outage"), ROUTE)
    if lookup.hit is not None:
        cache.release(lookup)
        return True
    await cache.store(lookup, 200, JSON, b"3")
    return False


def test_a_stalled_redis_costs_at_most_the_operation_timeout(own_redis, prefix, embedder) -> None:
    async def scenario() -> None:
        cache = instance(own_redis.url, prefix, embedder, timeout=0.05, backoff=0.05)
        exact = PoolCacheConfig()
        await remember(cache, kserve("cached"), b"1", exact)
        client = redis.Redis.from_url(own_redis.url)
        stall = asyncio.create_task(client.execute_command("DEBUG", "SLEEP", "0.6"))  # blocks the server
        await asyncio.sleep(0.05)
        started = time.monotonic()
        lookup = await cache.lookup(kserve("cached"), exact)
        assert lookup.hit is None and time.monotonic() - started < 0.2
        cache.release(lookup)
        await stall
        await eventually(lambda: hit_kind(cache, kserve("cached"), exact), 3.0, "a hit once redis answers")
        await client.aclose()
        await cache.close()
    asyncio.run(scenario())


def test_a_server_that_never_answers_is_a_quick_miss(prefix, embedder) -> None:
    async def scenario() -> None:
        async def black_hole(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(1 << 16)  # reads the command, never answers
            await asyncio.sleep(30)
        server = await asyncio.start_server(black_hole, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        cache = instance(f"redis://127.0.0.1:{port}/0", prefix, embedder, timeout=0.05, backoff=0.05)
        started = time.monotonic()
        for _ in range(10):
            lookup = await cache.lookup(kserve("anything"), PoolCacheConfig())
            assert lookup.hit is None
            await cache.store(lookup, 200, JSON, b"x")
        assert time.monotonic() - started < 1.5
        assert cache._store.stats.errors >= 1
        await cache.close()
        server.close()
    asyncio.run(scenario())


def test_build_cache_shares_entries_through_the_configured_redis(redis_url, prefix) -> None:
    from lbd.cache import build_cache
    from lbd.config.cache import CacheConfig

    config = CacheConfig.model_validate({"store": redis_url, "redis": {"key_prefix": prefix}})
    exact = PoolCacheConfig()
    async def scenario() -> None:
        first, second = build_cache(config), build_cache(config)
        await first.start()
        await second.start()
        await remember(first, kserve("shared"), b"1", exact)
        assert await hit_kind(second, kserve("shared"), exact) == "hit"
        assert await second.purge() >= 1
        assert await hit_kind(first, kserve("shared"), exact) is None
        await first.close()
        await second.close()
    asyncio.run(scenario())


async def _seed_index(url: str, prefix: str, count: int) -> None:
    import numpy as np

    from lbd.cache.base import VectorRecord

    seeder = RedisStore(url, prefix=prefix, timeout=0.5)
    for number in range(count):
        await seeder.publish(VectorRecord("p", f"k{number}", f"text {number}", np.ones(384, np.float32),
                                          time.time() + 600))
    await seeder.close()


def test_close_returns_promptly_whatever_the_feed_follower_is_doing(redis_url, prefix) -> None:
    """close() lands at every moment of the follower's start (latest id, index load, first
    reads). A cancellation lost inside redis-py's wait_for (Python 3.11) used to leave the
    follower reading the feed forever and close() waiting on it (the CI hang of the test
    above)."""
    async def scenario() -> None:
        await _seed_index(redis_url, prefix, 20)
        for round_ in range(100):
            store = RedisStore(redis_url, prefix=prefix, timeout=0.05, backoff_base=0.05, backoff_max=0.2)

            async def resync(store: RedisStore = store) -> None:
                await store.load()
            store.follow(lambda record: None, lambda scope: None, resync)
            for _ in range(round_ % 50):  # one loop iteration each: close() at a different moment
                await asyncio.sleep(0)
            started = time.monotonic()
            closing = asyncio.ensure_future(store.close())
            done, _ = await asyncio.wait({closing}, timeout=3.0)
            if not done:
                follower = store._follower
                while follower is not None and not follower.done():  # don't leave it running
                    follower.cancel()
                    await asyncio.wait({follower}, timeout=0.1)
                await closing
            assert done, f"close() still waiting after 3s (round {round_})"
            assert time.monotonic() - started < 1.0
            closing.result()
    asyncio.run(scenario())


def test_a_cancelled_call_is_cancelled_whenever_the_cancellation_lands(redis_url, prefix) -> None:
    """A request whose task is cancelled (the client went away) stops there: the cache never
    turns the cancellation into a result, even when it lands as Redis answers."""
    async def scenario() -> None:
        from lbd.cache.base import Entry

        store = RedisStore(redis_url, prefix=prefix, timeout=0.5)
        await store.set("key", Entry(200, (), b"1", time.time(), 60.0))
        assert await store.get("key") is not None
        cancelled, swallowed = await cancel_at_many_moments(lambda _: store.get("key"), 300)
        assert cancelled >= 100
        assert swallowed == 0, f"{swallowed} of {cancelled} cancellations turned into a result"
        await store.close()
    asyncio.run(scenario())


def test_a_follower_facing_a_server_that_never_answers_gives_up_in_time_and_closes_at_once(prefix) -> None:
    """Connections accepted, nothing ever answered: the follower's reads are bounded (it
    reports a failure and tries again) and close() does not wait for them."""
    async def scenario() -> None:
        server, url = await silent_server()
        store = RedisStore(url, prefix=prefix, timeout=0.05, backoff_base=0.05,
                           backoff_max=0.2)
        failures: list[float] = []
        started = time.monotonic()
        store.follow(lambda record: None, lambda scope: None, store.load,
                     lambda: failures.append(time.monotonic() - started))
        await eventually(lambda: failures, 6.0, "the follower's first failure")
        assert failures[0] < 5.0
        closing_started = time.monotonic()
        await asyncio.wait_for(store.close(), 3.0)
        assert time.monotonic() - closing_started < 1.0
        server.close()
    asyncio.run(scenario())
