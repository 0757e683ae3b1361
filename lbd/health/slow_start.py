"""Slow start: a recovered backend's share ramps up linearly over a window (GPU warm-up,
cold caches), as Envoy and HAProxy do. The caller sets
``backend.weight = backend.config_weight * factor(now)``.
"""

from __future__ import annotations

__all__ = ["SlowStart", "ramp", "FLOOR"]

FLOOR = 0.1
"""The factor right after recovery: small, but above zero so the backend gets some traffic."""


def ramp(elapsed: float, window: float, floor: float = FLOOR) -> float:
    """``floor`` at 0, rising linearly to 1.0 at ``window``; 1.0 when the window is 0."""
    if window <= 0 or elapsed >= window:
        return 1.0
    return floor + (1.0 - floor) * max(elapsed, 0.0) / window


class SlowStart:
    """One backend's ramp. ``window`` 0 turns it off (the factor is always 1.0)."""

    __slots__ = ("window", "floor", "started_at")

    def __init__(self, window: float, floor: float = FLOOR) -> None:
        if not 0.0 < floor <= 1.0:
            raise ValueError("floor must be in (0, 1]")
        self.window = window
        self.floor = floor
        self.started_at: float | None = None

    def start(self, now: float) -> None:
        if self.window > 0:
            self.started_at = now

    def stop(self) -> None:
        self.started_at = None

    def active(self, now: float) -> bool:
        return self.started_at is not None and now - self.started_at < self.window

    def factor(self, now: float) -> float:
        if self.started_at is None:
            return 1.0
        return ramp(now - self.started_at, self.window, self.floor)
