"""Which pool serves a request: KServe model name first (a dictionary lookup), then each
pool's host/path/header rules in file order, then the default pool."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lbd.config.model import MatchConfig

if TYPE_CHECKING:
    from lbd.proxy.exchange import Exchange
    from lbd.proxy.pool import Pool

__all__ = ["Router", "model_name"]

_MODELS = "/v2/models/"


def model_name(path: str) -> str | None:
    """``minilm`` from ``/v2/models/minilm[/versions/1]/infer``; ``None`` for other paths."""
    if not path.startswith(_MODELS):
        return None
    return path[len(_MODELS):].partition("/")[0] or None


class Router:
    __slots__ = ("by_model", "rules", "default")

    def __init__(self, pools: dict[str, Pool], default: str | None) -> None:
        self.by_model: dict[str, tuple[Pool, MatchConfig]] = {}
        self.rules: list[tuple[Pool, MatchConfig]] = []
        for pool in pools.values():
            match = pool.config.match
            for model in match.models:
                self.by_model[model] = (pool, match)
            if not match.models and not match.is_empty:
                self.rules.append((pool, match))
        self.default = pools[default] if default is not None else None

    def route(self, request: Exchange) -> Pool | None:
        if self.by_model:
            name = model_name(request.path)
            if name is not None:
                entry = self.by_model.get(name)
                if entry is not None and _other_conditions_hold(entry[1], request):
                    return entry[0]
        for pool, match in self.rules:
            if _other_conditions_hold(match, request):
                return pool
        return self.default


def _other_conditions_hold(match: MatchConfig, request: Exchange) -> bool:
    if match.path_prefix is not None and not request.path.startswith(match.path_prefix):
        return False
    if match.host is not None and not _host_matches(match.host, request.host):
        return False
    for name, value in match.headers.items():
        if request.header(name) != value:
            return False
    return True


def _host_matches(pattern: str, host: str) -> bool:
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return host == pattern
