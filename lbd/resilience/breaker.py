"""A circuit breaker per backend: closed, open, half-open.

closed -> open: ``consecutive_failures`` in a row, or a failure ratio of at least
``failure_ratio`` over the rolling ``window`` once it holds ``minimum_requests``.
open -> half_open: ``open_for`` after opening (lazily, when next asked).
half_open: admits at most ``half_open_requests`` trials; when that many have succeeded it
closes, and any failure opens it again.

Contract with the caller: every ``allow()`` that returned True is followed by exactly one of
``on_success()``, ``on_failure()`` or ``release_trial()`` (the request was not sent after
all). Ask ``allow()`` last, after every other filter, since in half-open it takes a trial
slot. Results that arrive while open (requests admitted before it opened) are ignored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lbd.clock import Clock
from lbd.config.resilience import BreakerConfig
from lbd.resilience.window import RollingWindow

__all__ = ["CircuitBreaker", "CLOSED", "OPEN", "HALF_OPEN"]

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
_REQUESTS, _FAILURES = 0, 1

Transition = Callable[[str, str, "str | None"], None]
"""``on_transition(old_state, new_state, reason)``: for metrics and logs."""


class CircuitBreaker:
    __slots__ = ("config", "_clock", "_state", "_window", "_use_ratio", "_consecutive", "_trials_in_flight",
                 "_trial_successes", "reason", "opened_at", "reopens_at", "_on_transition")

    def __init__(self, config: BreakerConfig, clock: Clock, on_transition: Transition | None = None) -> None:
        self.config = config
        self._clock = clock
        self._state = CLOSED
        self._window = RollingWindow(config.window)
        self._use_ratio = config.enabled and config.failure_ratio > 0
        self._consecutive = 0
        self._trials_in_flight = 0
        self._trial_successes = 0
        self.reason: str | None = None
        """Why the breaker is open or half-open; ``None`` while closed."""
        self.opened_at: float | None = None
        self.reopens_at: float | None = None
        """When an open breaker starts letting trials through (clock time)."""
        self._on_transition = on_transition

    @property
    def state(self) -> str:
        if self._state is OPEN:
            self._maybe_half_open()
        return self._state

    def allow(self) -> bool:
        """May a request go to this backend now? O(1)."""
        if self._state is CLOSED:
            return True
        if self._state is OPEN and not self._maybe_half_open():
            return False
        if self._trials_in_flight + self._trial_successes >= self.config.half_open_requests:
            return False
        self._trials_in_flight += 1
        return True

    def on_success(self) -> None:
        state = self._state
        if state is CLOSED:
            self._consecutive = 0
            if self._use_ratio:
                self._window.add(self._clock.now(), _REQUESTS)
        elif state is HALF_OPEN and self._trials_in_flight > 0:
            self._trials_in_flight -= 1
            self._trial_successes += 1
            if self._trial_successes >= self.config.half_open_requests:
                self._close()

    def on_failure(self) -> None:
        state = self._state
        if state is CLOSED:
            if self.config.enabled:
                self._closed_failure()
        elif state is HALF_OPEN:
            self._open("a trial request failed")

    def release_trial(self) -> None:
        """A request admitted by ``allow()`` was not sent: give its trial slot back."""
        if self._state is HALF_OPEN and self._trials_in_flight > 0:
            self._trials_in_flight -= 1

    def snapshot(self) -> dict[str, Any]:
        now = self._clock.now()
        state = self.state
        return {
            "state": state, "reason": self.reason,
            "opened_at": self.opened_at, "reopens_at": self.reopens_at,
            "reopens_in": max(0.0, self.reopens_at - now) if state is OPEN and self.reopens_at else None,
            "consecutive_failures": self._consecutive,
            "window_requests": self._window.total(now, _REQUESTS),
            "window_failures": self._window.total(now, _FAILURES),
            "trials_in_flight": self._trials_in_flight, "trial_successes": self._trial_successes,
        }

    # -- transitions ---------------------------------------------------------------------
    def _closed_failure(self) -> None:
        config = self.config
        self._consecutive += 1
        if config.consecutive_failures and self._consecutive >= config.consecutive_failures:
            self._open(f"{self._consecutive} consecutive failures")
            return
        if self._use_ratio:
            now = self._clock.now()
            window = self._window
            window.add(now, _REQUESTS)
            window.add(now, _FAILURES)
            requests = window.total(now, _REQUESTS)
            ratio = window.total(now, _FAILURES) / requests
            if requests >= config.minimum_requests and ratio >= config.failure_ratio:
                self._open(f"failure ratio {ratio:.2f} over {config.window:g}s ({requests} requests)")

    def on_recovered(self) -> None:
        """An active health check saw the backend recover: an open breaker goes half-open at
        once, so trial requests decide instead of waiting out ``open_for``."""
        if self._state == OPEN:
            self.reopens_at = self._clock.now()
            self._maybe_half_open()

    def _open(self, reason: str) -> None:
        now = self._clock.now()
        self.opened_at = now
        self.reopens_at = now + self.config.open_for
        self._set(OPEN, reason)

    def _maybe_half_open(self) -> bool:
        if self._clock.now() < self.reopens_at:  # type: ignore[operator]
            return False
        self._trials_in_flight = self._trial_successes = 0
        self._set(HALF_OPEN, f"trying {self.config.half_open_requests} requests after: {self.reason}")
        return True

    def _close(self) -> None:
        self._consecutive = 0
        self._window.clear()
        self.opened_at = self.reopens_at = None
        self._set(CLOSED, None)

    def _set(self, state: str, reason: str | None) -> None:
        old, self._state, self.reason = self._state, state, reason
        if self._on_transition is not None:
            self._on_transition(old, state, reason)
