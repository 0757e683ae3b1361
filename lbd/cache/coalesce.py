"""Request coalescing: identical requests in flight wait for the first one's answer.

The first request with a key leads (goes upstream); later ones follow: they wait on the
leader's future, bounded by their own timeout. The leader resolves it with the entry it
stored, or with ``None`` when its answer was not storable or it failed; followers that get
``None`` elect a new leader among themselves (one goes upstream, the rest wait again), so a
failed leader does not send every follower upstream at once. A follower never cancels the
future: one that gives up (timed out, or its request gone) does not end the others' wait.
"""

from __future__ import annotations

import asyncio

from lbd.cache.base import Entry

__all__ = ["Coalescer", "Ticket"]


class Ticket:
    """A leader's promise to answer its key; :meth:`Coalescer.finish` keeps it (idempotent)."""

    __slots__ = ("key", "future")

    def __init__(self, key: str, future: asyncio.Future[Entry | None]) -> None:
        self.key = key
        self.future = future


class Coalescer:
    def __init__(self) -> None:
        self._inflight: dict[str, asyncio.Future[Entry | None]] = {}

    def lead(self, key: str) -> Ticket | None:
        """A ticket if nobody leads ``key`` now (the caller goes upstream), else ``None``."""
        if key in self._inflight:
            return None
        future: asyncio.Future[Entry | None] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        return Ticket(key, future)

    async def follow(self, key: str, timeout: float) -> Entry | None | bool:
        """Waits for the leader of ``key``: its entry, ``None`` (no shareable answer, or it
        timed out), or ``False`` when nobody leads ``key``."""
        future = self._inflight.get(key)
        if future is None:
            return False
        if timeout <= 0:
            return None
        # asyncio.wait never cancels the future (no shield needed) and, unlike wait_for on
        # Python 3.11, never turns this follower's cancellation into the leader's answer
        done, _ = await asyncio.wait((future,), timeout=timeout)
        return future.result() if done else None

    def finish(self, ticket: Ticket, entry: Entry | None) -> None:
        """Hands ``entry`` (or ``None``) to the followers and frees the key."""
        if self._inflight.get(ticket.key) is ticket.future:
            del self._inflight[ticket.key]
        if not ticket.future.done():
            ticket.future.set_result(entry)

    def __len__(self) -> int:
        return len(self._inflight)
