"""The daemon: config, workers, the proxy, signals, reload and graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from pathlib import Path

from lbd import heap
from lbd.admin import AdminServer
from lbd.config import Config, ConfigError, load_config
from lbd.config.watch import ConfigWatcher
from lbd.log import setup_logging
from lbd.mps import MpsUnavailable
from lbd.proxy.server import ProxyServer
from lbd.runtime import Runtime
from lbd.systemd import Notifier

__all__ = ["Daemon", "run"]

log = logging.getLogger("lbd")
RESETTLE_AFTER = 60.0
"""Seconds after a reload before the heap is frozen again (``lbd.heap``): by then requests
begun on the replaced runtime are normally over, so it is not frozen with them."""


class Daemon:
    """One lbd process. ``run()`` returns the exit code."""

    def __init__(self, config: Config, config_path: Path | None, *, shutdown_grace: float = 30.0) -> None:
        self.config = config
        self.config_path = config_path
        self.shutdown_grace = shutdown_grace
        self.proxy: ProxyServer | None = None
        self.admin: AdminServer | None = None
        self.cache = None
        """The response cache, for the admin API's purge (``lbd.admin.Purger``); None without one."""
        self.fleet = None
        self.jobs = None
        """The asynchronous jobs (``lbd.jobs.Jobs``); None with ``jobs.enabled: false``."""
        self.reloads = 0
        self.reload_failures = 0
        self.last_reload_errors: list[str] = []
        """Why the last reload was refused (path-named config errors); empty after a success."""
        self.last_reload_time = 0.0
        self._stop = asyncio.Event()
        self.ready = asyncio.Event()
        self.notifier = Notifier()
        self.watcher: ConfigWatcher | None = None
        self._reload_lock = asyncio.Lock()
        self._retiring: set[asyncio.Task] = set()
        """Replaced runtimes' Redis rate limiters, closed once their last takes are over."""
        self._settling: asyncio.TimerHandle | None = None
        self._reload_asked = False
        """A SIGHUP came before the daemon was ready: it reloads once it is."""

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        # Before anything listens: a SIGHUP (systemd's ExecReload, a watcher) that lands while
        # lbd starts must not kill it (SIGHUP's default), nor be lost.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        try:
            await self._start_workers()
        except MpsUnavailable as exc:
            log.error("cannot start the workers: fleet.mps is on", extra={"error": str(exc)})
            return 1
        runtime = Runtime.build(self.config)
        self.proxy = ProxyServer(runtime, loop)
        self.proxy.metrics.follow_reloads(self)
        try:
            await self._apply_cache(self.config, None)  # before listening: no request meets a cold embedder
        except Exception as exc:  # noqa: BLE001 - say why in one line, as for a bad config
            log.error("cannot start the response cache", extra={"error": repr(exc)})
            await runtime.close_limiters()
            if self.fleet is not None:
                await self.fleet.stop()
            return 1
        self.proxy.metrics.follow_jobs(lambda: self.jobs.runner if self.jobs is not None else None)
        await self._apply_jobs(self.config, None)  # before listening: the jobs API answers from the start
        await self.proxy.start()
        if self.config.admin.enabled:
            self.admin = await self._start_admin()
        await runtime.start_health()  # READY only once every backend was probed
        if self.config_path is not None and self.config.watch.enabled:
            self.watcher = ConfigWatcher(self.config_path, self.reload, self.config.watch.interval)
            self.watcher.start()
        heap.settle()  # what lives as long as the daemon stays out of the collector's walks
        self.ready.set()
        if self._reload_asked:
            loop.create_task(self.reload())  # a SIGHUP came while starting: read the file again
        self.notifier.ready(self._status_line())
        watchdog = loop.create_task(self._watchdog()) if self.notifier.watchdog_interval else None
        log.info("ready", extra={"pools": list(self.config.pools), "listen": [f"{h}:{p}" for h, p in self.proxy.bound]})
        await self._stop.wait()
        self.notifier.stopping()
        if self.watcher is not None:
            await self.watcher.stop()
        if watchdog is not None:
            watchdog.cancel()
        log.info("stopping: draining requests in flight", extra={"grace_s": self.shutdown_grace})
        # Job runners stop claiming at once; runs get the same grace, the rest go back to the queue.
        jobs_stopped = asyncio.ensure_future(self.jobs.stop(self.shutdown_grace)) if self.jobs is not None else None
        await self.proxy.shutdown(self.shutdown_grace)
        if jobs_stopped is not None:
            await jobs_stopped
        if self.admin is not None:
            await self.admin.stop()
        await self.proxy.runtime.stop_health()
        await self._close_limiters()
        if self.cache is not None:
            await self.cache.close()
        if self.fleet is not None:
            await self.fleet.stop()
        if self._settling is not None:
            self._settling.cancel()
        heap.thaw()
        log.info("stopped")
        return 0

    def _on_sighup(self) -> None:
        if self.ready.is_set():
            asyncio.get_running_loop().create_task(self.reload())
        else:
            self._reload_asked = True

    def stop(self) -> None:
        self._stop.set()

    async def _start_admin(self) -> AdminServer | None:
        admin = AdminServer(self, self.proxy.metrics, cache=lambda: self.cache)  # type: ignore[union-attr]
        try:
            await admin.start()  # AdminRefused (off loopback without a token) is fatal
        except OSError as exc:  # serving traffic matters more than the admin API: go on, loudly
            log.error("admin listener not started: no metrics, status page or lbd reload",
                      extra={"address": self.config.admin.address, "error": str(exc)})
            return None
        return admin

    async def _start_workers(self) -> None:
        if not self.config.workers:
            return
        from lbd.fleet import Fleet  # the fleet is optional: plain-HTTP deployments skip it

        self.fleet = Fleet(self.config.workers, mps=self.config.fleet.mps)
        await self.fleet.start()
        await self.fleet.wait_ready(timeout=300.0)

    async def _apply_workers(self, config: Config) -> None:
        from lbd.fleet import Fleet

        if self.fleet is None:
            self.fleet = Fleet(config.workers, mps=config.fleet.mps)
            await self.fleet.start()
        else:
            await self.fleet.apply(config.workers)
        try:
            await self.fleet.wait_ready(timeout=120.0)
        except TimeoutError as exc:  # health checks keep a late worker out of rotation
            log.warning("reload: %s", exc)

    # -- the response cache ----------------------------------------------------------------
    async def _apply_cache(self, config: Config, previous: Config | None) -> None:
        """Build the cache when a pool first needs one (or the ``cache:`` section changed),
        load the embedders the routes name (off the loop: the first load builds a model),
        and drop the entries of models whose configured version changed."""
        from lbd.runtime import served_versions

        assert self.proxy is not None
        routes = [pool.cache for pool in config.pools.values() if pool.cache is not None and pool.cache.enabled]
        old = cache = self.cache
        if not routes:
            cache = None
        elif old is None or previous is None or previous.cache != config.cache:
            from lbd.cache import build_cache

            cache = build_cache(config.cache, pool_embedder=self._pool_embedder)
        if cache is not None:
            try:
                await asyncio.get_running_loop().run_in_executor(None, cache.warm, routes)
            except Exception:
                if cache is not old:
                    await cache.close()
                raise
            if cache is not old:
                await cache.start()
                log.info("response cache ready", extra={"store": _masked_url(config.cache.store)})
        self.cache = cache
        if cache is not None:
            if old is cache and previous is not None:
                dropped = await self.cache.drop_changed_models(served_versions(previous), served_versions(config))
                if dropped:
                    log.info("cache: dropped the answers of models whose version changed", extra={"dropped": dropped})
        self.proxy.cache = self.cache
        if old is not None and old is not self.cache:
            for kind, count in old.error_counts().items():  # counters stay monotonic across the swap
                self.proxy.metrics.cache_error(kind, count)
            asyncio.get_running_loop().call_later(5.0, lambda: asyncio.ensure_future(old.close()))

    # -- asynchronous jobs ---------------------------------------------------------------------
    async def _apply_jobs(self, config: Config, previous: Config | None) -> None:
        """Start the jobs (store, runner, webhooks) or follow a reload: a changed ``jobs:``
        section builds new ones (keeping the store when its keys did not change, so the
        in-memory queue survives); the old runner hands its runs back in the background."""
        from lbd.jobs import Jobs

        assert self.proxy is not None
        pools = {name: pool.jobs for name, pool in config.pools.items()}
        old = self.jobs
        if old is not None and previous is not None and previous.jobs == config.jobs:
            old.apply(pools)
            return
        keep_store = old is not None and config.jobs.enabled and _same_store(previous, config)
        new = None
        if config.jobs.enabled:
            new = Jobs(config.jobs, events=self.proxy.metrics, store=old.store if keep_store else None)  # type: ignore[union-attr]
            await new.start(self.proxy, pools)
            log.info("jobs ready", extra={"store": _masked_url(config.jobs.store), "prefix": config.jobs.path_prefix})
        self.proxy.jobs = self.jobs = new
        if old is not None:
            asyncio.ensure_future(old.stop(self.shutdown_grace, close_store=not keep_store))

    def _pool_embedder(self, pool: str, model: str | None, timeout: float):
        """Embeds through one of this lbd's pools, as an internal request (the pool's
        balancer, health checks and retries apply; no socket, no route to match)."""
        from lbd.cache.embedder import RoutedEmbedder
        from lbd.proxy.internal import Internal, dispatch

        internal = Internal(pool=pool, tag="embedder")
        # no-cache, no-store: the embedding request must not enter the cache (whose lookup
        # would embed again).
        headers = [("content-type", "application/json"), ("cache-control", "no-cache, no-store")]

        async def send(name: str, body: bytes) -> tuple[int, bytes]:
            assert self.proxy is not None
            response = await dispatch(self.proxy, "POST", f"/v2/models/{name}/infer", headers, body, internal=internal)
            return response.status, response.body

        models = self.config.pools[pool].match.models if pool in self.config.pools else []
        return RoutedEmbedder(send, model or (models[0] if models else pool), timeout=timeout)

    @staticmethod
    def _check_certificates(config: Config) -> None:
        """A certificate that does not load refuses the whole reload, like any bad value."""
        from lbd.proxy.tls import certificate_problems

        problems = certificate_problems(config)
        if problems:
            raise ConfigError("config", problems)

    async def reload(self) -> bool:
        """Load the file again; apply it whole or not at all."""
        if self.config_path is None or self.proxy is None:
            return False
        async with self._reload_lock:  # SIGHUP, the watch and the admin API may coincide
            self.notifier.reloading()
            try:
                return await self._reload()
            finally:
                if self.watcher is not None:
                    self.watcher.applied()
                self.notifier.ready(self._status_line())

    async def _reload(self) -> bool:
        assert self.proxy is not None and self.config_path is not None
        runtime: Runtime | None = None
        try:
            config = load_config(self.config_path)
            runtime = Runtime.build(config, previous=self.proxy.runtime)
            self._check_certificates(config)
        except ConfigError as exc:
            if runtime is not None:
                await runtime.close_limiters()  # built, never served
            self.reload_failures += 1
            self.last_reload_errors = [f"{exc.source}: {message}" for message in exc.messages]
            log.error("reload refused: the file is not valid; nothing changed", extra={"errors": exc.messages})
            return False
        try:
            await self._apply_cache(config, self.config)
        except Exception as exc:  # noqa: BLE001 - an embedder that cannot load refuses the reload
            await runtime.close_limiters()
            self.reload_failures += 1
            self.last_reload_errors = [f"cache: {exc}"]
            log.error("reload refused: the cache cannot start; nothing changed", extra={"error": str(exc)})
            return False
        if config.workers != self.config.workers:
            await self._apply_workers(config)
        await runtime.start_health(previous=self.proxy.runtime)
        replaced = self.proxy.runtime
        self.proxy.swap(runtime)
        self._retire_limiters(replaced)
        if config.log.level != self.config.log.level:
            logging.getLogger().setLevel(config.log.level.upper())
        await self._apply_jobs(config, self.config)
        self.config = config
        self.reloads += 1
        self.last_reload_errors = []
        self.last_reload_time = time.time()
        log.info("reloaded", extra={"pools": list(config.pools)})
        self._resettle()
        return True

    def _resettle(self) -> None:
        """The replaced runtime may be garbage soon: the collector sees the frozen heap again
        now, and it is settled again once the old runtime's requests have had time to end."""
        heap.thaw()
        if self._settling is not None:
            self._settling.cancel()
        self._settling = asyncio.get_running_loop().call_later(RESETTLE_AFTER, heap.settle)

    # -- rate limiters -------------------------------------------------------------------------
    def _retire_limiters(self, runtime: Runtime) -> None:
        """Closes a replaced runtime's Redis rate limiters once the takes requests began on
        them before the swap are over (new requests use the new runtime's)."""
        task = asyncio.ensure_future(self._close_limiters_after(runtime, runtime.limiter_grace() + 0.5))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    @staticmethod
    async def _close_limiters_after(runtime: Runtime, delay: float) -> None:
        try:
            await asyncio.sleep(delay)
        finally:  # cancelled at shutdown: close now
            await runtime.close_limiters()

    async def _close_limiters(self) -> None:
        """At shutdown, once requests are over: the current runtime's limiters, and the
        replaced runtimes' still waiting for their grace."""
        retiring = list(self._retiring)
        for task in retiring:
            task.cancel()
        if retiring:
            await asyncio.gather(*retiring, return_exceptions=True)
        if self.proxy is not None:
            await self.proxy.runtime.close_limiters()

    def _status_line(self) -> str:
        proxy = self.proxy
        if proxy is None:
            return "starting"
        backends = sum(len(pool.backends) for pool in proxy.runtime.pools.values())
        return (f"{len(proxy.runtime.pools)} pools, {backends} backends, {len(proxy.connections)} connections, "
                f"{proxy.requests} requests, {self.reloads} reloads")

    async def _watchdog(self) -> None:
        interval = self.notifier.watchdog_interval or 1.0
        while True:
            # The event loop answering this timer is the liveness systemd asks about.
            self.notifier.watchdog()
            self.notifier.status(self._status_line())
            await asyncio.sleep(interval)


def _same_store(previous: Config | None, config: Config) -> bool:
    if previous is None:
        return False
    before, after = previous.jobs, config.jobs
    return (before.store, before.key_prefix, before.operation_timeout) == (after.store, after.key_prefix,
                                                                          after.operation_timeout)


def _masked_url(url: str) -> str:
    """A store URL without its password."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


def run(config: Config, config_path: Path | None) -> int:
    setup_logging(config.log.level)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; keep running without it
        log.warning("uvloop is not installed: using the default asyncio loop")
        return asyncio.run(Daemon(config, config_path).run())
    return uvloop.run(Daemon(config, config_path).run())
