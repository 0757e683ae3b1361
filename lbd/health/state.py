"""One backend's health as the checker sees it: streak policy, slow start, last results.

Pure (no I/O, no tasks), so the checker's decisions are tested with a manual clock.
"""

from __future__ import annotations

from typing import Any

from lbd.config.resilience import HealthConfig
from lbd.health.base import ProbeResult
from lbd.health.policy import StreakPolicy
from lbd.health.slow_start import SlowStart

__all__ = ["BackendHealth"]


class BackendHealth:
    __slots__ = ("policy", "slow_start", "last", "last_checked", "canary", "canary_due", "transitions",
                 "_canary_interval")

    def __init__(self, config: HealthConfig) -> None:
        self.policy = StreakPolicy(config.rise, config.fall, config.initial_healthy)
        self.slow_start = SlowStart(config.slow_start)
        self.last: ProbeResult | None = None
        self.last_checked: float | None = None
        self.canary: ProbeResult | None = None
        """The last canary's result; it stands until the next canary."""
        self.canary_due = float("-inf")
        self._canary_interval = config.canary.interval if config.canary is not None else None
        self.transitions = 0

    @property
    def healthy(self) -> bool:
        return self.policy.healthy

    def wants_canary(self, now: float) -> bool:
        return now >= self.canary_due

    def record_canary(self, result: ProbeResult, now: float) -> None:
        self.canary = result
        self.canary_due = now + self._canary_interval if self._canary_interval is not None else now

    def record(self, ready: ProbeResult, now: float) -> bool:
        """One round's readiness result (a failed last canary fails the round too); True when
        the backend changed between healthy and down. A recovery starts slow start, unless it
        is the first decision (a pool coming up has nothing to ramp against)."""
        result = ready
        if ready.ok and self.canary is not None and not self.canary.ok:
            result = self.canary
        self.last, self.last_checked = result, now
        was_decided = self.policy.decided
        if not self.policy.observe(result.ok):
            return False
        self.transitions += 1
        if self.policy.healthy and was_decided:
            self.slow_start.start(now)
        else:
            self.slow_start.stop()
        return True

    def adopt(self, previous: BackendHealth) -> None:
        """Take a previous checker's verdict and last results (its config differed)."""
        self.policy.healthy, self.policy.decided = previous.policy.healthy, previous.policy.decided
        self.last, self.last_checked, self.canary = previous.last, previous.last_checked, previous.canary
        self.transitions = previous.transitions

    def weight_factor(self, now: float) -> float:
        return self.slow_start.factor(now)

    def snapshot(self, now: float) -> dict[str, Any]:
        last, canary = self.last, self.canary
        return {
            "healthy": self.policy.healthy, "decided": self.policy.decided, "streak": self.policy.streak,
            "last_ok": last.ok if last else None, "last_latency": last.latency if last else None,
            "last_detail": last.detail if last else None,
            "last_checked_ago": now - self.last_checked if self.last_checked is not None else None,
            "canary_ok": canary.ok if canary else None, "canary_detail": canary.detail if canary else None,
            "transitions": self.transitions, "weight_factor": self.weight_factor(now),
        }
