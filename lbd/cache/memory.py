"""The in-process store: an LRU bounded by entry count and bytes, with per-entry lifetimes.

Expired entries are dropped when read and pushed out by the LRU; nothing runs in the
background. All operations are synchronous dictionary work wrapped in ``async`` methods to
satisfy :class:`lbd.cache.base.Store`; they never raise.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from lbd.cache.base import Entry, Scope, SystemClock, WallClock
from lbd.cache.keys import key_fields, label, tenant_label

__all__ = ["MemoryStore", "MemoryStats"]


@dataclass
class MemoryStats:
    entries: int = 0
    bytes: int = 0
    evictions: int = 0
    expirations: int = 0


class MemoryStore:
    """``max_entries`` and ``max_bytes`` bound it; the least recently used entry goes first.
    An entry larger than ``max_bytes`` alone is not stored."""

    def __init__(self, max_entries: int = 100_000, max_bytes: int = 256 * 1024**2,
                 clock: WallClock | None = None) -> None:
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._clock = clock or SystemClock()
        self.stats = MemoryStats()

    async def get(self, key: str) -> Entry | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.lifetime_left(self._clock.now()) <= 0:
            self._drop(key)
            self.stats.expirations += 1
            return None
        self._entries.move_to_end(key)
        return entry

    async def set(self, key: str, entry: Entry) -> None:
        if entry.size > self._max_bytes or entry.lifetime_left(self._clock.now()) <= 0:
            return
        if key in self._entries:
            self._drop(key)
        self._entries[key] = entry
        self.stats.bytes += entry.size
        self.stats.entries = len(self._entries)
        while len(self._entries) > self._max_entries or self.stats.bytes > self._max_bytes:
            self._drop(next(iter(self._entries)))
            self.stats.evictions += 1

    async def delete(self, key: str) -> None:
        if key in self._entries:
            self._drop(key)

    async def purge(self, scope: Scope) -> int:
        wanted = _scope_labels(scope)
        doomed = [key for key in self._entries if wanted.matches(*key_fields(key))]
        for key in doomed:
            self._drop(key)
        return len(doomed)

    async def close(self) -> None:
        self._entries.clear()
        self.stats = MemoryStats()

    def __len__(self) -> int:
        return len(self._entries)

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key)
        self.stats.bytes -= entry.size
        self.stats.entries = len(self._entries)


def _scope_labels(scope: Scope) -> Scope:
    """The scope in key-label form (keys hold labels, not raw names or tenant ids)."""
    return Scope(None if scope.pool is None else label(scope.pool),
                 None if scope.model is None else label(scope.model),
                 None if scope.tenant is None else tenant_label(scope.tenant))
