"""Awaiting with a bound, and stopping a task, without losing a cancellation.

On Python 3.11, ``asyncio.wait_for`` returns the result instead of raising when its task is
cancelled just as the awaited operation finishes, and it waits, without a bound, for an
operation it cancels to acknowledge the cancellation. redis-py wraps every socket write in
one, so a single ``cancel()`` of a task that talks to Redis can be lost: a loop cancelled once
and then awaited can run on forever, and its awaiter with it.

- :func:`bounded` replaces ``wait_for`` where a cancellation must not be lost: the caller
  is cancelled whatever the operation did meanwhile, and an operation given up on (timed
  out, or its caller cancelled) is cancelled and left to finish in the background, in the
  caller's ``abandoned`` set if it has one, so its owner can finish it off on close
  (:func:`finish_off`).
- :func:`cancel_until_done` stops tasks a cancellation may not reach the first time: it
  cancels them again every ``every`` seconds until they are done, within a bound.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Iterable
from typing import TypeVar

__all__ = ["bounded", "abandon", "finish_off", "cancel_until_done", "retrieve", "RECANCEL_EVERY"]

_T = TypeVar("_T")
RECANCEL_EVERY = 0.1
"""How often :func:`cancel_until_done` cancels again a task still running."""

_background: set[asyncio.Future] = set()
"""Operations abandoned without an owner's set: held here so they are not collected mid-way."""


async def bounded(operation: Awaitable[_T], timeout: float | None, abandoned: set[asyncio.Future] | None = None,
                  *, what: str = "the operation") -> _T:
    """``operation``'s result, or :class:`TimeoutError` once ``timeout`` seconds have passed
    (``None``: no bound).

    Unlike ``asyncio.wait_for`` on Python 3.11 it never turns the caller's cancellation into a
    result (the caller is cancelled, whatever ``operation`` did meanwhile), and it does not
    wait for ``operation`` to acknowledge its own cancellation: that goes on in the background,
    the task in ``abandoned`` until it is done (its owner cancels what is left of it on close,
    :func:`finish_off`)."""
    task = asyncio.ensure_future(operation)
    try:
        done, _ = await asyncio.wait((task,), timeout=timeout)
    except asyncio.CancelledError:
        abandon(task, abandoned)
        raise
    if not done:
        abandon(task, abandoned)
        raise asyncio.TimeoutError(f"no answer from {what} within {timeout}s")
    return task.result()


def abandon(task: asyncio.Future, abandoned: set[asyncio.Future] | None = None) -> None:
    """Cancels ``task`` without waiting for it; keeps it in ``abandoned`` until it is done."""
    task.cancel()
    if task.done():
        retrieve(task)
        return
    held = _background if abandoned is None else abandoned
    held.add(task)
    task.add_done_callback(functools.partial(_forget, held))


def _forget(held: set[asyncio.Future], task: asyncio.Future) -> None:
    held.discard(task)
    retrieve(task)


async def finish_off(abandoned: set[asyncio.Future], timeout: float) -> bool:
    """Cancels the operations still in ``abandoned`` and waits for them, at most ``timeout``
    seconds; returns whether they are all done."""
    tasks = list(abandoned)
    for task in tasks:
        task.cancel()
    if not tasks:
        return True
    _, pending = await asyncio.wait(tasks, timeout=max(timeout, 0.01))
    return not pending


async def cancel_until_done(tasks: asyncio.Future | Iterable[asyncio.Future], timeout: float, *,
                            every: float | None = None) -> bool:
    """Cancels ``tasks`` (one or several) again every ``every`` seconds (default
    :data:`RECANCEL_EVERY`) until they are all done (a cancellation can be lost, see the
    module's notes), for at most ``timeout`` seconds; returns whether they are all done.
    Never waits on the tasks' own awaits. The tasks' exceptions are marked as seen."""
    pending = {tasks} if isinstance(tasks, asyncio.Future) else set(tasks)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    every = RECANCEL_EVERY if every is None else every
    finished: list[asyncio.Future] = []
    while True:
        finished += [task for task in pending if task.done()]
        pending = {task for task in pending if not task.done()}
        if not pending:
            break
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=min(every, remaining))
    for task in finished:
        retrieve(task)
    return not pending


def retrieve(task: asyncio.Future) -> None:
    """Marks a finished task's exception as seen (it was counted, or is no longer wanted)."""
    if task.done() and not task.cancelled():
        task.exception()
