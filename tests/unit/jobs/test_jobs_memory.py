"""The in-memory job store, on a manual clock: claims, renewal and takeover after the
visibility timeout, run tokens, priorities, the queue bound, retries, cancel, expiry and
callback leases. The Redis store passes the same scenarios in tests/integration/jobs/."""

from __future__ import annotations

import asyncio

import pytest

from lbd.clock import ManualClock
from lbd.jobs.base import HIGH, LOW, NORMAL, BatchRecord, NewJob, Response, WebhookStatus
from lbd.jobs.memory import MemoryStore

VT = 30.0
TTL = 3600.0


def job(job_id: str, priority: int = NORMAL, pool: str = "p", **extra) -> NewJob:
    return NewJob(job_id, pool, "POST", "/v2/models/m/infer", (("content-type", "application/json"),), b"{}",
                  priority=priority, **extra)


def run(scenario) -> None:
    clock = ManualClock(1_000_000.0)
    asyncio.run(scenario(MemoryStore(clock), clock))


def test_a_job_is_claimed_run_and_finished_once_then_expires():
    async def scenario(store: MemoryStore, clock: ManualClock) -> None:
        assert await store.submit([job("j1")], max_queue=10)
        assert (await store.get("j1")).state == "queued"
        (claim,) = await store.claim("p", "a", 5, 0)
        assert await store.claim("p", "b", 5, 0) == []  # claimed: nobody else gets it
        started = await store.begin(claim, "a/1", max_attempts=3, result_ttl=TTL)
        assert started.attempt == 1 and started.job.body == b"{}"
        claim.token = "a/1"
        assert (await store.get("j1")).state == "running"
        answer = Response(200, (("content-type", "application/json"),), b'{"ok":1}')
        assert await store.finish(claim, "succeeded", answer, None, TTL)
        record = await store.get("j1")
        assert (record.state, record.attempts, record.response) == ("succeeded", 1, answer)
        assert not await store.finish(claim, "failed", None, "again", TTL)  # the run is over
        clock.advance(TTL - 1)
        assert await store.get("j1") is not None
        clock.advance(1)
        assert await store.get("j1") is None
    run(scenario)


def test_higher_priorities_are_claimed_first():
    async def scenario(store: MemoryStore, clock: ManualClock) -> None:
        for job_id, priority in (("low", LOW), ("normal", NORMAL), ("high", HIGH), ("high2", HIGH)):
            await store.submit([job(job_id, priority)], max_queue=10)
        claims = await store.claim("p", "a", 10, 0)
        assert [claim.job_id for claim in claims] == ["high", "high2", "normal", "low"]
    run(scenario)


def test_the_queue_bound_refuses_a_whole_submission():
    async def scenario(store: MemoryStore, clock: ManualClock) -> None:
        assert await store.submit([job("a"), job("b")], max_queue=3)
        assert not await store.submit([job("c"), job("d")], max_queue=3)  # all or none
        assert await store.get("c") is None
        assert await store.depth("p") == 2
        await store.claim("p", "x", 1, 0)
        assert await store.depth("p") == 1  # a claimed job is not waiting any more
        assert await store.submit([job("c"), job("d")], max_queue=3)
        assert await store.depth("other") == 0
    run(scenario)


def test_a_claim_renewed_is_kept_and_one_gone_quiet_is_taken_over():
    async def scenario(store: MemoryStore, clock: ManualClock) -> None:
        await store.submit([job("j1")], max_queue=10)
        (first,) = await store.claim("p", "a", 1, 0)
        await store.begin(first, "a/1", 3, TTL)
        first.token = "a/1"
        for _ in range(3):  # renewed every third of the timeout: never idle long enough
            clock.advance(VT / 3)
            assert await store.renew("a", [first]) == []
            assert await store.reclaim("p", "b", VT, 10) == []
        clock.advance(VT)  # instance a died mid-run
        (second,) = await store.reclaim("p", "b", VT, 10)
        assert second.job_id == "j1" and second.entry == first.entry
        assert await store.renew("a", [first]) == [first]  # a learns it lost the job
        again = await store.begin(second, "b/1", 3, TTL)
        second.token = "b/1"
        assert again.attempt == 2  # the duplicate run shows as an attempt
        assert not await store.finish(first, "succeeded", Response(200, (), b"late"), None, TTL)
        assert await store.finish(second, "succeeded", Response(200, (), b"b"), None, TTL)
        record = await store.get("j1")
        assert (record.state, record.attempts, record.response.body) == ("succeeded", 2, b"b")
    run(scenario)


def test_a_claim_taken_over_before_its_run_began_costs_no_attempt():
    async def scenario(store: MemoryStore, clock: ManualClock) -> None:
        await store.submit([job("j1")], max_queue=10)
        await store.claim("p", "a", 1, 0)
        clock.advance(VT)
        (claim,) = await store.reclaim("p", "b", VT, 10)
        assert (await store.begin(claim, "b/1", 3, TTL)).attempt == 1
    run(scenario)


def test_retriable_failures_wait_out_their_backoff_and_give_up_after_max_attempts():
    async def scenario(store: MemoryStore, clock: ManualClock) -> None:
        await store.submit([job("j1")], max_queue=10)
        for attempt in (1, 2):
            (claim,) = await store.claim("p", "a", 1, 0)
            assert (await store.begin(claim, f"a/{attempt}", 2, TTL)).attempt == attempt
            claim.token = f"a/{attempt}"
            assert await store.requeue(claim, clock.now() + 5, "answered 503")
            assert (await store.get("j1")).state == "queued"
            assert await store.depth("p") == 1  # waiting out its backoff counts as waiting
            assert await store.promote("p") == 0 and await store.claim("p", "a", 1, 0) == []
            clock.advance(5)
            assert await store.promote("p") == 1
        (claim,) = await store.claim("p", "a", 1, 0)
        assert await store.begin(claim, "a/3", 2, TTL) is None  # two runs were all it may have
        record = await store.get("j1")
        assert record.state == "failed" and record.attempts == 2
        assert record.error == "gave up after 2 attempts: answered 503"
        assert await store.claim("p", "a", 1, 0) == []
    run(scenario)


def test_cancel_takes_a_queued_job_out_and_leaves_a_running_one():
    async def scenario(store: MemoryStore, clock: ManualClock) -> None:
        await store.submit([job("queued"), job("claimed"), job("running")], max_queue=10)
        assert await store.cancel("queued", TTL) == "cancelled"
        claimed, running = await store.claim("p", "a", 2, 0)
        assert (claimed.job_id, running.job_id) == ("claimed", "running")
        await store.begin(running, "a/1", 3, TTL)
        assert await store.cancel("claimed", TTL) == "cancelled"
        assert await store.begin(claimed, "a/2", 3, TTL) is None  # cancelled before its run began
        assert await store.cancel("running", TTL) == "running"
        assert await store.cancel("queued", TTL) == "cancelled"  # already: unchanged
        assert await store.cancel("nope", TTL) is None
        assert await store.states(["queued", "claimed", "running", "nope"]) == ["cancelled", "cancelled", "running",
                                                                                None]
    run(scenario)


def test_release_hands_a_job_back_at_once():
    async def scenario(store: MemoryStore, clock: ManualClock) -> None:
        await store.submit([job("started"), job("waiting")], max_queue=10)
        started, waiting = await store.claim("p", "a", 2, 0)
        await store.begin(started, "a/1", 3, TTL)
        started.token = "a/1"
        await store.release(started)
        await store.release(waiting)
        again = await store.claim("p", "b", 5, 0)
        assert sorted(claim.job_id for claim in again) == ["started", "waiting"]
        assert (await store.get("started")).attempts == 1  # the interrupted run counts
    run(scenario)


def test_a_finished_job_with_a_callback_is_due_and_leased():
    async def scenario(store: MemoryStore, clock: ManualClock) -> None:
        await store.submit([job("j1", callback="http://127.0.0.1:9/hook"), job("j2")], max_queue=10)
        for claim in await store.claim("p", "a", 2, 0):
            await store.begin(claim, "t" + claim.job_id, 3, TTL)
            claim.token = "t" + claim.job_id
            await store.finish(claim, "succeeded", Response(200, (), b""), None, TTL)
        assert await store.due_callbacks(lease=10, count=5) == ["j1"]
        assert await store.due_callbacks(lease=10, count=5) == []  # leased to the first caller
        record, status = await store.webhook("j1")
        assert record.state == "succeeded" and status.url == "http://127.0.0.1:9/hook"
        clock.advance(10)
        assert await store.due_callbacks(lease=10, count=5) == ["j1"]  # the lease ran out: again
        await store.callback_done("j1", WebhookStatus(status.url, "pending", 1, 500, "answered 500"), clock.now() + 3)
        clock.advance(3)
        assert await store.due_callbacks(lease=10, count=5) == ["j1"]
        await store.callback_done("j1", WebhookStatus(status.url, "delivered", 2, 200, None, clock.now()), None)
        clock.advance(100)
        assert await store.due_callbacks(lease=10, count=5) == []
        assert (await store.get("j1")).webhook.state == "delivered"
    run(scenario)


def test_a_batch_lives_as_long_as_its_last_job():
    async def scenario(store: MemoryStore, clock: ManualClock) -> None:
        jobs = [job(f"j{i}", batch="b1") for i in range(3)]
        await store.submit(jobs, max_queue=10, batch=BatchRecord("b1", "p", None, clock.now(), ["j0", "j1", "j2"]))
        for claim in await store.claim("p", "a", 3, 0):
            await store.begin(claim, "t" + claim.job_id, 3, TTL)
            claim.token = "t" + claim.job_id
            await store.finish(claim, "succeeded", Response(200, (), b""), None, TTL)
            clock.advance(10)
        assert (await store.get_batch("b1")).jobs == ["j0", "j1", "j2"]
        clock.advance(TTL - 25)  # the first finished TTL + 5 s ago, the last TTL - 15 s ago
        assert await store.states(["j0", "j1", "j2"]) == [None, "succeeded", "succeeded"]
        assert await store.get_batch("b1") is not None
        clock.advance(15)
        assert await store.get_batch("b1") is None
    run(scenario)


@pytest.mark.timeout(10)
def test_a_blocking_claim_wakes_on_submit():
    async def scenario(store: MemoryStore, clock: ManualClock) -> None:
        waiting = asyncio.ensure_future(store.claim("p", "a", 1, block=5.0))
        await asyncio.sleep(0.01)
        assert not waiting.done()
        await store.submit([job("j1")], max_queue=10)
        (claim,) = await asyncio.wait_for(waiting, 1.0)
        assert claim.job_id == "j1"
    run(scenario)
