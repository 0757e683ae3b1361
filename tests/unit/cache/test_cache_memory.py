"""The memory store: LRU by entries and bytes, lifetimes on an injected clock, purges."""

from __future__ import annotations

import asyncio

from lbd.cache.base import Entry, Scope
from lbd.cache.keys import tenant_label
from lbd.cache.memory import MemoryStore
from lbd.clock import ManualClock


def entry(clock: ManualClock, body: bytes = b"x", ttl: float = 10.0, grace: float = 0.0) -> Entry:
    return Entry(200, (("content-type", "text/plain"),), body, clock.now(), ttl, grace)


def run(coroutine):
    return asyncio.run(coroutine)


def test_lru_bound_by_entries_evicts_the_least_recently_used() -> None:
    async def scenario() -> None:
        clock = ManualClock()
        store = MemoryStore(max_entries=2, clock=clock)
        await store.set("p:m:-:a", entry(clock))
        await store.set("p:m:-:b", entry(clock))
        assert await store.get("p:m:-:a") is not None  # a is now the most recent
        await store.set("p:m:-:c", entry(clock))
        assert await store.get("p:m:-:b") is None
        assert await store.get("p:m:-:a") is not None and await store.get("p:m:-:c") is not None
        assert store.stats.evictions == 1
    run(scenario())


def test_lru_bound_by_bytes() -> None:
    async def scenario() -> None:
        clock = ManualClock()
        one = entry(clock, b"x" * 1000)
        store = MemoryStore(max_bytes=one.size * 3, clock=clock)
        for name in "abcd":
            await store.set(f"p:m:-:{name}", entry(clock, b"x" * 1000))
        assert len(store) == 3 and store.stats.bytes <= one.size * 3
        assert await store.get("p:m:-:a") is None
        await store.set("p:m:-:huge", entry(clock, b"x" * one.size * 4))  # larger than the bound: skipped
        assert await store.get("p:m:-:huge") is None and len(store) == 3
    run(scenario())


def test_entries_expire_after_ttl_plus_grace() -> None:
    async def scenario() -> None:
        clock = ManualClock()
        store = MemoryStore(clock=clock)
        await store.set("p:m:-:k", entry(clock, ttl=10, grace=5))
        clock.advance(9.9)
        assert (await store.get("p:m:-:k")).is_fresh(clock.now())
        clock.advance(1)
        found = await store.get("p:m:-:k")
        assert found is not None and not found.is_fresh(clock.now()) and found.is_servable_stale(clock.now())
        clock.advance(5)
        assert await store.get("p:m:-:k") is None and len(store) == 0
    run(scenario())


def test_replacing_a_key_keeps_the_byte_count_right() -> None:
    async def scenario() -> None:
        clock = ManualClock()
        store = MemoryStore(clock=clock)
        await store.set("p:m:-:k", entry(clock, b"a" * 100))
        await store.set("p:m:-:k", entry(clock, b"b" * 10))
        assert store.stats.bytes == entry(clock, b"b" * 10).size and len(store) == 1
        await store.delete("p:m:-:k")
        assert store.stats.bytes == 0
    run(scenario())


def test_purge_by_pool_model_tenant_or_all() -> None:
    async def scenario() -> None:
        clock = ManualClock()
        store = MemoryStore(clock=clock)
        acme = tenant_label("h:acme")
        for key in ("p:m:-:1", "p:n:-:2", f"p:m:{acme}:3", "q:m:-:4"):
            await store.set(key, entry(clock))
        assert await store.purge(Scope(tenant="h:acme")) == 1
        assert await store.purge(Scope(pool="p", model="m")) == 1
        assert await store.purge(Scope(pool="q")) == 1
        assert await store.purge(Scope()) == 1 and len(store) == 0
    run(scenario())


def test_entry_round_trips_through_bytes() -> None:
    clock = ManualClock()
    original = Entry(201, (("a", "b"),), b"\x00body", clock.now(), 3.5, 1.0, "text")
    assert Entry.from_bytes(original.to_bytes()) == original
