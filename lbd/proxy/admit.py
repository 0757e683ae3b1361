"""Whether a routed request may go on: its API key, its rate limit, and the one place the
state machine waits on a coroutine (a Redis call), resuming by callback."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from lbd.proxy.heads import without_field
from lbd.proxy.http import CONTINUE_100
from lbd.proxy.outbox import flush
from lbd.proxy.request import Request
from lbd.security.auth import CHALLENGE
from lbd.security.ratelimit import Decision, rate_limit_headers

if TYPE_CHECKING:
    from lbd.proxy.downstream import ClientConnection
    from lbd.proxy.pool import Pool

__all__ = ["Admission"]


class Admission(Request):
    """The admission steps; :class:`~lbd.proxy.exchange.Exchange` provides ``pool`` and
    ``fail``, :class:`~lbd.proxy.cached.Cached` the next stage, ``_proceed``."""

    __slots__ = ("tenant", "_pending", "_extra_fields")

    pool: Pool | None

    def __init__(self, client: ClientConnection, method: bytes, url: bytes,
                 headers: list[tuple[bytes, bytes]], keep_alive: bool) -> None:
        super().__init__(client, method, url, headers, keep_alive)
        self.tenant: str | None = None
        self._pending: asyncio.Task | None = None
        self._extra_fields: tuple[tuple[bytes, bytes], ...] = ()
        """Fields added to the response (the RateLimit fields)."""

    def _authenticate(self, pool: Pool) -> bool:
        auth = pool.auth
        self.tenant = auth.tenant(self.headers)  # type: ignore[union-attr]
        if self.tenant is None:
            self.fail(401, "unauthorized", f"pool {pool.name!r} needs a valid API key", CHALLENGE)
            return False
        if not auth.config.forward:  # type: ignore[union-attr]
            self.fields.head = without_field(self.fields.head, auth.header)  # type: ignore[union-attr]
        return True

    def _limit_key(self, pool: Pool) -> str:
        by = pool.config.rate_limit.by  # type: ignore[union-attr]
        if by == "pool":
            return "*"
        if by == "tenant" and self.tenant is not None:
            return "t:" + self.tenant
        return "ip:" + self.client_ip

    def _rate_checked(self, decision: Decision) -> None:
        self._extra_fields = rate_limit_headers(self.pool.config.rate_limit, decision)  # type: ignore[union-attr,arg-type]
        if not decision.allowed:
            self.fail(429, "rate_limited", "too many requests; see Retry-After", *self._extra_fields)
            return
        self._admitted()

    def _admitted(self) -> None:
        self.pool.budget.record_request()  # type: ignore[union-attr]
        if self.fields.expect_continue:
            self.client.write(CONTINUE_100)
        self._proceed()

    def _await(self, coro, then) -> None:
        """Run an asynchronous step (a Redis call) and continue with ``then(result)``; the
        only place the state machine waits on a coroutine."""
        task = self._pending = self.client.loop.create_task(coro)
        task.add_done_callback(lambda done: self._resumed(done, then))

    def _resumed(self, task: asyncio.Task, then) -> None:
        if self._pending is not task:
            return
        self._pending = None
        try:
            if not self.finished and not task.cancelled():
                then(task.result())
        finally:
            flush()

    def _cancel_pending(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
