"""Typed config of a pool's resilience: health checks, outlier detection, circuit breaker,
retries, admission limits and priority tiers.

Each model is frozen and forbids unknown keys; defaults are filled first, then checked, and
every error says which key is wrong. The pool model holds one of each under
``health:``, ``outlier:``, ``breaker:``, ``retry:``, ``limits:`` and ``tiers:``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lbd.units import Duration

__all__ = [
    "HealthConfig", "CanaryConfig", "OutlierConfig", "BreakerConfig", "RetryConfig",
    "BackoffConfig", "BudgetConfig", "LimitsConfig", "TiersConfig", "RetryOn", "RETRY_ON",
]

RetryOn = Literal["connect_failure", "reset", "timeout", "5xx", "gateway_error", "retriable_status"]
RETRY_ON: tuple[str, ...] = ("connect_failure", "reset", "timeout", "5xx", "gateway_error", "retriable_status")


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _statuses(value: list[int]) -> list[int]:
    for status in value:
        if not 100 <= status <= 599:
            raise ValueError(f"not an HTTP status: {status}; use 100..599")
    return value


class CanaryConfig(_Strict):
    """A real inference request sent as a health probe, so a backend whose readiness answers
    while inference hangs is taken out.

    ``path`` (required, e.g. ``/v2/models/minilm/infer``) is POSTed with ``body`` (a JSON
    object, or text sent as is). The probe fails when the answer is not 2xx or takes longer
    than ``latency_limit`` (default 2s). ``interval`` (default: every health round) spaces
    canaries apart, since inference costs more than a readiness check; between two canaries
    the last canary's result stands. ``content_type`` default ``application/json``.
    """

    path: str
    body: dict[str, Any] | str = Field(default_factory=dict)
    content_type: str = "application/json"
    latency_limit: Duration = Field(2.0, gt=0)
    interval: Duration | None = Field(None, gt=0)

    @field_validator("path")
    @classmethod
    def _slash(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"must start with '/': {value!r}")
        return value


class HealthConfig(_Strict):
    """Active health checks of every backend of the pool.

    Defaults: ``enabled`` true. ``path`` none, which means KServe readiness: ``/v2/health/ready``
    plus ``/v2/models/{m}/ready`` for each model the pool matches; give a path for plain HTTP
    backends. ``expected_status`` [200]. ``interval`` 2s between probes of a healthy backend,
    ``down_interval`` 5s for one that is down, each spread by ``jitter`` 0.1 (+-10%).
    ``timeout`` 1s per probe. ``rise`` 2 passes in a row bring a backend back, ``fall`` 3
    failures in a row take it out; the very first probe decides at once. ``canary`` none.
    ``slow_start`` 0 (off): a recovered backend's weight ramps from 10% to 100% over this
    window. ``initial_healthy`` true: a new backend takes traffic before its first probe.
    """

    enabled: bool = True
    path: str | None = None
    expected_status: list[int] = Field(default_factory=lambda: [200], min_length=1)
    interval: Duration = Field(2.0, gt=0)
    down_interval: Duration = Field(5.0, gt=0)
    jitter: float = Field(0.1, ge=0.0, lt=1.0)
    timeout: Duration = Field(1.0, gt=0)
    rise: int = Field(2, ge=1)
    fall: int = Field(3, ge=1)
    canary: CanaryConfig | None = None
    slow_start: Duration = 0.0
    initial_healthy: bool = True

    _check_status = field_validator("expected_status")(classmethod(lambda cls, v: _statuses(v)))

    @field_validator("path")
    @classmethod
    def _slash(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError(f"must start with '/': {value!r}")
        return value


class OutlierConfig(_Strict):
    """Passive outlier detection from real traffic (Envoy's model).

    Defaults: ``enabled`` true. A backend is ejected after ``consecutive_5xx`` 5 answers
    500..599 in a row, ``consecutive_gateway_failure`` 5 answers 502/503/504 in a row, or
    ``consecutive_local_origin_failure`` 5 connect failures or resets in a row (counted apart
    from upstream errors); 0 turns a rule off. It stays out ``base_ejection_time`` 30s times
    the number of times it was ejected, at most ``max_ejection_time`` 300s; each
    ``decay_interval`` 10s spent back in rotation forgets one past ejection. At most
    ``max_ejection_percent`` 50 of the pool is ejected at once. When fewer than
    ``panic_threshold`` 50 percent of the pool is usable, the pool routes to all backends
    rather than to none (0 turns panic mode off); in a pool with tiers, when fewer than that
    share of every tier is usable.
    """

    enabled: bool = True
    consecutive_5xx: int = Field(5, ge=0)
    consecutive_gateway_failure: int = Field(5, ge=0)
    consecutive_local_origin_failure: int = Field(5, ge=0)
    base_ejection_time: Duration = Field(30.0, gt=0)
    max_ejection_time: Duration = 300.0
    decay_interval: Duration = Field(10.0, gt=0)
    max_ejection_percent: float = Field(50.0, ge=0, le=100)
    panic_threshold: float = Field(50.0, ge=0, le=100)

    @model_validator(mode="after")
    def _check(self) -> OutlierConfig:
        if self.max_ejection_time < self.base_ejection_time:
            raise ValueError(f"max_ejection_time ({self.max_ejection_time:g}s) must be >= "
                             f"base_ejection_time ({self.base_ejection_time:g}s)")
        return self


class BreakerConfig(_Strict):
    """A circuit breaker per backend.

    Defaults: ``enabled`` true. Opens after ``consecutive_failures`` 5 failures in a row (0 =
    rule off), or when at least ``failure_ratio`` 0.5 of the requests in the last ``window``
    10s failed, counted once the window holds ``minimum_requests`` 20 (ratio 0 = rule off).
    Stays open ``open_for`` 10s, then lets ``half_open_requests`` 3 trial requests through:
    all succeed and it closes, one fails and it opens again.
    """

    enabled: bool = True
    consecutive_failures: int = Field(5, ge=0)
    failure_ratio: float = Field(0.5, ge=0.0, le=1.0)
    window: Duration = Field(10.0, gt=0)
    minimum_requests: int = Field(20, ge=1)
    open_for: Duration = Field(10.0, gt=0)
    half_open_requests: int = Field(3, ge=1)


class BackoffConfig(_Strict):
    """Exponential backoff with full jitter: retry ``n`` (from 0) waits a uniform random time
    in ``[0, min(max, base * 2**n)]``. Defaults: ``base`` 25ms, ``max`` 1s."""

    base: Duration = Field(0.025, gt=0)
    max: Duration = 1.0

    @model_validator(mode="after")
    def _check(self) -> BackoffConfig:
        if self.max < self.base:
            raise ValueError(f"max ({self.max:g}s) must be >= base ({self.base:g}s)")
        return self


class BudgetConfig(_Strict):
    """Retries allowed over a sliding ``window`` (default 10s): at most ``ratio`` (default
    0.2) of the requests, plus a floor of ``min_per_second`` (default 3) so a quiet pool can
    still retry. ``ratio`` 0 leaves only the floor."""

    ratio: float = Field(0.2, ge=0.0)
    min_per_second: float = Field(3.0, ge=0.0)
    window: Duration = Field(10.0, gt=0)


class RetryConfig(_Strict):
    """When and how a failed try is retried.

    Defaults: ``attempts`` 3 tries in all (1 = no retries). ``retry_on`` connect_failure,
    reset, timeout, retriable_status (also: ``5xx`` any 500..599, ``gateway_error``
    502/503/504); ``statuses`` [502, 503, 504] are the retriable ones. ``per_try_timeout``
    none (the pool's ``timeouts.per_try``). ``backoff`` {base 25ms, max 1s}. ``budget``
    {ratio 0.2, min_per_second 3, window 10s}. ``idempotent`` true: a POST already sent (KServe
    inference) may be sent again; false re-sends only GET, HEAD, PUT, DELETE, OPTIONS, TRACE.
    ``honour_retry_after`` true: a 429 or 503 with ``Retry-After`` waits that long, at most
    ``retry_after_max`` 5s.
    """

    attempts: int = Field(3, ge=1)
    retry_on: list[RetryOn] = Field(
        default_factory=lambda: ["connect_failure", "reset", "timeout", "retriable_status"])
    statuses: list[int] = Field(default_factory=lambda: [502, 503, 504])
    per_try_timeout: Duration | None = Field(None, gt=0)
    backoff: BackoffConfig = BackoffConfig()
    budget: BudgetConfig = BudgetConfig()
    idempotent: bool = True
    honour_retry_after: bool = True
    retry_after_max: Duration = 5.0

    _check_status = field_validator("statuses")(classmethod(lambda cls, v: _statuses(v)))

    @field_validator("retry_on", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class LimitsConfig(_Strict):
    """Admission and bulkheads.

    Defaults: ``max_inflight_per_backend`` 0 (unlimited). ``queue`` 0 (no queue: a request
    that finds every backend full is refused at once); otherwise up to this many requests
    wait, each at most ``queue_timeout`` 500ms. A refused request gets 503 with
    ``Retry-After: retry_after`` (default 1s). ``priority_header`` ``x-lbd-priority``: an
    integer, higher is served first.
    """

    max_inflight_per_backend: int = Field(0, ge=0)
    queue: int = Field(0, ge=0)
    queue_timeout: Duration = Field(0.5, gt=0)
    retry_after: Duration = 1.0
    priority_header: str = "x-lbd-priority"

    @field_validator("priority_header")
    @classmethod
    def _lower(cls, value: str) -> str:
        if not value or any(c in value for c in " :\t\r\n"):
            raise ValueError(f"not a header name: {value!r}")
        return value.lower()


class TiersConfig(_Strict):
    """How traffic spills from a pool's first tier to the next (backends' ``tier``; Envoy's
    priority levels).

    Default: ``overprovisioning_factor`` 1.4. A tier's health is the share of its backends
    that are usable times this factor, capped at 100%: tier 0 takes that share of the
    requests, the next tier the rest up to its own health, and so on (scaled up when the
    healths add up to less than 100%). With 1.4, a tier keeps all its traffic while at least
    5/7 (71.4%) of it is usable. Must be >= 1.0 (a healthy first tier then takes everything).
    """

    overprovisioning_factor: float = Field(1.4, ge=1.0, le=100.0)
