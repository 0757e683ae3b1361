"""The runtime: an immutable snapshot of pools, balancers and the router, built from one
config. Hot reload builds a new one and swaps one reference; nothing is patched in place.
Backends whose definition did not change are carried over, with their connections."""

from __future__ import annotations

import random
from collections.abc import Mapping

from lbd.balancing import registry
from lbd.clock import MONOTONIC, Clock
from lbd.config.model import BackendConfig, Config, PoolConfig, parse_address
from lbd.proxy.pool import Backend, Pool
from lbd.proxy.router import Router

__all__ = ["Runtime"]

BackendKey = tuple[str, str, str, int, float]


class Runtime:
    __slots__ = ("config", "pools", "router", "backends")

    def __init__(self, config: Config, pools: dict[str, Pool], backends: dict[BackendKey, Backend]) -> None:
        self.config = config
        self.pools = pools
        self.router = Router(pools, config.effective_default_pool)
        self.backends = backends

    @classmethod
    def build(cls, config: Config, *, previous: Runtime | None = None,
              rng: random.Random | None = None, clock: Clock = MONOTONIC) -> Runtime:
        reuse = previous.backends if previous is not None else {}
        backends: dict[BackendKey, Backend] = {}
        pools: dict[str, Pool] = {}
        for name, pool_config in config.pools.items():
            members = [cls._backend(name, pool_config, b, config, reuse, backends) for b in pool_config.backends]
            balancer = registry.build(pool_config.balancer.algorithm, members, pool_config.balancer.options,
                                      rng=rng or random.Random(), clock=clock)
            pools[name] = Pool(name, pool_config, members, balancer)
        return cls(config, pools, backends)

    @staticmethod
    def _backend(pool: str, pool_config: PoolConfig, spec: BackendConfig, config: Config,
                 reuse: Mapping[BackendKey, Backend], built: dict[BackendKey, Backend]) -> Backend:
        if spec.worker is not None:
            host, port = parse_address(config.workers[spec.worker].listen, default_host="127.0.0.1")
        else:
            host, port = spec.host_port  # type: ignore[misc]
        key = (pool, spec.display_name, host, port, spec.weight)
        backend = reuse.get(key)
        if backend is None or backend.max_idle != pool_config.upstream.max_idle:
            backend = Backend(spec.display_name, host, port, spec.weight, pool_config.upstream)
        built[key] = backend
        return backend

    def retired(self, successor: Runtime) -> list[Backend]:
        """Backends of this runtime that the successor no longer has."""
        kept = set(map(id, successor.backends.values()))
        return [b for b in self.backends.values() if id(b) not in kept]
