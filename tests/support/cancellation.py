"""Cancelling a call at many moments, to catch a cancellation that turns into a result.

On Python 3.11, ``asyncio.wait_for`` returns the awaited result instead of raising when its
task is cancelled just as the operation finishes (redis-py wraps every socket write in one),
so a single ``cancel()`` can be lost. ``cancel_at_many_moments`` starts ``call()`` once per
round, lets the loop run a different number of iterations each round (``round_ // every %
15``), cancels the task if it is still running, and counts how many cancellations were
swallowed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


async def cancel_at_many_moments(call: Callable[[int], Awaitable[object]], rounds: int,
                                 every: int = 1) -> tuple[int, int]:
    """``(cancelled, swallowed)``: tasks cancelled while running, and of those, the ones that
    ended with a result instead of being cancelled."""
    cancelled = swallowed = 0
    for round_ in range(rounds):
        task = asyncio.ensure_future(call(round_))
        for _ in range(round_ // every % 15):  # one loop iteration each: a different moment
            await asyncio.sleep(0)
        if task.done():
            continue
        task.cancel()
        await asyncio.wait({task})
        cancelled += 1
        swallowed += not task.cancelled()
    return cancelled, swallowed
