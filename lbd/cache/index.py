"""The semantic cache's vector index, partitioned so that no search crosses a partition.

A partition (pool, model, version, tenant, context, embedder: see :mod:`lbd.cache.text`) is
searched exactly with numpy while it holds at most ``hnsw_above`` texts, and through an HNSW
graph beyond. Most partitions are small (one per conversation, per parameter set); one
tenant's single-turn traffic is the large one.

HNSW library: faiss-cpu (``IndexHNSWFlat``, inner product on unit vectors = cosine). Chosen
after trying the three on this machine: usearch crashes the process when imported before
onnxruntime (a native library clash; the proxy imports both), hnswlib has had no release
since 2023 and ships no wheels (it compiles on install), faiss ships wheels and is actively
maintained. faiss's HNSW cannot delete, so a removed text is a tombstone skipped at search
time, and a graph whose tombstones pass a quarter of it is rebuilt. Graphs are built on a
worker thread (faiss releases the GIL), so the event loop keeps serving from the exact
partition meanwhile. Without faiss installed, partitions stay exact (slower, still correct).
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging

import numpy as np

from lbd.cache.base import Candidate, Scope, VectorRecord
from lbd.cache.keys import key_fields, label, tenant_label
from lbd.cache.partitions import ExactPartition, HnswPartition, Slot

__all__ = ["PartitionedIndex"]

_log = logging.getLogger("lbd.cache.index")


class PartitionedIndex:
    """:class:`lbd.cache.base.VectorIndex` over many partitions; defaults: 384 dimensions,
    HNSW above 10000 texts a partition, M 16, ef_construction 128, ef_search 64."""

    def __init__(self, dimensions: int = 384, *, hnsw_above: int = 10_000, hnsw_m: int = 16,
                 hnsw_ef_construction: int = 128, hnsw_ef_search: int = 64) -> None:
        self.dimensions = dimensions
        self._hnsw_above = hnsw_above
        self._hnsw = (hnsw_m, hnsw_ef_construction, hnsw_ef_search)
        self._partitions: dict[str, ExactPartition | HnswPartition] = {}
        self._building: dict[str, asyncio.Future] = {}
        self._hnsw_ok: bool | None = None
        self._size = 0
        self.options = {"dimensions": dimensions, "hnsw_above": hnsw_above, "hnsw_m": hnsw_m,
                        "hnsw_ef_construction": hnsw_ef_construction, "hnsw_ef_search": hnsw_ef_search}

    def add(self, record: VectorRecord) -> None:
        partition = self._partitions.get(record.partition)
        if partition is None:
            partition = self._partitions[record.partition] = ExactPartition(self.dimensions)
        if record.text in partition.by_text:
            partition.remove(record.text)
            self._size -= 1
        slot = Slot(record.entry_key, record.text, record.expires_at, record.pool, record.model, record.tenant)
        partition.add(slot, np.asarray(record.vector, dtype=np.float32).reshape(-1))
        self._size += 1
        self._maybe_rebuild(record.partition, partition)

    def add_many(self, records: list[VectorRecord]) -> None:
        """Adds ``records`` with one graph build per large partition (loading an index)."""
        by_partition: dict[str, list[VectorRecord]] = {}
        for record in records:
            by_partition.setdefault(record.partition, []).append(record)
        for name, group in by_partition.items():
            if name in self._partitions or len(group) <= self._hnsw_above or not self._hnsw_available():
                for record in group:
                    self.add(record)
                continue
            unique = list({record.text: record for record in group}.values())
            slots = [Slot(r.entry_key, r.text, r.expires_at, r.pool, r.model, r.tenant) for r in unique]
            self._partitions[name] = self._graph(slots, np.stack([r.vector for r in unique]))
            self._size += len(unique)

    def _hnsw_available(self) -> bool:
        if self._hnsw_ok is None:
            self._hnsw_ok = importlib.util.find_spec("faiss") is not None
            if not self._hnsw_ok:
                _log.warning("faiss-cpu is not installed; semantic index partitions stay brute force")
        return self._hnsw_ok

    def _maybe_rebuild(self, name: str, partition: ExactPartition | HnswPartition) -> None:
        if isinstance(partition, ExactPartition):
            wanted = len(partition) > self._hnsw_above
        else:
            wanted = partition.needs_rebuild
        if wanted and name not in self._building and self._hnsw_available():
            self._build(name, partition)

    def _build(self, name: str, partition: ExactPartition | HnswPartition) -> None:
        """A graph of ``partition``'s texts, made on a worker thread when a loop runs (the
        partition keeps serving meanwhile), else here."""
        slots, vectors = zip(*partition.items())
        slots, vectors = list(slots), np.stack(vectors)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._install(name, partition, self._graph(slots, vectors), slots)
            return
        future = loop.run_in_executor(None, self._graph, slots, vectors)
        self._building[name] = future
        future.add_done_callback(lambda done: self._built(name, partition, done, slots))

    def _graph(self, slots: list[Slot], vectors: np.ndarray) -> HnswPartition:
        graph = HnswPartition(self.dimensions, *self._hnsw)
        graph.add_many(slots, vectors)
        return graph

    def _built(self, name: str, source, done: asyncio.Future, slots: list[Slot]) -> None:
        self._building.pop(name, None)
        if done.cancelled() or done.exception() is not None:
            _log.error("building the HNSW graph of a cache partition failed: %r",
                       None if done.cancelled() else done.exception())
            return
        self._install(name, source, done.result(), slots)

    def _install(self, name: str, source, graph: HnswPartition, snapshot: list[Slot]) -> None:
        """Swaps ``graph`` in for ``source``, with the changes made while it was built."""
        if self._partitions.get(name) is not source:
            return  # purged or emptied meanwhile
        current = {slot.text: slot for slot in source.slots()}
        for slot in snapshot:
            if current.get(slot.text) is not slot:
                graph.remove(slot.text)  # removed or replaced since the snapshot
        fresh = [(slot, vector) for slot, vector in source.items() if slot.text not in graph.by_text]
        if fresh:
            graph.add_many([slot for slot, _ in fresh], np.stack([vector for _, vector in fresh]))
        self._partitions[name] = graph
        self._maybe_rebuild(name, graph)  # many removals during the build: again

    async def settled(self) -> None:
        """Waits for graph builds in progress (tests, benchmarks)."""
        while self._building:
            await asyncio.gather(*self._building.values(), return_exceptions=True)
            await asyncio.sleep(0)

    def remove(self, partition: str, text: str) -> None:
        found = self._partitions.get(partition)
        if found is not None and text in found.by_text:
            found.remove(text)
            self._size -= 1
            if not len(found):
                del self._partitions[partition]
            else:
                self._maybe_rebuild(partition, found)

    def search(self, partition: str, vector: np.ndarray, count: int, threshold: float) -> list[Candidate]:
        found = self._partitions.get(partition)
        if found is None:
            return []
        return [Candidate(slot.record(partition), similarity)
                for slot, similarity in found.search(vector, count, threshold)]

    def purge(self, scope: Scope) -> int:
        wanted = Scope(None if scope.pool is None else label(scope.pool),
                       None if scope.model is None else label(scope.model),
                       None if scope.tenant is None else tenant_label(scope.tenant))
        doomed = [name for name in self._partitions if wanted.matches(*key_fields(name))]
        removed = sum(len(self._partitions.pop(name)) for name in doomed)
        self._size -= removed
        return removed

    def expire(self, now: float) -> int:
        expired = [(name, slot.text) for name, partition in self._partitions.items()
                   for slot in partition.slots() if slot.expires_at <= now]
        for name, text in expired:
            self.remove(name, text)
        return len(expired)

    def partitions(self) -> int:
        return len(self._partitions)

    def __len__(self) -> int:
        return self._size

