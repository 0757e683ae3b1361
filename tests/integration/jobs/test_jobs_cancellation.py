"""The Redis job store and the runner against a real redis-server, cancelled and stopped at
many moments: a cancellation is never lost (Python 3.11's ``asyncio.wait_for``, which
redis-py wraps around every socket write, can turn one into a result), close() and stop()
return promptly, and nothing of the runner is left running after stop()."""

from __future__ import annotations

import asyncio
import time

import pytest

from lbd.config.jobs import JobsConfig, PoolJobsConfig
from lbd.jobs.base import NORMAL, NewJob, Response, Run
from lbd.jobs.redis_store import RedisStore
from lbd.jobs.runner import Runner
from tests.support.cancellation import cancel_at_many_moments


MAINTAIN_TICK = 0.25
"""The runner's maintenance loop's first round, with a visibility timeout of 1 s."""


def job(job_id: str, pool: str = "p") -> NewJob:
    return NewJob(job_id, pool, "POST", "/v2/models/m/infer", (("content-type", "application/json"),), b"{}",
                  priority=NORMAL)


@pytest.mark.timeout(120)
def test_a_cancelled_store_call_is_cancelled_whenever_the_cancellation_lands(redis_url, key_prefix):
    """A task cancelled while it waits on the store stops there: the store never turns the
    cancellation into a result, even when it lands as Redis answers."""
    async def scenario() -> None:
        store = RedisStore(redis_url, prefix=key_prefix, timeout=0.5)
        await store.start(["p"])
        assert await store.submit([job("j1")], 10)
        calls = [lambda: store.get("j1"), lambda: store.depth("p"), lambda: store.states(["j1"])]
        cancelled, swallowed = await cancel_at_many_moments(lambda round_: calls[round_ % 3](), 450, every=3)
        assert cancelled >= 100
        assert swallowed == 0, f"{swallowed} of {cancelled} cancellations turned into a result"
        started = time.monotonic()
        await store.close()
        assert time.monotonic() - started < 1.0
    asyncio.run(scenario())


@pytest.mark.timeout(120)
def test_close_returns_promptly_whatever_calls_are_in_flight(redis_url, key_prefix):
    """close() lands at every moment of a blocking claim and of ordinary calls: it returns
    at once, and no call it left behind is still running after it."""
    async def scenario() -> None:
        seeder = RedisStore(redis_url, prefix=key_prefix, timeout=0.5)
        await seeder.start(["p"])
        await seeder.submit([job("j1")], 10)
        await seeder.close()
        for round_ in range(60):
            store = RedisStore(redis_url, prefix=key_prefix, timeout=0.5)
            calls = [asyncio.ensure_future(store.claim("p", f"c{round_}", 1, block=1.0)),
                     asyncio.ensure_future(store.get("j1")), asyncio.ensure_future(store.depth("p"))]
            for _ in range(round_ % 30):
                await asyncio.sleep(0)
            for call in calls:
                call.cancel()
            started = time.monotonic()
            closing = asyncio.ensure_future(store.close())
            done, _ = await asyncio.wait({closing}, timeout=3.0)
            assert done, f"close() still waiting after 3s (round {round_})"
            closing.result()
            assert time.monotonic() - started < 1.0, f"round {round_}"
            await asyncio.wait(calls, timeout=1.0)
            assert all(call.done() for call in calls), f"a call runs on after close() (round {round_})"
            assert not getattr(store, "_abandoned", ()), f"an abandoned call runs on after close() (round {round_})"
    asyncio.run(scenario())


@pytest.mark.timeout(300)
def test_the_runner_stops_promptly_and_entirely_whenever_it_is_stopped(redis_url, key_prefix):
    """stop() lands at every moment of a runner's first steps (claims, begins, runs,
    finishes against Redis) and of its maintenance loop's first round (promote, reclaim,
    depth): it returns promptly, and its lanes, runs and loops have all stopped."""
    async def scenario() -> None:
        store = RedisStore(redis_url, prefix=key_prefix, timeout=0.5)
        await store.start(["p"])
        config = JobsConfig(store=redis_url, key_prefix=key_prefix, visibility_timeout=1.0)
        assert MAINTAIN_TICK == min(1.0, config.visibility_timeout / 4)
        pools = {"p": PoolJobsConfig(concurrency=4)}

        async def execute(run: Run) -> Response:
            await asyncio.sleep(0.001 * (hash(run.job.id) % 5))
            return Response(200, (), b"ok")

        submitted = 0
        for round_ in range(160):
            if await store.depth("p") < 8:
                await store.submit([job(f"j{submitted + i}") for i in range(8)], None)
                submitted += 8
            runner = Runner(store, config, execute, consumer=f"r{round_}")
            runner.start(pools)
            if round_ < 80:
                for _ in range(round_ % 40):  # one loop iteration each: stop() at a different moment
                    await asyncio.sleep(0)
            else:  # stop() as the maintenance loop's first round talks to Redis (0 to 20 ms in)
                await asyncio.sleep(MAINTAIN_TICK + (round_ % 40) * 0.0005)
            started = time.monotonic()
            stopping = asyncio.ensure_future(runner.stop(grace=0.0))
            done, _ = await asyncio.wait({stopping}, timeout=8.0)
            assert done, f"stop() still waiting after 8s (round {round_})"
            stopping.result()
            assert time.monotonic() - started < 2.0, f"stop() took {time.monotonic() - started:.2f}s (round {round_})"
            lanes = runner._all_lanes()
            assert all(lane.task.done() for lane in lanes), f"a lane claims on after stop() (round {round_})"
            assert all(task.done() for task in runner._tasks), f"a loop runs on after stop() (round {round_})"
            assert not any(lane.running for lane in lanes), f"a run goes on after stop() (round {round_})"
        await store.close()
    asyncio.run(scenario())
