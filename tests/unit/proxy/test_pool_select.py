"""Pool.select on a retry: the backends already tried, their breakers, and panic routing."""

from __future__ import annotations

import random

import pytest

from lbd.config import load_config_text
from lbd.proxy.pool import Pool
from lbd.resilience.breaker import OPEN
from lbd.runtime import Runtime
from tests.unit.balancing.conftest import FakeRequest


def _pool(algorithm: str) -> Pool:
    config = load_config_text(f"""
pools:
  web:
    balancer: {{algorithm: {algorithm}}}
    breaker: {{consecutive_failures: 5, open_for: 60s}}
    backends:
      - {{url: "http://127.0.0.1:9000", name: w0}}
      - {{url: "http://127.0.0.1:9001", name: w1}}
      - {{url: "http://127.0.0.1:9002", name: w2}}
""")
    return Runtime.build(config, rng=random.Random(3)).pools["web"]


def _open(breaker) -> None:
    for _ in range(5):
        breaker.on_failure()
    assert breaker.state == OPEN


@pytest.mark.parametrize("algorithm", ["round_robin", "least_connections"])
def test_a_retry_takes_a_tried_backend_that_passes_over_a_down_one(algorithm):
    """The chaos test's third try (tests/integration/resilience/test_chaos.py): w0 is down
    (killed, restarting), w1 was tried and its breaker opened since (frozen), w2 was tried
    and is fine (it answered 503 while shedding). The retry goes to w2 again, whatever the
    balancer's order: never to w0 by panic routing, which found w1's breaker closed to it
    and looked no further among the tried ones."""
    pool = _pool(algorithm)
    w0, w1, w2 = pool.backends
    w0.available = False
    pool.refresh()
    assert not pool.panic  # two of three usable
    _open(w1.breaker)
    for _ in range(6):  # every rotation of the balancer's order
        backend, saturated = pool.select(FakeRequest(), {w1, w2})
        assert (backend, saturated) == (w2, False)


def test_panic_routing_still_answers_when_no_tried_backend_passes():
    pool = _pool("round_robin")
    w0, w1, w2 = pool.backends
    w0.available = False
    pool.refresh()
    _open(w1.breaker)
    _open(w2.breaker)
    # Nothing passes the filters: routed to all of them, untried first (Envoy's panic routing).
    assert pool.select(FakeRequest(), {w1, w2}) == (w0, False)


def test_an_untried_backend_still_comes_before_a_tried_one():
    pool = _pool("round_robin")
    w0, w1, w2 = pool.backends
    for _ in range(6):
        assert pool.select(FakeRequest(), {w0, w1}) == (w2, False)


def test_a_backend_whose_breaker_is_open_is_no_place_for_a_retry_to_go_instead():
    """What decides whether a 503's Retry-After is waited out (exchange.retry_delay): w1's
    breaker is open, so the only place for the retry is w0, which sent it."""
    pool = _pool("round_robin")
    w0, w1, w2 = pool.backends
    w2.drained = True
    assert pool.has_untried_usable({w0})
    _open(w1.breaker)
    assert not pool.has_untried_usable({w0})
    assert pool.has_untried_usable({w1})  # w0 is still there for a retry of w1's try
