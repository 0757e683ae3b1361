"""The cache config: defaults, the semantic section switch, errors that name the key."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from lbd.config.cache import DEFAULT_THRESHOLD, CacheConfig, PoolCacheConfig


def test_defaults() -> None:
    config = CacheConfig()
    assert config.store == "memory" and not config.is_redis
    assert config.memory.max_entries == 100_000 and config.memory.max_bytes == 256 * 1024**2
    assert config.redis.operation_timeout == 0.05 and config.redis.key_prefix == "lbd:cache:"
    pool = PoolCacheConfig()
    assert pool.exact.enabled and pool.exact.ttl == 3600 and not pool.semantic.enabled
    assert pool.coalesce and pool.stale_if_error is None and pool.tenant.from_api_key


def test_writing_a_semantic_section_turns_it_on() -> None:
    pool = PoolCacheConfig.model_validate({"exact": {"ttl": "10m"}, "semantic": {"threshold": 0.93}})
    assert pool.semantic.enabled and pool.semantic.threshold == 0.93 and pool.exact.ttl == 600
    assert PoolCacheConfig.model_validate({"semantic": {}}).semantic.threshold == DEFAULT_THRESHOLD
    assert PoolCacheConfig.model_validate({"semantic": {"enabled": False}}).semantic.enabled is False


def test_embedder_is_inprocess_or_a_pool() -> None:
    assert PoolCacheConfig.model_validate({"semantic": {}}).semantic.embedder == "inprocess"
    pool = PoolCacheConfig.model_validate({"semantic": {"embedder": {"pool": "minilm", "timeout": "100ms"}}})
    assert pool.semantic.embedder.pool == "minilm" and pool.semantic.embedder.timeout == 0.1


def test_redis_store_and_units() -> None:
    config = CacheConfig.model_validate({"store": "redis://127.0.0.1:6379/0", "memory": {"max_bytes": "1GiB"},
                                         "redis": {"operation_timeout": "20ms", "reconnect": {"max": "2s"}}})
    assert config.is_redis and config.memory.max_bytes == 1024**3 and config.redis.operation_timeout == 0.02


@pytest.mark.parametrize("document, where", [
    ({"store": "memcached://x"}, "store"),
    ({"memory": {"max_entries": 0}}, "memory.max_entries"),
    ({"redis": {"key_prefix": "a*"}}, "redis.key_prefix"),
    ({"redis": {"reconnect": {"base": "2s", "max": "1s"}}}, "redis.reconnect"),
    ({"unknown": 1}, "unknown"),
])
def test_cache_errors_name_the_key(document: dict, where: str) -> None:
    with pytest.raises(ValidationError) as error:
        CacheConfig.model_validate(document)
    assert where in str(error.value).replace("\n", ".").replace(" ", "")


@pytest.mark.parametrize("document, where", [
    ({"semantic": {"threshold": 1.5}}, "semantic.threshold"),
    ({"semantic": {"embedder": "remote"}}, "semantic.embedder"),
    ({"semantic": {"guards": {"spelling": True}}}, "semantic.guards.spelling"),
    ({"vary_headers": ["bad header"]}, "vary_headers"),
    ({"stale_if_error": "soon"}, "stale_if_error"),
    ({"exact": {"ttl": 0}}, "exact.ttl"),
])
def test_pool_errors_name_the_key(document: dict, where: str) -> None:
    with pytest.raises(ValidationError) as error:
        PoolCacheConfig.model_validate(document)
    assert where in str(error.value).replace("\n", ".").replace(" ", "")


def test_vary_headers_are_lower_cased_and_sorted() -> None:
    assert PoolCacheConfig(vary_headers=["X-B", "x-a", "X-A"]).vary_headers == ["x-a", "x-b"]
