"""The embedders a runtime's routes name, made once and shared by every route.

A route names ``inprocess`` or ``{pool: NAME, model: M}``; :class:`Embedders` turns that into
an :class:`Embedder`, making it on first use: ``inprocess()`` (default: the int8 MiniLM on one
thread) or ``pool_embedder(pool, model, timeout)`` (the data plane knows the pools' URLs;
typically an ``embedder.PoolEmbedder``). Embedders handed in ready-made belong to the caller;
those made here are closed here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from lbd.cache.base import Embedder
from lbd.config.cache import PoolCacheConfig, PoolEmbedderConfig

__all__ = ["Embedders", "EmbedderSpec", "spec_name"]

EmbedderSpec = str | PoolEmbedderConfig


def spec_name(spec: EmbedderSpec) -> str:
    """``inprocess`` or ``pool:NAME`` (``pool:NAME/MODEL`` when the model is named): the key
    an embedder is kept under."""
    if isinstance(spec, str):
        return spec
    return f"pool:{spec.pool}" if spec.model is None else f"pool:{spec.pool}/{spec.model}"


class Embedders:
    def __init__(self, given: Mapping[str, Embedder] | None = None, *,
                 inprocess: Callable[[], Embedder] | None = None,
                 pool_embedder: Callable[[str, str | None, float], Embedder] | None = None) -> None:
        self._embedders: dict[str, Embedder] = dict(given or {})
        self._inprocess = inprocess or _default_inprocess
        self._pool_embedder = pool_embedder
        self._owned: list[Embedder] = []

    def get(self, spec: EmbedderSpec) -> Embedder:
        """The embedder for ``spec``, made now if needed (the in-process one loads its model:
        call :meth:`warm` at start-up so no request waits for that)."""
        name = spec_name(spec)
        embedder = self._embedders.get(name)
        if embedder is None:
            if isinstance(spec, str):
                embedder = self._inprocess()
            elif self._pool_embedder is not None:
                embedder = self._pool_embedder(spec.pool, spec.model, spec.timeout)
            else:
                raise LookupError(f"no embedder for {name}: the data plane gave no pool_embedder")
            self._embedders[name] = embedder
            self._owned.append(embedder)
        return embedder

    def name_of(self, spec: EmbedderSpec) -> str:
        """What the vectors come from, for partitions: the model variant, not just the route's word."""
        return getattr(self.get(spec), "name", spec_name(spec))

    def warm(self, routes: Iterable[PoolCacheConfig]) -> None:
        for route in routes:
            if route.enabled and route.semantic.enabled:
                self.get(route.semantic.embedder)

    async def close(self) -> None:
        for embedder in self._owned:
            await embedder.close()
        self._owned.clear()


def _default_inprocess() -> Embedder:
    from lbd.cache.embedder import InProcessEmbedder

    return InProcessEmbedder()
