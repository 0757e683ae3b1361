"""How long a semantic lookup takes with 100,000 cached texts, and what an entry costs.

One partition (one pool, model and tenant) holds ``--entries`` texts: the ~21,000 real texts
of ``shared/data/semantic`` embedded by MiniLM, and, to reach the count, variations of them
(each real vector plus noise, cosine ~0.7 to its source: other sentences on the same topics).
Then ``--queries`` real paraphrases go through :meth:`ResponseCache.lookup` one at a time, as
the data plane calls it: exact key, then in-process MiniLM embedding (int8, one thread), HNSW
search, guards, entry fetch. Reported: p50/p90/p99 of the whole lookup (wall clock, and the
CPU time the process spent on it), of the embedding through ``embed()`` and of the model
alone on the calling thread (their difference is the hand-over to the embedder's thread),
of the index search alone, the lookup by query length in tokens, HNSW search time and top-1
recall against brute force for each ``--ef-search``, memory per entry (process RSS growth
while filling, and the graph's own size), and the load average before and after (the
latencies depend on what else runs on the cores; the quality figures do not). The embedder
remembers no vectors here (``remember=0``): every lookup runs the model.

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


def by_length(tokens: list[int], lookups: list[float], models: list[float]) -> dict:
    """Lookup and model times of the queries in each class of token count."""
    found = {}
    for name, low, high in (("up_to_16", 0, 16), ("17_to_32", 17, 32), ("33_to_64", 33, 64), ("over_64", 65, 10**6)):
        rows = [n for n, count in enumerate(tokens) if low <= count <= high]
        if rows:
            found[name] = {"queries": len(rows), "lookup": percentiles([lookups[n] for n in rows]),
                           "model_alone": percentiles([models[n] for n in rows])}
    return found


def search_with_ef(cache: ResponseCache, graph, partition: str, vectors: list[np.ndarray], exact: list[str],
                   ef: int) -> dict:
    """Search times with HNSW ``efSearch`` = ``ef``, and how often the nearest text is the
    brute-force nearest (``exact``)."""
    graph._index.hnsw.efSearch = ef
    times, agree = [], 0
    for vector, best in zip(vectors, exact):
        started = time.perf_counter()
        found = cache.semantic.index.search(partition, vector, 4, -1.0)
        times.append(time.perf_counter() - started)
        agree += found[0].record.text == best
    return {"search": percentiles(times), "top1_recall": round(agree / len(vectors), 4)}


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

    embedder = InProcessEmbedder(threads=1, remember=0)  # every text embedded, even the warm-up's again
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
    load_before = os.getloadavg()
    lookups, cpu, embeds, models, searches, kinds, tokens = [], [], [], [], [], {}, []
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
        embedder._run([text.strip()])  # the model alone, on this thread: embed() less the hand-over
        models.append(time.perf_counter() - started)
        started = time.perf_counter()
        cache.semantic.index.search(partition, vector, 4, 0.0)
        searches.append(time.perf_counter() - started)
        tokens.append(len(embedder._model.tokenizer.encode(text.strip()).ids))
    load_after = os.getloadavg()

    by_tokens = by_length(tokens, lookups, models)
    exact = [corpus_texts[int(np.argmax(corpus_vectors @ table[text.strip()]))] for text in queries]
    ef_search = {ef: search_with_ef(cache, graph, partition, [table[text.strip()] for text in queries], exact, ef)
                 for ef in args.ef_search}
    await embedder.close()
    return {
        "command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_average_1_5_15": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in load_after]},
        "entries": len(cache.semantic.index), "index": type(graph).__name__, "queries": len(queries),
        "lookup": percentiles(lookups), "lookup_cpu_time": percentiles(cpu), "embedding": percentiles(embeds),
        "embedding_model_alone": percentiles(models), "index_search": percentiles(searches),
        "by_query_tokens": by_tokens, "outcomes": kinds, "ef_search": ef_search,
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
    parser.add_argument("--ef-search", type=lambda text: [int(x) for x in text.split(",")], default=[16, 32, 64],
                        help="HNSW efSearch values to time and check against brute force (default 16,32,64)")
    parser.add_argument("--vectors", help="an .npz of the corpus embeddings (see eval.py --vectors)")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    result = asyncio.run(measure(args))
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
