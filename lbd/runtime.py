"""The runtime: an immutable snapshot of pools, balancers, resilience state and the router,
built from one config. Hot reload builds a new one and swaps one reference; nothing is
patched in place. Backends whose definition did not change are carried over, with their
connections, breaker and health; outlier state and health verdicts are inherited."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping

from lbd.balancing import registry
from lbd.balancing.base import Balancer
from lbd.clock import MONOTONIC, Clock
from lbd.config.model import BackendConfig, Config, PoolConfig, parse_address
from lbd.health.checker import HealthChecker
from lbd.proxy.admission import AdmissionQueue
from lbd.proxy.pool import Backend, Pool, lane_eligible
from lbd.proxy.router import Router
from lbd.proxy.tiers import Tiers
from lbd.resilience.breaker import CircuitBreaker
from lbd.resilience.outlier import OutlierDetector
from lbd.resilience.retry import RetryBudget, RetryPolicy

__all__ = ["Runtime", "served_versions"]

log = logging.getLogger("lbd.runtime")
BackendKey = tuple[str, str, str, int, float]


class Runtime:
    __slots__ = ("config", "pools", "router", "backends", "model_versions")

    def __init__(self, config: Config, pools: dict[str, Pool], backends: dict[BackendKey, Backend]) -> None:
        self.config = config
        self.pools = pools
        self.router = Router(pools, config.effective_default_pool)
        self.backends = backends
        self.model_versions = served_versions(config)
        """``(pool, model) -> version`` for the models lbd's own workers serve: part of
        cache keys, so changing a version in the file retires that model's answers."""

    @classmethod
    def build(cls, config: Config, *, previous: Runtime | None = None,
              rng: random.Random | None = None, clock: Clock = MONOTONIC) -> Runtime:
        rng = rng or random.Random()
        reuse = previous.backends if previous is not None else {}
        backends: dict[BackendKey, Backend] = {}
        pools: dict[str, Pool] = {}
        for name, pool_config in config.pools.items():
            members = [cls._backend(name, pool_config, b, config, reuse, backends, clock) for b in pool_config.backends]
            pools[name] = pool = cls._pool(name, pool_config, members, rng, clock)
            if previous is not None and name in previous.pools:
                pool.outlier.inherit(previous.pools[name].outlier)
        return cls(config, pools, backends)

    @staticmethod
    def _pool(name: str, config: PoolConfig, members: list[Backend], rng: random.Random, clock: Clock) -> Pool:
        balancer = Runtime._balancer(config, members, rng, clock)
        limits = config.limits
        queue = AdmissionQueue(limits.queue, limits.queue_timeout, limits.retry_after) if limits.queue else None
        pool = Pool(name, config, members, balancer,
                    outlier=OutlierDetector(config.outlier, clock, members),
                    retry=RetryPolicy(config.retry, rng), budget=RetryBudget(config.retry.budget, clock), queue=queue)
        if config.auth is not None:
            from lbd.security import Authenticator
            pool.auth = Authenticator(config.auth)
        if config.rate_limit is not None:
            from lbd.security import LocalLimiter, RedisLimiter
            limit = config.rate_limit
            pool.limiter = LocalLimiter(limit, clock) if limit.store == "local" else RedisLimiter(limit, name)
        if config.health_checked:
            pool.checker = HealthChecker(name, members, config.health, models=config.match.models, clock=clock,
                                         rng=rng, on_transition=pool.on_health_transition)
        pool.lane_ok = lane_eligible(pool)
        return pool

    @staticmethod
    def _balancer(config: PoolConfig, members: list[Backend], rng: random.Random, clock: Clock) -> Balancer | Tiers:
        """The pool's balancer; with backends in several tiers, one per tier under a
        :class:`Tiers` (built anew on every reload, as balancers are)."""
        def build(backends: list[Backend]) -> Balancer:
            return registry.build(config.balancer.algorithm, backends, config.balancer.options, rng=rng, clock=clock)

        levels = sorted({spec.tier for spec in config.backends})
        if len(levels) == 1:
            return build(members)
        groups = [[member for member, spec in zip(members, config.backends) if spec.tier == level]
                  for level in levels]
        return Tiers(levels, groups, [build(group) for group in groups],
                     overprovisioning_factor=config.tiers.overprovisioning_factor, rng=rng)

    @staticmethod
    def _backend(pool: str, pool_config: PoolConfig, spec: BackendConfig, config: Config,
                 reuse: Mapping[BackendKey, Backend], built: dict[BackendKey, Backend], clock: Clock) -> Backend:
        if spec.worker is not None:
            host, port = parse_address(config.workers[spec.worker].listen, default_host="127.0.0.1")
        else:
            host, port = spec.host_port  # type: ignore[misc]
        key = (pool, spec.display_name, host, port, spec.weight)
        tls = pool_config.upstream.tls
        key = key + (spec.tls, tls)  # type: ignore[assignment]
        backend = reuse.get(key)
        if backend is None or backend.max_idle != pool_config.upstream.max_idle:
            context = None
            if spec.tls:
                from lbd.config.tls import UpstreamTLSConfig
                from lbd.proxy.tls import client_context
                context = client_context(tls or UpstreamTLSConfig())
            backend = Backend(spec.display_name, host, port, spec.weight, pool_config.upstream,
                              ssl=context, server_name=tls.server_name if tls else None)
            # An operator's drain outlives a rebuild of the same backend (a weight change).
            backend.drained = any(old.drained for key_, old in reuse.items()
                                  if key_[0] == pool and key_[1] == spec.display_name)
        breaker = backend.breaker
        if not pool_config.breaker.enabled:
            backend.breaker = None
        elif breaker is None or breaker.config != pool_config.breaker:
            backend.breaker = CircuitBreaker(pool_config.breaker, clock)
        built[key] = backend
        return backend

    # -- health ----------------------------------------------------------------------------
    async def start_health(self, previous: Runtime | None = None) -> None:
        """Start this runtime's probes, taking over the verdicts of the previous runtime's
        (which are stopped), and wait for one round so no request meets an unknown backend."""
        checkers = [pool.checker for pool in self.pools.values() if pool.checker is not None]
        if previous is not None:
            for name, pool in self.pools.items():
                old = previous.pools.get(name)
                if pool.checker is not None and old is not None and old.checker is not None:
                    pool.checker.inherit(old.checker)
            await previous.stop_health()
        for checker in checkers:
            checker.start()
        for checker in checkers:
            await checker.first_round()
        for pool in self.pools.values():
            pool.refresh()

    async def stop_health(self) -> None:
        for pool in self.pools.values():
            if pool.checker is not None:
                await pool.checker.stop()

    # -- rate limiters ---------------------------------------------------------------------
    def limiter_grace(self) -> float:
        """How long a ``take`` begun on this runtime's Redis limiters can still run (each is
        bounded by its ``redis_timeout``); 0 without any."""
        return max((pool.limiter.config.redis_timeout for pool in self.pools.values()
                    if hasattr(pool.limiter, "close")), default=0.0)

    async def close_limiters(self) -> None:
        """Closes the pools' Redis rate limiters (their connections; local ones hold none).
        Every reload builds new ones: call this once a runtime is replaced or refused, and
        at shutdown. Never raises."""
        closing = [pool.limiter.close() for pool in self.pools.values() if hasattr(pool.limiter, "close")]
        if closing:
            for result in await asyncio.gather(*closing, return_exceptions=True):
                if isinstance(result, Exception):
                    log.warning("closing a rate limiter failed", extra={"error": repr(result)})

    def retired(self, successor: Runtime) -> list[Backend]:
        """Backends of this runtime that the successor no longer has."""
        kept = set(map(id, successor.backends.values()))
        return [b for b in self.backends.values() if id(b) not in kept]


def served_versions(config: Config) -> dict[tuple[str, str], str]:
    """The configured version of each model each pool's workers serve (the highest, when
    a pool's workers disagree during a rollout)."""
    versions: dict[tuple[str, str], str] = {}
    for name, pool in config.pools.items():
        for backend in pool.backends:
            if backend.worker is None:
                continue
            for model, spec in config.workers[backend.worker].models.items():
                key = (name, model)
                if key not in versions or int(versions[key]) < spec.version:
                    versions[key] = str(spec.version)
    return versions
