"""The admin API: an aiohttp application on its own listener.

    GET  /admin/backends                          pools and backends, state and why
    POST /admin/backends/{pool}/{backend}/drain   take a backend out of rotation (and undrain)
    POST /admin/reload                            apply the config file again
    POST /admin/cache/purge                       drop cached answers (JSON or query: pool, model, tenant)
    GET  /admin/config                            the effective config, secrets masked
    GET  /admin/summary                           totals for the status page
    GET  /metrics                                 Prometheus
    GET  /status                                  the live status page (HTML)
    GET  /healthz                                 liveness
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from lbd.admin.auth import TokenFile, auth_middleware
from lbd.admin.base import Control, Purger
from lbd.admin.reload import ReloadResult, config_changes
from lbd.admin.status_page import STATUS_PAGE
from lbd.admin.views import backends_view, backend_view, masked_config, summary_view
from lbd.metrics import Metrics

if TYPE_CHECKING:
    from lbd.runtime import Runtime

__all__ = ["build_app", "PURGE_FILTERS"]

log = logging.getLogger("lbd.admin")
PURGE_FILTERS = ("pool", "model", "tenant")


def build_app(control: Control, metrics: Metrics, *, cache: Callable[[], Purger | None] = lambda: None,
              off_loopback: bool = False) -> web.Application:
    """The admin application over ``control`` (the daemon). ``cache`` returns the cache in use,
    or ``None`` when none is configured; ``off_loopback``: the listener is reachable from
    elsewhere, so a token is required even when none is configured (then nothing passes)."""
    admin = _Admin(control, metrics, cache)
    app = web.Application(middlewares=[auth_middleware(admin.tokens, off_loopback)])
    app.add_routes([
        web.get("/admin/backends", admin.backends),
        web.post("/admin/backends/{pool}/{backend:.+}/drain", admin.drain),
        web.post("/admin/backends/{pool}/{backend:.+}/undrain", admin.undrain),
        web.post("/admin/reload", admin.reload),
        web.post("/admin/cache/purge", admin.purge),
        web.get("/admin/config", admin.config),
        web.get("/admin/summary", admin.summary),
        web.get("/metrics", admin.metrics),
        web.get("/status", admin.status),
        web.get("/healthz", admin.healthz),
    ])
    return app


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


class _Admin:
    def __init__(self, control: Control, metrics: Metrics, cache: Callable[[], Purger | None]) -> None:
        self._control = control
        self._metrics = metrics
        self._cache = cache
        self._reloading = asyncio.Lock()
        self._tokens = TokenFile(None)

    def tokens(self) -> TokenFile:
        """The token file the config in use names (a reload may name another)."""
        path = self._control.config.admin.token_file
        if self._tokens.path != path:
            self._tokens = TokenFile(path)
        return self._tokens

    def _runtime(self) -> Runtime:
        proxy = self._control.proxy
        if proxy is None:
            raise web.HTTPServiceUnavailable(text='{"error": "starting"}', content_type="application/json")
        return proxy.runtime

    # -- backends ------------------------------------------------------------------------
    async def backends(self, request: web.Request) -> web.Response:
        return web.json_response(backends_view(self._runtime()))

    async def drain(self, request: web.Request) -> web.Response:
        return self._set_drained(request, True)

    async def undrain(self, request: web.Request) -> web.Response:
        return self._set_drained(request, False)

    def _set_drained(self, request: web.Request, drained: bool) -> web.Response:
        runtime = self._runtime()
        pool_name, name = request.match_info["pool"], request.match_info["backend"]
        pool = runtime.pools.get(pool_name)
        if pool is None:
            return _error(404, f"no pool named {pool_name!r}", pools=sorted(runtime.pools))
        backend = next((b for b in pool.backends if b.name == name), None)
        if backend is None:
            return _error(404, f"pool {pool_name!r} has no backend named {name!r}",
                          backends=[b.name for b in pool.backends])
        backend.drained = drained  # requests in flight finish; new ones go elsewhere
        pool.refresh()
        log.info("backend drained" if drained else "backend undrained",
                 extra={"pool": pool_name, "backend": name, "remote": request.remote})
        outlier = pool.outlier.snapshot()["backends"].get(name, {})
        health = pool.checker.snapshot()["backends"].get(name) if pool.checker is not None else None
        return web.json_response({"pool": pool_name, **backend_view(pool, backend, outlier, health)})

    # -- reload --------------------------------------------------------------------------
    async def reload(self, request: web.Request) -> web.Response:
        async with self._reloading:  # one at a time, so each reports its own changes
            try:
                result = await self._reload()
            except Exception as exc:  # a bug while building must answer, not hang the CLI
                log.exception("reload through the admin API failed")
                return _error(500, f"reload failed: {exc}", ok=False)
        log.info("reload requested", extra={"remote": request.remote, "ok": result.ok})
        return web.json_response(result.to_json(), status=200 if result.ok else 422)

    async def _reload(self) -> ReloadResult:
        control = self._control
        before = control.config
        outcome = await control.reload()
        if isinstance(outcome, ReloadResult):
            return outcome
        if outcome:
            return ReloadResult.applied(config_changes(before, control.config))
        if control.config_path is None:
            return ReloadResult.refused(["lbd runs without a config file: there is nothing to reload"])
        return ReloadResult.refused(control.last_reload_errors or ["refused; the daemon's log says why"])

    # -- cache ---------------------------------------------------------------------------
    async def purge(self, request: web.Request) -> web.Response:
        cache = self._cache()
        if cache is None:
            return _error(404, "no cache configured")
        filters = await _purge_filters(request)
        if isinstance(filters, web.Response):
            return filters
        pool = filters.get("pool")
        if pool is not None and pool not in self._runtime().pools:
            return _error(404, f"no pool named {pool!r}")
        purged = cache.purge(**filters)
        if inspect.isawaitable(purged):
            purged = await purged
        log.info("cache purged", extra={**filters, "purged": purged, "remote": request.remote})
        return web.json_response({"purged": purged, **filters})

    # -- views ---------------------------------------------------------------------------
    async def config(self, request: web.Request) -> web.Response:
        path = self._control.config_path
        return web.json_response({"path": str(path) if path is not None else None,
                                  "config": masked_config(self._control.config)})

    async def summary(self, request: web.Request) -> web.Response:
        return web.json_response(summary_view(self._runtime(), self._metrics))

    async def metrics(self, request: web.Request) -> web.Response:
        body, content_type = self._metrics.render(request.headers.get("Accept"))
        response = web.Response(body=body)
        response.headers["Content-Type"] = content_type
        return response

    async def status(self, request: web.Request) -> web.Response:
        return web.Response(text=STATUS_PAGE, content_type="text/html",
                            headers={"Cache-Control": "no-store", "Content-Security-Policy": _CSP})

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})


# Everything the page needs is inline; it talks to this origin only.
_CSP = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'"


async def _purge_filters(request: web.Request) -> dict[str, str] | web.Response:
    """``pool``, ``model`` and ``tenant`` from a JSON body or the query string."""
    values: dict[str, Any] = dict(request.query)
    if request.can_read_body:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "the body must be a JSON object")
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object")
        values.update(body)
    unknown = sorted(set(values) - set(PURGE_FILTERS))
    if unknown:
        return _error(400, f"unknown filters: {', '.join(unknown)}; known: {', '.join(PURGE_FILTERS)}")
    if any(not isinstance(v, str) or not v for v in values.values() if v is not None):
        return _error(400, "filters must be non-empty strings")
    return {k: v for k, v in values.items() if v is not None}
