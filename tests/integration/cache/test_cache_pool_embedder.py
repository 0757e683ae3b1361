"""Embedding through a real KServe worker pool (``embedder: {pool: minilm}``)."""

from __future__ import annotations

import asyncio

import numpy as np
import orjson

from lbd.cache import RequestInfo, ResponseCache
from lbd.cache.embedder import InProcessEmbedder, PoolEmbedder
from lbd.cache.memory import MemoryStore
from lbd.config.cache import PoolCacheConfig

ROUTE = PoolCacheConfig.model_validate({"semantic": {"embedder": {"pool": "minilm", "timeout": "2s"}}})


def kserve(text: str) -> RequestInfo:
    body = orjson.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}]})
    return RequestInfo("llm", "m", "1", "POST", "/v2/models/m/infer", {}, body)


def test_the_pool_embeds_like_the_in_process_model(minilm_worker: str, embedder: InProcessEmbedder) -> None:
    text = "How do I reset my password?"
    async def scenario() -> None:
        pool = PoolEmbedder(minilm_worker, "minilm", timeout=2.0)
        remote = await pool.embed(text)
        await pool.close()
        assert remote.shape == (384,) and abs(float(np.linalg.norm(remote)) - 1) < 1e-4
        assert float(remote @ await embedder.embed(text)) > 0.95  # the int8 copy, nearly the same
    asyncio.run(scenario())


def test_a_route_that_embeds_through_the_pool_hits_semantically(minilm_worker: str) -> None:
    async def scenario() -> None:
        cache = ResponseCache(MemoryStore(), pool_embedder=lambda pool, model, timeout: PoolEmbedder(
            minilm_worker, model or pool, timeout=timeout))
        lookup = await cache.lookup(kserve("How do I reset my password?"), ROUTE)
        assert lookup.hit is None and lookup.reason == "semantic:no-candidate"
        await cache.store(lookup, 200, [("content-type", "application/json")], b"reset")
        paraphrase = await cache.lookup(kserve("How can I reset my password?"), ROUTE)
        assert paraphrase.hit.kind == "hit-semantic" and paraphrase.hit.body == b"reset"
        await cache.close()
    asyncio.run(scenario())
