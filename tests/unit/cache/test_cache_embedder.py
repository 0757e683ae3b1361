"""The in-process MiniLM: unit vectors, paraphrases close, concurrent calls alike, repeats and abandoned work."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest


def test_embeddings_are_unit_vectors_and_paraphrases_are_close(embedder) -> None:
    async def scenario() -> None:
        a = await embedder.embed("How do I reset my password?")
        b = await embedder.embed("How can I reset my password?")
        c = await embedder.embed("What is the capital of Peru?")
        assert a.shape == (384,) and a.dtype == np.float32
        assert abs(float(np.linalg.norm(a)) - 1.0) < 1e-4
        assert float(a @ b) > 0.9 > 0.3 > float(a @ c)
    asyncio.run(scenario())


def test_concurrent_calls_give_the_same_vectors_as_single_ones(embedder) -> None:
    texts = [f"question number {n} about caching" for n in range(12)]
    async def scenario() -> None:
        together = await asyncio.gather(*[embedder.embed(text) for text in texts])
        alone = [await embedder.embed(text) for text in texts]
        for batched, single in zip(together, alone):
            assert float(batched @ single) > 0.999  # padding in a batch changes nothing that matters
    asyncio.run(scenario())


def test_the_int8_model_agrees_with_the_float_one(embedder, cache_model_dir) -> None:
    from lbd.cache.embedder import InProcessEmbedder

    exact = InProcessEmbedder(quantized=False, model_dir=cache_model_dir)
    text = "The `select` method creates a new table with the specified columns."
    assert float(exact.embed_many([text])[0] @ embedder.embed_many([text])[0]) > 0.95
    assert embedder.name == "minilm-int8" and exact.name == "minilm"


def test_a_repeated_text_is_not_embedded_again(cache_model_dir) -> None:
    from lbd.cache.embedder import InProcessEmbedder

    embedder = InProcessEmbedder(model_dir=cache_model_dir, remember=2)
    async def scenario() -> list[np.ndarray]:
        return [await embedder.embed(text) for text in ("first text", "second text", "first text",
                                                         "third text", "second text")]
    first, second, again, _, evicted = asyncio.run(scenario())
    assert again is first and float(evicted @ second) > 0.9999
    assert embedder.runs == 4  # "second text" fell out of the two remembered and ran again
    asyncio.run(embedder.close())


def test_texts_nobody_waits_for_any_more_are_not_embedded(cache_model_dir) -> None:
    """A burst whose callers gave up (their lookup timed out) must not hold up live requests."""
    from lbd.cache.embedder import InProcessEmbedder

    embedder = InProcessEmbedder(model_dir=cache_model_dir, remember=0)
    async def scenario() -> np.ndarray:
        abandoned = [asyncio.create_task(embedder.embed(f"abandoned text {n}")) for n in range(40)]
        live = asyncio.create_task(embedder.embed("the one that still waits"))
        await asyncio.sleep(0)  # every call is queued; the embedder's drain has not run yet
        for task in abandoned:
            task.cancel()
        return await live
    vector = asyncio.run(scenario())
    assert vector.shape == (384,)
    assert embedder.runs <= 2  # the live one, and at most one the thread took before the cancels
    asyncio.run(embedder.close())


def test_a_closed_embedder_refuses_at_once(cache_model_dir) -> None:
    from lbd.cache.embedder import EmbedderError, InProcessEmbedder

    embedder = InProcessEmbedder(model_dir=cache_model_dir)
    async def scenario() -> None:
        await embedder.close()
        with pytest.raises(EmbedderError):
            await asyncio.wait_for(embedder.embed("too late"), 5)
    asyncio.run(scenario())
