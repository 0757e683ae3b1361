import pytest
from pydantic import ValidationError

from lbd.config.resilience import (
    BreakerConfig, HealthConfig, LimitsConfig, OutlierConfig, RetryConfig,
)


def errors(model, **values) -> list[tuple[tuple, str]]:
    with pytest.raises(ValidationError) as info:
        model(**values)
    return [(e["loc"], e["msg"]) for e in info.value.errors()]


def test_defaults_are_the_documented_ones() -> None:
    health = HealthConfig()
    assert (health.enabled, health.path, health.expected_status) == (True, None, [200])
    assert (health.interval, health.down_interval, health.jitter, health.timeout) == (2.0, 5.0, 0.1, 1.0)
    assert (health.rise, health.fall, health.canary, health.slow_start, health.initial_healthy) == (2, 3, None, 0.0, True)
    outlier = OutlierConfig()
    assert (outlier.consecutive_5xx, outlier.consecutive_gateway_failure, outlier.consecutive_local_origin_failure) == (5, 5, 5)
    assert (outlier.base_ejection_time, outlier.max_ejection_time, outlier.max_ejection_percent,
            outlier.panic_threshold) == (30.0, 300.0, 50.0, 50.0)
    breaker = BreakerConfig()
    assert (breaker.consecutive_failures, breaker.failure_ratio, breaker.window, breaker.minimum_requests,
            breaker.open_for, breaker.half_open_requests) == (5, 0.5, 10.0, 20, 10.0, 3)
    retry = RetryConfig()
    assert retry.attempts == 3 and retry.statuses == [502, 503, 504]
    assert retry.retry_on == ["connect_failure", "reset", "timeout", "retriable_status"]
    assert (retry.backoff.base, retry.backoff.max) == (0.025, 1.0)
    assert (retry.budget.ratio, retry.budget.min_per_second, retry.budget.window) == (0.2, 3.0, 10.0)
    assert retry.idempotent and retry.honour_retry_after and retry.retry_after_max == 5.0
    limits = LimitsConfig()
    assert (limits.max_inflight_per_backend, limits.queue, limits.queue_timeout, limits.priority_header) == \
        (0, 0, 0.5, "x-lbd-priority")


def test_yaml_shaped_values_parse() -> None:
    health = HealthConfig(interval="250ms", canary={"path": "/v2/models/m/infer", "body": {"inputs": []},
                                                    "latency_limit": "1.5s"}, slow_start="30s")
    assert health.interval == 0.25 and health.canary.latency_limit == 1.5 and health.slow_start == 30.0
    assert RetryConfig(retry_on="5xx").retry_on == ["5xx"]
    assert LimitsConfig(priority_header="X-Priority").priority_header == "x-priority"


@pytest.mark.parametrize(("model", "values", "loc", "fragment"), [
    (HealthConfig, {"interval": 0}, ("interval",), "greater than 0"),
    (HealthConfig, {"fall": 0}, ("fall",), "greater than or equal to 1"),
    (HealthConfig, {"jitter": 1.0}, ("jitter",), "less than 1"),
    (HealthConfig, {"expected_status": [700]}, ("expected_status",), "not an HTTP status: 700"),
    (HealthConfig, {"path": "ready"}, ("path",), "must start with '/'"),
    (HealthConfig, {"canary": {"body": {}}}, ("canary", "path"), "Field required"),
    (HealthConfig, {"intervall": "2s"}, ("intervall",), "Extra inputs are not permitted"),
    (OutlierConfig, {"max_ejection_time": "10s"}, (), "max_ejection_time (10s) must be >= base_ejection_time (30s)"),
    (OutlierConfig, {"max_ejection_percent": 150}, ("max_ejection_percent",), "less than or equal to 100"),
    (BreakerConfig, {"failure_ratio": 1.5}, ("failure_ratio",), "less than or equal to 1"),
    (BreakerConfig, {"open_for": "0s"}, ("open_for",), "greater than 0"),
    (RetryConfig, {"attempts": 0}, ("attempts",), "greater than or equal to 1"),
    (RetryConfig, {"retry_on": ["refused"]}, ("retry_on", 0), "'connect_failure'"),
    (RetryConfig, {"backoff": {"base": "2s"}}, ("backoff",), "max (1s) must be >= base (2s)"),
    (RetryConfig, {"budget": {"window": 0}}, ("budget", "window"), "greater than 0"),
    (LimitsConfig, {"priority_header": "x prio"}, ("priority_header",), "not a header name"),
])
def test_errors_name_the_key(model, values, loc, fragment) -> None:
    found = errors(model, **values)
    assert any(l == loc and fragment in msg for l, msg in found), found


def test_models_are_frozen() -> None:
    with pytest.raises(ValidationError):
        HealthConfig().rise = 5  # type: ignore[misc]
