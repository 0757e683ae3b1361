"""lbd.aio: a bounded await that never loses its caller's cancellation (Python 3.11's
``asyncio.wait_for`` returns the result when the cancellation lands as the operation
finishes), and stopping a task that may miss one cancellation."""

from __future__ import annotations

import asyncio
import time

import pytest

from lbd.aio import bounded, cancel_until_done, finish_off


def test_bounded_returns_the_result_or_times_out_and_cancels_the_operation() -> None:
    async def scenario() -> None:
        assert await bounded(asyncio.sleep(0, "done"), 1.0) == "done"
        abandoned: set[asyncio.Future] = set()
        slow = asyncio.ensure_future(asyncio.sleep(10))
        with pytest.raises(asyncio.TimeoutError, match="no answer from the thing within 0.01s"):
            await bounded(slow, 0.01, abandoned, what="the thing")
        await asyncio.wait({slow})
        await asyncio.sleep(0)  # its done callbacks
        assert slow.cancelled() and not abandoned
    asyncio.run(scenario())


def test_a_cancellation_that_lands_as_the_operation_finishes_is_not_lost() -> None:
    """The race made deterministic: the operation's result and the caller's cancellation
    arrive in the same loop iteration. asyncio.wait_for (3.11) returns the result here."""
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        answer = loop.create_future()
        caller = asyncio.ensure_future(bounded(answer, 5.0))
        await asyncio.sleep(0)
        answer.set_result("too late")
        caller.cancel()
        await asyncio.wait({caller})
        assert caller.cancelled()
    asyncio.run(scenario())


async def _deaf(stop: asyncio.Event, misses: int = 1 << 30) -> str:
    """Swallows up to ``misses`` cancellations (as wait_for on 3.11 can), until ``stop``."""
    while not stop.is_set():
        try:
            await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            misses -= 1
            if misses < 0:
                raise
    return "stopped"


def test_bounded_does_not_wait_for_an_operation_that_ignores_its_cancellation() -> None:
    async def scenario() -> None:
        stop, abandoned = asyncio.Event(), set()
        started = time.monotonic()
        with pytest.raises(asyncio.TimeoutError):
            await bounded(_deaf(stop), 0.05, abandoned)
        assert time.monotonic() - started < 0.5
        assert len(abandoned) == 1  # still running: its owner finishes it off on close
        assert not await finish_off(abandoned, 0.05)
        stop.set()
        assert await finish_off(abandoned, 1.0) and not abandoned
    asyncio.run(scenario())


def test_cancel_until_done_stops_a_task_that_misses_a_cancellation_and_is_bounded() -> None:
    async def scenario() -> None:
        stop = asyncio.Event()
        once_deaf = asyncio.ensure_future(_deaf(stop, misses=1))
        await asyncio.sleep(0)
        once_deaf.cancel()
        await asyncio.wait({once_deaf}, timeout=0.1)
        assert not once_deaf.done()  # a single cancel() is not enough
        started = time.monotonic()
        assert await cancel_until_done(once_deaf, 2.0)
        assert once_deaf.cancelled() and time.monotonic() - started < 0.5

        deaf = [asyncio.ensure_future(_deaf(stop)) for _ in range(2)]
        await asyncio.sleep(0)  # started: in its loop
        started = time.monotonic()
        assert not await cancel_until_done(deaf, 0.3)
        assert 0.25 < time.monotonic() - started < 1.0
        stop.set()
        assert await cancel_until_done(deaf, 1.0)
    asyncio.run(scenario())


@pytest.mark.skipif(__import__("sys").version_info >= (3, 12), reason="wait_for was rewritten in 3.12")
def test_why_asyncio_wait_for_is_not_enough_on_python_3_11() -> None:
    """The same race with asyncio.wait_for: the cancelled caller gets the result."""
    async def scenario() -> None:
        answer = asyncio.get_running_loop().create_future()
        caller = asyncio.ensure_future(asyncio.wait_for(answer, 5.0))
        await asyncio.sleep(0)
        answer.set_result("too late")
        caller.cancel()
        await asyncio.wait({caller})
        assert not caller.cancelled() and caller.result() == "too late"
    asyncio.run(scenario())
