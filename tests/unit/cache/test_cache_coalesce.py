"""Coalescing: followers wait for the leader; a failed leader hands over to one follower."""

from __future__ import annotations

import asyncio

from lbd.cache.base import Entry
from lbd.cache.coalesce import Coalescer

ENTRY = Entry(200, (), b"answer", 0.0, 60.0)


def test_followers_get_the_leaders_entry() -> None:
    async def scenario() -> None:
        coalescer = Coalescer()
        ticket = coalescer.lead("k")
        assert ticket is not None and coalescer.lead("k") is None
        followers = [asyncio.create_task(coalescer.follow("k", 5.0)) for _ in range(10)]
        await asyncio.sleep(0)
        coalescer.finish(ticket, ENTRY)
        assert await asyncio.gather(*followers) == [ENTRY] * 10
        assert len(coalescer) == 0 and await coalescer.follow("k", 1.0) is False
    asyncio.run(scenario())


def test_a_follower_that_times_out_leaves_the_others_waiting() -> None:
    async def scenario() -> None:
        coalescer = Coalescer()
        ticket = coalescer.lead("k")
        patient = asyncio.create_task(coalescer.follow("k", 5.0))
        assert await coalescer.follow("k", 0.01) is None
        coalescer.finish(ticket, ENTRY)
        assert await patient == ENTRY
    asyncio.run(scenario())


def test_finish_is_idempotent_and_none_frees_the_key_for_a_new_leader() -> None:
    async def scenario() -> None:
        coalescer = Coalescer()
        ticket = coalescer.lead("k")
        waiting = asyncio.create_task(coalescer.follow("k", 5.0))
        await asyncio.sleep(0)
        coalescer.finish(ticket, None)
        coalescer.finish(ticket, ENTRY)  # a second finish changes nothing
        assert await waiting is None
        assert coalescer.lead("k") is not None
    asyncio.run(scenario())


def test_a_follower_cancelled_as_the_leader_finishes_is_cancelled() -> None:
    """Its request went away: the follower must not wake with the entry (asyncio.wait_for on
    Python 3.11 turned this cancellation into the leader's answer) nor disturb the others."""
    async def scenario() -> None:
        coalescer = Coalescer()
        ticket = coalescer.lead("k")
        gone = asyncio.create_task(coalescer.follow("k", 5.0))
        patient = asyncio.create_task(coalescer.follow("k", 5.0))
        await asyncio.sleep(0)
        coalescer.finish(ticket, ENTRY)
        gone.cancel()
        await asyncio.wait({gone})
        assert gone.cancelled()
        assert await patient == ENTRY
    asyncio.run(scenario())
