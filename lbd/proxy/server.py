"""Listeners, the set of client connections, the janitor, and graceful drain.

The janitor ticks once a second instead of arming a timer per request: it closes client
connections idle past the keep-alive timeout, answers 408 to clients that take too long to
send a request head, expires idle upstream connections and flushes the access log.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time

from lbd.config.model import parse_address
from lbd.log import AccessLog
from lbd.metrics import Metrics
from lbd.policies.shadow import ShadowTraffic
from lbd.proxy.downstream import ClientConnection
from lbd.proxy.exchange import Exchange
from lbd.proxy.http import RequestIds, error_response
from lbd.proxy.outbox import flush
from lbd.runtime import Runtime

__all__ = ["ProxyServer"]

log = logging.getLogger("lbd.proxy")
JANITOR_TICK = 1.0


class ProxyServer:
    def __init__(self, runtime: Runtime, loop: asyncio.AbstractEventLoop, access_log: AccessLog | None = None) -> None:
        self.runtime = runtime
        self.loop = loop
        self.limits = runtime.config.client
        self.connections: set[ClientConnection] = set()
        self.request_ids = RequestIds()
        self.access_log = access_log or AccessLog(enabled=runtime.config.log.access)
        self.rejected: dict[int, int] = {}
        self.per_ip: dict[str, int] = {}
        self.refused_connections = 0
        self.requests = 0
        self.metrics = Metrics(self)
        self.shadows = ShadowTraffic(self)
        """Copies of requests to the pools' shadow pools (it outlives reloads)."""
        self.cache = None
        """The :class:`~lbd.cache.ResponseCache` pools with a ``cache:`` section use (set by
        the daemon; it outlives reloads)."""
        self.jobs = None
        """The :class:`~lbd.jobs.service.Jobs` the data plane submits to (set by the daemon);
        ``None`` with ``jobs.enabled: false``."""
        self._servers: list[asyncio.AbstractServer] = []
        self._janitor: asyncio.Task | None = None
        self.bound: list[tuple[str, int]] = []
        self._tls: dict[tuple[str, int], object] = {}  # listener address -> its SSLContext
        self.lane = None
        """The compiled lane's glue (``lbd.proxy.lane.Glue``) once it is loaded; plain-TCP
        listeners give new connections to it while ``lane_on`` (``lane:``/``LBD_LANE``)."""
        self.lane_on = False

    async def start(self) -> None:
        from lbd.proxy.tls import server_context

        from lbd.proxy.lane import wanted

        self._follow_lane(self.runtime)
        if not wanted(self.runtime.config.lane):  # wanted but not built: lane.start said so
            log.info("compiled lane off: every request takes the Python data plane")
        for listener in self.runtime.config.listen:
            host, port = parse_address(listener.address)
            context = server_context(listener.tls) if listener.tls is not None else None
            if context is not None:
                self._tls[(host, port)] = context
            factory = (lambda: ClientConnection(self)) if context is not None else self._plain_protocol
            server = await self.loop.create_server(
                factory, host, port, backlog=listener.backlog, ssl=context,
                reuse_address=True, family=socket.AF_INET6 if ":" in host else socket.AF_INET)
            self._servers.append(server)
            self.bound.extend(sock.getsockname()[:2] for sock in server.sockets)
            log.info("listening", extra={"address": f"{host}:{port}"})
        self._janitor = self.loop.create_task(self._janitor_loop())

    def _plain_protocol(self):
        """A new plain-TCP client connection: the compiled lane's when it is on."""
        if self.lane_on:
            return self.lane.protocol()  # type: ignore[union-attr]
        return ClientConnection(self)

    def _follow_lane(self, runtime: Runtime) -> None:
        """``lane:`` (or ``LBD_LANE``) on: load the lane once; new connections follow the
        setting, connections already open keep the data plane they have."""
        from lbd.proxy import lane

        on = lane.wanted(runtime.config.lane)
        if on and self.lane is None:
            self.lane = lane.start(self, runtime.config.lane)
        self.lane_on = on and self.lane is not None
        if self.lane is not None:
            self.lane.configure()

    def swap(self, runtime: Runtime) -> None:
        """Serve new requests from ``runtime``; requests in flight finish on the old one."""
        self._reload_certificates(runtime)
        old, self.runtime = self.runtime, runtime
        self.limits = runtime.config.client
        self.access_log.enabled = runtime.config.log.access  # before the lane's configure() reads it
        self._follow_lane(runtime)
        for backend in old.retired(runtime):
            backend.retire()

    def _reload_certificates(self, runtime: Runtime) -> None:
        """Listeners stay bound across reloads; their certificates follow the file."""
        from lbd.proxy.tls import reload_server_context

        for listener in runtime.config.listen:
            context = self._tls.get(parse_address(listener.address))
            if context is not None and listener.tls is not None:
                reload_server_context(context, listener.tls)  # type: ignore[arg-type]

    # -- per request ---------------------------------------------------------------------
    def observe(self, exchange: Exchange, duration: float | None = None, line: bytes | None = None) -> None:
        """A finished request: metrics and the access log. The compiled lane passes the
        duration it measured and its access ``line``, formatted in C."""
        self.requests += 1
        if duration is None:
            duration = time.monotonic() - exchange.started if exchange.started else 0.0
        self.metrics.observe(exchange, duration)
        access_log = self.access_log
        if line is not None:
            if access_log.enabled:
                access_log.add_line(line)
        elif access_log.enabled:
            access_log.add((
                exchange.request_id.decode("latin-1"), exchange.client_ip, exchange.method.decode("latin-1"),
                exchange.path, exchange.status, exchange.pool.name if exchange.pool else None,
                exchange.served_by or None, exchange.retries + 1 if exchange.tried else 0, duration,
                exchange.cache_status, exchange.tenant,
            ))

    def admit_connection(self, conn: ClientConnection) -> bool:
        if conn.internal is not None:
            # A request lbd sends itself (a job's run, a shadow copy, a cascade stage) uses no
            # socket and has its own bounds; the client's caps are not its.
            self.connections.add(conn)
            return True
        limits = self.limits
        count = self.per_ip.get(conn.client_ip, 0)
        if len(self.connections) >= limits.max_connections or (
                limits.max_connections_per_ip and count >= limits.max_connections_per_ip):
            self.refused_connections += 1
            return False
        self.per_ip[conn.client_ip] = count + 1
        self.connections.add(conn)
        return True

    def release_connection(self, conn: ClientConnection) -> None:
        if conn in self.connections:
            self.connections.discard(conn)
            if conn.internal is not None:
                return
            count = self.per_ip.get(conn.client_ip, 1) - 1
            if count > 0:
                self.per_ip[conn.client_ip] = count
            else:
                self.per_ip.pop(conn.client_ip, None)

    def count_rejected(self, status: int) -> None:
        self.rejected[status] = self.rejected.get(status, 0) + 1

    # -- housekeeping --------------------------------------------------------------------
    async def _janitor_loop(self) -> None:
        while True:
            await asyncio.sleep(JANITOR_TICK)
            try:
                self.sweep(self.loop.time())
            except Exception:  # the janitor must survive anything a sweep trips over
                log.exception("janitor sweep failed")
            finally:
                flush()

    def sweep(self, now: float) -> None:
        limits = self.limits
        for conn in list(self.connections):
            if conn.head_started and now - conn.head_started > limits.header_timeout:
                conn.write(error_response(408, "request_timeout", "request head not received in time",
                                          self.request_ids.next(), keep_alive=False))
                conn.closing_after_current()
                conn.close_now()
            elif conn.body_stalled_for(now) > limits.body_timeout:
                conn.reject_stalled(408, "request_timeout", "request body stalled")
            elif conn.idle_for(now) > limits.keepalive_timeout:
                conn.close_now()
        for backend in self.runtime.backends.values():
            backend.expire_idle(now)
        for pool in self.runtime.pools.values():
            pool.refresh()  # ends expired ejections; enters or leaves panic mode
        self.access_log.flush()

    async def shutdown(self, grace: float) -> None:
        """Stop accepting, close idle connections, let requests in flight finish for up
        to ``grace`` seconds, then close everything."""
        for server in self._servers:
            server.close()
        await self.shadows.close()
        deadline = self.loop.time() + grace
        while self.loop.time() < deadline:
            for conn in list(self.connections):
                if conn.idle_for(self.loop.time()) >= 0 and conn.current is None and conn.receiving is None:
                    conn.closing_after_current()
                    conn.close_now()
                elif conn.current is not None:
                    conn.current.keep_alive = False
            if not self.connections:
                break
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.transport.abort()  # type: ignore[union-attr]
        if self._janitor is not None:
            self._janitor.cancel()
        for backend in self.runtime.backends.values():
            backend.close_idle()
        self.access_log.flush()
