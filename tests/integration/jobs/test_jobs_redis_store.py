"""The Redis job store against a real redis-server: the scenarios the memory store passes on
a manual clock (tests/unit/jobs/test_jobs_memory.py), here with Redis's own clock for idle
times and expiry, so with short timeouts and polling instead of a clock to advance."""

from __future__ import annotations

import asyncio
import time

import pytest

from lbd.jobs.base import HIGH, LOW, NORMAL, BatchRecord, NewJob, Response, StoreError, WebhookStatus
from lbd.jobs.redis_store import RedisStore

TTL = 3600.0


def job(job_id: str, priority: int = NORMAL, pool: str = "p", **extra) -> NewJob:
    return NewJob(job_id, pool, "POST", "/v2/models/m/infer", (("content-type", "application/json"),),
                  b"\x00binary\xff", priority=priority, **extra)


def run(url: str, prefix: str, scenario) -> None:
    async def main() -> None:
        store = RedisStore(url, prefix=prefix, timeout=2.0)
        await store.start(["p"])
        try:
            await scenario(store)
        finally:
            await store.close()

    asyncio.run(main())


async def until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def started(store: RedisStore, claim, token: str, max_attempts: int = 3):
    run_ = await store.begin(claim, token, max_attempts, TTL)
    claim.token = token
    return run_


def test_a_job_is_claimed_run_and_finished_once_then_expires(redis_url, key_prefix):
    async def scenario(store: RedisStore) -> None:
        assert await store.submit([job("j1", tenant="acme", client_ip="10.0.0.1", callback="http://h/")], 10)
        record = await store.get("j1")
        assert (record.state, record.tenant, record.webhook.url) == ("queued", "acme", "http://h/")
        (claim,) = await store.claim("p", "a", 5, 0)
        assert await store.claim("p", "b", 5, 0) == []
        run_ = await started(store, claim, "a/1")
        assert run_.attempt == 1 and run_.job.body == b"\x00binary\xff" and run_.job.client_ip == "10.0.0.1"
        assert run_.job.headers == (("content-type", "application/json"),) and run_.job.tenant == "acme"
        answer = Response(200, (("content-type", "application/octet-stream"),), b"\xff\x00")
        assert await store.finish(claim, "succeeded", answer, None, result_ttl=1.0)
        record = await store.get("j1")
        assert (record.state, record.attempts, record.response) == ("succeeded", 1, answer)
        assert not await store.finish(claim, "failed", None, "again", TTL)
        await until(lambda: _is_none(store.get("j1")), 5.0)  # Redis expired it after the TTL
    run(redis_url, key_prefix, scenario)


async def _is_none(awaitable) -> bool:
    return await awaitable is None


def test_priorities_and_the_queue_bound(redis_url, key_prefix):
    async def scenario(store: RedisStore) -> None:
        for job_id, priority in (("low", LOW), ("normal", NORMAL), ("high", HIGH)):
            assert await store.submit([job(job_id, priority)], 4)
        assert not await store.submit([job("x1"), job("x2")], 4)  # all or none
        assert await store.get("x1") is None and await store.depth("p") == 3
        claims = []
        while len(claims) < 3:
            claims += await store.claim("p", "a", 1, 0)
        assert [claim.job_id for claim in sorted(claims, key=lambda c: c.priority)] == ["high", "normal", "low"]
        assert await store.depth("p") == 0
    run(redis_url, key_prefix, scenario)


def test_a_claim_renewed_is_kept_and_one_gone_quiet_is_taken_over(redis_url, key_prefix):
    async def scenario(store: RedisStore) -> None:
        await store.submit([job("j1")], 10)
        (first,) = await store.claim("p", "a", 1, 0)
        await started(store, first, "a/1")
        for _ in range(4):  # renewed every 0.3 s: never idle for 1 s
            await asyncio.sleep(0.3)
            assert await store.renew("a", [first]) == []
            assert await store.reclaim("p", "b", 1.0, 10) == []
        await asyncio.sleep(1.1)  # instance a died mid-run
        (second,) = await store.reclaim("p", "b", 1.0, 10)
        assert (second.job_id, second.entry) == ("j1", first.entry)
        assert await store.renew("a", [first]) == [first]
        assert (await started(store, second, "b/1")).attempt == 2
        assert not await store.finish(first, "succeeded", Response(200, (), b"late"), None, TTL)
        assert await store.finish(second, "succeeded", Response(200, (), b"b"), None, TTL)
        record = await store.get("j1")
        assert (record.state, record.attempts, record.response.body) == ("succeeded", 2, b"b")
    run(redis_url, key_prefix, scenario)


def test_retries_wait_out_their_backoff_and_give_up_after_max_attempts(redis_url, key_prefix):
    async def scenario(store: RedisStore) -> None:
        await store.submit([job("j1")], 10)
        for attempt in (1, 2):
            (claim,) = await store.claim("p", "a", 1, 0)
            assert (await started(store, claim, f"a/{attempt}", 2)).attempt == attempt
            assert await store.requeue(claim, time.time() + 0.3, "answered 503")
            assert (await store.get("j1")).state == "queued" and await store.depth("p") == 1
            assert await store.promote("p") == 0 and await store.claim("p", "a", 1, 0) == []
            await asyncio.sleep(0.35)
            assert await store.promote("p") == 1
        (claim,) = await store.claim("p", "a", 1, 0)
        assert await store.begin(claim, "a/3", 2, TTL) is None
        record = await store.get("j1")
        assert (record.state, record.attempts, record.error) == ("failed", 2, "gave up after 2 attempts: answered 503")
    run(redis_url, key_prefix, scenario)


def test_cancel_and_release(redis_url, key_prefix):
    async def scenario(store: RedisStore) -> None:
        await store.submit([job("queued"), job("claimed"), job("running"), job("waiting")], 10)
        assert await store.cancel("queued", TTL) == "cancelled"
        claimed, running, waiting = await store.claim("p", "a", 3, 0)
        assert [c.job_id for c in (claimed, running, waiting)] == ["claimed", "running", "waiting"]
        await started(store, running, "a/1")
        assert await store.cancel("claimed", TTL) == "cancelled"
        assert await store.begin(claimed, "a/2", 3, TTL) is None
        assert await store.cancel("running", TTL) == "running"
        assert await store.cancel("nope", TTL) is None
        await store.release(running)
        await store.release(waiting)
        again = await store.claim("p", "b", 5, 0)
        assert sorted(claim.job_id for claim in again) == ["running", "waiting"]
        assert (await store.get("running")).attempts == 1
        assert await store.states(["queued", "claimed", "running", "nope"]) == ["cancelled", "cancelled", "queued", None]
    run(redis_url, key_prefix, scenario)


def test_callbacks_are_due_leased_and_retried(redis_url, key_prefix):
    async def scenario(store: RedisStore) -> None:
        await store.submit([job("j1", callback="http://127.0.0.1:9/hook"), job("j2")], 10)
        for claim in await store.claim("p", "a", 2, 0):
            await started(store, claim, "t" + claim.job_id)
            await store.finish(claim, "succeeded", Response(200, (), b""), None, TTL)
        assert await store.due_callbacks(lease=0.5, count=5) == ["j1"]
        assert await store.due_callbacks(lease=0.5, count=5) == []
        await asyncio.sleep(0.55)
        assert await store.due_callbacks(lease=10, count=5) == ["j1"]
        record, status = await store.webhook("j1")
        assert record.state == "succeeded" and status.attempts == 0
        await store.callback_done("j1", WebhookStatus(status.url, "pending", 1, 500, "answered 500"), time.time() + 0.2)
        await asyncio.sleep(0.25)
        assert await store.due_callbacks(lease=10, count=5) == ["j1"]
        await store.callback_done("j1", WebhookStatus(status.url, "delivered", 2, 200, None, time.time()), None)
        assert await store.due_callbacks(lease=10, count=5) == []
        hook = (await store.get("j1")).webhook
        assert (hook.state, hook.attempts, hook.last_status) == ("delivered", 2, 200)
    run(redis_url, key_prefix, scenario)


def test_a_batch_and_a_blocking_claim(redis_url, key_prefix):
    async def scenario(store: RedisStore) -> None:
        waiting = asyncio.ensure_future(store.claim("p", "a", 1, block=5.0))
        await asyncio.sleep(0.1)
        assert not waiting.done()
        jobs = [job(f"j{i}", batch="b1") for i in range(3)]
        assert await store.submit(jobs, 10, batch=BatchRecord("b1", "p", "acme", time.time(), ["j0", "j1", "j2"]))
        (claim,) = await asyncio.wait_for(waiting, 2.0)
        assert claim.job_id == "j0"
        batch = await store.get_batch("b1")
        assert (batch.jobs, batch.tenant) == (["j0", "j1", "j2"], "acme")
        assert await store.states(batch.jobs) == ["queued"] * 3
    run(redis_url, key_prefix, scenario)


def test_consumers_gone_quiet_with_nothing_held_are_forgotten(redis_url, key_prefix):
    async def scenario(store: RedisStore) -> None:
        await store.submit([job("j1"), job("j2")], 10)
        (gone,) = await store.claim("p", "gone", 1, 0)
        await store.release(gone)  # holds nothing now
        await store.claim("p", "holding", 1, 0)
        await asyncio.sleep(0.05)
        await store._prune("p", idle=0.01)
        consumers = await store._redis.xinfo_consumers(store._stream("p", NORMAL), "runners")
        assert [consumer["name"] for consumer in consumers] == [b"holding"]
    run(redis_url, key_prefix, scenario)


@pytest.mark.timeout(30)
def test_a_redis_that_is_away_is_a_store_error(own_redis, key_prefix):
    async def scenario() -> None:
        store = RedisStore(own_redis.url, prefix=key_prefix, timeout=0.5)
        await store.start(["p"])
        own_redis.kill()
        with pytest.raises(StoreError):
            await store.submit([job("j1")], 10)
        with pytest.raises(StoreError):
            await store.claim("p", "a", 1, 0.2)
        await store.close()

    asyncio.run(scenario())
