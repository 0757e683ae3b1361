"""Runtime state of pools and backends: what the balancer reads, plus idle connections.

A :class:`Backend` outlives reloads when its config does not change (the runtime builder
hands the same object to the new runtime), so its pooled connections and counters survive.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from lbd.balancing.base import Balancer, RequestView
from lbd.config.model import PoolConfig, TimeoutsConfig, UpstreamConfig

if TYPE_CHECKING:
    from lbd.proxy.upstream import UpstreamConnection

__all__ = ["Backend", "Pool"]


class Backend:
    """One upstream endpoint. ``weight`` and ``inflight`` are plain attributes because the
    balancer reads them on every pick."""

    __slots__ = ("name", "host", "port", "weight", "config_weight", "inflight", "available",
                 "max_idle", "idle_timeout", "_idle", "requests", "failures")

    def __init__(self, name: str, host: str, port: int, weight: float, upstream: UpstreamConfig) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.config_weight = weight
        self.weight = weight
        self.inflight = 0
        self.available = True
        self.max_idle = upstream.max_idle
        self.idle_timeout = upstream.idle_timeout
        self._idle: list[UpstreamConnection] = []
        self.requests = 0
        self.failures = 0

    def __repr__(self) -> str:
        return f"Backend({self.name!r}, {self.host}:{self.port}, weight={self.weight:g}, inflight={self.inflight})"

    @property
    def idle_count(self) -> int:
        return len(self._idle)

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

    def close_idle(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class Pool:
    """Backends, the balancer over them, and the pool's timeouts."""

    __slots__ = ("name", "config", "backends", "balancer", "timeouts")

    def __init__(self, name: str, config: PoolConfig, backends: Iterable[Backend], balancer: Balancer) -> None:
        self.name = name
        self.config = config
        self.backends = tuple(backends)
        self.balancer = balancer
        self.timeouts: TimeoutsConfig = config.timeouts

    def select(self, request: RequestView, tried: frozenset[Backend] | set[Backend] = frozenset()) -> Backend | None:
        """The balancer's first candidate that is available and not yet tried."""
        for backend in self.balancer.candidates(request):
            if backend.available and backend not in tried:
                return backend
        return None
