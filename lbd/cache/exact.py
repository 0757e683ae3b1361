"""What may be looked up, what may be stored, and how a hit is described.

Request directives (``Cache-Control``, ``Pragma``): ``no-cache`` or ``max-age=0`` skips the
lookup (the answer is still stored); ``no-store`` skips storing it.

A response is stored only when its status is 2xx (not 206), it sets no cookie, its
``Cache-Control`` has none of ``no-store``, ``private``, ``no-cache``, and its ``Vary`` is not
``*``. Its ``s-maxage`` or ``max-age`` shortens the configured TTL, never lengthens it.
Hop-by-hop headers, ``Date``, ``Age``, ``Content-Length`` and ``x-lbd-*`` are not kept: the
data plane writes them afresh when it serves the entry.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from lbd.cache.base import Entry
from lbd.cache.coalesce import Ticket
from lbd.cache.keys import RequestInfo
from lbd.cache.text import SemanticText
from lbd.config.cache import PoolCacheConfig

__all__ = ["RequestDirectives", "request_directives", "storable_ttl", "kept_headers", "Hit", "Lookup"]

_DROPPED = frozenset({"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
                      "te", "trailer", "transfer-encoding", "upgrade", "date", "age", "content-length",
                      "set-cookie"})
_FORBIDDING = frozenset({"no-store", "private", "no-cache"})


@dataclass(frozen=True)
class RequestDirectives:
    skip_lookup: bool = False
    skip_store: bool = False


def _directives(value: str | None) -> dict[str, str]:
    found: dict[str, str] = {}
    for part in (value or "").lower().split(","):
        name, _, argument = part.strip().partition("=")
        if name:
            found[name] = argument.strip().strip('"')
    return found


def request_directives(headers: Mapping[str, str]) -> RequestDirectives:
    """The client's wishes from lower-cased ``headers``."""
    control = _directives(headers.get("cache-control"))
    no_cache = "no-cache" in control or control.get("max-age") == "0" or "no-cache" in (headers.get("pragma") or "")
    return RequestDirectives(skip_lookup=no_cache, skip_store="no-store" in control)


def storable_ttl(status: int, headers: Iterable[tuple[str, str]], ttl: float) -> float | None:
    """The TTL to store a response with, or ``None`` when it must not be stored."""
    if not 200 <= status < 300 or status == 206:
        return None
    control: dict[str, str] = {}
    for name, value in headers:
        lowered = name.lower()
        if lowered == "set-cookie" or (lowered == "vary" and value.strip() == "*"):
            return None
        if lowered == "cache-control":
            control.update(_directives(value))
    if _FORBIDDING & control.keys():
        return None
    for directive in ("s-maxage", "max-age"):
        if control.get(directive, "").isdigit():
            limit = float(control[directive])
            return min(ttl, limit) if limit > 0 else None
    return ttl


def kept_headers(headers: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """The response headers an entry keeps (see the module docstring)."""
    return tuple((name, value) for name, value in headers
                 if name.lower() not in _DROPPED and not name.lower().startswith("x-lbd-"))


@dataclass(frozen=True)
class Hit:
    """A cached answer. ``kind``: ``hit`` (exact), ``hit-semantic``, ``hit-coalesced`` (the
    answer of an identical request that was in flight) or ``stale`` (stale-if-error)."""

    entry: Entry
    kind: str
    key: str
    similarity: float | None = None

    @property
    def header_value(self) -> str:
        """For ``x-lbd-cache``: ``hit``, ``hit-semantic; similarity=0.934``, ``stale``..."""
        if self.similarity is None:
            return self.kind
        return f"{self.kind}; similarity={self.similarity:.3f}"

    def age(self, now: float) -> int:
        """Seconds since the entry was stored, for the ``Age`` header."""
        return max(0, int(now - self.entry.stored_at))

    @property
    def status(self) -> int:
        return self.entry.status

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        return self.entry.headers

    @property
    def body(self) -> bytes:
        return self.entry.body


@dataclass
class Lookup:
    """What :meth:`ResponseCache.lookup` found and what :meth:`~ResponseCache.store` needs."""

    hit: Hit | None = None
    reason: str = "bypass"
    """Why it missed: ``bypass`` (not cacheable), ``no-cache`` (client), ``miss``,
    ``semantic:<reason>`` (see :mod:`lbd.cache.semantic`), ``embedder-error``."""
    key: str | None = None
    info: RequestInfo | None = None
    route: PoolCacheConfig | None = None
    tenant: str = ""
    skip_store: bool = False
    text: SemanticText | None = None
    partition: str | None = None
    vector: np.ndarray | None = field(default=None, repr=False)
    stale_entry: Entry | None = field(default=None, repr=False)
    ticket: Ticket | None = field(default=None, repr=False)
