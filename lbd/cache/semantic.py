"""The semantic cache: nearest cached text in the request's partition, checked by the guards.

A lookup takes the ``candidates`` nearest texts, drops expired ones, and serves the entry of
the best one at or above the threshold that every guard accepts, unless another cached text
scores higher than it or less than ``ambiguity_margin`` below it, whatever the guards say of
that one: the query is then about as close to two different cached texts, and the cache
cannot tell which answer was meant, so it misses (the nearest-neighbour ratio test of
feature matching, applied to texts). A margin of 0 turns the rule off.

Every decision is reported as a :class:`SemanticResult` with its reason, for metrics and
logs: ``hit``, ``no-candidate``, ``guard:<name>``, ``ambiguous``, ``entry-gone``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import numpy as np

from lbd.cache import guards
from lbd.cache.base import Candidate, Scope, Store, VectorFeed, VectorIndex, VectorRecord, WallClock
from lbd.cache.exact import Hit

__all__ = ["SemanticCache", "SemanticResult", "SemanticQuery"]

_log = logging.getLogger("lbd.cache.semantic")


@dataclass(frozen=True)
class SemanticQuery:
    """One lookup: where, what, and the route's settings."""

    partition: str
    text: str
    vector: np.ndarray
    threshold: float
    candidates: int = 4
    guards: tuple[str, ...] = tuple(guards.GUARDS)
    ambiguity_margin: float = 0.015


@dataclass(frozen=True)
class SemanticResult:
    hit: Hit | None
    reason: str
    best_similarity: float | None = None


class SemanticCache:
    """Index + store (+ the feed that shares the index between instances)."""

    def __init__(self, index: VectorIndex, store: Store, clock: WallClock, feed: VectorFeed | None = None) -> None:
        self.index = index
        self._store = store
        self._clock = clock
        self._feed = feed
        self._added_meanwhile: list[VectorRecord] | None = None

    async def lookup(self, query: SemanticQuery) -> SemanticResult:
        found = self.index.search(query.partition, query.vector, query.candidates,
                                  query.threshold - query.ambiguity_margin)
        live = self._live(query.partition, found)
        above = [candidate for candidate in live if candidate.similarity >= query.threshold]
        if not above:
            return SemanticResult(None, "no-candidate")
        best, declined = self._first_passing(query, above)
        if best is None:
            return SemanticResult(None, declined, above[0].similarity)
        if query.ambiguity_margin > 0 and any(
                other is not best and best.similarity - other.similarity < query.ambiguity_margin for other in live):
            return SemanticResult(None, "ambiguous", best.similarity)
        entry = await self._store.get(best.record.entry_key)
        if entry is None or not entry.is_fresh(self._clock.now()):
            if entry is None:
                self.index.remove(query.partition, best.record.text)
            return SemanticResult(None, "entry-gone", best.similarity)
        return SemanticResult(Hit(entry, "hit-semantic", best.record.entry_key, best.similarity), "hit",
                              best.similarity)

    def _live(self, partition: str, found: list[Candidate]) -> list[Candidate]:
        now, live = self._clock.now(), []
        for candidate in found:
            if candidate.record.expires_at > now:
                live.append(candidate)
            else:
                self.index.remove(partition, candidate.record.text)
        return live

    def _first_passing(self, query: SemanticQuery, above: list[Candidate]) -> tuple[Candidate | None, str]:
        """The best candidate every guard accepts, or the first guard that declined."""
        declined = ""
        for candidate in above:
            failed = guards.check(query.text, candidate.record.text, query.guards)
            if failed is None:
                return candidate, ""
            declined = declined or f"guard:{failed}"
        return None, declined

    async def remember(self, record: VectorRecord) -> None:
        """Indexes ``record`` here and, through the feed, on every other instance."""
        self.index.add(record)
        if self._added_meanwhile is not None:
            self._added_meanwhile.append(record)
        if self._feed is not None:
            await self._feed.publish(record)

    # -- what the feed reports from other instances ------------------------------------------
    def on_add(self, record: VectorRecord) -> None:
        if record.expires_at > self._clock.now() and len(record.vector) == getattr(self.index, "dimensions", 384):
            self.index.add(record)
            if self._added_meanwhile is not None:
                self._added_meanwhile.append(record)

    def on_purge(self, scope: Scope) -> None:
        self.index.purge(scope)

    async def resync(self) -> None:
        """Rebuilds the index from the feed's full list (start, or Redis back after an outage)."""
        if self._feed is None:
            return
        self._added_meanwhile = []
        try:
            records = await self._feed.load()
            now = self._clock.now()
            fresh = self.index.__class__(**_index_options(self.index))
            live = [record for record in records if record.expires_at > now]
            await asyncio.get_running_loop().run_in_executor(None, fresh.add_many, live)  # off the loop
            for record in self._added_meanwhile:  # this instance's additions during the load
                fresh.add(record)
            self.index = fresh
        finally:
            self._added_meanwhile = None
        _log.info("semantic index loaded: %d texts", len(self.index))


def _index_options(index: VectorIndex) -> dict:
    options = getattr(index, "options", None)
    return dict(options) if options else {}
