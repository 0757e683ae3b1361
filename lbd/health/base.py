"""The probe interface: a probe says pass or fail, nothing more.

Turning streaks of results into healthy or not is the policy's job (:mod:`lbd.health.policy`),
so every probe gets rise/fall, slow start and the admin view for free.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["ProbeResult", "Probe", "Target"]


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """``ok``: the probe passed; ``latency``: seconds it took; ``detail``: what it saw, for
    people (``"GET /v2/health/ready: 503"``)."""

    ok: bool
    latency: float
    detail: str


class Target(Protocol):
    """What a probe reads of a backend."""

    name: str
    host: str
    port: int


class Probe(Protocol):
    async def check(self, backend: Target) -> ProbeResult:
        """Probe ``backend`` once. Never raises for the backend's faults (refused, reset,
        timed out, wrong status): those are a failed result. Bounded by the probe's timeout."""
        ...
