"""Active health checks: probes (HTTP, KServe readiness, canary inference), the rise/fall
policy, slow start, and the per-pool checker that runs them."""

from lbd.health.base import Probe, ProbeResult, Target
from lbd.health.checker import HealthChecker, default_session, next_delay
from lbd.health.http_probe import CanaryProbe, HttpProbe, kserve_paths, readiness_probe
from lbd.health.policy import StreakPolicy
from lbd.health.slow_start import SlowStart, ramp
from lbd.health.state import BackendHealth

__all__ = [
    "Probe", "ProbeResult", "Target", "HealthChecker", "default_session", "next_delay",
    "HttpProbe", "CanaryProbe", "kserve_paths", "readiness_probe", "StreakPolicy", "SlowStart", "ramp",
    "BackendHealth",
]
