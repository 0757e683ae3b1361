"""How long a semantic lookup takes with 100,000 cached texts, and what an entry costs.

One partition (one pool, model and tenant) holds ``--entries`` texts: the ~21,000 real texts
of ``shared/data/semantic`` embedded by MiniLM, and, to reach the count, variations of them
(each real vector plus noise, cosine ~0.7 to its source: other sentences on the same topics).
Then ``--queries`` real paraphrases go through :meth:`ResponseCache.lookup` one at a time, as
the data plane calls it: exact key, then in-process MiniLM embedding (int8, one thread), HNSW
search, guards, entry fetch. Reported: p50/p90/p99 of the whole lookup (wall clock, and the
CPU time the process spent on it), of the embedding alone and of the index search alone,
HNSW top-1 recall against brute force, and memory per entry (process RSS growth while
filling, and the graph's own size).

    python bench/cache/lookup_speed.py --vectors /tmp/cache-vectors.npz
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from eval import SHARED, embed_table, load, request  # noqa: E402

from lbd.cache import ResponseCache  # noqa: E402
from lbd.cache.base import Entry, VectorRecord  # noqa: E402
from lbd.cache.embedder import InProcessEmbedder  # noqa: E402
from lbd.cache.index import PartitionedIndex  # noqa: E402
from lbd.cache.memory import MemoryStore  # noqa: E402
from lbd.config.cache import PoolCacheConfig  # noqa: E402

ROUTE = PoolCacheConfig.model_validate({"semantic": {}, "coalesce": False})
BODY = b'{"model_name":"minilm","outputs":[{"name":"embedding","datatype":"FP32","shape":[1,384]}]}'.ljust(256)


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def percentiles(seconds: list[float]) -> dict[str, float]:
    values = np.asarray(seconds) * 1000
    return {name: round(float(np.percentile(values, q)), 3) for name, q in
            (("p50_ms", 50), ("p90_ms", 90), ("p99_ms", 99))} | {"max_ms": round(float(values.max()), 3)}


def corpus(table: dict[str, np.ndarray], entries: int, rng: np.random.Generator) -> tuple[list[str], np.ndarray]:
    texts, vectors = list(table), np.stack(list(table.values()))
    extra = entries - len(texts)
    if extra <= 0:
        return texts[:entries], vectors[:entries]
    sources = vectors[rng.integers(0, len(vectors), extra)]
    noise = rng.standard_normal(sources.shape).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    made = sources + noise  # cosine ~0.7 to the source
    made /= np.linalg.norm(made, axis=1, keepdims=True)
    return texts + [f"variation {n} of a cached question" for n in range(extra)], np.concatenate([vectors, made])


async def fill(cache: ResponseCache, partition: str, texts: list[str], vectors: np.ndarray) -> None:
    """Stores an entry per text and loads the index in bulk, as an instance starting on a
    shared Redis does (one graph build, on a worker thread)."""
    now, records = time.time(), []
    for number, (text, vector) in enumerate(zip(texts, vectors)):
        key = f"minilm:minilm:-:{number:032x}"
        await cache._store.set(key, Entry(200, (("content-type", "application/json"),), BODY, now, 3600, 0.0, text))
        records.append(VectorRecord(partition, key, text, vector, now + 3600, "minilm", "minilm", "k:bench"))
    await asyncio.get_running_loop().run_in_executor(None, cache.semantic.index.add_many, records)


async def measure(args: argparse.Namespace) -> dict:
    mock, qqp, negatives = load(Path(args.source))
    texts = {t.strip() for x in mock for t in (x["origin"], x["similar"])}
    texts |= {t.strip() for x in qqp for t in (x["origin"], x["similar"])}
    texts |= {t.strip() for x in negatives for t in (x["text_a"], x["text_b"])}
    _, table = embed_table(texts, True, args.vectors)
    rng = np.random.default_rng(0)
    queries = [x["similar"] for x in mock] + [x["similar"] for x in qqp]
    queries = [queries[i] for i in rng.choice(len(queries), args.queries, replace=False)]
    cached = {text: vector for text, vector in table.items() if text not in {q.strip() for q in queries}}
    corpus_texts, corpus_vectors = corpus(cached, args.entries, rng)

    embedder = InProcessEmbedder(threads=1)
    cache = ResponseCache(MemoryStore(args.entries * 2, 2**34), embedders={"inprocess": embedder},
                          index=PartitionedIndex(hnsw_above=args.hnsw_above))
    probe = await cache.lookup(request("probe", "bench"), ROUTE)
    partition = probe.partition
    before, started = rss_bytes(), time.perf_counter()
    await fill(cache, partition, corpus_texts, corpus_vectors)
    fill_seconds, grown = time.perf_counter() - started, rss_bytes() - before
    graph = cache.semantic.index._partitions[partition]

    for text in queries[:20]:  # warm-up
        await cache.lookup(request(text, "bench"), ROUTE)
    lookups, cpu, embeds, searches, kinds = [], [], [], [], {}
    for text in queries:
        started, cpu_started = time.perf_counter(), time.process_time()
        lookup = await cache.lookup(request(text, "bench"), ROUTE)
        lookups.append(time.perf_counter() - started)
        cpu.append(time.process_time() - cpu_started)
        kinds[lookup.reason] = kinds.get(lookup.reason, 0) + 1
        started = time.perf_counter()
        vector = await embedder.embed(text.strip())
        embeds.append(time.perf_counter() - started)
        started = time.perf_counter()
        cache.semantic.index.search(partition, vector, 4, 0.0)
        searches.append(time.perf_counter() - started)

    agree = 0
    for text in queries:
        vector = table[text.strip()]
        exact = corpus_texts[int(np.argmax(corpus_vectors @ vector))]
        agree += cache.semantic.index.search(partition, vector, 1, -1.0)[0].record.text == exact
    await embedder.close()
    return {
        "command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}",
        "entries": len(cache.semantic.index), "index": type(graph).__name__, "queries": len(queries),
        "lookup": percentiles(lookups), "lookup_cpu_time": percentiles(cpu), "embedding": percentiles(embeds),
        "index_search": percentiles(searches),
        "outcomes": kinds, "hnsw_top1_recall": round(agree / len(queries), 4),
        "fill_seconds": round(fill_seconds, 1),
        "memory_per_entry_bytes": {"process_rss_growth": grown // len(corpus_texts),
                                   "hnsw_graph_and_vectors": getattr(graph, "memory_bytes", 0) // len(corpus_texts),
                                   "stored_response_body": len(BODY)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", default=str(SHARED))
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--hnsw-above", type=int, default=10_000)
    parser.add_argument("--vectors", help="an .npz of the corpus embeddings (see eval.py --vectors)")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    result = asyncio.run(measure(args))
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
