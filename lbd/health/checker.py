"""Active health checks of one pool: one asyncio task per backend.

Each task probes its backend (readiness, then the canary when one is configured and due),
feeds the result to the backend's :class:`BackendHealth`, and on a transition sets
``backend.available``; a recovery ramps ``backend.weight`` up from 10% of ``config_weight``
when ``slow_start`` is set. Between rounds it waits ``interval`` (``down_interval`` while
the backend is down), spread by ``jitter`` so a fleet's probes do not fall in step.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import aiohttp

from lbd.clock import MONOTONIC, Clock
from lbd.config.resilience import HealthConfig
from lbd.health.base import Probe, ProbeResult
from lbd.health.http_probe import CanaryProbe, readiness_probe
from lbd.health.state import BackendHealth

__all__ = ["HealthChecker", "next_delay", "default_session"]

log = logging.getLogger("lbd.health")


class Checked(Protocol):
    """What the checker reads and sets on a backend (``lbd.proxy.pool.Backend``)."""

    name: str
    host: str
    port: int
    available: bool
    weight: float
    config_weight: float


Transition = Callable[[Any, bool, ProbeResult], None]
"""``on_transition(backend, healthy, result)``: for metrics and logs."""


def next_delay(interval: float, jitter: float, rng: random.Random) -> float:
    """``interval`` spread uniformly by +-``jitter`` (a fraction)."""
    return interval * rng.uniform(1.0 - jitter, 1.0 + jitter)


def default_session() -> aiohttp.ClientSession:
    # A fresh connection per probe: a stale keep-alive connection to a restarted backend
    # would fail one probe for nothing, and a frozen process is caught at connect or read.
    connector = aiohttp.TCPConnector(force_close=True, limit=0)
    return aiohttp.ClientSession(connector=connector, headers={"user-agent": "lbd-health"},
                                 timeout=aiohttp.ClientTimeout(total=None))


class HealthChecker:
    def __init__(self, pool_name: str, backends: Iterable[Checked], config: HealthConfig,
                 models: Sequence[str] = (), clock: Clock = MONOTONIC, rng: random.Random | None = None,
                 session_factory: Callable[[], aiohttp.ClientSession] = default_session,
                 on_transition: Transition | None = None) -> None:
        self.pool_name = pool_name
        self.config = config
        self.models = tuple(models)
        self._clock = clock
        self._rng = rng or random.Random()
        self._session_factory = session_factory
        self._on_transition = on_transition
        self.health: dict[Checked, BackendHealth] = {b: BackendHealth(config) for b in backends}
        self._session: aiohttp.ClientSession | None = None
        self._ready: Probe | None = None
        self._canary: Probe | None = None
        self._tasks: list[asyncio.Task] = []
        self._ramps: dict[Checked, asyncio.Task] = {}
        self._probed: dict[Checked, asyncio.Event] = {}

    def inherit(self, previous: HealthChecker) -> None:
        """Keep the health of backends a reload carried over: all of it under the same config,
        the verdict and last results under a changed one. Call it, then ``previous.stop()``,
        then ``start()``: two running checkers must not share a backend's state."""
        for backend in self.health.keys() & previous.health.keys():
            if previous.config == self.config:
                self.health[backend] = previous.health[backend]
            else:
                self.health[backend].adopt(previous.health[backend])

    def start(self) -> None:
        """Start one probing task per backend (needs a running loop); no-op when disabled."""
        if self._tasks or not self.config.enabled:
            return
        self._session = session = self._session_factory()
        self._ready = readiness_probe(session, self.config, self.models, self._clock)
        canary = self.config.canary
        self._canary = CanaryProbe(session, canary, self._clock) if canary else None
        now = self._clock.now()
        for backend, state in self.health.items():
            if not state.policy.decided:
                backend.available = state.healthy
            self._probed[backend] = asyncio.Event()
            self._tasks.append(asyncio.create_task(self._run(backend, state),
                                                   name=f"health {self.pool_name}/{backend.name}"))
            if state.slow_start.active(now):
                self._start_ramp(backend, state)

    async def first_round(self) -> None:
        """Wait until every backend was probed once since ``start`` (which it calls)."""
        self.start()
        await asyncio.gather(*(event.wait() for event in self._probed.values()))

    async def stop(self) -> None:
        """Cancel the probes and close the session; backends are left as they are."""
        tasks = self._tasks + list(self._ramps.values())
        self._tasks, self._ramps = [], {}
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _run(self, backend: Checked, state: BackendHealth) -> None:
        config = self.config
        while True:
            await self._round(backend, state)
            self._probed[backend].set()
            interval = config.interval if state.healthy else config.down_interval
            await asyncio.sleep(next_delay(interval, config.jitter, self._rng))

    async def _round(self, backend: Checked, state: BackendHealth) -> None:
        ready = await self._probe(self._ready, backend)  # type: ignore[arg-type]
        if ready.ok and self._canary is not None and state.wants_canary(self._clock.now()):
            state.record_canary(await self._probe(self._canary, backend), self._clock.now())
        if state.record(ready, self._clock.now()):
            self._transition(backend, state)

    async def _probe(self, probe: Probe, backend: Checked) -> ProbeResult:
        try:
            return await probe.check(backend)
        except Exception as exc:  # a bug in a probe must not end the backend's checks
            log.exception("health probe failed", extra={"pool": self.pool_name, "backend": backend.name})
            return ProbeResult(False, 0.0, f"probe error: {exc!r}")

    def _transition(self, backend: Checked, state: BackendHealth) -> None:
        healthy, result = state.healthy, state.last
        backend.available = healthy
        ramp = self._ramps.pop(backend, None)
        if ramp is not None:
            ramp.cancel()
        if healthy and state.slow_start.active(self._clock.now()):
            self._start_ramp(backend, state)
        log.info("backend up" if healthy else "backend down",
                 extra={"pool": self.pool_name, "backend": backend.name, "detail": result.detail if result else ""})
        if self._on_transition is not None:
            self._on_transition(backend, healthy, result)  # type: ignore[arg-type]

    def _start_ramp(self, backend: Checked, state: BackendHealth) -> None:
        self._ramps[backend] = asyncio.create_task(self._ramp(backend, state),
                                                   name=f"slow start {self.pool_name}/{backend.name}")

    async def _ramp(self, backend: Checked, state: BackendHealth) -> None:
        step = min(1.0, max(0.05, state.slow_start.window / 50))
        while True:
            now = self._clock.now()
            backend.weight = backend.config_weight * state.weight_factor(now)
            if not state.slow_start.active(now):
                self._ramps.pop(backend, None)
                return
            await asyncio.sleep(step)

    def snapshot(self) -> dict[str, Any]:
        now = self._clock.now()
        return {"pool": self.pool_name, "enabled": self.config.enabled,
                "backends": {backend.name: state.snapshot(now) for backend, state in self.health.items()}}
