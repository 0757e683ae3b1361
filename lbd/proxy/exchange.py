"""One request's way through the proxy, as a callback-driven state machine.

No coroutine on the common path: the client protocol's parser callbacks call into the
exchange, which writes to a pooled upstream connection, whose parser callbacks call back
into the exchange, which writes to the client. Only a new upstream connection takes a task;
waiting (admission queue, retry backoff, timeouts) is a timer.

Invariants:
- ``backend.inflight`` is incremented once per attempt and decremented exactly once, in
  :meth:`_end_attempt`, which also feeds the breaker, the outlier detector and the balancer.
- An upstream connection goes back to the pool only after a complete response to a
  completely sent request, with keep-alive on both readings.
- A try is retried only before the response head reached the client, within the attempts,
  the deadline and the pool's retry budget, and, once its bytes may have reached the
  backend, only when the request is idempotent and its body was kept. After that, a failure
  can only close the connection: the client sees a truncated body, never a spliced one.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from lbd.proxy.admission import priority_of
from lbd.proxy.heads import BODY_CHUNKED, BODY_NONE, response_head
from lbd.proxy.http import LAST_CHUNK, chunk, error_response
from lbd.proxy.deferred import Deferred
from lbd.proxy.request import REPLAY_LIMIT
from lbd.proxy.outbox import flush
from lbd.proxy.upstream import UpstreamConnection, open_connection
from lbd.resilience.outlier import Outcome, outcome_of_status
from lbd.resilience.retry import CONNECT_FAILURE, RESET, TIMEOUT
from lbd.security.ratelimit import LocalLimiter

if TYPE_CHECKING:
    from lbd.proxy.downstream import ClientConnection
    from lbd.proxy.pool import Backend, Pool

__all__ = ["Exchange", "LaneCarry", "end_attempt", "retry_delay", "BODY_NONE", "BODY_CHUNKED", "REPLAY_LIMIT"]

_NO_BODY_STATUS = frozenset({204, 304})
_SUCCESS = Outcome.SUCCESS
_LOCAL = Outcome.LOCAL_ORIGIN_FAILURE


class Exchange(Deferred):
    """A request, admitted, and the attempts to get it answered."""

    __slots__ = (
        "pool", "backend", "upstream", "tried", "retries", "started", "deadline", "status", "served_by",
        "response_started", "response_chunked", "_timer", "_connecting", "_attempt_started", "_queued",
        "_failure",
    )

    def __init__(self, client: ClientConnection, method: bytes, url: bytes,
                 headers: list[tuple[bytes, bytes]], keep_alive: bool) -> None:
        super().__init__(client, method, url, headers, keep_alive)
        self.pool: Pool | None = None
        self.backend: Backend | None = None
        self.upstream: UpstreamConnection | None = None
        self.tried: set[Backend] = set()
        self.retries = 0
        self.started = 0.0
        self.deadline = 0.0
        self.status = 0
        self.served_by = ""
        self.response_started = False
        self.response_chunked = False
        self._timer: asyncio.TimerHandle | None = None
        self._connecting: asyncio.Task | None = None
        self._attempt_started = 0.0
        self._queued = False
        self._failure: tuple[int, str, str] | None = None
        self._chain = self._shadow = None  # the Policies layer's

    # -- start ---------------------------------------------------------------------------
    def begin(self) -> None:
        """Route, set the deadline, and start the first attempt."""
        client = self.client
        self.started = time.monotonic()
        if self._jobs_call():
            return  # the jobs API answers it (lbd/proxy/deferred.py)
        internal = client.internal
        if internal is None:
            self.pool = pool = client.server.runtime.router.route(self)
        else:
            self.pool = pool = internal.route(self, client.server)
        if pool is None:
            self.fail(404, "no_route", f"no pool serves {self.path}")
            return
        total = pool.timeouts.total
        if self.fields.timeout_ms is not None:
            total = self.fields.timeout_ms / 1000.0
        self.deadline = client.loop.time() + total if total > 0 else float("inf")
        if internal is not None and internal.tenant is not None:
            self.tenant = internal.tenant  # authenticated when it was first received
        elif pool.auth is not None and not self._authenticate(pool):
            return
        limiter = pool.limiter if internal is None or internal.tag != "job" else None  # limited when submitted
        if limiter is None:
            self._admitted()
        elif isinstance(limiter, LocalLimiter):
            self._rate_checked(limiter.take(self._limit_key(pool)))
        else:
            self._await(limiter.take(self._limit_key(pool)), self._rate_checked)

    # -- attempts ----------------------------------------------------------------------
    def _attempt(self) -> None:
        pool: Pool = self.pool  # type: ignore[assignment]
        if pool.needs_body and self._replayable and not self.request_done:
            # a balancer that reads the body: pick once it is whole, or kept as far as it is
            # (REPLAY_LIMIT, reading then paused); the client's body timeout still applies
            self._with_body(self._attempt, self._attempt)
            return
        backend, saturated = pool.select(self, self.tried)
        if backend is None:
            self._no_backend(pool, saturated)
            return
        self.backend = backend
        self.tried.add(backend)
        backend.inflight += 1
        backend.requests += 1
        self._attempt_started = time.monotonic()
        conn = backend.take_idle()
        if conn is not None:
            self._attach(conn)
        else:
            self._connect(backend)

    def _no_backend(self, pool: Pool, saturated: bool) -> None:
        queue = pool.queue
        if saturated and queue is not None:
            if queue.push(self, priority_of(self.header(pool.config.limits.priority_header)), front=self._queued):
                self._queued = True
                loop = self.client.loop
                self._timer = loop.call_at(min(loop.time() + queue.timeout, self.deadline), self._on_queue_timeout)
                return
            self._shed("queue_full", f"pool {pool.name!r} is at capacity and its queue is full")
        elif saturated:
            self._shed("saturated", f"every backend of pool {pool.name!r} is at its in-flight limit")
        elif self._failure is not None:
            self.fail(*self._failure)
        else:
            self.fail(503, "no_backend", f"no backend of pool {pool.name!r} is available")

    def _shed(self, code: str, message: str) -> None:
        seconds = self.pool.config.limits.retry_after  # type: ignore[union-attr]
        self.fail(503, code, message, (b"retry-after", b"%d" % max(1, round(seconds))))

    def _on_queue_timeout(self) -> None:
        self._timer = None
        self.pool.queue.remove(self)  # type: ignore[union-attr]
        self.pool.queue.shed_timeout += 1  # type: ignore[union-attr]
        self._shed("queue_timeout", f"no backend of pool {self.pool.name!r} freed up in time")  # type: ignore[union-attr]
        flush()

    def admit(self) -> None:
        """Called by the pool when a backend slot frees up for this queued request."""
        self._cancel_timer()
        self._attempt()

    def _connect(self, backend: Backend) -> None:
        loop = self.client.loop
        timeout = min(self.pool.timeouts.connect, self.deadline - loop.time())  # type: ignore[union-attr]
        task = self._connecting = loop.create_task(open_connection(loop, backend, max(timeout, 0.001)))
        task.add_done_callback(self._on_connected)

    def _on_connected(self, task: asyncio.Task) -> None:
        try:
            self._connected(task)
        finally:
            flush()

    def _connected(self, task: asyncio.Task) -> None:
        if self._connecting is not task:
            if not task.cancelled() and task.exception() is None:
                task.result()[1].close()  # the exchange moved on (client gone): drop it
            return
        self._connecting = None
        if task.cancelled():
            return
        exc = task.exception()
        name = self.backend.name  # type: ignore[union-attr]
        if exc is None:
            self._attach(task.result()[1])
        elif isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
            self._attempt_failed(CONNECT_FAILURE, 504, "connect_timeout", f"connecting to {name} timed out")
        else:
            self._attempt_failed(CONNECT_FAILURE, 502, "connect_failed", f"cannot connect to {name}: {exc}")

    def _attach(self, conn: UpstreamConnection) -> None:
        self.upstream = conn
        conn.attach(self)
        head = self.fields.head if self.fields.host is not None else self._with_host(conn.backend)
        data = self._buffer
        conn.write(head + b"".join(data) if data else head)
        if not self._replayable:
            self._buffer = []
        self.client.resume_reading_for_body()
        loop = self.client.loop
        pool: Pool = self.pool  # type: ignore[assignment]
        per_try = pool.retry.config.per_try_timeout or pool.timeouts.per_try
        self._timer = loop.call_at(min(loop.time() + per_try, self.deadline), self._on_head_timeout)

    def _with_host(self, backend: Backend) -> bytes:
        """HTTP/1.0 clients may omit Host; HTTP/1.1 upstreams require it (RFC 9112 3.2)."""
        head = self.fields.head
        line_end = head.index(b"\r\n") + 2
        return b"%bhost: %b:%d\r\n%b" % (head[:line_end], backend.host.encode(), backend.port, head[line_end:])

    def _end_attempt(self, outcome: Outcome | None) -> None:
        """Close the books on the current attempt; ``None``: abandoned, no verdict."""
        backend = self.backend
        if backend is None:
            return
        self.backend = None
        end_attempt(self.pool, backend, outcome, self._attempt_started)  # type: ignore[arg-type]

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- retries -------------------------------------------------------------------------
    def _attempt_failed(self, failure: str, status: int, code: str, message: str, *, sent: bool = True) -> None:
        """A try failed before any response byte reached the client: retry or answer."""
        self._cancel_timer()
        self._end_attempt(_LOCAL)
        self._failure = (status, code, message)
        if not self._retry(failure=failure, sent=sent and failure != CONNECT_FAILURE):
            self.fail(status, code, message)

    def _retry(self, *, failure: str | None = None, status: int | None = None, retry_after: float | None = None,
               sent: bool = True) -> bool:
        """Schedule another try if the policy, the attempts, the deadline and the budget
        all allow it; the budget is asked last, so only real retries spend it."""
        if self.finished:
            return False
        delay = retry_delay(self.pool, self.retries, self.method, self.tried, self.deadline,  # type: ignore[arg-type]
                            self.client.loop, self._replayable and self.request_done or self.fields.body_mode == BODY_NONE,
                            failure=failure, status=status, retry_after=retry_after, sent=sent)
        if delay is None:
            return False
        self.retries += 1
        self._timer = self.client.loop.call_later(delay, self._on_backoff_done)
        return True

    # -- a request whose first try the compiled lane made (lbd/proxy/lane.py) -----------
    def inherit(self, carry: LaneCarry) -> None:
        """Go on with a request the lane routed and tried first, instead of :meth:`begin`:
        the same pool, tries, retries, start and deadline (and the retry budget, which the
        lane's try already counted), as if this exchange had made that try."""
        self.started = carry.started
        self.pool = carry.pool
        self.deadline = carry.deadline
        self.tried = carry.tried
        self.retries = carry.retries
        fields = self.fields
        if fields.request_id != carry.request_id:  # generated again when parsed again: the lane's
            front, _, _ = fields.head.rpartition(b"\r\nx-request-id: ")
            fields.head = front + b"\r\nx-request-id: " + carry.request_id + b"\r\n\r\n"
            fields.request_id = carry.request_id
        self._failure = carry.failure
        go = lambda: self._go_on(carry)  # noqa: E731
        self._with_body(go, go)  # decided with the whole body kept, as the lane had it

    def _go_on(self, carry: LaneCarry) -> None:
        if carry.delay is not None:  # a retry the lane's try earned (a retriable status)
            self._timer = self.client.loop.call_later(carry.delay, self._on_backoff_done)
            return
        status, code, message = carry.failure  # type: ignore[misc]
        if not self._retry(failure=carry.kind, sent=carry.sent and carry.kind != CONNECT_FAILURE):
            self.fail(status, code, message)

    def _on_backoff_done(self) -> None:
        self._timer = None
        try:
            self._attempt()
        finally:
            flush()

    # -- response (from the upstream) ----------------------------------------------------
    def on_response_head(self, status: int, headers: list[tuple[bytes, bytes]], upstream_keep_alive: bool,
                         version: str) -> None:
        self._cancel_timer()
        out, has_length, request_id_seen, retry_after = response_head(status, headers)
        pool: Pool = self.pool  # type: ignore[assignment]
        if status >= 400:
            if (status >= 500 or status == 429) and self._retry_status(pool, status, retry_after):
                return
            if self._fall_over_status(status):
                return
        if status >= 500 and self.cache_lookup is not None:
            stale = self._stale_hit()
            if stale is not None:  # the last try failed too: an expired answer beats an error
                conn, self.upstream = self.upstream, None
                self._end_attempt(outcome_of_status(status))
                if conn is not None:
                    conn.close()
                self._serve_stale(stale)
                return
        self.status = status
        self.response_started = True
        conn = self.upstream
        self.served_by = conn.backend.name if conn is not None else ""
        self._end_attempt(outcome_of_status(status) if status >= 500 else _SUCCESS)
        client = self.client
        if not self.request_done:
            self.keep_alive = False  # the backend answered early; the rest cannot be framed
        if not (self.is_head or status in _NO_BODY_STATUS) and not has_length:
            if client.http11:
                self.response_chunked = True
                out.append(b"transfer-encoding: chunked\r\n")
            else:
                self.keep_alive = False  # HTTP/1.0 client: the end of the body is the close
        out += (b"x-lbd-backend: ", self.served_by.encode(), b"\r\nx-lbd-pool: ", pool.name.encode(), b"\r\n")
        if not request_id_seen:
            out += (b"x-request-id: ", self.fields.request_id, b"\r\n")  # type: ignore[arg-type]
        if self.retries:
            out.append(b"x-lbd-attempts: %d\r\n" % (self.retries + 1))
        if self.cache_status is not None:
            out.append(self._cache_head(status, headers))
        if self._shadow is not None:
            self._shadow.head(status, headers)
        for name, value in self._extra_fields:
            out += (name, b": ", value, b"\r\n")
        if not self.keep_alive:
            out.append(b"connection: close\r\n\r\n")
        elif not client.http11:
            out.append(b"connection: keep-alive\r\n\r\n")
        else:
            out.append(b"\r\n")
        client.write(b"".join(out))

    def _retry_status(self, pool: Pool, status: int, retry_after_value: bytes | None) -> bool:
        """A retriable status: drop this answer (and its connection) and try again."""
        retry_after = None
        if retry_after_value is not None and status in (429, 503):
            retry_after = pool.retry.retry_after(retry_after_value.decode("latin-1"), time.time())
        backend_name = self.backend.name if self.backend else "?"
        conn, self.upstream = self.upstream, None
        self._end_attempt(outcome_of_status(status))
        if not self._retry(status=status, retry_after=retry_after):
            self.upstream = conn  # forward this answer after all
            self.backend = None
            return False
        if conn is not None:
            conn.close()
        self._failure = (status, "upstream_status", f"{backend_name} answered {status}")
        return True

    def on_response_body(self, data: bytes) -> None:
        self.client.write(chunk(data) if self.response_chunked else data)
        if self._capture is not None:
            self._capture_body(data)
        if self._shadow is not None:
            self._shadow.body(data)

    def on_response_end(self, conn: UpstreamConnection, upstream_keep_alive: bool) -> None:
        if self.response_chunked:
            self.client.write(LAST_CHUNK)
        if self._capture is not None:
            self._cache_store()
        if self._shadow is not None:
            self._shadow_send()
        self.upstream = None
        conn.detach()
        if upstream_keep_alive and self.request_done:
            conn.backend.put_idle(conn, self.client.loop.time())
        else:
            conn.close()
        self._finish()

    # -- failures ------------------------------------------------------------------------
    def on_upstream_lost(self, conn: UpstreamConnection, exc: Exception | None) -> None:
        if conn is not self.upstream:
            return
        self.upstream = None
        if self.response_started:
            self._abort_response()
            return
        if conn.uses > 1 and not conn.received_anything and self._replayable:
            # A pooled connection the backend had closed while it sat idle: the request
            # never reached it. Send it again on a fresh connection to the same backend.
            self._cancel_timer()
            self._connect(self.backend)  # type: ignore[arg-type]
            return
        reason = f"backend {conn.backend.name} closed the connection" + (f": {exc}" if exc else "")
        self._attempt_failed(RESET, 502, "upstream_reset", reason)

    def on_upstream_failed(self, code: str, message: str, conn: UpstreamConnection) -> None:
        if conn is not self.upstream:
            return
        self.upstream = None
        if self.response_started:
            self._abort_response()
        else:
            self._attempt_failed(RESET, 502, code, message)

    def _on_head_timeout(self) -> None:
        try:
            self._timer = None
            conn, self.upstream = self.upstream, None
            if conn is not None:
                conn.close()
            name = self.backend.name if self.backend else "?"
            overall = self.client.loop.time() >= self.deadline
            self._attempt_failed(TIMEOUT, 504, "timeout", f"{'request' if overall else 'try'} timed out waiting for {name}")
        finally:
            flush()

    def _abort_response(self) -> None:
        """The response head is out: the only honest signal left is closing the connection."""
        self._end_attempt(_LOCAL)
        self._cache_release()
        self.keep_alive = False
        self.finished = True
        self.client.abort_after_write()

    def pause_client_reading(self) -> None:
        self.client.pause_reading_for_upstream()

    def resume_client_reading(self) -> None:
        self.client.resume_reading_for_upstream()

    def on_client_lost(self) -> None:
        """The client went away: stop everything it asked for."""
        if self.finished:
            return
        self.finished = True
        self._cancel_timer()
        self._cancel_pending()
        if self._queued and self.pool is not None and self.pool.queue is not None:
            self.pool.queue.remove(self)
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        conn, self.upstream = self.upstream, None
        if conn is not None:
            conn.close()
        self._end_attempt(None)
        self._cache_release()

    def fail(self, status: int, code: str, message: str, *extra_headers: tuple[bytes, bytes]) -> None:
        """Answer with a JSON error; only possible before the response head went out. When
        every try upstream failed, an expired cached answer may be served instead; before
        that, the route's fallback chain may take the request over."""
        if status >= 502 and self._fall_over(status, code, message):
            return
        if status >= 502 and self.cache_lookup is not None:
            stale = self._stale_hit()
            if stale is not None:
                self._cancel_timer()
                self._serve_stale(stale)
                return
        if not self.request_done:
            self.keep_alive = False
        self.status = status
        self.client.write(error_response(status, code, message, self.fields.request_id,  # type: ignore[arg-type]
                                         keep_alive=self.keep_alive, extra_headers=extra_headers))
        self._finish()

    def _finish(self) -> None:
        self.finished = True
        self._cancel_timer()
        if self.cache_lookup is not None:
            self._cache_release()
        self.client.exchange_done(self)


class LaneCarry:
    """What the compiled lane hands on with a request whose try failed (:meth:`Exchange.inherit`)."""

    __slots__ = ("pool", "tried", "retries", "started", "deadline", "request_id", "failure", "kind", "sent", "delay")

    def __init__(self, pool: Pool, tried: set[Backend], retries: int, started: float, deadline: float,
                 request_id: bytes, failure: tuple[int, str, str], kind: str | None, sent: bool,
                 delay: float | None) -> None:
        self.pool = pool
        self.tried = tried
        self.retries = retries
        self.started = started
        self.deadline = deadline
        self.request_id = request_id
        self.failure = failure
        self.kind = kind
        """The failure (``connect_failure``, ``reset``, ``timeout``), to retry or answer."""
        self.sent = sent
        self.delay = delay
        """A retry already decided (a retriable status): its backoff."""


def end_attempt(pool: Pool, backend: Backend, outcome: Outcome | None, attempt_started: float) -> None:
    """The books of one attempt (both data planes): ``backend.inflight`` down, the breaker,
    the outlier detector and the balancer told (``None``: abandoned, no verdict), and a
    request waiting in the pool's queue let in."""
    backend.inflight -= 1
    breaker = backend.breaker
    if outcome is None:
        if breaker is not None:
            breaker.release_trial()
    else:
        if outcome is not _SUCCESS:
            backend.failures += 1
        if breaker is not None:
            breaker.on_success() if outcome is _SUCCESS else breaker.on_failure()
        pool.outlier.on_result(backend, outcome)
        pool.balancer.observe(backend, time.monotonic() - attempt_started, outcome is _SUCCESS)
    queue = pool.queue
    if queue is not None and len(queue):
        waiting = queue.pop()
        if waiting is not None:
            waiting.admit()


def retry_delay(pool: Pool, retries: int, method: bytes, tried: set[Backend], deadline: float,
                loop: asyncio.AbstractEventLoop, body_kept: bool, *, failure: str | None = None,
                status: int | None = None, retry_after: float | None = None, sent: bool = True) -> float | None:
    """The backoff before another try, if the policy, the attempts, the deadline and the
    budget all allow one (both data planes); ``None`` if not. The budget is asked last, so
    only real retries spend it."""
    policy = pool.retry
    if retries + 1 >= policy.attempts:
        return None
    if not policy.classify(method, status=status, failure=failure, sent=sent).retry:
        return None
    if sent and not body_kept:
        return None  # the body is gone (too large to keep, or still streaming in)
    delay = policy.backoff(retries)
    if retry_after is not None and not pool.has_untried_usable(tried):
        # Retry-After speaks for the backend that sent it: wait it out only when the
        # retry has nowhere else to go.
        delay = max(delay, retry_after)
    if loop.time() + delay >= deadline or not pool.budget.try_spend():
        return None
    return delay
