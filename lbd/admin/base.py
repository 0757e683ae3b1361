"""What the admin API drives, stated as protocols: the daemon, and the cache's purge."""

from __future__ import annotations

from collections.abc import Awaitable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from lbd.admin.reload import ReloadResult
    from lbd.config.model import Config
    from lbd.proxy.server import ProxyServer

__all__ = ["Control", "Purger"]


class Control(Protocol):
    """The daemon (``lbd.daemon.Daemon``) as the admin API sees it."""

    config: Config
    """The config in use; its ``admin`` section names the token file."""
    config_path: Path | None
    proxy: ProxyServer | None
    """The data plane; ``proxy.runtime`` is the runtime serving new requests."""
    last_reload_errors: list[str]
    """Why the last reload was refused (path-named config errors); empty after a success."""

    async def reload(self) -> ReloadResult | bool:
        """Load the config file again and apply it whole or not at all: True when it applied
        (or a :class:`~lbd.admin.reload.ReloadResult`, which says so itself)."""
        ...


class Purger(Protocol):
    """The response cache, as far as purging goes."""

    def purge(self, pool: str | None = None, model: str | None = None,
              tenant: str | None = None) -> int | Awaitable[int]:
        """Drop the entries matching every given filter (all entries when none is given);
        return how many were dropped. May be a coroutine (a Redis store)."""
        ...
