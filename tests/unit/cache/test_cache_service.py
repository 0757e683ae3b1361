"""The cache as the data plane uses it, with the real MiniLM and the memory store."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from lbd.cache import RequestInfo, ResponseCache
from lbd.cache.embedder import PoolEmbedder
from lbd.cache.memory import MemoryStore
from lbd.clock import ManualClock
from lbd.config.cache import PoolCacheConfig
from tests.support.procs import free_port

JSON = [("content-type", "application/json")]
ROUTE = PoolCacheConfig.model_validate({"semantic": {}, "stale_if_error": "1m"})


def kserve(text: str, key: str = "key-a", **headers: str) -> RequestInfo:
    body = orjson.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}]})
    return RequestInfo("minilm", "minilm", "1", "POST", "/v2/models/minilm/infer",
                       {"x-api-key": key, **headers}, body)


def chat(*turns: str, key: str = "key-a") -> RequestInfo:
    roles = ["user", "assistant"] * len(turns)
    body = orjson.dumps({"model": "m", "messages": [{"role": r, "content": t} for r, t in zip(roles, turns)]})
    return RequestInfo("llm", "m", "", "POST", "/v1/chat/completions", {"authorization": f"Bearer {key}"}, body)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def cache(embedder, clock: ManualClock) -> ResponseCache:
    return ResponseCache(MemoryStore(clock=clock), embedders={"inprocess": embedder}, clock=clock)


async def remember(cache: ResponseCache, info: RequestInfo, answer: bytes, route=ROUTE, status: int = 200,
                   headers=JSON) -> bool:
    lookup = await cache.lookup(info, route)
    assert lookup.hit is None
    return await cache.store(lookup, status, headers, answer)


def test_exact_hit_ignores_json_layout(cache: ResponseCache) -> None:
    async def scenario() -> None:
        await remember(cache, kserve("hello world"), b'{"answer": 1}')
        spaced = kserve("hello world")
        spaced = RequestInfo(**{**spaced.__dict__, "body": spaced.body.replace(b",", b" , ")})
        lookup = await cache.lookup(spaced, ROUTE)
        assert lookup.hit.kind == "hit" and lookup.hit.body == b'{"answer": 1}'
        assert lookup.hit.headers == (("content-type", "application/json"),)
    asyncio.run(scenario())


def test_paraphrase_hits_semantically_and_reports_similarity(cache: ResponseCache) -> None:
    async def scenario() -> None:
        await remember(cache, kserve("How do I reset my password?"), b"reset it here")
        lookup = await cache.lookup(kserve("How can I reset my password?"), ROUTE)
        assert lookup.hit.kind == "hit-semantic" and lookup.hit.body == b"reset it here"
        assert lookup.hit.similarity >= ROUTE.semantic.threshold
        assert lookup.hit.header_value.startswith("hit-semantic; similarity=0.")
        unrelated = await cache.lookup(kserve("What is the capital of Peru?"), ROUTE)
        assert unrelated.hit is None and unrelated.reason == "semantic:no-candidate"
    asyncio.run(scenario())


def test_tenants_never_see_each_others_answers(cache: ResponseCache) -> None:
    async def scenario() -> None:
        await remember(cache, kserve("How do I reset my password?", key="key-a"), b"for a")
        assert (await cache.lookup(kserve("How do I reset my password?", key="key-b"), ROUTE)).hit is None
        assert (await cache.lookup(kserve("How can I reset my password?", key="key-b"), ROUTE)).hit is None
        assert (await cache.lookup(kserve("How do I reset my password?", key="key-a"), ROUTE)).hit.body == b"for a"
    asyncio.run(scenario())


def test_guards_decline_negated_and_renumbered_questions(cache: ResponseCache) -> None:
    loose = PoolCacheConfig.model_validate({"semantic": {"threshold": 0.75}})
    async def scenario() -> None:
        await remember(cache, kserve("Why do people change?"), b"because", loose)
        negated = await cache.lookup(kserve("Why don't people change?"), loose)
        assert negated.hit is None and negated.reason == "semantic:guard:negation"
        await remember(cache, kserve("Should people over 90 be allowed to vote?"), b"90", loose)
        renumbered = await cache.lookup(kserve("Should people over 98 be allowed to vote?"), loose)
        assert renumbered.hit is None and renumbered.reason == "semantic:guard:numbers"
    asyncio.run(scenario())


def test_chat_follow_ups_do_not_cross_conversations(cache: ResponseCache) -> None:
    async def scenario() -> None:
        paris = ("Tell me about Paris.", "It is the capital of France.")
        await remember(cache, chat(*paris, "How big is it?"), b"105 km2")
        same = await cache.lookup(chat(*paris, "How large is it?"), ROUTE)
        assert same.hit is not None and same.hit.body == b"105 km2"
        other = await cache.lookup(chat("Tell me about Rome.", "It is the capital of Italy.", "How big is it?"), ROUTE)
        assert other.hit is None
    asyncio.run(scenario())


def test_client_and_backend_directives(cache: ResponseCache) -> None:
    async def scenario() -> None:
        assert not await remember(cache, kserve("a", **{"cache-control": "no-store"}), b"x")
        assert not await remember(cache, kserve("b"), b"x", headers=[("cache-control", "no-store")])
        assert not await remember(cache, kserve("c"), b"x", headers=[("cache-control", "private")])
        assert not await remember(cache, kserve("d"), b"error", status=500)
        assert await remember(cache, kserve("e"), b"x")
        refresh = await cache.lookup(kserve("e", **{"cache-control": "no-cache"}), ROUTE)
        assert refresh.hit is None and refresh.reason == "no-cache"
        for text in "abcd":
            assert (await cache.lookup(kserve(text), ROUTE)).hit is None
    asyncio.run(scenario())


def test_stale_if_error_serves_expired_entries_for_the_grace_period(cache: ResponseCache, clock: ManualClock) -> None:
    route = PoolCacheConfig.model_validate({"exact": {"ttl": "10s"}, "stale_if_error": "30s"})
    async def scenario() -> None:
        await remember(cache, kserve("q"), b"old", route)
        clock.advance(15)
        lookup = await cache.lookup(kserve("q"), route)
        assert lookup.hit is None
        stale = await cache.stale(lookup)
        assert stale.kind == "stale" and stale.body == b"old" and stale.age(clock.now()) == 15
        clock.advance(30)
        assert await cache.stale(await cache.lookup(kserve("q"), route)) is None
    asyncio.run(scenario())


def test_purge_and_model_version_change(cache: ResponseCache) -> None:
    async def scenario() -> None:
        await remember(cache, kserve("one", key="key-a"), b"1")
        await remember(cache, kserve("two", key="key-b"), b"2")
        assert await cache.purge(tenant="k:key-a") == 1
        assert (await cache.lookup(kserve("one", key="key-a"), ROUTE)).hit is None
        assert (await cache.lookup(kserve("two", key="key-b"), ROUTE)).hit is not None
        assert await cache.drop_changed_models({("minilm", "minilm"): "1"}, {("minilm", "minilm"): "2"}) == 1
        assert (await cache.lookup(kserve("two", key="key-b"), ROUTE)).hit is None
        assert len(cache.semantic.index) == 0
    asyncio.run(scenario())


def test_identical_requests_in_flight_wait_for_the_first(cache: ResponseCache) -> None:
    async def scenario() -> None:
        leader = await cache.lookup(kserve("slow question"), ROUTE)
        assert leader.hit is None and leader.ticket is not None
        followers = [asyncio.create_task(cache.lookup(kserve("slow question"), ROUTE)) for _ in range(5)]
        await asyncio.sleep(0.05)
        assert not any(task.done() for task in followers)
        await cache.store(leader, 200, JSON, b"the answer")
        results = await asyncio.gather(*followers)
        assert [r.hit.kind for r in results] == ["hit-coalesced"] * 5
    asyncio.run(scenario())


def test_a_failed_leader_hands_over_to_one_follower(cache: ResponseCache) -> None:
    async def scenario() -> None:
        leader = await cache.lookup(kserve("flaky"), ROUTE)
        followers = [asyncio.create_task(cache.lookup(kserve("flaky"), ROUTE)) for _ in range(3)]
        await asyncio.sleep(0.05)
        cache.release(leader)  # every try upstream failed
        await asyncio.sleep(0.05)
        done = [task for task in followers if task.done()]
        assert len(done) == 1 and done[0].result().ticket is not None  # the new leader
        await cache.store(done[0].result(), 200, JSON, b"second try")
        assert {(await task).hit.kind for task in followers if task is not done[0]} == {"hit-coalesced"}
    asyncio.run(scenario())


def test_an_unreachable_embedder_is_a_miss_not_an_error(clock: ManualClock) -> None:
    route = PoolCacheConfig.model_validate({"semantic": {"embedder": {"pool": "minilm", "timeout": "200ms"}}})
    url = f"http://127.0.0.1:{free_port()}"
    cache = ResponseCache(MemoryStore(clock=clock), clock=clock,
                          pool_embedder=lambda pool, model, timeout: PoolEmbedder(url, model or pool, timeout=timeout))
    async def scenario() -> None:
        lookup = await cache.lookup(kserve("anything"), route)
        assert lookup.hit is None and lookup.reason == "embedder-error"
        assert await cache.store(lookup, 200, JSON, b"stored all the same")
        assert (await cache.lookup(kserve("anything"), route)).hit.kind == "hit"
        await cache.close()
    asyncio.run(scenario())


def test_build_cache_from_config_and_size_limit() -> None:
    from lbd.cache import build_cache
    from lbd.config.cache import CacheConfig

    cache = build_cache(CacheConfig.model_validate({"memory": {"max_entries": 10}, "max_entry_size": "1KiB"}))
    exact = PoolCacheConfig()
    async def scenario() -> None:
        small = await cache.lookup(kserve("small"), exact)
        assert await cache.store(small, 200, JSON, b"x" * 1000)
        big = await cache.lookup(kserve("big"), exact)
        assert not await cache.store(big, 200, JSON, b"x" * 2000)
        assert (await cache.lookup(kserve("small"), exact)).hit.kind == "hit"
        assert cache.stats["too-large"] == 1
        await cache.close()
    asyncio.run(scenario())


# -- the coalescing lead is released on every way out of a lookup ------------------------------
# A lookup may take the lead while it follows (the leader it waited on gave up) and then go on
# to the semantic step. Cancelled there, or failing there, it must hand the lead back: else
# the key stays "in flight" and every identical request waits coalesce_timeout (30s) for a
# leader that will never answer, then goes upstream, each time.
EXACT = PoolCacheConfig.model_validate({})
"""Exact keys only: a lookup that leads returns at once (and embeds nothing)."""


async def until(condition, what: str, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.001)


async def leads_promptly(cache: ResponseCache, info: RequestInfo) -> None:
    """An identical request is not kept waiting (coalesce_timeout is 30s): it leads."""
    async with asyncio.timeout(5):
        lookup = await cache.lookup(info, EXACT)
    assert lookup.hit is None and lookup.ticket is not None
    await cache.store(lookup, 200, JSON, b"the answer")
    assert (await cache.lookup(info, EXACT)).hit.kind == "hit"


def test_a_lookup_cancelled_while_it_leads_hands_the_lead_back(cache: ResponseCache) -> None:
    """Promoted (its leader gave up), then cancelled during its semantic step."""
    async def scenario() -> None:
        info = kserve("cancelled while it leads, after the first leader gave up")
        leader = await cache.lookup(info, EXACT)  # same key; embeds nothing
        promoted = asyncio.create_task(cache.lookup(info, ROUTE))
        await asyncio.sleep(0.01)
        assert not promoted.done()
        cache.release(leader)  # every try upstream failed: the follower leads now
        await until(lambda: len(cache._coalescer) == 1, "the follower leads")
        assert not promoted.done()  # embedding its text (a real model run on its thread)
        promoted.cancel()  # its client went away
        await asyncio.wait({promoted})
        assert promoted.cancelled()
        assert len(cache._coalescer) == 0
        await leads_promptly(cache, info)
    asyncio.run(scenario())


def test_a_follower_waiting_on_a_promoted_lookup_that_is_cancelled_leads_next(cache: ResponseCache) -> None:
    """Two followers; the leader gives up; the first follower leads and is cancelled: the
    second, now following it, must be handed the lead at once, not after coalesce_timeout."""
    async def scenario() -> None:
        info = kserve("cancelled while following, then promoted")
        leader = await cache.lookup(info, EXACT)
        promoted = asyncio.create_task(cache.lookup(info, ROUTE))
        await asyncio.sleep(0.01)
        patient = asyncio.create_task(cache.lookup(info, EXACT))
        await asyncio.sleep(0.01)
        cache.release(leader)
        await until(lambda: len(cache._coalescer) == 1, "a follower leads")
        assert not promoted.done() and not patient.done()  # promoted embeds, patient follows it
        promoted.cancel()
        await asyncio.wait({promoted})
        assert promoted.cancelled()
        async with asyncio.timeout(5):
            second = await patient
        assert second.hit is None and second.ticket is not None
        await cache.store(second, 200, JSON, b"from the second")
        assert (await cache.lookup(info, EXACT)).hit.body == b"from the second"
    asyncio.run(scenario())


def test_a_lookup_that_fails_after_taking_the_lead_hands_it_back(embedder, clock: ManualClock) -> None:
    """The semantic step raises after the lookup took the lead (here: an index whose
    vectors are not the embedder's size); ``lookup`` answers a plain miss, and the lead is
    handed back."""
    import numpy as np

    from lbd.cache.base import VectorRecord
    from lbd.cache.index import PartitionedIndex

    cache = ResponseCache(MemoryStore(clock=clock), embedders={"inprocess": embedder}, clock=clock)
    cache.semantic.index = PartitionedIndex(dimensions=8)  # as a resync replaces it
    async def scenario() -> None:
        info = kserve("an index that cannot be searched with this vector")
        leader = await cache.lookup(info, ROUTE)  # searches a partition not there yet: a miss
        assert leader.ticket is not None and leader.partition is not None
        cache.semantic.index.add(VectorRecord(leader.partition, "another key", "another text",
                                              np.full(8, 8 ** -0.5, dtype=np.float32), clock.now() + 3600))
        promoted = asyncio.create_task(cache.lookup(info, ROUTE))
        await asyncio.sleep(0.01)
        cache.release(leader)
        async with asyncio.timeout(5):
            failed = await promoted
        assert failed.hit is None and failed.ticket is None and failed.key is None
        assert cache.stats["errors"] == 1
        assert len(cache._coalescer) == 0
        await leads_promptly(cache, info)
    asyncio.run(scenario())


def test_the_configured_index_is_the_one_used() -> None:
    """An empty PartitionedIndex is falsy (it has a length): ``index or PartitionedIndex()``
    replaced the one build_cache made from ``cache.index`` with the defaults."""
    from lbd.cache import build_cache
    from lbd.config.cache import CacheConfig

    cache = build_cache(CacheConfig.model_validate({"index": {"hnsw_above": 500, "hnsw_m": 8}}))
    assert cache.semantic.index.options["hnsw_above"] == 500
    assert cache.semantic.index.options["hnsw_m"] == 8
