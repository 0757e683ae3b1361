"""What the admin API shows: JSON views of the runtime, the metrics and the config.

Times the runtime keeps on its monotonic clock (ejection deadlines, breaker re-opening) are
shown both as seconds from now and as Unix times, which is what people and scripts compare.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

from lbd import __version__
from lbd.metrics import backend_state

if TYPE_CHECKING:
    from lbd.config.model import Config
    from lbd.metrics import Metrics, ReloadStats
    from lbd.proxy.pool import Backend, Pool
    from lbd.runtime import Runtime

__all__ = ["backends_view", "backend_view", "summary_view", "masked_config", "MASK"]

MASK = "***"
_SECRET_KEY = re.compile(r"token|secret|password|passwd|key|credential|authorization|cookie", re.IGNORECASE)
_NAMED = frozenset({"pools", "workers"})
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]*@")


def backends_view(runtime: Runtime) -> dict[str, Any]:
    return {"generated_at": time.time(),
            "pools": {name: _pool_view(pool) for name, pool in runtime.pools.items()}}


def _pool_view(pool: Pool) -> dict[str, Any]:
    queue = pool.queue
    outlier = pool.outlier.snapshot()["backends"]
    health = pool.checker.snapshot()["backends"] if pool.checker is not None else {}
    return {
        "algorithm": pool.config.balancer.algorithm,
        "panic": pool.panic,
        "tiers": pool.tiers.snapshot() if pool.tiers is not None else None,
        "health_checked": pool.checker is not None,
        "queue": None if queue is None else {"waiting": len(queue), "size": queue.size, "admitted": queue.admitted,
                                             "shed_full": queue.shed_full, "shed_timeout": queue.shed_timeout},
        "retry_budget": pool.budget.snapshot(),
        "backends": [backend_view(pool, b, outlier.get(b.name, {}), health.get(b.name)) for b in pool.backends],
    }


def backend_view(pool: Pool, backend: Backend, outlier: dict[str, Any],
                 health: dict[str, Any] | None) -> dict[str, Any]:
    """One backend: state (healthy, unhealthy, drained, ejected) and why, the ejection
    deadline, the breaker, load and counters, and the last probe."""
    state = backend_state(pool, backend)
    ejected_for = outlier.get("ejected_for") or 0.0
    return {
        "name": backend.name, "address": f"{backend.host}:{backend.port}",
        "state": state, "reason": _reason(state, outlier, health),
        "healthy": backend.available, "drained": backend.drained, "ejected": state == "ejected",
        "ejected_until": time.time() + ejected_for if ejected_for > 0 else None,
        "ejected_for_s": ejected_for if ejected_for > 0 else None,
        "breaker": _breaker_view(backend),
        "inflight": backend.inflight, "weight": backend.weight, "config_weight": backend.config_weight,
        "requests": backend.requests, "failures": backend.failures, "idle_connections": backend.idle_count,
        "latency_s": health.get("last_latency") if health else None,
        "probe": None if health is None else {
            "ok": health["last_ok"], "detail": health["last_detail"], "latency_s": health["last_latency"],
            "checked_ago_s": health["last_checked_ago"], "streak": health["streak"]},
    }


def _reason(state: str, outlier: dict[str, Any], health: dict[str, Any] | None) -> str | None:
    if state == "drained":
        return "drained by an operator"
    if state == "ejected":
        return outlier.get("reason")
    if state == "unhealthy":
        return health.get("last_detail") if health else "marked down"
    return None


def _breaker_view(backend: Backend) -> dict[str, Any] | None:
    if backend.breaker is None:
        return None
    snapshot = backend.breaker.snapshot()
    reopens_in = snapshot["reopens_in"]
    return {"state": snapshot["state"], "reason": snapshot["reason"],
            "reopens_at": time.time() + reopens_in if reopens_in is not None else None,
            "reopens_in_s": reopens_in, "consecutive_failures": snapshot["consecutive_failures"]}


def summary_view(runtime: Runtime, metrics: Metrics) -> dict[str, Any]:
    """Totals for the status page: it turns successive ``requests`` into a rate."""
    by_pool = metrics.requests_by_pool()
    hits, misses = metrics.cache_totals()
    source, now = metrics.source, time.time()
    return {
        "version": __version__, "now": now, "uptime_s": now - metrics.started_at,
        "requests": sum(by_pool.values()), "rejected": sum(source.rejected.values()),
        "connections": len(source.connections),
        "pools": {name: {"requests": by_pool.get(name, 0), "backends": len(pool.backends),
                         "usable": sum(1 for b in pool.backends if pool.usable(b)), "panic": pool.panic,
                         "queue_waiting": len(pool.queue) if pool.queue is not None else None}
                  for name, pool in runtime.pools.items()},
        "cache": {"hits": hits, "misses": misses,
                  "hit_ratio": hits / (hits + misses) if hits + misses else None},
        **_reloads(metrics.reload_stats),
    }


def _reloads(stats: ReloadStats | None) -> dict[str, Any]:
    if stats is None or not (stats.reloads or stats.reload_failures):
        return {"reloads": {"success": 0, "failure": 0}, "last_reload": None}
    return {"reloads": {"success": stats.reloads, "failure": stats.reload_failures},
            "last_reload": {"ok": not stats.last_reload_errors, "errors": list(stats.last_reload_errors),
                            "applied_at": stats.last_reload_time or None}}


def masked_config(config: Config) -> dict[str, Any]:
    """The effective config (defaults filled in) as JSON, with the value of every key named
    like a secret (``*token*``, ``*secret*``, ``*password*``, ``*key*``, ...) replaced by
    ``***`` and credentials in URLs (``redis://user:pass@host``) removed."""
    return _mask(config.model_dump(mode="json"))


def _mask(value: Any, secret: bool = False, named: bool = False) -> Any:
    """Everything under a secret-named key is masked. The keys of ``pools`` and ``workers``
    are names people chose, not settings: a pool called "keys" is shown (its secret-named
    settings are not)."""
    if isinstance(value, dict):
        return {k: _mask(v, secret or (not named and bool(_SECRET_KEY.search(str(k)))), k in _NAMED and not secret)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(item, secret) for item in value]
    if secret and value not in (None, ""):
        return MASK
    if isinstance(value, str):
        return _URL_USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", value)
    return value
