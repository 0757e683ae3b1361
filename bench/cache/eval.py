"""GPTCache-style quality evaluation of the semantic cache on ``shared/data/semantic``.

Every query goes through :class:`lbd.cache.ResponseCache` (memory store) as a KServe request
``{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [TEXT]}]}``, exactly
as the data plane will call it; the only shortcut is that each distinct text is embedded once,
in a batch, by the real MiniLM (``--embedder``), and looked up from that table afterwards, so
a sweep over many thresholds takes seconds, not hours.

Three measurements, as in issue 5:

- mock: cache every ``origin`` (answer = its index), query every ``similar``. A hit is right
  when the entry's text equals the query's own origin text (duplicated origins count).
- qqp held-out: split the duplicate clusters 50/50 (``random.Random(--seed)``), cache the
  origins of one half, query the ``similar`` texts of the other: every hit is false.
- qqp hard negatives: per pair, cache ``text_a`` alone (its own tenant), query ``text_b``:
  every hit is false.

Also reported: qqp positives (cache every origin, query every ``similar``; right when the hit
lands in the query's cluster).

    python bench/cache/eval.py                      # default settings + sweep
    python bench/cache/eval.py --embedder fp32 --thresholds 0.80:0.96:0.01 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from lbd.cache import RequestInfo, ResponseCache  # noqa: E402
from lbd.cache.memory import MemoryStore  # noqa: E402
from lbd.config.cache import DEFAULT_THRESHOLD, GuardsConfig, PoolCacheConfig, SemanticCacheConfig  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "semantic"


class TableEmbedder:
    """The real model's vectors, computed once per distinct text (see the module docstring)."""

    def __init__(self, name: str, table: dict[str, np.ndarray]) -> None:
        self.name, self._table, self.dimensions = name, table, 384

    async def embed(self, text: str) -> np.ndarray:
        return self._table[text]

    async def close(self) -> None:
        pass


def embed_table(texts: set[str], quantized: bool, saved: str | None) -> tuple[str, dict[str, np.ndarray]]:
    """Each text's vector; ``saved``: an .npz to reuse between runs (made when missing)."""
    name = "minilm-int8" if quantized else "minilm"
    ordered = sorted(texts, key=lambda text: (len(text), text))
    if saved and Path(saved).exists():
        stored = np.load(saved, allow_pickle=False)
        if str(stored["name"]) == name and list(stored["texts"]) == ordered:
            return name, dict(zip(ordered, stored["vectors"]))
    from lbd.cache.embedder import InProcessEmbedder

    embedder = InProcessEmbedder(quantized=quantized, threads=2)
    vectors = embedder.embed_many(ordered)  # one text at a time, exactly as lookups embed
    if saved:
        np.savez(saved, name=name, texts=np.array(ordered), vectors=vectors)
    return name, dict(zip(ordered, vectors))


def request(text: str, tenant: str = "eval", *, refresh: bool = False) -> RequestInfo:
    """A KServe request for ``text``; ``refresh`` sends ``Cache-Control: no-cache`` (no lookup,
    the answer is stored), so every origin is cached even when a near twin already is."""
    body = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}]}).encode()
    headers = {"content-type": "application/json", "x-api-key": tenant}
    if refresh:
        headers["cache-control"] = "no-cache"
    return RequestInfo("minilm", "minilm", "1", "POST", "/v2/models/minilm/infer", headers, body)


def route(threshold: float, guards: bool, margin: float) -> PoolCacheConfig:
    guard = GuardsConfig(negation=guards, numbers=guards, entities=guards, question=guards, ambiguity_margin=margin)
    return PoolCacheConfig(coalesce=False, semantic=SemanticCacheConfig(threshold=threshold, guards=guard))


async def fill(cache: ResponseCache, texts: list[str], answers: list[str], tenants: list[str] | None = None) -> None:
    settings = route(DEFAULT_THRESHOLD, True, 0.0)
    for index, (text, answer) in enumerate(zip(texts, answers)):
        lookup = await cache.lookup(request(text, tenants[index] if tenants else "eval", refresh=True), settings)
        await cache.store(lookup, 200, [("content-type", "text/plain")], answer.encode())


async def query(cache: ResponseCache, texts: list[str], settings: PoolCacheConfig,
                tenants: list[str] | None = None) -> list[tuple[str | None, float | None]]:
    """Per query: the hit entry's text (``None`` for a miss) and its similarity."""
    found = []
    for index, text in enumerate(texts):
        lookup = await cache.lookup(request(text, tenants[index] if tenants else "eval"), settings)
        hit = lookup.hit
        found.append((None, None) if hit is None else (hit.entry.text or text, hit.similarity))
    return found


def load(source: Path) -> tuple[list, list, list]:
    return tuple(json.loads((source / name).read_text())
                 for name in ("mock_data.json", "qqp_pairs_5k.json", "qqp_negatives_5k.json"))


def split_clusters(pairs: list[dict], seed: int) -> tuple[list[dict], list[dict]]:
    clusters = sorted({pair["cluster"] for pair in pairs})
    random.Random(seed).shuffle(clusters)
    cached = set(clusters[:len(clusters) // 2])
    return [p for p in pairs if p["cluster"] in cached], [p for p in pairs if p["cluster"] not in cached]


async def evaluate(args: argparse.Namespace) -> dict:
    mock, qqp, negatives = load(Path(args.source))
    texts = {t.strip() for x in mock for t in (x["origin"], x["similar"])}
    texts |= {t.strip() for x in qqp for t in (x["origin"], x["similar"])}
    texts |= {t.strip() for x in negatives for t in (x["text_a"], x["text_b"])}
    started = time.perf_counter()
    name, table = embed_table(texts, args.embedder == "int8", args.vectors)
    print(f"embedded {len(table)} texts with {name} in {time.perf_counter() - started:.0f}s", file=sys.stderr)

    def new_cache() -> ResponseCache:
        return ResponseCache(MemoryStore(10**7, 2**34), embedders={"inprocess": TableEmbedder(name, table)})

    caches = {name: new_cache() for name in ("mock", "heldout", "positives", "negatives")}
    cached_half, query_half = split_clusters(qqp, args.seed)
    await fill(caches["mock"], [x["origin"] for x in mock], [x["origin"] for x in mock])
    await fill(caches["heldout"], [x["origin"] for x in cached_half], [str(x["cluster"]) for x in cached_half])
    await fill(caches["positives"], [x["origin"] for x in qqp], [str(x["cluster"]) for x in qqp])
    pair_tenants = [f"pair{x['idx']}" for x in negatives]
    await fill(caches["negatives"], [x["text_a"] for x in negatives], ["a"] * len(negatives), pair_tenants)
    cluster_of = {x["origin"].strip(): x["cluster"] for x in qqp}

    rows = []
    for threshold in args.threshold_list:
        settings = route(threshold, not args.no_guards, args.margin)
        row = {"threshold": round(threshold, 4)}
        found = await query(caches["mock"], [x["similar"] for x in mock], settings)
        hits = [(f, x) for f, x in zip(found, mock) if f[0] is not None]
        wrong = sum(1 for (text, _), x in hits if text != x["origin"].strip())
        row["mock"] = {"queries": len(mock), "hits": len(hits), "correct": len(hits) - wrong, "wrong": wrong,
                       "misses": len(mock) - len(hits)}
        found = await query(caches["heldout"], [x["similar"] for x in query_half], settings)
        row["qqp_heldout"] = {"queries": len(query_half), "false_hits": sum(f[0] is not None for f in found)}
        found = await query(caches["positives"], [x["similar"] for x in qqp], settings)
        pos_hits = [(f, x) for f, x in zip(found, qqp) if f[0] is not None]
        pos_wrong = sum(1 for (text, _), x in pos_hits if cluster_of.get(text) != x["cluster"])
        row["qqp_positives"] = {"queries": len(qqp), "hits": len(pos_hits), "wrong": pos_wrong}
        found = await query(caches["negatives"], [x["text_b"] for x in negatives], settings, pair_tenants)
        row["qqp_negatives"] = {"pairs": len(negatives), "hits": sum(f[0] is not None for f in found)}
        rows.append(row)
        print(format_row(row), flush=True)
    return {"embedder": name, "guards": not args.no_guards, "ambiguity_margin": args.margin, "seed": args.seed,
            "machine": f"{platform.processor() or platform.machine()}, {platform.python_version()}",
            "date": time.strftime("%Y-%m-%d"), "rows": rows}


def format_row(row: dict) -> str:
    mock, held, pos, neg = row["mock"], row["qqp_heldout"], row["qqp_positives"], row["qqp_negatives"]
    return (f"{row['threshold']:.3f} | mock {mock['hits']:4d} hit {100 * mock['hits'] / mock['queries']:5.1f}% "
            f"correct {mock['correct']:4d} wrong {mock['wrong']:3d} ({100 * mock['wrong'] / max(mock['hits'], 1):4.2f}%"
            f" of hits) miss {mock['misses']:4d} | qqp held-out false {held['false_hits']:3d} "
            f"({100 * held['false_hits'] / held['queries']:4.2f}%) | hard negatives hit {neg['hits']:4d} "
            f"({100 * neg['hits'] / neg['pairs']:4.2f}%) | qqp dup hit {100 * pos['hits'] / pos['queries']:5.1f}% "
            f"wrong {100 * pos['wrong'] / max(pos['hits'], 1):4.2f}%")


def thresholds(text: str) -> list[float]:
    if ":" not in text:
        return [float(part) for part in text.split(",")]
    start, stop, step = (float(part) for part in text.split(":"))
    return list(np.round(np.arange(start, stop + step / 2, step), 4))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", default=str(SHARED), help="folder of the three JSON files (default: shared)")
    parser.add_argument("--embedder", choices=("int8", "fp32"), default="int8")
    parser.add_argument("--thresholds", default=f"{DEFAULT_THRESHOLD},0.80:0.96:0.02")
    parser.add_argument("--margin", type=float, default=GuardsConfig().ambiguity_margin)
    parser.add_argument("--no-guards", action="store_true")
    parser.add_argument("--seed", type=int, default=0, help="cluster split seed")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--vectors", help="an .npz that keeps the embeddings between runs")
    args = parser.parse_args()
    args.threshold_list = thresholds(args.thresholds.split(",", 1)[0]) + (
        thresholds(args.thresholds.split(",", 1)[1]) if "," in args.thresholds else [])
    result = asyncio.run(evaluate(args))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
