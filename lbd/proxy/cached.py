"""The cache stage: between admission and the attempts, a request of a pool with a
``cache:`` section is looked up in the response cache, and its answer is kept on the way
back.

The order, for such a request:

1. wait for the whole body (the key hashes it); a body too large to keep (64KiB) bypasses
   the cache and streams as usual;
2. ``lookup`` (exact key, a coalesced identical request, the semantic index) in a
   coroutine, resuming by callback through :meth:`Admission._await`;
3. a hit is written at once (``x-lbd-cache: hit``, ``hit-semantic; similarity=0.951``,
   ``hit-coalesced``), with ``Age``; a miss goes to the attempts (``x-lbd-cache: miss``);
4. a 2xx answer is captured while it streams to the client, up to the cache's entry size,
   and stored after its last byte (the store decides whether the backend allowed it);
   anything else ends the request's lead, so coalesced followers go upstream themselves;
5. when every try failed (a 5xx answer or a proxy error), an expired entry within
   ``stale_if_error`` is served instead, marked ``x-lbd-cache: stale``.

Requests of pools without a cache never enter this module's methods past one attribute test.
"""

from __future__ import annotations

import asyncio
import time
from functools import partial
from typing import TYPE_CHECKING

from lbd.proxy.admit import Admission
from lbd.proxy.http import status_line
from lbd.proxy.router import model_name

if TYPE_CHECKING:
    from lbd.cache import Hit, Lookup, ResponseCache
    from lbd.proxy.pool import Pool

__all__ = ["Cached", "CACHE_RESULTS"]

_CACHEABLE_METHODS = frozenset({b"GET", b"HEAD", b"POST"})
_NO_BODY_STATUS = frozenset({204, 304})
CACHE_RESULTS = {"hit": "hit_exact", "hit-semantic": "hit_semantic", "hit-coalesced": "hit_coalesced",
                 "stale": "stale"}
"""Hit kinds as the metrics and the access log name them (besides ``miss`` and ``bypass``)."""


class Cached(Admission):
    """The cache stage; :class:`~lbd.proxy.exchange.Exchange` provides the attempts."""

    __slots__ = ("cache_status", "cache_lookup", "_capture", "_captured", "_capture_head")

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.cache_status: str | None = None
        """``hit_exact``, ``hit_semantic``, ``hit_coalesced``, ``stale``, ``miss``, ``bypass``;
        ``None`` when the pool has no cache."""
        self.cache_lookup: Lookup | None = None
        """The miss this request leads, until its answer is stored or dropped."""
        self._capture: list[bytes] | None = None
        self._captured = 0
        self._capture_head: tuple[int, list[tuple[str, str]]] | None = None

    # -- before the attempts ------------------------------------------------------------
    def _proceed(self) -> None:
        """Admitted: look the request up if its pool caches, else go upstream."""
        pool: Pool = self.pool  # type: ignore[assignment]
        route = pool.config.cache
        if route is None or not route.enabled or self.client.server.cache is None:
            self._attempt()
        elif self.method not in _CACHEABLE_METHODS:
            self._bypass()
        else:
            self._with_body(self._look_up, self._bypass)  # too large to key on: stream it upstream

    def _bypass(self) -> None:
        self._cache_result("bypass")
        self._attempt()

    def _look_up(self) -> None:
        from lbd.cache import RequestInfo

        server = self.client.server
        pool: Pool = self.pool  # type: ignore[assignment]
        path = self.url.decode("latin-1")
        model = model_name(self.path) or ""
        version = _path_version(self.path) or server.runtime.model_versions.get((pool.name, model), "")
        headers: dict[str, str] = {}
        for name, value in self.headers:
            key, text = name.decode("latin-1").lower(), value.decode("latin-1")
            headers[key] = headers[key] + ", " + text if key in headers else text
        deadline = self.deadline if self.deadline != float("inf") else None
        info = RequestInfo(pool.name, model, version, self.method.decode("latin-1"), path, headers,
                           self.body or b"", deadline=deadline, principal=self.tenant)
        self._await(server.cache.lookup(info, pool.config.cache), self._looked_up)
        self._pending.add_done_callback(partial(self._lookup_ended, server.cache))  # type: ignore[union-attr]

    def _lookup_ended(self, cache: ResponseCache, task: asyncio.Task) -> None:
        """Runs after :meth:`_resumed` (callbacks run in order): a lead the lookup came back
        with that this request did not take over is released. That happens when the client
        went away, or the request ended otherwise, after the lookup's last step but before
        the stage resumed with its result: ``on_client_lost`` then had no lookup to cancel
        and no ``cache_lookup`` to release, and ``_resumed`` drops the result; the key would
        stay in flight for good (identical requests waiting ``coalesce_timeout`` on it)."""
        if task.cancelled() or task.exception() is not None:
            return  # the lookup released its lead itself (ResponseCache.lookup)
        lookup = task.result()
        if lookup.ticket is not None and lookup is not self.cache_lookup:
            cache.release(lookup)

    def _looked_up(self, lookup: Lookup) -> None:
        hit = lookup.hit
        if hit is not None:
            self._cache_result(CACHE_RESULTS.get(hit.kind, "hit_exact"))
            self._serve_cached(hit)
            return
        self._cache_result("bypass" if lookup.key is None else "miss")
        if lookup.key is not None:
            self.cache_lookup = lookup
        self._attempt()

    def _cache_result(self, result: str) -> None:
        self.cache_status = result
        self.client.server.metrics.cache_lookup(self.pool.name, result)  # type: ignore[union-attr]

    def _serve_cached(self, hit: Hit) -> None:
        status = hit.status
        out = [status_line(status)]
        for name, value in hit.headers:
            out.append(b"%b: %b\r\n" % (name.encode("latin-1"), value.encode("latin-1")))
        body = hit.body
        if status not in _NO_BODY_STATUS:
            out.append(b"content-length: %d\r\n" % len(body))
        if self.is_head or status in _NO_BODY_STATUS:
            body = b""
        out.append(b"age: %d\r\nx-lbd-cache: %b\r\nx-request-id: %b\r\n" % (
            hit.age(time.time()), hit.header_value.encode(), self.fields.request_id))
        for name, value in self._extra_fields:
            out += (name, b": ", value, b"\r\n")
        if not self.request_done:
            self.keep_alive = False
        if not self.keep_alive:
            out.append(b"connection: close\r\n")
        elif not self.client.http11:
            out.append(b"connection: keep-alive\r\n")
        out += (b"\r\n", body)
        self.status = status
        self.response_started = True  # type: ignore[attr-defined]
        self.served_by = "cache"  # type: ignore[attr-defined]
        self.client.write(b"".join(out))
        self._finish()  # type: ignore[attr-defined]

    # -- on the way back ------------------------------------------------------------------
    def _cache_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> bytes:
        """The ``x-lbd-cache`` field of a forwarded answer; starts capturing a 2xx one."""
        lookup = self.cache_lookup
        if lookup is not None and 200 <= status < 300 and status != 206:
            self._capture = []
            self._captured = 0
            self._capture_head = (status, [(n.decode("latin-1"), v.decode("latin-1")) for n, v in headers])
        return b"x-lbd-cache: %b\r\n" % self.cache_status.encode()  # type: ignore[union-attr]

    def _capture_body(self, data: bytes) -> None:
        self._captured += len(data)
        if self._captured > self.client.server.cache.max_entry_bytes:  # type: ignore[union-attr]
            self._capture = None  # too large to store: followers go upstream on release
            self._cache_release()
        else:
            self._capture.append(data)  # type: ignore[union-attr]

    def _cache_store(self) -> None:
        """The captured answer is complete: store it (off the request path; the store wakes
        coalesced followers when it is done)."""
        lookup, self.cache_lookup = self.cache_lookup, None
        capture, self._capture = self._capture, None
        if lookup is None or capture is None:
            return
        status, headers = self._capture_head  # type: ignore[misc]
        cache: ResponseCache = self.client.server.cache  # type: ignore[assignment]
        self.client.loop.create_task(cache.store(lookup, status, headers, b"".join(capture)))

    def _cache_release(self) -> None:
        """No answer to store: end this request's lead (followers go upstream)."""
        lookup, self.cache_lookup = self.cache_lookup, None
        self._capture = None
        if lookup is not None:
            cache = self.client.server.cache
            if cache is not None:
                cache.release(lookup)

    def _stale_hit(self) -> Hit | None:
        """Every try failed: an expired entry within ``stale_if_error`` that the lookup
        found, if any. Ends this request's lead either way."""
        lookup, self.cache_lookup = self.cache_lookup, None
        self._capture = None
        if lookup is None:
            return None
        return self.client.server.cache.stale_now(lookup)  # type: ignore[union-attr]

    def _serve_stale(self, hit: Hit) -> None:
        self._cache_result("stale")
        self._serve_cached(hit)


def _path_version(path: str) -> str | None:
    """``3`` from ``/v2/models/m/versions/3/infer``; ``None`` when the path names none."""
    _, found, rest = path.partition("/versions/")
    return rest.partition("/")[0] or None if found and path.startswith("/v2/models/") else None
