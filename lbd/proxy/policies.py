"""The routing policies' stage of a request: a fallback chain, a model cascade, shadow copies
(the pool's ``fallback:``, ``cascade:`` and ``shadow:``; :mod:`lbd.policies`).

A layer between the cache stage and the attempts, as :mod:`lbd.proxy.cached` is:

- **Fallback**: when the pool cannot answer before any response byte went out (lbd would
  answer a listed error itself, or the last try's answer has a listed status), the request
  goes to the next pool of its route's chain, served as that pool's model, with fresh
  attempts and the same deadline. Answers say ``x-lbd-pool``.
- **Cascade**: instead of the attempts, the whole body is read, the stages are asked in
  turn through lbd's own data plane (:func:`lbd.policies.cascade.run_cascade`), and the
  chosen answer is written at once with ``x-lbd-cascade-stage``.
- **Shadow**: a sampled request's answer is captured while it streams to the client; when
  it is complete, a copy goes to the shadow pool (:class:`lbd.policies.shadow.ShadowTraffic`).

A pool without policies costs two attribute tests before its attempts; a response, one slot
test per event; the error paths, one method call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lbd.policies.copies import Copy
from lbd.policies.rewrite import retarget, with_content_length, with_model, with_request_target
from lbd.proxy.cached import Cached
from lbd.proxy.heads import BODY_CHUNKED, BODY_NONE
from lbd.proxy.http import LAST_CHUNK, chunk, status_line
from lbd.proxy.request import REPLAY_LIMIT
from lbd.resilience.outlier import Outcome, outcome_of_status
from lbd.resilience.retry import IDEMPOTENT_METHODS

if TYPE_CHECKING:
    from lbd.config.policies import FallbackConfig, FallbackTarget
    from lbd.policies.cascade import CascadeAnswer
    from lbd.policies.shadow import Capture
    from lbd.proxy.pool import Pool

__all__ = ["Policies"]

# Failures after which the request may have reached a backend: falling over sends it again.
_SENT = frozenset({"upstream_reset", "protocol", "timeout", "upstream_status"})
_NOT_FORWARDED = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive", "x-request-id"})
_NO_BODY_STATUS = frozenset({204, 304})
_NOT_COPIED = frozenset({"shadow", "cascade"})
"""Internal requests never copied to a shadow: copies, and cascade stages (their route's
request is copied, once)."""


class _Chain:
    """Where a request is in its route's fallback chain."""

    __slots__ = ("config", "next")

    def __init__(self, config: FallbackConfig) -> None:
        self.config = config
        self.next = 0


class Policies(Cached):
    """The policies' stage; :class:`~lbd.proxy.exchange.Exchange` provides the attempts and
    calls :meth:`_fall_over`, :meth:`_fall_over_status` and the ``_shadow`` capture."""

    __slots__ = ("_chain", "_shadow")
    # Both start as None, set by Exchange.__init__: an __init__ here would cost every request
    # one more frame of the super() chain (~0.5 us measured with bench/proxy/hotpath.py).
    _chain: _Chain | None
    """Where the request is in its route's fallback chain, once it first fell over."""
    _shadow: Capture | None
    """The primary answer being captured for a shadow copy, if this request is sampled."""

    # -- before the attempts ------------------------------------------------------------
    def _proceed(self) -> None:
        config = self.pool.config  # type: ignore[union-attr]
        if config.cascade is None and config.shadow is None:
            Cached._proceed(self)
            return
        internal = self.client.internal
        tag = internal.tag if internal is not None else ""
        if config.shadow is not None and tag not in _NOT_COPIED:
            self._shadow = self.client.server.shadows.sample(self.pool, self.method)
        if config.cascade is not None and tag != "cascade" and not self.is_head:
            self._cascade()
        else:
            Cached._proceed(self)

    # -- fallback -----------------------------------------------------------------------
    def _fall_over(self, status: int, code: str, message: str) -> bool:
        """lbd is about to answer ``status``/``code`` itself: hand the request to the next
        pool of its route's chain instead, if the chain lists the failure. True if it did."""
        chain = self._fallback_chain()
        if chain is None:
            return False
        if code == "upstream_status":
            listed = status in chain.config.on_status
            reason = f"status_{status}"
        else:
            listed = code in chain.config.on_errors
            reason = code
        if not listed or not self._may_hand_on(chain, sent=code in _SENT):
            return False
        self._hand_on(chain, reason, (status, code, message))
        return True

    def _fall_over_status(self, status: int) -> bool:
        """The last try's answer has an error ``status`` (its retries are over): drop it and
        hand the request on if the route's chain lists the status. True if it did."""
        chain = self._fallback_chain()
        if chain is None or status not in chain.config.on_status or not self._may_hand_on(chain, sent=True):
            return False
        conn, self.upstream = self.upstream, None
        if self.backend is not None:  # a status the retries did not look at (4xx): its verdict
            self._end_attempt(outcome_of_status(status) if status >= 500 else Outcome.SUCCESS)  # type: ignore[attr-defined]
        if conn is not None:
            conn.close()  # its answer is not read
        self._hand_on(chain, f"status_{status}", (status, "upstream_status", f"the last pool answered {status}"))
        return True

    def _fallback_chain(self) -> _Chain | None:
        """The route's chain: the first pool's, kept when the request moves on."""
        chain = self._chain
        if chain is None and self.pool is not None and self.pool.config.fallback is not None:
            chain = self._chain = _Chain(self.pool.config.fallback)
        return chain

    def _may_hand_on(self, chain: _Chain, *, sent: bool) -> bool:
        if self.finished or self.response_started or chain.next >= len(chain.config.chain):  # type: ignore[attr-defined]
            return False
        if self.client.loop.time() >= self.deadline:  # type: ignore[attr-defined]
            return False
        if sent and not (self.pool.config.retry.idempotent  # type: ignore[union-attr]
                         or self.method.decode("latin-1") in IDEMPOTENT_METHODS):
            return False
        if self.fields.body_mode == BODY_NONE:
            return True
        return self._replayable and (self.request_done or not sent)

    def _hand_on(self, chain: _Chain, reason: str, failure: tuple[int, str, str]) -> None:
        step = chain.config.chain[chain.next]
        chain.next += 1
        target = self.client.server.runtime.pools.get(step.pool)
        if target is None:  # removed by a reload since the request came in
            self._give_up(failure)
            return
        self.client.server.metrics.policies.fallback(self.pool.name, target.name, reason, self.retries)  # type: ignore[union-attr,attr-defined]
        self._move_to(target)
        if step.model is not None and self.fields.body_mode != BODY_NONE and not self.request_done:
            # the body names the model too; too large to keep is too large to rewrite
            self._with_body(lambda: self._resume(step), lambda: self._give_up(failure))
            return
        self._resume(step)

    def _move_to(self, pool: Pool) -> None:
        self.pool = pool
        self.tried = set()  # type: ignore[attr-defined]
        self.retries = 0  # type: ignore[attr-defined]
        self._failure = None  # type: ignore[attr-defined]
        self._queued = False  # type: ignore[attr-defined]
        pool.budget.record_request()

    def _resume(self, step: FallbackTarget) -> None:
        if step.model is not None:
            self._serve_as(step.model)
        self._attempt()  # type: ignore[attr-defined]

    def _give_up(self, failure: tuple[int, str, str]) -> None:
        self._chain.next = len(self._chain.config.chain)  # type: ignore[union-attr]
        self.fail(*failure)  # type: ignore[attr-defined]

    def _serve_as(self, model: str) -> None:
        """Rewrite the request head (and a JSON body's ``"model"``) for ``model``."""
        fields = self.fields
        target = fields.head.split(b" ", 2)[1]
        url = retarget(target, model)
        if url != target:
            fields.head = with_request_target(fields.head, url)
            self.url, self._path = url, None
        body = self.body
        rewritten = with_model(body, model) if body else None
        if rewritten is None:
            return
        if fields.body_mode == BODY_CHUNKED:
            self._raw = [rewritten]
            self._buffer = [chunk(rewritten), LAST_CHUNK]
        else:
            self._buffer = [rewritten]
            fields.content_length = len(rewritten)
            fields.head = with_content_length(fields.head, len(rewritten))
        self._buffered = len(rewritten)

    # -- cascade ------------------------------------------------------------------------
    def _cascade(self) -> None:
        self._with_body(self._run_cascade, self._cascade_too_large)

    def _cascade_too_large(self) -> None:
        self.fail(413, "body_too_large", f"pool {self.pool.name!r} runs a cascade, which reads the whole "  # type: ignore[attr-defined,union-attr]
                  f"request body: at most {REPLAY_LIMIT} bytes")

    def _run_cascade(self) -> None:
        from lbd.policies.cascade import run_cascade

        pool: Pool = self.pool  # type: ignore[assignment]
        self._await(run_cascade(self.client.server, pool.name, pool.config.cascade, self._copy()),  # type: ignore[arg-type]
                    self._cascaded)

    def _cascaded(self, answer: CascadeAnswer) -> None:
        response = answer.response
        self._serve_buffered(response.status, response.headers, response.body,
                             b"x-lbd-cascade-stage: %d\r\n" % answer.stage)

    def _serve_buffered(self, status: int, headers: tuple[tuple[str, str], ...], body: bytes, extra: bytes) -> None:
        """Write a whole answer lbd already holds (an internal request's), then finish."""
        out = [status_line(status)]
        served_by = header_length = None
        for name, value in headers:
            if name in _NOT_FORWARDED:
                continue
            if name == "x-lbd-backend":
                served_by = value
            elif name == "inference-header-content-length":
                header_length = value
            out.append(b"%b: %b\r\n" % (name.encode("latin-1"), value.encode("latin-1")))
        if status not in _NO_BODY_STATUS:
            out.append(b"content-length: %d\r\n" % len(body))
        out += (b"x-request-id: %b\r\n" % self.fields.request_id, extra)  # type: ignore[str-bytes-safe]
        for name, value in self._extra_fields:
            out += (name, b": ", value, b"\r\n")
        if not self.request_done:
            self.keep_alive = False
        if not self.keep_alive:
            out.append(b"connection: close\r\n")
        elif not self.client.http11:
            out.append(b"connection: keep-alive\r\n")
        out += (b"\r\n", b"" if self.is_head or status in _NO_BODY_STATUS else body)
        self.status = status  # type: ignore[attr-defined]
        self.response_started = True  # type: ignore[attr-defined]
        self.served_by = served_by or ""  # type: ignore[attr-defined]
        self.client.write(b"".join(out))
        capture = self._shadow
        if capture is not None:
            capture.status, capture.header_length = status, header_length
            capture.body(body)
            self._shadow_send()
        self._finish()  # type: ignore[attr-defined]

    # -- shadow -------------------------------------------------------------------------
    def _shadow_send(self) -> None:
        """The primary's answer is complete: copy the request to the shadow pool."""
        capture, self._shadow = self._shadow, None
        shadows = self.client.server.shadows
        if self.pool.name != capture.route or self.body is None:  # type: ignore[union-attr]
            shadows.skip(capture)  # another pool answered, or the body was not kept
        else:
            shadows.send(capture, self._copy)

    def _copy(self) -> Copy:
        """This request, as lbd would send it again itself."""
        auth = self.pool.auth  # type: ignore[union-attr]
        kept_here = auth.header if auth is not None and not auth.config.forward else None
        skip = {b"x-request-id", b"x-lbd-timeout-ms", kept_here}
        headers = tuple((name.decode("latin-1"), value.decode("latin-1")) for name, value in self.headers
                        if name.lower() not in skip)
        request_id = self.fields.request_id.decode("latin-1")  # type: ignore[union-attr]
        deadline = self.deadline  # type: ignore[attr-defined]
        return Copy(self.method.decode("latin-1"), self.fields.head.split(b" ", 2)[1].decode("latin-1"),
                    (*headers, ("x-request-id", request_id)), self.body or b"", self.tenant, self.client_ip,
                    deadline if deadline != float("inf") else None)
