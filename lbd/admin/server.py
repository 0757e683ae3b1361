"""The admin listener: the admin application on its own address (``admin.address``)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web

from lbd.admin.app import build_app
from lbd.admin.auth import is_loopback
from lbd.admin.base import Control, Purger
from lbd.admin.client import connect_host, format_address
from lbd.config.model import parse_address
from lbd.metrics import Metrics

__all__ = ["AdminServer", "AdminRefused"]

log = logging.getLogger("lbd.admin")


class AdminRefused(RuntimeError):
    """The admin listener would be reachable from elsewhere without a token."""


class AdminServer:
    """Binds ``control.config.admin.address`` (read at :meth:`start`; a changed address takes
    a restart, a changed token file applies at once)."""

    def __init__(self, control: Control, metrics: Metrics, *,
                 cache: Callable[[], Purger | None] = lambda: None) -> None:
        self._control = control
        self._metrics = metrics
        self._cache = cache
        self._runner: web.AppRunner | None = None
        self.bound: list[tuple[str, int]] = []

    async def start(self) -> None:
        admin = self._control.config.admin
        host, port = parse_address(admin.address, default_host="127.0.0.1")
        off_loopback = not is_loopback(host)
        if off_loopback and admin.token_file is None:
            raise AdminRefused(f"admin.address {admin.address!r} is not a loopback address: "
                               "set admin.token_file, or bind it to 127.0.0.1")
        app = build_app(self._control, self._metrics, cache=self._cache, off_loopback=off_loopback)
        # No aiohttp access log: the admin API logs its actions itself, without headers.
        self._runner = runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port, reuse_address=True).start()
        except OSError:
            self._runner = None
            await runner.cleanup()
            raise
        self.bound = [tuple(address[:2]) for address in runner.addresses]
        log.info("admin listening", extra={"address": f"{host}:{self.bound[0][1]}",
                                              "auth": "bearer" if admin.token_file else "none"})

    @property
    def url(self) -> str:
        host, port = self.bound[0]
        return f"http://{format_address(connect_host(host), port)}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

