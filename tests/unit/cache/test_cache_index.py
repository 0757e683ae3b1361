"""The partitioned vector index: exact search, partitions, deletion, TTL, HNSW recall."""

from __future__ import annotations

import numpy as np
import pytest

from lbd.cache.base import Scope, VectorRecord
from lbd.cache.index import PartitionedIndex
from lbd.cache.text import partition_of


def unit(rng: np.random.Generator, count: int, dimensions: int = 384) -> np.ndarray:
    vectors = rng.standard_normal((count, dimensions)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def record(partition: str, text: str, vector: np.ndarray, expires_at: float = 1e12, **fields) -> VectorRecord:
    return VectorRecord(partition, f"key-{text}", text, vector, expires_at, **fields)


def test_search_is_exact_and_ordered() -> None:
    rng = np.random.default_rng(1)
    vectors = unit(rng, 50)
    index = PartitionedIndex()
    for number, vector in enumerate(vectors):
        index.add(record("p:m:-:a", str(number), vector))
    query = vectors[7] + 0.1 * vectors[8]
    query /= np.linalg.norm(query)
    found = index.search("p:m:-:a", query, 3, 0.0)
    expected = np.argsort(-(vectors @ query))[:3]
    assert [c.record.text for c in found] == [str(n) for n in expected]
    assert found[0].similarity == pytest.approx(float(vectors[7] @ query), abs=1e-5)
    assert index.search("p:m:-:a", query, 3, 0.999) == []


def test_partitions_never_mix() -> None:
    rng = np.random.default_rng(2)
    vector = unit(rng, 1)[0]
    index = PartitionedIndex()
    tenant_a = partition_of("p", "m", "1", "k:a", "e", b"")
    tenant_b = partition_of("p", "m", "1", "k:b", "e", b"")
    index.add(record(tenant_a, "hello", vector))
    assert index.search(tenant_b, vector, 4, 0.5) == []
    assert [c.record.text for c in index.search(tenant_a, vector, 4, 0.5)] == ["hello"]


def test_same_text_replaces_and_remove_frees_the_row() -> None:
    rng = np.random.default_rng(3)
    first, second = unit(rng, 2)
    index = PartitionedIndex()
    index.add(record("p:m:-:a", "t", first))
    index.add(record("p:m:-:a", "t", second))
    assert len(index) == 1
    assert index.search("p:m:-:a", second, 4, 0.99)[0].record.text == "t"
    index.remove("p:m:-:a", "t")
    assert len(index) == 0 and index.search("p:m:-:a", second, 4, 0.0) == []


def test_expire_and_purge() -> None:
    rng = np.random.default_rng(4)
    vectors = unit(rng, 4)
    index = PartitionedIndex()
    index.add(record("p:m:-:a", "old", vectors[0], expires_at=100.0, pool="p", model="m"))
    index.add(record("p:m:-:a", "new", vectors[1], expires_at=300.0, pool="p", model="m"))
    index.add(record("p:n:-:b", "other", vectors[2], pool="p", model="n"))
    index.add(record("q:m:-:c", "q", vectors[3], pool="q", model="m"))
    assert index.expire(200.0) == 1 and len(index) == 3
    assert index.purge(Scope(pool="p", model="n")) == 1
    assert index.purge(Scope(pool="p")) == 1
    assert index.purge(Scope()) == 1 and len(index) == 0


def clustered(rng: np.random.Generator, count: int, centres: int = 200) -> np.ndarray:
    """Vectors bunched around topics, like sentence embeddings (random ones are too easy)."""
    middles = unit(rng, centres)
    picks = rng.integers(0, centres, count)
    vectors = middles[picks] + 0.6 * unit(rng, count) / np.sqrt(2)
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def test_hnsw_recall_against_brute_force() -> None:
    """Top-1 agreement on what a cache asks: queries near a stored text (cosine ~0.9)."""
    import faiss  # noqa: F401  (a dependency: the index must not silently lose HNSW)
    rng = np.random.default_rng(5)
    vectors = clustered(rng, 4000)
    exact, graph = PartitionedIndex(hnsw_above=10**9), PartitionedIndex(hnsw_above=1000)
    for number, vector in enumerate(vectors):
        exact.add(record("p:m:-:a", str(number), vector))
        graph.add(record("p:m:-:a", str(number), vector))
    near = vectors[rng.integers(0, len(vectors), 300)] + 0.45 * unit(rng, 300)
    queries = near / np.linalg.norm(near, axis=1, keepdims=True)
    best = [exact.search("p:m:-:a", q, 1, 0.0)[0] for q in queries]
    assert np.mean([c.similarity for c in best]) > 0.85
    agree = sum(e.record.text == graph.search("p:m:-:a", q, 1, 0.0)[0].record.text for e, q in zip(best, queries))
    assert agree / len(queries) >= 0.97
    graph.remove("p:m:-:a", "0")  # deletion works on the graph too
    assert all(c.record.text != "0" for c in graph.search("p:m:-:a", vectors[0], 4, 0.0))
    assert graph.expire(2e12) == 3999


def test_a_graph_is_built_off_the_loop_and_catches_up_with_changes() -> None:
    import faiss  # noqa: F401  (a dependency: the index must not silently lose HNSW)
    import asyncio

    from lbd.cache.partitions import ExactPartition, HnswPartition

    async def scenario() -> None:
        rng = np.random.default_rng(6)
        vectors = unit(rng, 400)
        index = PartitionedIndex(hnsw_above=300)
        for number in range(301):
            index.add(record("p:m:-:a", str(number), vectors[number]))
        assert isinstance(index._partitions["p:m:-:a"], ExactPartition)  # still serving, exactly
        index.remove("p:m:-:a", "0")  # changes while the graph is built
        index.add(record("p:m:-:a", "1", vectors[399]))
        for number in range(301, 350):
            index.add(record("p:m:-:a", str(number), vectors[number]))
        await index.settled()
        assert isinstance(index._partitions["p:m:-:a"], HnswPartition)
        assert len(index) == 349
        assert index.search("p:m:-:a", vectors[0], 1, 0.99) == []
        assert index.search("p:m:-:a", vectors[399], 1, 0.99)[0].record.text == "1"
        assert index.search("p:m:-:a", vectors[340], 1, 0.99)[0].record.text == "340"
        for number in range(2, 200):  # tombstones past a quarter: rebuilt
            index.remove("p:m:-:a", str(number))
        await index.settled()
        assert index.search("p:m:-:a", vectors[250], 1, 0.99)[0].record.text == "250"
        assert index._partitions["p:m:-:a"].needs_rebuild is False
    asyncio.run(scenario())
