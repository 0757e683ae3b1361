import random
import statistics
import time
from email.utils import formatdate

import pytest

from lbd.config.resilience import RetryConfig
from lbd.resilience.retry import CONNECT_FAILURE, RESET, TIMEOUT, RetryPolicy, parse_retry_after

SEED = 20240601
NOW = 1_700_000_000.0


def policy(**values) -> RetryPolicy:
    return RetryPolicy(RetryConfig(**values), random.Random(SEED))


@pytest.mark.parametrize(("retry_on", "retried"), [
    (["retriable_status"], {502, 503, 504}),
    (["gateway_error"], {502, 503, 504}),
    (["5xx"], set(range(500, 600))),
    (["connect_failure"], set()),
])
def test_retryable_statuses_follow_retry_on(retry_on, retried) -> None:
    found = {s for s in range(100, 600) if policy(retry_on=retry_on).retryable_status(s)}
    assert found == retried


def test_listed_statuses_are_the_retriable_ones() -> None:
    retry = policy(retry_on=["retriable_status"], statuses=[429, 503])
    assert [retry.retryable_status(s) for s in (429, 502, 503, 500)] == [True, False, True, False]


@pytest.mark.parametrize(("kwargs", "retry", "reason"), [
    ({"failure": CONNECT_FAILURE}, True, "connect_failure"),
    ({"failure": RESET}, False, "reset, not idempotent"),
    ({"failure": RESET, "sent": False}, True, "reset"),
    ({"failure": TIMEOUT}, False, "timeout, not idempotent"),
    ({"status": 503}, False, "status 503, not idempotent"),
    ({"status": 500}, False, "status 500 not retriable"),
    ({"status": 200}, False, "status 200 not retriable"),
])
def test_a_sent_post_is_retried_only_when_idempotent(kwargs, retry, reason) -> None:
    verdict = policy(idempotent=False).classify(b"POST", **kwargs)
    assert (verdict.retry, verdict.reason) == (retry, reason)


@pytest.mark.parametrize(("method", "kwargs"), [
    (b"GET", {"failure": RESET}), ("DELETE", {"failure": TIMEOUT}), (b"PUT", {"status": 503}),
])
def test_idempotent_methods_are_retried_after_sending(method, kwargs) -> None:
    assert policy(idempotent=False).classify(method, **kwargs).retry


def test_kserve_inference_is_idempotent_by_default() -> None:
    retry = policy()
    assert retry.classify(b"POST", failure=RESET).retry
    assert retry.classify(b"POST", status=502).reason == "status 502"


def test_failures_not_in_retry_on_are_final() -> None:
    verdict = policy(retry_on=["connect_failure"]).classify(b"GET", failure=TIMEOUT)
    assert (verdict.retry, verdict.reason) == (False, "timeout not in retry_on")


def test_classify_needs_a_known_failure_or_a_status() -> None:
    with pytest.raises(ValueError):
        policy().classify(b"GET")
    with pytest.raises(ValueError):
        policy().classify(b"GET", failure="refused")


# -- backoff ----------------------------------------------------------------------------
def test_backoff_is_full_jitter_with_the_injected_rng() -> None:
    retry, reference = policy(), random.Random(SEED)
    expected = [reference.uniform(0, min(1.0, 0.025 * 2**n)) for n in range(8)]
    assert [retry.backoff(n) for n in range(8)] == expected


@pytest.mark.parametrize("retry_number", [0, 1, 2, 3, 5, 6, 10, 5000])
def test_backoff_stays_within_zero_and_the_capped_ceiling(retry_number) -> None:
    retry = policy(backoff={"base": "25ms", "max": "1s"})
    ceiling = min(1.0, 0.025 * 2.0 ** min(retry_number, 64))
    samples = [retry.backoff(retry_number) for _ in range(2000)]
    assert 0.0 <= min(samples) and max(samples) <= ceiling
    # Full jitter spreads over the whole range, down to near zero and up to near the ceiling.
    assert min(samples) < 0.02 * ceiling and max(samples) > 0.98 * ceiling


def test_backoff_is_uniform() -> None:
    retry = policy(backoff={"base": "100ms", "max": "10s"})
    samples = [retry.backoff(3) for _ in range(20000)]  # uniform on [0, 0.8]
    assert statistics.fmean(samples) == pytest.approx(0.4, abs=0.01)
    deciles = [sum(1 for s in samples if k * 0.08 <= s < (k + 1) * 0.08) for k in range(10)]
    assert all(1800 <= count <= 2200 for count in deciles), deciles


# -- Retry-After ------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "seconds"), [
    ("3", 3.0), (" 0 ", 0.0), ("120", 120.0),
    (formatdate(NOW + 7, usegmt=True), 7.0),          # IMF-fixdate
    ("Sunday, 06-Nov-94 08:49:37 GMT", 0.0),          # RFC 850, in the past
    ("Sun Nov  6 08:49:37 1994", 0.0),                # asctime
    ("-1", None), ("1.5s", None), ("soon", None), ("", None), (None, None), ("²", None),
])
def test_parse_retry_after(value, seconds) -> None:
    assert parse_retry_after(value, NOW) == seconds


def test_asctime_dates_are_gmt_whatever_the_local_zone(monkeypatch) -> None:
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        assert parse_retry_after("Tue Nov 14 22:13:30 2023", 1_699_999_990.0) == 20.0  # 22:13:10 GMT + 20s
    finally:
        monkeypatch.undo()
        time.tzset()


def test_retry_after_is_capped_and_can_be_ignored() -> None:
    assert policy(retry_after_max="5s").retry_after("120", NOW) == 5.0
    assert policy(retry_after_max="5s").retry_after(formatdate(NOW + 2, usegmt=True), NOW) == 2.0
    assert policy(honour_retry_after=False).retry_after("1", NOW) is None
    assert policy().retry_after("later", NOW) is None
