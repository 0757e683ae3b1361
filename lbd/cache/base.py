"""The cache's interfaces and the small records that cross them.

A :class:`Store` keeps serialized responses under string keys with a TTL (memory or Redis).
A :class:`VectorFeed` shares the semantic index between instances (Redis only). An
:class:`Embedder` turns text into a unit vector. A :class:`VectorIndex` finds the nearest
cached texts within one partition. Implementations do not import each other; the facade in
:mod:`lbd.cache.service` wires them.

Times stored in entries are wall-clock seconds (``time.time()``), since entries outlive a
process and are shared between hosts; each component takes a :class:`WallClock` so tests can
drive time.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import orjson

__all__ = [
    "WallClock", "SystemClock", "Scope", "Entry", "VectorRecord", "Candidate",
    "Store", "VectorFeed", "Embedder", "VectorIndex", "EntryFormatError",
]


class WallClock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch (shared between hosts); tests pass a manual clock."""
        ...


class SystemClock:
    __slots__ = ()

    def now(self) -> float:
        return time.time()


class EntryFormatError(ValueError):
    """Bytes in the store that are not an entry (another version, corruption)."""


@dataclass(frozen=True)
class Scope:
    """What a purge removes: entries matching every field given; all ``None`` is everything."""

    pool: str | None = None
    model: str | None = None
    tenant: str | None = None

    def matches(self, pool: str, model: str, tenant: str) -> bool:
        return ((self.pool is None or self.pool == pool) and (self.model is None or self.model == model)
                and (self.tenant is None or self.tenant == tenant))


@dataclass(frozen=True)
class Entry:
    """A cached response. ``stored_at`` wall seconds; fresh for ``ttl``, then servable as
    stale for ``grace`` more (stale-if-error); gone after that."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    stored_at: float
    ttl: float
    grace: float = 0.0
    text: str | None = None
    """The text the semantic cache compared, when there was one."""

    def is_fresh(self, now: float) -> bool:
        return now < self.stored_at + self.ttl

    def is_servable_stale(self, now: float) -> bool:
        return now < self.stored_at + self.ttl + self.grace

    def lifetime_left(self, now: float) -> float:
        """Seconds until it is neither fresh nor servable stale (the store's TTL)."""
        return self.stored_at + self.ttl + self.grace - now

    @property
    def size(self) -> int:
        """Bytes it takes, roughly, for the store's byte bound."""
        return len(self.body) + sum(len(k) + len(v) for k, v in self.headers) + len(self.text or "") + 128

    def to_bytes(self) -> bytes:
        meta = orjson.dumps({"v": 1, "s": self.status, "h": self.headers, "at": self.stored_at,
                             "ttl": self.ttl, "g": self.grace, "t": self.text})
        return len(meta).to_bytes(4, "little") + meta + self.body

    @classmethod
    def from_bytes(cls, data: bytes) -> Entry:
        try:
            length = int.from_bytes(data[:4], "little")
            meta = orjson.loads(data[4:4 + length])
            if meta.get("v") != 1:
                raise EntryFormatError(f"entry format {meta.get('v')!r}")
            return cls(meta["s"], tuple((k, v) for k, v in meta["h"]), bytes(data[4 + length:]),
                       meta["at"], meta["ttl"], meta["g"], meta["t"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise EntryFormatError(str(error)) from None


@dataclass(frozen=True)
class VectorRecord:
    """One text of the semantic index: where it belongs, its vector and its entry's key."""

    partition: str
    """Pool, model, version, tenant and context, hashed (see :mod:`lbd.cache.keys`)."""
    entry_key: str
    text: str
    vector: np.ndarray = field(compare=False)
    expires_at: float
    """Wall seconds; past it the record is dropped from the index."""
    pool: str = ""
    model: str = ""
    tenant: str = ""

    def to_bytes(self) -> bytes:
        meta = orjson.dumps({"p": self.partition, "k": self.entry_key, "t": self.text, "x": self.expires_at,
                             "pool": self.pool, "m": self.model, "tn": self.tenant})
        vector = np.asarray(self.vector, dtype="<f4").tobytes()
        return len(meta).to_bytes(4, "little") + meta + vector

    @classmethod
    def from_bytes(cls, data: bytes) -> VectorRecord:
        try:
            length = int.from_bytes(data[:4], "little")
            meta = orjson.loads(data[4:4 + length])
            vector = np.frombuffer(data[4 + length:], dtype="<f4").astype(np.float32)
            return cls(meta["p"], meta["k"], meta["t"], vector, meta["x"], meta["pool"], meta["m"], meta["tn"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise EntryFormatError(str(error)) from None


@dataclass(frozen=True)
class Candidate:
    """A cached text near the query: its record and cosine similarity."""

    record: VectorRecord
    similarity: float


class Store(Protocol):
    """Serialized responses by key. Every method fails open: a store that cannot answer in
    time returns a miss or does nothing, counts the error, and never raises."""

    async def get(self, key: str) -> Entry | None:
        """The entry under ``key`` if present and not past its lifetime, else ``None``."""
        ...

    async def set(self, key: str, entry: Entry) -> None:
        """Stores ``entry``; it disappears after ``entry.lifetime_left`` seconds."""
        ...

    async def delete(self, key: str) -> None:
        """Removes ``key`` if present."""
        ...

    async def purge(self, scope: Scope) -> int:
        """Removes every entry in ``scope``; returns how many (best effort for Redis)."""
        ...

    async def close(self) -> None:
        """Releases connections and background tasks."""
        ...


VectorListener = Callable[[VectorRecord], None]
PurgeListener = Callable[[Scope], None]


class VectorFeed(Protocol):
    """The semantic index shared through the store, so every instance sees every text."""

    async def publish(self, record: VectorRecord) -> None:
        """Saves ``record`` (expiring with it) and tells the other instances."""
        ...

    async def load(self) -> list[VectorRecord]:
        """Every live record, for an instance that starts (or reconnects)."""
        ...

    def follow(self, on_add: VectorListener, on_purge: PurgeListener,
               on_resync: Callable[[], Awaitable[None]], on_failure: Callable[[], None] | None = None) -> None:
        """Calls ``on_add`` for records other instances publish and ``on_purge`` for their
        purges, within about a second; ``on_resync`` when updates may have been missed;
        ``on_failure`` each time the store could not be read (it keeps trying)."""
        ...


class Embedder(Protocol):
    """Text to a unit-length float32 vector (MiniLM: 384 dimensions)."""

    dimensions: int

    async def embed(self, text: str) -> np.ndarray:
        """The embedding of ``text``; raises on failure (the caller treats that as a miss)."""
        ...

    async def close(self) -> None:
        """Releases threads or connections."""
        ...


class VectorIndex(Protocol):
    """Nearest cached texts, one partition at a time; partitions never mix."""

    def add(self, record: VectorRecord) -> None:
        """Adds ``record``, replacing one with the same partition and text."""
        ...

    def remove(self, partition: str, text: str) -> None:
        """Drops the record for ``text`` in ``partition`` if present."""
        ...

    def search(self, partition: str, vector: np.ndarray, count: int, threshold: float) -> Sequence[Candidate]:
        """Up to ``count`` records of ``partition`` with similarity >= ``threshold``, best first."""
        ...

    def purge(self, scope: Scope) -> int:
        """Drops the records in ``scope``; returns how many."""
        ...

    def expire(self, now: float) -> int:
        """Drops the records past ``expires_at``; returns how many."""
        ...

    def __len__(self) -> int:
        ...
