"""The response cache: exact and semantic, in memory or shared through Redis.

The data plane builds one :class:`ResponseCache` per runtime with :func:`build_cache` and
calls ``lookup`` / ``store`` / ``release`` / ``stale`` around each request (see
:mod:`lbd.cache.service`); the admin API calls ``purge``.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from lbd.cache.base import Embedder, Entry, Scope, SystemClock, WallClock
from lbd.cache.embedder import PoolEmbedder
from lbd.cache.exact import Hit
from lbd.cache.index import PartitionedIndex
from lbd.cache.keys import RequestInfo, tenant_of
from lbd.cache.memory import MemoryStore
from lbd.cache.service import Lookup, ResponseCache
from lbd.config.cache import CacheConfig

__all__ = ["build_cache", "ResponseCache", "Lookup", "Hit", "RequestInfo", "Entry", "Scope", "tenant_of",
           "PoolEmbedder"]


def build_cache(config: CacheConfig, *, pool_embedder: Callable[[str, str | None, float], Embedder] | None = None,
                clock: WallClock | None = None, rng: random.Random | None = None) -> ResponseCache:
    """The cache ``config`` describes (call :meth:`ResponseCache.start` on the loop, then
    :meth:`ResponseCache.warm` with the routes that use the semantic cache)."""
    clock = clock or SystemClock()
    index = PartitionedIndex(hnsw_above=config.index.hnsw_above, hnsw_m=config.index.hnsw_m,
                             hnsw_ef_construction=config.index.hnsw_ef_construction,
                             hnsw_ef_search=config.index.hnsw_ef_search)

    def inprocess() -> Embedder:
        from lbd.cache.embedder import InProcessEmbedder
        return InProcessEmbedder(quantized=config.embedder.quantized, threads=config.embedder.threads)

    if not config.is_redis:
        store = MemoryStore(config.memory.max_entries, config.memory.max_bytes, clock)
        return ResponseCache(store, index=index, pool_embedder=pool_embedder, inprocess=inprocess, clock=clock,
                             max_entry_bytes=config.max_entry_size)
    from lbd.cache.redis_store import RedisStore

    redis = config.redis
    store = RedisStore(config.store, prefix=redis.key_prefix, timeout=redis.operation_timeout,
                       backoff_base=redis.reconnect.base, backoff_max=redis.reconnect.max,
                       stream_max_len=redis.stream_max_len, clock=clock, rng=rng)
    return ResponseCache(store, feed=store, index=index, pool_embedder=pool_embedder, inprocess=inprocess,
                         clock=clock, max_entry_bytes=config.max_entry_size)
