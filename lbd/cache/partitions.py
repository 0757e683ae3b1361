"""The two kinds of partition of the semantic index: exact (numpy) and HNSW (faiss).

Both keep, per text, a :class:`Slot` (its entry's key, the text, its expiry) apart from the
vector, which lives once: in the exact partition's matrix or in the graph.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from lbd.cache.base import VectorRecord

__all__ = ["Slot", "ExactPartition", "HnswPartition"]

_REBUILD_FRACTION = 0.25
"""A graph whose tombstones pass this share of its nodes is rebuilt."""


@dataclass
class Slot:
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
        self._slots: list[Slot | None] = []
        self._free: list[int] = []
        self.by_text: dict[str, int] = {}

    def add(self, slot: Slot, vector: np.ndarray) -> None:
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

    def search(self, vector: np.ndarray, count: int, threshold: float) -> list[tuple[Slot, float]]:
        used = len(self._slots)
        # einsum, not @: a matrix-vector product through multi-threaded OpenBLAS takes 2-8 ms
        # instead of 0.1 when the event loop's cores are busy; einsum's own loop takes ~0.3 ms
        # for 5000 rows whatever the load.
        similarities = np.einsum("ij,j->i", self._vectors[:used], vector)
        if used > count:
            rows = np.argpartition(-similarities, count)[:count]
        else:
            rows = np.arange(used)
        rows = rows[np.argsort(-similarities[rows])]
        return [(self._slots[r], float(similarities[r])) for r in rows
                if similarities[r] >= threshold and self._slots[r] is not None]

    def items(self) -> Iterator[tuple[Slot, np.ndarray]]:
        for row in self.by_text.values():
            yield self._slots[row], self._vectors[row]

    def slots(self) -> list[Slot]:
        return [slot for slot, _ in self.items()]

    def __len__(self) -> int:
        return len(self.by_text)


class HnswPartition:
    """An HNSW graph (faiss); removed texts are tombstones until the next rebuild."""

    def __init__(self, dimensions: int, m: int, ef_construction: int, ef_search: int) -> None:
        import faiss

        faiss.omp_set_num_threads(1)  # one query at a time: OpenMP threads would only spin
        self._index = faiss.IndexHNSWFlat(dimensions, m, faiss.METRIC_INNER_PRODUCT)
        self._index.hnsw.efConstruction = ef_construction
        self._index.hnsw.efSearch = ef_search
        self._slots: list[Slot | None] = []
        self._dead = 0
        self.by_text: dict[str, int] = {}

    def add(self, slot: Slot, vector: np.ndarray) -> None:
        self.add_many([slot], vector[None, :])

    def add_many(self, slots: list[Slot], vectors: np.ndarray) -> None:
        start = len(self._slots)
        self._index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        self._slots.extend(slots)
        for offset, slot in enumerate(slots):
            self.by_text[slot.text] = start + offset

    def remove(self, text: str) -> None:
        self._slots[self.by_text.pop(text)] = None
        self._dead += 1

    def search(self, vector: np.ndarray, count: int, threshold: float) -> list[tuple[Slot, float]]:
        fetch = min(count + min(self._dead, 32), len(self._slots))  # room for tombstones
        if fetch <= 0:
            return []
        similarities, rows = self._index.search(vector.reshape(1, -1).astype(np.float32, copy=False), fetch)
        found = []
        for row, similarity in zip(rows[0].tolist(), similarities[0].tolist()):
            slot = self._slots[row] if row >= 0 else None
            if slot is not None and similarity >= threshold:
                found.append((slot, float(similarity)))
        return found[:count]

    def items(self) -> Iterator[tuple[Slot, np.ndarray]]:
        vectors = self._index.reconstruct_n(0, len(self._slots))
        for row in self.by_text.values():
            yield self._slots[row], vectors[row]

    def slots(self) -> list[Slot]:
        return [slot for slot in self._slots if slot is not None]

    @property
    def needs_rebuild(self) -> bool:
        return self._dead > _REBUILD_FRACTION * max(len(self._slots), 1)

    def __len__(self) -> int:
        return len(self.by_text)

    @property
    def memory_bytes(self) -> int:
        """Vectors plus level-0 links (upper levels add a few percent)."""
        return len(self._slots) * (self._index.d * 4 + self._index.hnsw.nb_neighbors(0) * 4)
