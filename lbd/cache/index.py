"""The semantic cache's vector index, partitioned so that no search crosses a partition.

A partition (pool, model, version, tenant, context, embedder: see :mod:`lbd.cache.text`) is
searched exactly with numpy while it holds at most ``hnsw_above`` texts, and through an HNSW
graph beyond. Most partitions are small (one per conversation, per parameter set); one
tenant's single-turn traffic is the large one.

HNSW library: usearch. It deletes entries in place, which TTLs and purges need (faiss's HNSW
cannot remove vectors; hnswlib only marks them and has had no release since 2023), ships
wheels for every platform, and is actively maintained. Without it installed, large partitions
stay exact (slower, still correct).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from lbd.cache.base import Candidate, Scope, VectorRecord
from lbd.cache.keys import key_fields, label, tenant_label

__all__ = ["PartitionedIndex", "ExactPartition", "HnswPartition"]

_log = logging.getLogger("lbd.cache.index")


@dataclass
class _Slot:
    """What the index keeps per text besides its vector (not the vector: it lives once, in
    the partition's matrix or graph)."""

    entry_key: str
    text: str
    expires_at: float
    pool: str
    model: str
    tenant: str

    def record(self, partition: str) -> VectorRecord:
        return VectorRecord(partition, self.entry_key, self.text, np.empty(0, np.float32), self.expires_at,
                            self.pool, self.model, self.tenant)


class ExactPartition:
    """Brute force: one matrix product per search. Removed rows are zeroed and reused."""

    def __init__(self, dimensions: int) -> None:
        self._vectors = np.zeros((16, dimensions), dtype=np.float32)
        self._slots: list[_Slot | None] = []
        self._free: list[int] = []
        self.by_text: dict[str, int] = {}

    def add(self, slot: _Slot, vector: np.ndarray) -> None:
        row = self._free.pop() if self._free else len(self._slots)
        if row == len(self._slots):
            self._slots.append(None)
            if row >= len(self._vectors):
                self._vectors = np.concatenate([self._vectors, np.zeros_like(self._vectors)])
        self._vectors[row] = vector
        self._slots[row] = slot
        self.by_text[slot.text] = row

    def remove(self, text: str) -> None:
        row = self.by_text.pop(text)
        self._vectors[row] = 0.0  # similarity 0: never above a threshold
        self._slots[row] = None
        self._free.append(row)

    def search(self, vector: np.ndarray, count: int, threshold: float) -> list[tuple[_Slot, float]]:
        used = len(self._slots)
        similarities = self._vectors[:used] @ vector
        if used > count:
            rows = np.argpartition(-similarities, count)[:count]
        else:
            rows = np.arange(used)
        rows = rows[np.argsort(-similarities[rows])]
        return [(self._slots[r], float(similarities[r])) for r in rows
                if similarities[r] >= threshold and self._slots[r] is not None]

    def items(self) -> Iterator[tuple[_Slot, np.ndarray]]:
        for row in self.by_text.values():
            yield self._slots[row], self._vectors[row]

    def slots(self) -> list[_Slot]:
        return [slot for slot, _ in self.items()]

    def __len__(self) -> int:
        return len(self.by_text)


class HnswPartition:
    """An HNSW graph (usearch, inner product on unit vectors = cosine)."""

    def __init__(self, dimensions: int, m: int, ef_construction: int, ef_search: int) -> None:
        from usearch.index import Index

        self._index = Index(ndim=dimensions, metric="ip", dtype="f32", connectivity=m,
                            expansion_add=ef_construction, expansion_search=ef_search)
        self._slots: dict[int, _Slot] = {}
        self._next_id = 0
        self.by_text: dict[str, int] = {}

    def add(self, slot: _Slot, vector: np.ndarray) -> None:
        self.add_many([slot], vector[None, :])

    def add_many(self, slots: list[_Slot], vectors: np.ndarray) -> None:
        ids = np.arange(self._next_id, self._next_id + len(slots), dtype=np.uint64)
        self._next_id += len(slots)
        self._index.add(ids, np.ascontiguousarray(vectors, dtype=np.float32))
        for node, slot in zip(ids.tolist(), slots):
            self._slots[node] = slot
            self.by_text[slot.text] = node

    def remove(self, text: str) -> None:
        node = self.by_text.pop(text)
        self._index.remove(node)
        del self._slots[node]

    def search(self, vector: np.ndarray, count: int, threshold: float) -> list[tuple[_Slot, float]]:
        matches = self._index.search(vector, count)
        found = []
        for node, distance in zip(matches.keys.tolist(), matches.distances.tolist()):
            similarity = 1.0 - float(distance)
            slot = self._slots.get(node)
            if slot is not None and similarity >= threshold:
                found.append((slot, similarity))
        return found

    def slots(self) -> list[_Slot]:
        return list(self._slots.values())

    def __len__(self) -> int:
        return len(self.by_text)

    @property
    def memory_bytes(self) -> int:
        return int(self._index.memory_usage)


class PartitionedIndex:
    """:class:`lbd.cache.base.VectorIndex` over many partitions; defaults: 384 dimensions,
    HNSW above 20000 texts a partition, M 16, ef_construction 128, ef_search 64."""

    def __init__(self, dimensions: int = 384, *, hnsw_above: int = 20_000, hnsw_m: int = 16,
                 hnsw_ef_construction: int = 128, hnsw_ef_search: int = 64) -> None:
        self.dimensions = dimensions
        self._hnsw_above = hnsw_above
        self._hnsw = (hnsw_m, hnsw_ef_construction, hnsw_ef_search)
        self._partitions: dict[str, ExactPartition | HnswPartition] = {}
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
        slot = _Slot(record.entry_key, record.text, record.expires_at, record.pool, record.model, record.tenant)
        partition.add(slot, np.asarray(record.vector, dtype=np.float32).reshape(-1))
        self._size += 1
        if isinstance(partition, ExactPartition) and len(partition) > self._hnsw_above:
            self._promote(record.partition, partition)

    def _promote(self, name: str, partition: ExactPartition) -> None:
        try:
            graph = HnswPartition(self.dimensions, *self._hnsw)
        except ImportError:  # usearch not installed: stay exact, correct but slower
            self._hnsw_above = 2**62
            _log.warning("usearch is not installed; semantic index partitions stay brute force")
            return
        slots, vectors = zip(*partition.items())
        graph.add_many(list(slots), np.stack(vectors))
        self._partitions[name] = graph

    def remove(self, partition: str, text: str) -> None:
        found = self._partitions.get(partition)
        if found is not None and text in found.by_text:
            found.remove(text)
            self._size -= 1
            if not len(found):
                del self._partitions[partition]

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

