"""Shadow traffic: a share of a pool's requests copied to another pool, whose answers are
compared with the primary's and thrown away.

The primary is never made to wait: a request is sampled before its attempts, its answer is
captured (up to ``compare.max_body_size``) while it streams to the client, and only once
that answer is complete is the copy sent, as a task nobody awaits. Copies in flight are
bounded per (pool, shadow pool); beyond the bound they are dropped and counted. A copy runs
through lbd's own data plane (:func:`lbd.proxy.internal.dispatch`, tag ``shadow``), so the
shadow pool's balancer, breakers and retries apply to it, and it is never copied again.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import TYPE_CHECKING

from lbd.policies.answers import HEADER_LENGTH
from lbd.policies.rules import SKIPPED, compare
from lbd.proxy.internal import Internal, InternalError, dispatch
from lbd.resilience.retry import IDEMPOTENT_METHODS

if TYPE_CHECKING:
    from lbd.config.policies import ShadowConfig
    from lbd.policies.copies import Copy
    from lbd.proxy.pool import Pool
    from lbd.proxy.server import ProxyServer

__all__ = ["ShadowTraffic", "Capture"]

log = logging.getLogger("lbd.shadow")
_HEADER_LENGTH = HEADER_LENGTH.encode()
_BODY_GRACE = 1.0


class Capture:
    """A sampled request's primary answer: its status and, when it is compared, its body."""

    __slots__ = ("route", "config", "status", "header_length", "parts", "size")

    def __init__(self, route: str, config: ShadowConfig) -> None:
        self.route = route
        self.config = config
        self.status = 0
        self.header_length: str | None = None
        self.parts: list[bytes] | None = [] if config.compare.enabled else None
        """``None`` once the answer is not compared (too large, or comparing is off)."""
        self.size = 0

    def head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        for name, value in headers:
            if name.lower() == _HEADER_LENGTH:
                self.header_length = value.decode("latin-1")

    def body(self, data: bytes) -> None:
        if self.parts is None:
            return
        self.size += len(data)
        if self.size > self.config.compare.max_body_size:
            self.parts = None
        else:
            self.parts.append(data)


class ShadowTraffic:
    """The proxy server's shadow copies: sampling, the bound on copies in flight, sending
    and comparing. One per server (it outlives reloads); ``rng`` decides the samples."""

    def __init__(self, server: ProxyServer, rng: random.Random | None = None) -> None:
        self._server = server
        self._rng = rng or random.Random()
        self._inflight: dict[tuple[str, str], int] = {}
        self._tasks: set[asyncio.Task] = set()

    def inflight(self, pool: str, shadow: str) -> int:
        return self._inflight.get((pool, shadow), 0)

    def sample(self, pool: Pool, method: bytes) -> Capture | None:
        """A capture if this request of ``pool`` is to be copied (its share, a method the
        pool may send twice, not HEAD), else ``None``."""
        config: ShadowConfig = pool.config.shadow  # type: ignore[assignment]
        if config.share < 1.0 and self._rng.random() >= config.share:
            return None
        if method == b"HEAD":
            return None
        if not pool.config.retry.idempotent and method.decode("latin-1") not in IDEMPOTENT_METHODS:
            return None
        return Capture(pool.name, config)

    def skip(self, capture: Capture) -> None:
        """The sampled request cannot be copied (its body was not kept, another pool answered)."""
        self._server.metrics.policies.shadow_request(capture.route, capture.config.pool, "skipped")

    def send(self, capture: Capture, make_copy: Callable[[], Copy]) -> None:
        """Copy the request now (``make_copy`` builds the copy), unless too many copies are in
        flight: then drop it, before anything is built."""
        key = (capture.route, capture.config.pool)
        counts = self._server.metrics.policies
        if self._inflight.get(key, 0) >= capture.config.max_inflight:
            counts.shadow_request(*key, "dropped")
            return
        self._inflight[key] = self._inflight.get(key, 0) + 1
        counts.shadow_request(*key, "sent")
        task = self._server.loop.create_task(self._copy(key, capture, make_copy()))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _copy(self, key: tuple[str, str], capture: Capture, copy: Copy) -> None:
        config = capture.config
        counts = self._server.metrics.policies
        loop = asyncio.get_running_loop()
        started = loop.time()
        target, body = copy.as_model(config.model)
        internal = Internal(pool=config.pool, tenant=copy.tenant, client_ip=copy.client_ip, tag="shadow")
        response = None
        try:
            # lbd's own deadline answers 504 when no head came in time; the outer bound
            # catches an answer whose body stalls after its head
            response = await asyncio.wait_for(dispatch(self._server, copy.method, target, copy.headers_within(
                config.timeout), body, internal=internal), config.timeout + _BODY_GRACE)
            code = str(response.status)
        except (asyncio.TimeoutError, TimeoutError):
            code = "timeout"
        except InternalError:
            code = "error"
        except Exception:  # a copy must never take anything down with it
            log.exception("shadow copy failed", extra={"pool": capture.route, "shadow": config.pool})
            code = "error"
        finally:
            self._inflight[key] -= 1
        counts.shadow_response(*key, code, loop.time() - started)
        if response is not None and config.compare.enabled:
            counts.shadow_compared(*key, self._compare(capture, response))

    @staticmethod
    def _compare(capture: Capture, response) -> str:
        if capture.parts is None or not (200 <= capture.status < 300 and 200 <= response.status < 300):
            return SKIPPED
        return compare(capture.config.compare, b"".join(capture.parts), capture.header_length,
                       response.body, response.header(HEADER_LENGTH))

    async def close(self) -> None:
        """Cancel the copies in flight (shutdown)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
