"""The compiled lane's Python side: what it asks per request, and the handover to Python.

``lbd/proxy/_lane.pyx`` moves the bytes of plain requests; this module decides: it routes
and picks (``Glue.begin``, one call per request), closes the books (``Glue.done``: the same
:func:`~lbd.proxy.exchange.end_attempt` and :meth:`ProxyServer.observe` the Python path
calls), and hands a connection over to a :class:`~lbd.proxy.downstream.ClientConnection`
whenever the request is not a plain one or its try failed (with a
:class:`~lbd.proxy.exchange.LaneCarry`, so the Python exchange makes the retries as if it had
made the first try). A handed-over connection stays Python.

The lane is optional: :func:`available` says whether the extension is built, and with
``lane: off`` or ``LBD_LANE=off`` (``auto``, the default, uses it where it is built) nothing
here runs.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import time
from typing import TYPE_CHECKING

from lbd.proxy.downstream import ClientConnection
from lbd.proxy.exchange import LaneCarry, end_attempt, retry_delay
from lbd.proxy.http import error_response, status_line
from lbd.proxy.outbox import flush
from lbd.proxy.request import cookie_in, header_in
from lbd.resilience.outlier import Outcome, outcome_of_status
from lbd.resilience.retry import CONNECT_FAILURE

if TYPE_CHECKING:
    from lbd.proxy.pool import Backend, Pool
    from lbd.proxy.server import ProxyServer

__all__ = ["available", "wanted", "Glue", "LaneRequest"]

log = logging.getLogger("lbd.proxy")
_SUCCESS = Outcome.SUCCESS
_LOCAL = Outcome.LOCAL_ORIGIN_FAILURE
_NONE_TRIED: frozenset = frozenset()
_NEVER = float("inf")


def available() -> bool:
    """Is the compiled lane built for this interpreter? (No import: a pure-Python check.)"""
    try:
        return importlib.util.find_spec("lbd.proxy._lane") is not None
    except (ImportError, ValueError):
        return False


def wanted(setting: str) -> bool:
    """``lane:`` from the file, overridden by ``LBD_LANE`` (``auto`` or ``off``)."""
    env = os.environ.get("LBD_LANE", "").strip().lower()
    if env in ("auto", "off"):
        setting = env
    return setting == "auto"


class LaneRequest:
    """One request the lane serves: the view the router and balancers read
    (``lbd.balancing.base.RequestView``), and what ``ProxyServer.observe`` and the metrics
    read of a finished exchange."""

    __slots__ = ("method", "url", "raw", "hend", "client_ip", "request_id", "pool", "backend", "picked", "retries",
                 "started", "deadline", "attempt_started", "status", "served_by", "next_try", "_path", "_fields")

    cache_status = None
    tenant = None
    body_mode = 0

    def __init__(self, method: bytes, url: bytes, raw: bytes, hend: int, client_ip: str) -> None:
        self.method = method
        self.url = url
        self.raw = raw
        self.hend = hend
        self.client_ip = client_ip
        self._path: str | None = None
        self._fields: list[tuple[bytes, bytes]] | None = None

    @property
    def path(self) -> str:
        path = self._path
        if path is None:
            path = self._path = self.url.partition(b"?")[0].decode("latin-1")
        return path

    @property
    def tried(self) -> set[Backend]:
        """The backends tried: the lane makes one try (retries are the Python exchange's)."""
        return {self.picked}

    @property
    def is_head(self) -> bool:
        return self.method == b"HEAD"

    @property
    def fields(self) -> list[tuple[bytes, bytes]]:
        fields = self._fields
        if fields is None:
            fields = []
            for line in self.raw[:self.hend - 4].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                fields.append((name, value.lstrip(b" \t")))
            self._fields = fields
        return fields

    @property
    def host(self) -> str:
        value = self.header("host")
        if value is None:
            return ""
        text = value.lower()
        return text.partition("]")[0] + "]" if text.startswith("[") else text.partition(":")[0]

    def header(self, name: str) -> str | None:
        return header_in(self.fields, name)

    def cookie(self, name: str) -> str | None:
        return cookie_in(self.header("cookie"), name)

    def body_prefix(self, size: int) -> bytes:
        return self.raw[self.hend:self.hend + size]


class Glue:
    """What the lane calls; one per :class:`ProxyServer`."""

    def __init__(self, server: ProxyServer, lane_module) -> None:
        self.server = server
        self.loop = server.loop
        lines = [status_line(code) for code in range(100, 600)]
        self.lane = lane_module.Lane(server.loop, self, lines)
        self.served = 0
        """Requests the lane picked a backend for (its first try)."""
        self.handed_over = 0
        """Connections handed over to the Python data plane."""
        self.configure()

    def configure(self) -> None:
        limits = self.server.limits
        self.lane.configure(limits.max_header_size, limits.max_headers, limits.max_url_size, limits.max_body_size,
                            self.server.access_log.enabled)

    def protocol(self):
        return self.lane.protocol()

    # -- connections ---------------------------------------------------------------------
    def admit(self, conn) -> bool:
        return self.server.admit_connection(conn)

    def release(self, conn) -> None:
        self.server.release_connection(conn)

    def handover(self, conn, data: bytes, carry: LaneCarry | None = None) -> None:
        """Python takes the connection from here on, and every byte the lane buffered."""
        server = self.server
        self.handed_over += 1
        python = ClientConnection(server)
        python.adopt(conn.transport)
        python.carry = carry
        server.connections.discard(conn)
        server.connections.add(python)  # the same client: its caps were counted when the lane admitted it
        conn.transport.set_protocol(python)
        if data:
            python.data_received(data)  # flushes
        else:
            flush()

    def refuse(self, conn, status: int, code: str, message: str) -> None:
        """The janitor's 408 for a stalled body, as the Python path writes it."""
        server = self.server
        conn.write(error_response(status, code, message, server.request_ids.next(), keep_alive=False))
        server.count_rejected(status)
        conn.close_now()

    # -- per request ---------------------------------------------------------------------
    def routable(self, conn, method: bytes, url: bytes, head: bytes, hend: int) -> bool:
        """A request whose body is still to come: would :meth:`begin` route it to a pool the
        lane serves? If not, Python takes it now, for the Python path answers such requests
        at the head (404, 401, 429, the jobs API) rather than once the body is in."""
        server = self.server
        jobs = server.jobs
        if jobs is not None and url.startswith(jobs.prefix_bytes):
            return False
        pool = server.runtime.router.route(LaneRequest(method, url, head, hend, conn.client_ip))
        return pool is not None and pool.lane_ok

    def begin(self, conn, method: bytes, url: bytes, raw: bytes, hend: int, request_id: bytes | None):
        """Route and pick for a plain request whose head and body are in ``raw``: the
        request, its upstream connection, its request id, the pool's name, the per-try
        timeout and the deadline; ``None`` hands the request over to Python."""
        server = self.server
        jobs = server.jobs
        if jobs is not None and url.startswith(jobs.prefix_bytes):
            return None
        req = LaneRequest(method, url, raw, hend, conn.client_ip)
        pool = server.runtime.router.route(req)
        if pool is None or not pool.lane_ok:
            return None  # 404, or a pool whose requests need the Python path
        backend, _ = pool.select(req, _NONE_TRIED)
        if backend is None:
            return None  # Python queues it, or answers 503, as it would
        req.started = req.attempt_started = time.monotonic()
        timeouts = pool.timeouts
        total = timeouts.total
        req.deadline = deadline = self.loop.time() + total if total > 0 else _NEVER
        pool.budget.record_request()
        req.pool = pool
        req.backend = req.picked = backend
        req.retries = 0
        req.status = 0
        req.served_by = ""
        backend.inflight += 1
        backend.requests += 1
        self.served += 1
        req.request_id = request_id = request_id or server.request_ids.next()
        per_try = pool.retry.config.per_try_timeout or timeouts.per_try
        return req, self._upstream(req, backend, pool), request_id, pool.lane_name, per_try, deadline

    def _upstream(self, req: LaneRequest, backend: Backend, pool: Pool):
        idle = backend.lane_idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return self._connect_new(req, backend, pool)

    def _connect_new(self, req: LaneRequest, backend: Backend, pool: Pool):
        conn = self.lane.upstream(backend, backend.lane_idle, backend.lane_name)
        timeout = min(pool.timeouts.connect, req.deadline - self.loop.time())
        task = self.loop.create_task(self._connect(conn, backend, max(timeout, 0.001)))
        task.add_done_callback(lambda done: self._connected(done, conn, backend))
        return conn

    async def _connect(self, conn, backend: Backend, timeout: float) -> None:
        await asyncio.wait_for(self.loop.create_connection(conn, backend.host, backend.port), timeout)

    def _connected(self, task: asyncio.Task, conn, backend: Backend) -> None:
        try:
            if task.cancelled():
                conn.close()
                return
            exc = task.exception()
            if exc is None:
                conn.connected()  # the request goes out now, not from connection_made
                return
            name = backend.name
            if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
                conn.connect_failed(CONNECT_FAILURE, 504, "connect_timeout", f"connecting to {name} timed out")
            else:
                conn.connect_failed(CONNECT_FAILURE, 502, "connect_failed", f"cannot connect to {name}: {exc}")
        finally:
            flush()

    def reconnect(self, req: LaneRequest, stale):
        """A pooled connection the backend had closed while idle: a fresh one to the same
        backend, and the request sent again, as the Python path does (no verdict)."""
        return self._upstream(req, req.backend, req.pool)  # type: ignore[arg-type]

    def head(self, req: LaneRequest, status: int) -> None:
        """The response head went out and its body streams: the attempt ends here, as in
        ``Exchange.on_response_head``."""
        req.status = status
        backend = req.backend
        if backend is not None:
            req.served_by = backend.name
            req.backend = None
            end_attempt(req.pool, backend, outcome_of_status(status) if status >= 500 else _SUCCESS,  # type: ignore[arg-type]
                        req.attempt_started)

    def done(self, req: LaneRequest, status: int, duration: float, line: bytes | None) -> None:
        """The response is complete: ``Exchange._end_attempt``, ``_finish`` and
        ``ProxyServer.observe`` of a success (the attempt's books as :meth:`head` keeps them,
        unless the head closed it already), with the duration the lane measured and the
        access line it formatted (``None`` when ``log.access`` is off)."""
        self.head(req, status)
        self.server.observe(req, duration, line)  # type: ignore[arg-type]

    def aborted(self, req: LaneRequest) -> None:
        """The response was cut after its head went out: the client connection closes."""
        if req.backend is not None:
            backend, req.backend = req.backend, None
            end_attempt(req.pool, backend, _LOCAL, req.attempt_started)  # type: ignore[arg-type]
        self.server.observe(req)  # type: ignore[arg-type]

    def abandon(self, req: LaneRequest) -> None:
        """The client went away: the attempt ends without a verdict, nothing is logged."""
        if req.backend is not None:
            backend, req.backend = req.backend, None
            end_attempt(req.pool, backend, None, req.attempt_started)  # type: ignore[arg-type]

    def status(self, req: LaneRequest, status: int, retry_after_value: bytes | None) -> bool:
        """A 5xx or 429 answer: its verdict, and whether to retry (then the lane hands the
        request over with its retry decided) rather than forward it (``_retry_status``)."""
        pool: Pool = req.pool  # type: ignore[assignment]
        retry_after = None
        if retry_after_value is not None and status in (429, 503):
            retry_after = pool.retry.retry_after(retry_after_value.decode("latin-1"), time.time())
        backend = req.backend
        req.backend = None
        if backend is not None:
            req.served_by = backend.name
            end_attempt(pool, backend, outcome_of_status(status), req.attempt_started)
        delay = retry_delay(pool, req.retries, req.method, req.tried, req.deadline, self.loop, True,
                            status=status, retry_after=retry_after)
        if delay is None:
            return False  # forwarded after all
        req.retries += 1
        req.status = status
        req.next_try = (delay, (status, "upstream_status", f"{req.served_by or '?'} answered {status}"))
        return True

    def retry_handover(self, conn, req: LaneRequest, data: bytes) -> None:
        delay, failure = req.next_try
        carry = LaneCarry(req.pool, req.tried, req.retries, req.started, req.deadline, req.request_id,  # type: ignore[arg-type]
                          failure, None, True, delay)
        self.handover(conn, data, carry)

    def failed(self, conn, req: LaneRequest, data: bytes, failure: str, status: int, code: str, message: str) -> None:
        """The try failed before any response byte reached the client (``_attempt_failed``):
        its verdict here, the retry or the error answer by the Python exchange."""
        backend = req.backend
        if backend is not None:
            req.backend = None
            end_attempt(req.pool, backend, _LOCAL, req.attempt_started)  # type: ignore[arg-type]
        carry = LaneCarry(req.pool, req.tried, req.retries, req.started, req.deadline, req.request_id,  # type: ignore[arg-type]
                          (status, code, message), failure, True, None)
        self.handover(conn, data, carry)


def start(server: ProxyServer, setting: str) -> Glue | None:
    """The lane for ``server`` when the config (or ``LBD_LANE``) wants it and it is built;
    one log line says which data plane serves plain requests."""
    if not wanted(setting):
        return None
    try:
        from lbd.proxy import _lane
    except ImportError as exc:
        log.warning("compiled lane not available: every request takes the Python data plane",
                    extra={"error": str(exc)})
        return None
    log.info("compiled lane on: plain requests of eligible pools are served in C")
    return Glue(server, _lane)
