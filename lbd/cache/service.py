"""The response cache as the data plane uses it: look up, then store or release.

::

    lookup = await cache.lookup(info, route)           # route: the pool's PoolCacheConfig
    if lookup.hit:                                      # serve lookup.hit.{status,headers,body}
        ...                                             # x-lbd-cache: lookup.hit.header_value
    try:
        response = await forward(...)                   # upstream, with retries
        await cache.store(lookup, status, headers, body)   # off the hot path is fine
    except AllTriesFailed:
        stale = await cache.stale(lookup)               # stale-if-error, marked "stale"
    finally:
        cache.release(lookup)                           # idempotent; wakes coalesced followers

Order of a lookup: exact key; then an identical request already in flight (wait for its
answer); then the semantic index; then this request leads. Nothing here raises into the
request path: store, embedder and index failures count as misses (see ``stats``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping

import numpy as np

from lbd.aio import bounded
from lbd.cache.base import Embedder, Entry, Scope, Store, SystemClock, VectorFeed, VectorRecord, WallClock
from lbd.cache.coalesce import Coalescer
from lbd.cache.embedders import Embedders
from lbd.cache.exact import Hit, Lookup, kept_headers, request_directives, storable_ttl
from lbd.cache.index import PartitionedIndex
from lbd.cache.keys import RequestInfo, canonical_body, exact_key, parse_body, tenant_of
from lbd.cache.semantic import SemanticCache, SemanticQuery
from lbd.cache.text import extract_text, partition_of
from lbd.config.cache import PoolCacheConfig

__all__ = ["ResponseCache", "Lookup", "CACHEABLE_METHODS"]  # Lookup lives in exact, beside Hit

_log = logging.getLogger("lbd.cache")
CACHEABLE_METHODS = frozenset({"GET", "HEAD", "POST"})
_EMBED_TIMEOUT = 1.0


class ResponseCache:
    """One per runtime. ``embedders``, ``inprocess`` and ``pool_embedder``: see
    :class:`lbd.cache.embedders.Embedders`. Responses over ``max_entry_bytes`` (default
    1MiB) are not stored."""

    def __init__(self, store: Store, *, feed: VectorFeed | None = None, index: PartitionedIndex | None = None,
                 embedders: Mapping[str, Embedder] | None = None,
                 pool_embedder: Callable[[str, str | None, float], Embedder] | None = None,
                 inprocess: Callable[[], Embedder] | None = None, clock: WallClock | None = None,
                 max_entry_bytes: int = 1024**2) -> None:
        self._clock = clock or SystemClock()
        self._store = store
        self._feed = feed
        self.semantic = SemanticCache(index if index is not None else PartitionedIndex(), store, self._clock, feed)
        self.embedders = Embedders(embedders, inprocess=inprocess, pool_embedder=pool_embedder)
        self._max_entry_bytes = max_entry_bytes
        self._coalescer = Coalescer()
        self._expirer: asyncio.Task | None = None
        self.stats: Counter[str] = Counter()

    async def start(self, expire_every: float = 30.0, load_timeout: float = 30.0) -> None:
        """Loads the shared index and follows other instances' additions (Redis only), and
        drops expired texts from the index every ``expire_every`` seconds. Returns once the
        index is loaded (so no request meets a half-loaded index), or once the first try
        failed (Redis away: the follower keeps trying with backoff), or after ``load_timeout``."""
        if self._feed is not None:
            first_try = asyncio.Event()

            async def resync() -> None:
                try:
                    await self.semantic.resync()
                finally:
                    first_try.set()

            self._feed.follow(self.semantic.on_add, self.semantic.on_purge, resync, first_try.set)
            try:
                async with asyncio.timeout(load_timeout):  # wait_for (3.11) can lose a cancellation
                    await first_try.wait()
            except asyncio.TimeoutError:
                _log.warning("the shared cache index is still loading; serving meanwhile")
        self._expirer = asyncio.get_running_loop().create_task(self._expire_forever(expire_every))

    async def _expire_forever(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            self.expire()

    async def close(self) -> None:
        if self._expirer is not None:
            self._expirer.cancel()
        await self._store.close()
        await self.embedders.close()

    # -- lookup ---------------------------------------------------------------------------------
    async def lookup(self, info: RequestInfo, route: PoolCacheConfig | None) -> Lookup:
        """A hit, or a miss that knows how to store the answer. Never raises (but for its
        own cancellation).

        A miss may come back leading its key (``ticket`` set: the caller must ``store`` or
        ``release`` it). On every other way out, the lead this lookup took on the way (it
        follows, the leader gives up, it leads, then the semantic step fails or the lookup
        is cancelled) is released here, so identical requests do not wait
        ``coalesce_timeout`` on a leader nobody holds."""
        lookup: Lookup | None = None
        try:
            if route is None or not route.enabled or info.method.upper() not in CACHEABLE_METHODS:
                return Lookup()
            if not (route.exact.enabled or route.semantic.enabled):
                return Lookup()
            lookup = self._prepare(info, route)
            await self._lookup(lookup)
            return lookup
        except Exception:  # noqa: BLE001 - the cache must never fail a request
            _log.exception("cache lookup failed; going upstream")
            self.stats["errors"] += 1
            if lookup is not None:
                self.release(lookup)  # followers elect a new leader
            return Lookup()
        except BaseException:  # cancelled: the request is gone, and nobody will store or release
            if lookup is not None:
                self.release(lookup)
            raise

    async def _lookup(self, lookup: Lookup) -> None:
        """Fills in ``lookup``: a hit, or a miss that may lead its key."""
        info, route = lookup.info, lookup.route
        if request_directives(info.headers).skip_lookup:
            lookup.reason = "no-cache"
            return
        if route.exact.enabled and await self._exact(lookup):
            return
        if route.coalesce and await self._follow(lookup):
            return
        if route.semantic.enabled and await self._semantic(lookup):
            return
        if route.coalesce and not lookup.skip_store:
            lookup.ticket = self._coalescer.lead(lookup.key) or lookup.ticket
            if lookup.ticket is None and await self._follow(lookup):
                return
        self.stats["miss"] += 1

    def _prepare(self, info: RequestInfo, route: PoolCacheConfig) -> Lookup:
        parsed = parse_body(info.body, info.headers)
        tenant = tenant_of(info.headers, route.tenant.header, route.tenant.from_api_key, info.principal)
        key = exact_key(info, tenant, route.vary_headers, canonical_body(parsed))
        lookup = Lookup(reason="miss", key=key, info=info, route=route, tenant=tenant,
                        skip_store=request_directives(info.headers).skip_store)
        if route.semantic.enabled:
            text = extract_text(parsed)
            if text is not None and len(text.text) <= route.semantic.max_text_chars:
                lookup.text = text
        return lookup

    def _partition(self, lookup: Lookup) -> str:
        if lookup.partition is None:
            info, route = lookup.info, lookup.route
            embedder = self.embedders.name_of(route.semantic.embedder)
            lookup.partition = partition_of(info.pool, info.model, info.version, lookup.tenant, embedder,
                                            lookup.text.context + _vary(info, route))
        return lookup.partition

    async def _exact(self, lookup: Lookup) -> bool:
        entry = await self._store.get(lookup.key)
        if entry is None:
            return False
        if entry.is_fresh(self._clock.now()):
            return self._found(lookup, Hit(entry, "hit", lookup.key))
        lookup.stale_entry = entry  # past its TTL, within stale_if_error's grace
        return False

    async def _follow(self, lookup: Lookup) -> bool:
        """Waits for an identical request in flight; at most two rounds (see coalesce)."""
        for _ in range(2):
            entry = await self._coalescer.follow(lookup.key, self._wait_limit(lookup))
            if entry is False:
                return False
            if entry is not None:
                return self._found(lookup, Hit(entry, "hit-coalesced", lookup.key))
            lookup.ticket = self._coalescer.lead(lookup.key)
            if lookup.ticket is not None:
                return False
        return False

    def _wait_limit(self, lookup: Lookup) -> float:
        limit = lookup.route.coalesce_timeout
        if lookup.info.deadline is not None:
            limit = min(limit, lookup.info.deadline - asyncio.get_running_loop().time())
        return limit

    async def _semantic(self, lookup: Lookup) -> bool:
        if lookup.text is None:
            return False
        settings = lookup.route.semantic
        lookup.vector = await self._embed(settings, lookup.text.text)
        if lookup.vector is None:
            lookup.reason = "embedder-error"
            return False
        result = await self.semantic.lookup(SemanticQuery(
            self._partition(lookup), lookup.text.text, lookup.vector, settings.threshold, settings.candidates,
            settings.guards.enabled, settings.guards.ambiguity_margin))
        if result.hit is not None:
            return self._found(lookup, result.hit)
        lookup.reason = "semantic:" + result.reason
        self.stats[lookup.reason] += 1
        return False

    def _found(self, lookup: Lookup, hit: Hit) -> bool:
        lookup.hit, lookup.reason = hit, hit.kind
        self.stats[hit.kind] += 1
        self.release(lookup, hit.entry)  # led after a failed leader, then hit: share it
        return True

    async def _embed(self, settings, text: str) -> np.ndarray | None:
        try:
            embedder = self.embedders.get(settings.embedder)
            timeout = getattr(settings.embedder, "timeout", _EMBED_TIMEOUT)
            # not wait_for: on Python 3.11 it can hand a cancelled lookup the vector, and the
            # lookup then goes on (it may even take the coalescing lead) for a request that is gone
            return await bounded(embedder.embed(text), timeout, what="the embedder")
        except Exception as error:  # noqa: BLE001 - a miss, counted
            self.stats["embedder-error"] += 1
            _log.debug("embedding failed: %r", error)
            return None

    def warm(self, routes: Iterable[PoolCacheConfig]) -> None:
        """Makes the embedders ``routes`` need now (blocking: call it at start-up)."""
        self.embedders.warm(routes)

    # -- store, release, stale ------------------------------------------------------------------
    async def store(self, lookup: Lookup, status: int, headers: Iterable[tuple[str, str]], body: bytes) -> bool:
        """Stores a response if the route, the client and the backend allow; wakes followers.
        Returns whether it was stored. Never raises."""
        entry = None
        try:
            entry = await self._store_entry(lookup, status, list(headers), body)
        except Exception:  # noqa: BLE001
            _log.exception("cache store failed")
            self.stats["errors"] += 1
        finally:
            self.release(lookup, entry)
        return entry is not None

    async def _store_entry(self, lookup: Lookup, status: int, headers: list[tuple[str, str]],
                           body: bytes) -> Entry | None:
        route = lookup.route
        if lookup.key is None or lookup.skip_store or lookup.hit is not None:
            return None
        if len(body) > self._max_entry_bytes:
            self.stats["too-large"] += 1
            return None
        ttl = route.exact.ttl if route.exact.enabled else route.semantic.ttl
        ttl = storable_ttl(status, headers, ttl)
        if ttl is None:
            self.stats["not-storable"] += 1
            return None
        now = self._clock.now()
        entry = Entry(status, kept_headers(headers), body, now, ttl, route.stale_if_error or 0.0,
                      lookup.text.text if lookup.text else None)
        await self._store.set(lookup.key, entry)
        self.stats["stored"] += 1
        self.release(lookup, entry)  # followers need not wait for the index
        if route.semantic.enabled and lookup.text is not None:
            await self._remember(lookup, now + min(ttl, route.semantic.ttl))
        return entry

    async def _remember(self, lookup: Lookup, expires_at: float) -> None:
        vector = lookup.vector
        if vector is None:
            vector = await self._embed(lookup.route.semantic, lookup.text.text)
        if vector is not None:
            info = lookup.info
            await self.semantic.remember(VectorRecord(self._partition(lookup), lookup.key, lookup.text.text, vector,
                                                      expires_at, info.pool, info.model, lookup.tenant))

    def release(self, lookup: Lookup, entry: Entry | None = None) -> None:
        """Ends this request's lead: followers get ``entry`` or elect a new leader. Idempotent."""
        if lookup.ticket is not None:
            self._coalescer.finish(lookup.ticket, entry)
            lookup.ticket = None

    async def stale(self, lookup: Lookup) -> Hit | None:
        """An expired entry within ``stale_if_error``, when every try upstream failed. Ends
        this request's lead (followers try upstream themselves)."""
        self.release(lookup)
        if lookup.key is None or not lookup.route.stale_if_error:
            return None
        entry = lookup.stale_entry or await self._store.get(lookup.key)
        if entry is None or not entry.is_servable_stale(self._clock.now()):
            return None
        self.stats["stale"] += 1
        return Hit(entry, "stale", lookup.key)

    def stale_now(self, lookup: Lookup) -> Hit | None:
        """:meth:`stale` without a store round trip: only the expired entry the lookup
        itself found (the data plane's synchronous path). Ends this request's lead."""
        self.release(lookup)
        entry = lookup.stale_entry
        if entry is None or lookup.route is None or not lookup.route.stale_if_error:
            return None
        if not entry.is_servable_stale(self._clock.now()):
            return None
        self.stats["stale"] += 1
        return Hit(entry, "stale", lookup.key)

    def error_counts(self) -> dict[str, int]:
        """Failures so far, by kind: ``store`` (Redis calls that failed or timed out),
        ``embedder``, ``internal`` (a lookup or store that raised)."""
        store_stats = getattr(self._store, "stats", None)
        return {"store": getattr(store_stats, "errors", 0), "embedder": self.stats["embedder-error"],
                "internal": self.stats["errors"]}

    @property
    def max_entry_bytes(self) -> int:
        return self._max_entry_bytes

    # -- invalidation ---------------------------------------------------------------------------
    async def purge(self, pool: str | None = None, model: str | None = None, tenant: str | None = None) -> int:
        """Drops entries of ``pool``, ``model``, ``tenant`` (as :func:`tenant_of` names it: ``a:``
        the pool's authenticated tenant, ``h:`` header value or ``k:`` API key; ``""`` anonymous), or all; returns how many."""
        scope = Scope(pool, model, tenant)
        self.semantic.index.purge(scope)
        return await self._store.purge(scope)

    async def drop_changed_models(self, old: Mapping[tuple[str, str], str], new: Mapping[tuple[str, str], str]) -> int:
        """On reload: purges every (pool, model) whose configured version changed or is gone.
        Keys hold the version anyway, so this frees space; it is not needed for correctness."""
        dropped = 0
        for (pool, model), version in old.items():
            if new.get((pool, model)) != version:
                dropped += await self.purge(pool, model)
        return dropped

    def expire(self) -> int:
        """Drops expired texts from the index (call every few seconds)."""
        return self.semantic.index.expire(self._clock.now())


def _vary(info: RequestInfo, route: PoolCacheConfig) -> bytes:
    return "|".join(f"{name}={info.headers.get(name)}" for name in route.vary_headers).encode()
