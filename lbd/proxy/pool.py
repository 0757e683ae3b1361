"""Runtime state of pools and backends: what the balancer reads, the filters applied
outside it (health, drain, ejection, saturation, breaker), and idle connections.

A :class:`Backend` outlives reloads when its definition does not change (the runtime
builder hands the same object to the new runtime), so its pooled connections, breaker and
counters survive.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from lbd.balancing.base import Balancer, RequestView, needs_body
from lbd.config.model import PoolConfig, TimeoutsConfig, UpstreamConfig
from lbd.proxy.tiers import Tiers
from lbd.resilience.breaker import OPEN, CircuitBreaker
from lbd.resilience.outlier import OutlierDetector
from lbd.resilience.retry import RetryBudget, RetryPolicy

if TYPE_CHECKING:
    from lbd.proxy.admission import AdmissionQueue
    from lbd.proxy.upstream import UpstreamConnection

__all__ = ["Backend", "Pool", "lane_eligible"]


class Backend:
    """One upstream endpoint. ``weight`` and ``inflight`` are plain attributes because the
    balancer reads them on every pick. ``available`` is the health checker's verdict;
    ``drained`` is the operator's (admin API), kept apart so neither overwrites the other."""

    __slots__ = ("name", "host", "port", "weight", "config_weight", "inflight", "available", "drained",
                 "breaker", "max_idle", "idle_timeout", "_idle", "requests", "failures", "ssl", "server_name",
                 "lane_idle", "lane_name")

    def __init__(self, name: str, host: str, port: int, weight: float, upstream: UpstreamConfig,
                 breaker: CircuitBreaker | None = None, ssl: object = None, server_name: str | None = None) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.config_weight = weight
        self.weight = weight
        self.inflight = 0
        self.available = True
        self.drained = False
        self.breaker = breaker
        self.max_idle = upstream.max_idle
        self.idle_timeout = upstream.idle_timeout
        self._idle: list[UpstreamConnection] = []
        self.requests = 0
        self.failures = 0
        self.ssl = ssl
        """An ``ssl.SSLContext`` for an ``https://`` backend, else ``None``."""
        self.server_name = server_name
        self.lane_idle: list = []
        """Idle keep-alive connections of the compiled lane (``lbd.proxy._lane.LaneUpstream``:
        ``closed``, ``idle_since``, ``close()``), kept apart from the Python path's."""
        self.lane_name = name.encode()

    def __repr__(self) -> str:
        return f"Backend({self.name!r}, {self.host}:{self.port}, weight={self.weight:g}, inflight={self.inflight})"

    @property
    def idle_count(self) -> int:
        return len(self._idle) + len(self.lane_idle)

    def take_idle(self) -> UpstreamConnection | None:
        """The most recently used idle connection that is still open (LIFO keeps the hot
        ones hot and lets the cold ones expire)."""
        idle = self._idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    def put_idle(self, conn: UpstreamConnection, now: float) -> None:
        if len(self._idle) >= self.max_idle or conn.closed:
            conn.close()
            return
        conn.idle_since = now
        self._idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        """An idle connection the backend closed."""
        try:
            self._idle.remove(conn)
        except ValueError:
            pass

    def expire_idle(self, now: float) -> None:
        deadline = now - self.idle_timeout
        if self._idle and self._idle[0].idle_since < deadline:
            keep = [c for c in self._idle if c.idle_since >= deadline and not c.closed]
            for conn in self._idle:
                if conn.idle_since < deadline:
                    conn.close()
            self._idle = keep
        lane = self.lane_idle
        if lane and lane[0].idle_since < deadline:
            expired = [c for c in lane if c.idle_since < deadline or c.closed]
            lane[:] = [c for c in lane if c.idle_since >= deadline and not c.closed]  # the lane holds this list
            for conn in expired:
                conn.close()

    def retire(self) -> None:
        """Removed by a reload: requests in flight finish, then their connections close."""
        self.max_idle = 0
        self.close_idle()

    def close_idle(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
        lane = list(self.lane_idle)
        self.lane_idle.clear()
        for conn in lane:
            conn.close()


class Pool:
    """Backends, the balancer over them, and the pool's resilience state.

    ``balancer`` is a :class:`~lbd.proxy.tiers.Tiers` (also in ``tiers``) when the backends
    are in more than one tier: a balancer per tier under a draw of the tier.
    """

    __slots__ = ("name", "config", "backends", "balancer", "tiers", "needs_body", "timeouts", "outlier", "retry",
                 "budget", "max_inflight", "queue", "panic", "checker", "auth", "limiter", "lane_ok", "lane_name")

    def __init__(self, name: str, config: PoolConfig, backends: Iterable[Backend], balancer: Balancer, *,
                 outlier: OutlierDetector, retry: RetryPolicy, budget: RetryBudget,
                 queue: AdmissionQueue | None) -> None:
        self.name = name
        self.config = config
        self.backends = tuple(backends)
        self.balancer = balancer
        self.tiers = balancer if isinstance(balancer, Tiers) else None
        self.needs_body = needs_body(balancer)
        """The balancer reads the request body: the exchange waits for it before picking."""
        self.timeouts: TimeoutsConfig = config.timeouts
        self.outlier = outlier
        self.retry = retry
        self.budget = budget
        self.max_inflight = config.limits.max_inflight_per_backend
        self.queue = queue
        self.panic = False
        """Too few backends are usable: route to all of them rather than to a few or none."""
        self.checker = None
        self.auth = None
        """An :class:`~lbd.security.Authenticator` when the pool requires API keys."""
        self.limiter = None
        """A local or Redis rate limiter when the pool is rate limited."""
        self.lane_ok = False
        """The compiled lane may serve this pool's plain requests (:func:`lane_eligible`, set
        once the runtime built the pool)."""
        self.lane_name = name.encode()

    def has_untried_usable(self, tried: set[Backend]) -> bool:
        """Is there a backend a retry could go to instead (error path only: O(n))? One whose
        breaker is open is not (``Retry-After`` is then waited out for the backend that sent
        it, the only one the retry can go to)."""
        return any(b not in tried and self.usable(b) and (b.breaker is None or b.breaker.state != OPEN)
                   for b in self.backends)

    def usable(self, backend: Backend) -> bool:
        return backend.available and not backend.drained and not self.outlier.is_ejected(backend)

    def on_health_transition(self, backend: Backend, healthy: bool, result: object) -> None:
        """The checker's verdict changed. Coming back up lifts an ejection and lets the
        breaker try at once: the active check is better evidence than old failures."""
        if healthy:
            self.outlier.uneject(backend)
            if backend.breaker is not None:
                backend.breaker.on_recovered()
        self.refresh()

    def refresh(self) -> None:
        """Recount usable backends (on health transitions, ejections, and every janitor tick,
        which also ends expired ejections) and enter or leave panic mode; with tiers, split
        the traffic between them again (never per request)."""
        if self.tiers is not None:
            self.panic = self.tiers.refresh(self.usable, self.outlier.in_panic)
            return
        usable = sum(1 for backend in self.backends if self.usable(backend))
        self.panic = self.outlier.in_panic(usable, len(self.backends))

    def select(self, request: RequestView, tried: set[Backend]) -> tuple[Backend | None, bool]:
        """The balancer's first candidate that passes every filter, and whether some were
        passed over only because they were saturated (the caller may queue then).

        A retry prefers a backend not yet tried, but takes a tried one over none: any tried
        one that passes the filters, in the balancer's order (the first may have its breaker
        open by now, the next not). The breaker is asked last: in half-open it hands out a
        limited number of trials.
        """
        limit, panic, outlier = self.max_inflight, self.panic, self.outlier
        saturated = False
        fallbacks = None
        for backend in self.balancer.candidates(request):
            if backend.drained:
                continue
            if not panic and (not backend.available or outlier.is_ejected(backend)):
                continue
            if limit and backend.inflight >= limit:
                saturated = True
                continue
            if backend in tried:
                if fallbacks is None:
                    fallbacks = [backend]
                else:
                    fallbacks.append(backend)
                continue
            breaker = backend.breaker
            if breaker is None or breaker.allow():
                return backend, False
        if fallbacks is not None:
            for backend in fallbacks:
                breaker = backend.breaker
                if breaker is None or breaker.allow():
                    return backend, False
        if saturated:
            return None, True
        return self._panic_pick(request, tried), False

    def _panic_pick(self, request: RequestView, tried: set[Backend]) -> Backend | None:
        """Every backend was filtered out by health, ejection or its breaker: route to all of
        them rather than to none (Envoy's panic routing), untried ones first. Only the
        operator's drain still holds. The retry budget keeps this from hammering a fleet
        that is really down."""
        fallback = None
        for backend in self.balancer.candidates(request):
            if backend.drained:
                continue
            if backend not in tried:
                return backend
            fallback = fallback or backend
        return fallback


def lane_eligible(pool: Pool) -> bool:
    """Whether the compiled lane (``lbd.proxy.lane``) may serve this pool's plain requests:
    only when no per-request feature of the Python path applies beyond routing, picking,
    the retries (which the lane hands to Python), breakers, outliers and metrics. Requests
    the lane hands over for (Prefer, the jobs API, Expect, ...) are decided per request."""
    config = pool.config
    return (pool.auth is None and pool.limiter is None and config.auth is None and config.rate_limit is None
            and config.cache is None and config.fallback is None and config.cascade is None
            and config.shadow is None and not pool.needs_body
            and all(backend.ssl is None for backend in pool.backends))
