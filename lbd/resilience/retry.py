"""Which failed tries are retried, how long to wait, and the budget that bounds retries.

:class:`RetryPolicy` says whether one failed try may be retried: its kind is listed in
``retry_on``, and a request whose bytes may have reached the backend is sent again only
when it is idempotent. The caller still checks ``attempts``, the budget and the deadline.

:class:`RetryBudget` is Finagle's and Linkerd's: over a sliding window, retries may be at
most ``ratio`` of the requests plus a floor of ``min_per_second * window``, so a failing
fleet gets at most ``1 + ratio`` times its load, not ``attempts`` times.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import timezone
from email.utils import parsedate_to_datetime
from typing import Any

from lbd.clock import Clock
from lbd.config.resilience import BudgetConfig, RetryConfig
from lbd.resilience.window import RollingWindow

__all__ = ["RetryPolicy", "RetryBudget", "Verdict", "CONNECT_FAILURE", "RESET", "TIMEOUT",
           "IDEMPOTENT_METHODS", "parse_retry_after"]

CONNECT_FAILURE, RESET, TIMEOUT = "connect_failure", "reset", "timeout"
"""Failures without an answer: nothing was sent (connect), or the connection broke or went
silent after the request was (possibly) sent."""
_FAILURES = frozenset({CONNECT_FAILURE, RESET, TIMEOUT})
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})
_GATEWAY = frozenset({502, 503, 504})
_MAX_DOUBLINGS = 64  # 2**64 * any base exceeds any sane max: stop growing the exponent there


@dataclass(frozen=True, slots=True)
class Verdict:
    """``retry``: may this try be retried; ``reason``: a short label for logs and metrics."""

    retry: bool
    reason: str


def parse_retry_after(value: str | None, now_epoch: float) -> float | None:
    """Seconds from a ``Retry-After`` value: delta-seconds or an HTTP-date (RFC 9110 10.2.3);
    ``None`` when absent or unreadable. A date in the past is 0."""
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # the asctime form carries no zone: HTTP dates are GMT
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, when.timestamp() - now_epoch)


class RetryPolicy:
    """One pool's retry rules (``RetryConfig``) with an injected random source for jitter."""

    __slots__ = ("config", "_rng", "_retry_on", "_statuses")

    def __init__(self, config: RetryConfig, rng: random.Random) -> None:
        self.config = config
        self._rng = rng
        self._retry_on = frozenset(config.retry_on)
        self._statuses = frozenset(s for s in range(100, 600) if self._status_listed(s))

    @property
    def attempts(self) -> int:
        return self.config.attempts

    def _status_listed(self, status: int) -> bool:
        retry_on = self._retry_on
        return (("5xx" in retry_on and 500 <= status <= 599)
                or ("gateway_error" in retry_on and status in _GATEWAY)
                or ("retriable_status" in retry_on and status in self.config.statuses))

    def is_idempotent(self, method: str | bytes) -> bool:
        """May this request be sent twice? Always for GET, HEAD, PUT, DELETE, OPTIONS, TRACE;
        for any method when the pool says ``idempotent: true`` (KServe inference)."""
        if self.config.idempotent:
            return True
        name = method.decode("latin-1") if isinstance(method, bytes) else method
        return name.upper() in IDEMPOTENT_METHODS

    def retryable_status(self, status: int) -> bool:
        return status in self._statuses

    def retryable_failure(self, failure: str) -> bool:
        if failure not in _FAILURES:
            raise ValueError(f"not a failure kind: {failure!r}; one of {sorted(_FAILURES)}")
        return failure in self._retry_on

    def classify(self, method: str | bytes, *, status: int | None = None, failure: str | None = None,
                 sent: bool = True) -> Verdict:
        """May a try that ended with ``status`` (an answer) or ``failure`` (none) be retried?

        ``sent`` says whether any byte of the request may have reached the backend; a
        connect failure never sent anything, an answer always did.
        """
        if failure is not None:
            if not self.retryable_failure(failure):
                return Verdict(False, f"{failure} not in retry_on")
            sent = sent and failure != CONNECT_FAILURE
            label = failure
        elif status is not None:
            if not self.retryable_status(status):
                return Verdict(False, f"status {status} not retriable")
            sent, label = True, f"status {status}"
        else:
            raise ValueError("give a status or a failure")
        if sent and not self.is_idempotent(method):
            return Verdict(False, f"{label}, not idempotent")
        return Verdict(True, label)

    def backoff(self, retry_number: int) -> float:
        """Seconds to wait before retry ``retry_number`` (0 for the first retry): full jitter,
        uniform in ``[0, min(max, base * 2**retry_number)]``."""
        backoff = self.config.backoff
        ceiling = min(backoff.max, backoff.base * 2.0 ** min(max(retry_number, 0), _MAX_DOUBLINGS))
        return self._rng.uniform(0.0, ceiling)

    def retry_after(self, header_value: str | None, now_epoch: float) -> float | None:
        """The wait a 429 or 503 asked for, at most ``retry_after_max``; ``None`` when there is
        none, it is unreadable, or ``honour_retry_after`` is off."""
        if not self.config.honour_retry_after:
            return None
        seconds = parse_retry_after(header_value, now_epoch)
        return None if seconds is None else min(seconds, self.config.retry_after_max)


_REQUESTS, _RETRIES = 0, 1


class RetryBudget:
    """Retries over a sliding window: at most ``ratio * requests + min_per_second * window``.

    ``record_request()`` once per client request (not per retry); ``try_spend()`` before each
    retry: True takes one retry from the budget, False means the budget is exhausted.
    """

    __slots__ = ("config", "_clock", "_window", "_floor", "spent", "exhausted")

    def __init__(self, config: BudgetConfig, clock: Clock) -> None:
        self.config = config
        self._clock = clock
        self._window = RollingWindow(config.window)
        self._floor = config.min_per_second * config.window
        self.spent = 0
        """Retries allowed, in all."""
        self.exhausted = 0
        """Retries refused because the budget was spent, in all."""

    def record_request(self) -> None:
        self._window.add(self._clock.now(), _REQUESTS)

    def available(self) -> float:
        """Retries the budget allows now (may be fractional)."""
        now, window = self._clock.now(), self._window
        allowed = self.config.ratio * window.total(now, _REQUESTS) + self._floor
        return allowed - window.total(now, _RETRIES)

    def try_spend(self) -> bool:
        # The epsilon keeps 0.29 * 100 (28.999...) from refusing the 29th retry.
        if self.available() < 1.0 - 1e-9:
            self.exhausted += 1
            return False
        self._window.add(self._clock.now(), _RETRIES)
        self.spent += 1
        return True

    def snapshot(self) -> dict[str, Any]:
        now = self._clock.now()
        return {"requests": self._window.total(now, _REQUESTS), "retries": self._window.total(now, _RETRIES),
                "available": max(0.0, self.available()), "spent": self.spent, "exhausted": self.exhausted}
