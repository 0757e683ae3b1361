"""Runner.stop() against a store whose call misses one cancellation, as a call wrapped in
Python 3.11's asyncio.wait_for can (redis-py wraps every socket write in one): stop() still
returns promptly and leaves nothing of the runner running (it cancels until done)."""

from __future__ import annotations

import asyncio
import time

import pytest

from lbd.config.jobs import JobsConfig, PoolJobsConfig
from lbd.jobs.base import NewJob, Response, Run
from lbd.jobs.memory import MemoryStore
from lbd.jobs.runner import Runner


class MissesOneCancellation(MemoryStore):
    """``promote`` (the maintenance loop's first call) waits until cancelled twice."""

    def __init__(self) -> None:
        super().__init__()
        self.promoting = asyncio.Event()
        self.missed = 0

    async def promote(self, pool: str) -> int:
        self.promoting.set()
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                self.missed += 1
                if self.missed > 1:
                    raise


@pytest.mark.timeout(30)
def test_stop_ends_a_loop_that_missed_its_cancellation_promptly() -> None:
    async def scenario() -> None:
        store = MissesOneCancellation()
        config = JobsConfig(visibility_timeout=1.0)

        async def execute(run: Run) -> Response:
            return Response(200, (), b"ok")

        runner = Runner(store, config, execute, consumer="r")
        runner.start({"p": PoolJobsConfig(concurrency=2)})
        await asyncio.wait_for(store.promoting.wait(), 5.0)
        started = time.monotonic()
        await runner.stop(grace=0.0)
        assert time.monotonic() - started < 1.0
        assert store.missed == 2
        assert all(task.done() for task in runner._tasks)
        assert all(lane.task.done() for lane in runner._all_lanes())
    asyncio.run(scenario())


@pytest.mark.timeout(30)
def test_a_retired_lane_that_missed_its_cancellation_stops_claiming() -> None:
    """A reload removed the pool: its lane must stop even if its claim swallowed the
    cancellation (it checks a flag besides)."""
    async def scenario() -> None:
        class Claims(MemoryStore):
            claims = 0

            async def claim(self, pool, consumer, count, block):
                self.claims += 1
                try:
                    await asyncio.sleep(0.05)
                except asyncio.CancelledError:
                    pass  # missed: returns as if the claim had answered
                return []

        store = Claims()
        runner = Runner(store, JobsConfig(visibility_timeout=1.0), lambda run: None, consumer="r")
        runner.start({"p": PoolJobsConfig(concurrency=1)})
        await asyncio.sleep(0.02)
        (lane,) = runner._all_lanes()
        runner.apply({})
        await asyncio.wait({lane.task}, timeout=1.0)
        assert lane.task.done()
        claims = store.claims
        await asyncio.sleep(0.2)
        assert store.claims == claims
        await runner.stop(0.0)
    asyncio.run(scenario())
