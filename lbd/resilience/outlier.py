"""Passive outlier detection per pool, from the results of real requests (Envoy's model).

Each backend has three consecutive counters: 5xx answers, gateway failures (502/503/504,
which also count as 5xx) and local-origin failures (connect failures and resets, counted
apart from what the upstream answered). When one reaches its limit the backend is ejected
for ``base_ejection_time * ejections`` (at most ``max_ejection_time``); every
``decay_interval`` spent back in rotation forgets one past ejection. Never more than
``max_ejection_percent`` of the pool is out at once.

The panic threshold: when fewer than ``panic_threshold`` percent of a pool's backends are
usable (healthy, not ejected), the pool routes to all of them rather than to none.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from enum import Enum
from typing import Any, TypeVar

from lbd.clock import Clock
from lbd.config.resilience import OutlierConfig

__all__ = ["Outcome", "OutlierDetector", "outcome_of_status", "in_panic", "routable"]

B = TypeVar("B", bound=Hashable)


class Outcome(str, Enum):
    SUCCESS = "success"
    HTTP_5XX = "http_5xx"
    GATEWAY_FAILURE = "gateway_failure"
    LOCAL_ORIGIN_FAILURE = "local_origin_failure"


_GATEWAY = frozenset({502, 503, 504})
# The members as plain names: on Python 3.11 ``Outcome.X`` goes through EnumType.__getattr__,
# and on_result runs once per request.
_SUCCESS, _HTTP_5XX = Outcome.SUCCESS, Outcome.HTTP_5XX
_GATEWAY_FAILURE, _LOCAL_ORIGIN_FAILURE = Outcome.GATEWAY_FAILURE, Outcome.LOCAL_ORIGIN_FAILURE


def outcome_of_status(status: int) -> Outcome:
    """What an answer with this status means for outlier detection (4xx is a success: the
    backend works, the request was wrong)."""
    if status in _GATEWAY:
        return _GATEWAY_FAILURE
    return _HTTP_5XX if 500 <= status <= 599 else _SUCCESS


def in_panic(usable: int, total: int, panic_threshold: float) -> bool:
    """True when fewer than ``panic_threshold`` percent of ``total`` backends are usable."""
    return total > 0 and usable * 100 < panic_threshold * total


def routable(backends: Sequence[B], is_usable: Callable[[B], bool], panic_threshold: float) -> tuple[list[B], bool]:
    """The backends to route to, and whether the pool is in panic (then: all of them)."""
    usable = [backend for backend in backends if is_usable(backend)]
    if in_panic(len(usable), len(backends), panic_threshold):
        return list(backends), True
    return usable, False


class _State:
    """One backend's counters and ejection history."""

    __slots__ = ("consecutive_5xx", "consecutive_gateway", "consecutive_local", "ejections",
                 "ejected_until", "last_reason")

    def __init__(self) -> None:
        self.consecutive_5xx = self.consecutive_gateway = self.consecutive_local = 0
        self.ejections = 0
        self.ejected_until = 0.0  # when the last ejection ends (or ended)
        self.last_reason: str | None = None


Ejection = Callable[[Any, str, float], None]
"""``on_eject(backend, reason, seconds)``: for metrics and logs."""


class OutlierDetector:
    """Outlier detection over one pool's ``backends`` (any hashable objects)."""

    __slots__ = ("config", "_clock", "_states", "_ejected", "_on_eject", "ejections_total",
                 "ejections_refused")

    def __init__(self, config: OutlierConfig, clock: Clock, backends: Iterable[Hashable],
                 on_eject: Ejection | None = None) -> None:
        self.config = config
        self._clock = clock
        self._states: dict[Hashable, _State] = {backend: _State() for backend in backends}
        self._ejected: dict[Hashable, float] = {}  # backend -> ejection deadline
        self._on_eject = on_eject
        self.ejections_total = 0
        self.ejections_refused = 0
        """Ejections not made because ``max_ejection_percent`` of the pool was already out."""

    def inherit(self, previous: OutlierDetector) -> None:
        """Keep the counters and ejections of backends that a reload carried over."""
        for backend in self._states.keys() & previous._states.keys():
            self._states[backend] = previous._states[backend]
            if backend in previous._ejected:
                self._ejected[backend] = previous._ejected[backend]

    def is_ejected(self, backend: Hashable) -> bool:
        """O(1); an ejection whose time is up ends here."""
        deadline = self._ejected.get(backend)
        if deadline is None:
            return False
        if self._clock.now() < deadline:
            return True
        del self._ejected[backend]
        return False

    def uneject(self, backend: Hashable) -> None:
        """A passing active health check ends an ejection (Envoy's
        ``successful_active_health_check_uneject_host``) and resets the streaks."""
        self._ejected.pop(backend, None)
        state = self._states.get(backend)
        if state is not None:
            state.consecutive_5xx = state.consecutive_gateway = state.consecutive_local = 0

    def in_panic(self, usable: int, total: int) -> bool:
        return in_panic(usable, total, self.config.panic_threshold)

    def on_result(self, backend: Hashable, outcome: Outcome) -> None:
        state = self._states.get(backend)
        if state is None or not self.config.enabled:
            return
        if outcome.__class__ is not Outcome:
            try:
                outcome = Outcome(outcome)  # given as text
            except ValueError:
                raise ValueError(f"not an outcome: {outcome!r}") from None
        if outcome is _SUCCESS:
            state.consecutive_5xx = state.consecutive_gateway = state.consecutive_local = 0
        elif outcome is _LOCAL_ORIGIN_FAILURE:
            state.consecutive_local += 1
            self._check(backend, state.consecutive_local, self.config.consecutive_local_origin_failure,
                        "consecutive local-origin failures")
        elif outcome is _GATEWAY_FAILURE or outcome is _HTTP_5XX:
            self._upstream_error(backend, state, outcome is _GATEWAY_FAILURE)

    def _upstream_error(self, backend: Hashable, state: _State, gateway: bool) -> None:
        # As Envoy: a 5xx that is not a gateway failure breaks the gateway-failure streak.
        state.consecutive_gateway = state.consecutive_gateway + 1 if gateway else 0
        state.consecutive_5xx += 1
        config = self.config
        if gateway and self._check(backend, state.consecutive_gateway, config.consecutive_gateway_failure,
                                   "consecutive gateway failures"):
            return
        self._check(backend, state.consecutive_5xx, config.consecutive_5xx, "consecutive 5xx")

    def _check(self, backend: Hashable, count: int, limit: int, what: str) -> bool:
        """Eject when ``count`` reached ``limit``; True when it did (ejected, already out, or
        refused for lack of room), so one result is judged by one rule only."""
        if not limit or count < limit:
            return False
        if self.is_ejected(backend):
            return True
        if not self._room_for_one_more():
            self.ejections_refused += 1
            return True
        self._eject(backend, f"{count} {what}")
        return True

    def _room_for_one_more(self) -> bool:
        now = self._clock.now()
        for backend in [b for b, deadline in self._ejected.items() if deadline <= now]:
            del self._ejected[backend]
        return (len(self._ejected) + 1) * 100 <= self.config.max_ejection_percent * len(self._states)

    def _eject(self, backend: Hashable, reason: str) -> None:
        config, state, now = self.config, self._states[backend], self._clock.now()
        healthy_for = max(0.0, now - state.ejected_until)
        forgotten = int(healthy_for // config.decay_interval) if state.ejections else 0
        state.ejections = max(0, state.ejections - forgotten) + 1
        seconds = min(config.base_ejection_time * state.ejections, config.max_ejection_time)
        state.ejected_until = self._ejected[backend] = now + seconds
        state.consecutive_5xx = state.consecutive_gateway = state.consecutive_local = 0
        state.last_reason = reason
        self.ejections_total += 1
        if self._on_eject is not None:
            self._on_eject(backend, reason, seconds)

    def snapshot(self) -> dict[str, Any]:
        """Per backend (keyed by its ``name`` where it has one): counters and ejection."""
        now = self._clock.now()
        backends = {}
        for backend, state in self._states.items():
            ejected = self.is_ejected(backend)
            backends[getattr(backend, "name", repr(backend))] = {
                "ejected": ejected, "ejected_for": state.ejected_until - now if ejected else 0.0,
                "ejections": state.ejections, "reason": state.last_reason,
                "consecutive_5xx": state.consecutive_5xx, "consecutive_gateway_failure": state.consecutive_gateway,
                "consecutive_local_origin_failure": state.consecutive_local,
            }
        return {"ejected": len(self._ejected), "ejections_total": self.ejections_total,
                "ejections_refused": self.ejections_refused, "backends": backends}
