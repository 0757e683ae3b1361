"""Typed config of the response cache: the shared store (top-level ``cache:``) and what each
pool caches (``pools.NAME.cache:``).

Each model is frozen and forbids unknown keys; defaults are filled first, then checked, and
every error names the key. Writing a ``semantic:`` section turns the semantic cache on (its
``enabled`` defaults to true); a pool that omits it has only the exact cache.

The semantic threshold's default, 0.92 cosine, comes from the sweep in
``bench/cache/RESULTS.md`` (measured through ``lbd serve``): with the guards and the ambiguity
margin it is the lowest threshold that keeps false hits within the targets (QQP held-out
<= 1%, hard negatives <= 3%, mock wrong <= 2% of hits). It does not reach the 80% paraphrase
hit rate on the mock set (54%), and no general rule tried there did; a route whose traffic is
like that set (documentation sentences) can set 0.82 for 80% at 1.5% wrong, at the price of
~4% false hits on short unrelated questions and ~9% on near-miss ones.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lbd.units import Duration, Size

__all__ = [
    "CacheConfig", "InProcessEmbedderConfig", "MemoryStoreConfig", "RedisStoreConfig", "ReconnectConfig", "IndexConfig",
    "PoolCacheConfig", "ExactCacheConfig", "SemanticCacheConfig", "GuardsConfig", "PoolEmbedderConfig",
    "TenantConfig", "DEFAULT_THRESHOLD",
]

DEFAULT_THRESHOLD = 0.92
"""Cosine similarity a paraphrase needs, MiniLM embeddings (see bench/cache/RESULTS.md)."""


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _header_name(value: str) -> str:
    if not value or any(c in value for c in " :\t\r\n"):
        raise ValueError(f"not a header name: {value!r}")
    return value.lower()


class MemoryStoreConfig(_Strict):
    """The in-process store: an LRU bounded by ``max_entries`` (default 100000) and
    ``max_bytes`` (default 256MiB, bodies and headers counted), whichever is reached first."""

    max_entries: int = Field(100_000, ge=1)
    max_bytes: Size = Field(256 * 1024**2, ge=1024)


class ReconnectConfig(_Strict):
    """Backoff between tries to reach a Redis that is down: ``base`` 100ms doubling up to
    ``max`` 5s, with full jitter."""

    base: Duration = Field(0.1, gt=0)
    max: Duration = 5.0

    @model_validator(mode="after")
    def _check(self) -> ReconnectConfig:
        if self.max < self.base:
            raise ValueError(f"max ({self.max:g}s) must be >= base ({self.base:g}s)")
        return self


class RedisStoreConfig(_Strict):
    """The shared store, used when ``store`` is a ``redis://`` or ``rediss://`` URL.

    Defaults: ``key_prefix`` ``lbd:cache:`` (instances with the same prefix share entries),
    ``operation_timeout`` 50ms (a slower answer counts as an error and the request goes on
    upstream), ``reconnect`` {base 100ms, max 5s}, ``stream_max_len`` 100000 (the additions
    stream others follow; an instance further behind than that reloads the whole index).
    Size Redis itself with ``maxmemory`` and an ``allkeys-lru`` or ``volatile-lru`` policy.
    """

    key_prefix: str = Field("lbd:cache:", min_length=1)
    operation_timeout: Duration = Field(0.05, gt=0)
    reconnect: ReconnectConfig = ReconnectConfig()
    stream_max_len: int = Field(100_000, ge=100)

    @field_validator("key_prefix")
    @classmethod
    def _no_glob(cls, value: str) -> str:
        if any(c in value for c in "*?[]\\ "):
            raise ValueError(f"a key prefix may not hold glob characters or spaces: {value!r}")
        return value


class IndexConfig(_Strict):
    """The vector index of the semantic cache: exact (numpy, about 0.6 ms at the bound) while
    a partition holds at most ``hnsw_above`` (default 10000) texts, an HNSW graph beyond
    (``hnsw_m`` 16, ``hnsw_ef_search`` 64, ``hnsw_ef_construction`` 128)."""

    hnsw_above: int = Field(10_000, ge=1)
    hnsw_m: int = Field(16, ge=4, le=64)
    hnsw_ef_search: int = Field(64, ge=8)
    hnsw_ef_construction: int = Field(128, ge=8)


class InProcessEmbedderConfig(_Strict):
    """MiniLM in the proxy's process: ``quantized`` (default true) runs the int8 copy, about
    3 ms a sentence on one core instead of 7, with a few points fewer paraphrase hits at the
    same threshold (bench/cache/RESULTS.md); ``threads`` (default 1) ONNX Runtime threads."""

    quantized: bool = True
    threads: int = Field(1, ge=1, le=16)


class CacheConfig(_Strict):
    """The top-level ``cache:`` section: where entries live.

    ``store``: ``memory`` (default: this process only) or a Redis URL
    (``redis://host:6379/0``), shared by every lbd instance that names it. ``memory`` and
    ``redis`` hold each store's settings; ``index`` the semantic index's; ``embedder`` the
    in-process embedder's (``quantized`` true, ``threads`` 1). ``max_entry_size`` (default
    1MiB): larger responses are not stored (a big write to Redis would outlast the operation
    timeout).
    """

    store: str = "memory"
    memory: MemoryStoreConfig = MemoryStoreConfig()
    redis: RedisStoreConfig = RedisStoreConfig()
    index: IndexConfig = IndexConfig()
    embedder: InProcessEmbedderConfig = InProcessEmbedderConfig()
    max_entry_size: Size = Field(1024**2, ge=1)

    @field_validator("store")
    @classmethod
    def _known_store(cls, value: str) -> str:
        if value != "memory" and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"store must be 'memory' or a redis:// URL, not {value!r}")
        return value

    @property
    def is_redis(self) -> bool:
        return self.store != "memory"


class ExactCacheConfig(_Strict):
    """Answers for byte-for-byte equal requests (after canonicalization). Defaults:
    ``enabled`` true, ``ttl`` 1h (a backend's ``max-age``/``s-maxage`` shortens it)."""

    enabled: bool = True
    ttl: Duration = Field(3600.0, gt=0)


class GuardsConfig(_Strict):
    """Rules that decline a semantic hit (see ``lbd.cache.guards``); all on by default:
    ``negation``, ``numbers``, ``entities``, ``question``. ``ambiguity_margin`` (default 0.015): when
    another cached text scores higher than the best acceptable one, or less than this below
    it, the query is ambiguous and misses; 0 turns the rule off."""

    negation: bool = True
    numbers: bool = True
    entities: bool = True
    question: bool = True
    ambiguity_margin: float = Field(0.015, ge=0.0, le=0.2)

    @property
    def enabled(self) -> tuple[str, ...]:
        return tuple(name for name in ("negation", "numbers", "entities", "question") if getattr(self, name))


class PoolEmbedderConfig(_Strict):
    """Embed with a pool of KServe workers instead of in process: ``pool`` (its name),
    ``model`` (default: the pool's name), ``timeout`` 200ms (on expiry the lookup misses)."""

    pool: str
    model: str | None = None
    timeout: Duration = Field(0.2, gt=0)


class SemanticCacheConfig(_Strict):
    """Answers for paraphrases: the request's text is embedded (MiniLM) and compared with the
    texts cached for the same pool, model, tenant and context.

    Defaults: ``enabled`` true once the section is written, ``threshold`` 0.92 cosine,
    ``ttl`` 1h, ``embedder`` ``inprocess`` (or ``{pool: NAME}``), ``max_text_chars`` 2000
    (longer texts use the exact cache only: MiniLM reads 256 tokens), ``guards`` all on,
    ``candidates`` 4 (nearest entries checked against the guards).
    """

    enabled: bool = True
    threshold: float = Field(DEFAULT_THRESHOLD, gt=0.0, le=1.0)
    ttl: Duration = Field(3600.0, gt=0)
    embedder: Literal["inprocess"] | PoolEmbedderConfig = "inprocess"
    max_text_chars: int = Field(2000, ge=1)
    guards: GuardsConfig = GuardsConfig()
    candidates: int = Field(4, ge=1, le=64)


class TenantConfig(_Strict):
    """Who a request belongs to; entries never cross tenants. ``header`` (default none): a
    header naming the tenant (set by an auth layer in front). ``from_api_key`` (default true):
    otherwise the API key (``Authorization``, ``x-api-key``, ``api-key``) is the tenant, kept
    only as a hash. A request with neither shares the anonymous partition."""

    header: str | None = None
    from_api_key: bool = True

    @field_validator("header")
    @classmethod
    def _lower(cls, value: str | None) -> str | None:
        return None if value is None else _header_name(value)


class PoolCacheConfig(_Strict):
    """What a pool caches (``pools.NAME.cache``).

    Defaults: ``enabled`` true; ``exact`` {enabled, ttl 1h}; ``semantic`` off (write the
    section to turn it on); ``tenant`` {header none, from_api_key true}; ``stale_if_error``
    none (a duration: expired entries are kept that much longer and served, marked stale,
    when every try upstream failed); ``vary_headers`` [] (request headers that are part of
    the key); ``coalesce`` true (identical requests in flight wait for the first one's
    answer); ``coalesce_timeout`` 30s (longest a follower waits before going upstream itself).
    """

    enabled: bool = True
    exact: ExactCacheConfig = ExactCacheConfig()
    semantic: SemanticCacheConfig = SemanticCacheConfig(enabled=False)
    tenant: TenantConfig = TenantConfig()
    stale_if_error: Duration | None = Field(None, gt=0)
    vary_headers: list[str] = Field(default_factory=list)
    coalesce: bool = True
    coalesce_timeout: Duration = Field(30.0, gt=0)

    @field_validator("vary_headers")
    @classmethod
    def _headers(cls, value: list[str]) -> list[str]:
        return sorted({_header_name(name) for name in value})
