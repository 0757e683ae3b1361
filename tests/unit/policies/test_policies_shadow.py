"""Shadow sampling and capture, with injected randomness."""

from __future__ import annotations

import asyncio
import random

import pytest

from lbd.config import load_config_text
from lbd.policies.shadow import ShadowTraffic
from lbd.proxy.server import ProxyServer
from lbd.runtime import Runtime

CONFIG = """
pools:
  web:
    shadow: {pool: canary, share: 0.25, compare: {max_body_size: 10}}
    backends: [{url: "http://127.0.0.1:9001"}]
  strict:
    retry: {idempotent: false}
    shadow: {pool: canary, share: 1.0}
    backends: [{url: "http://127.0.0.1:9002"}]
  canary:
    backends: [{url: "http://127.0.0.1:9003"}]
"""


@pytest.fixture
def shadows():
    runtime = Runtime.build(load_config_text(CONFIG))
    loop = asyncio.new_event_loop()
    yield ShadowTraffic(ProxyServer(runtime, loop), random.Random(4)), runtime
    loop.close()


def test_a_share_of_the_requests_is_sampled_as_the_rng_says(shadows):
    traffic, runtime = shadows
    picks = [traffic.sample(runtime.pools["web"], b"POST") is not None for _ in range(4000)]
    expected = random.Random(4)
    assert picks == [expected.random() < 0.25 for _ in range(4000)]
    assert 900 < sum(picks) < 1100


def test_head_and_requests_the_pool_may_not_send_twice_are_not_copied(shadows):
    traffic, runtime = shadows
    strict = runtime.pools["strict"]
    assert traffic.sample(strict, b"POST") is None
    assert traffic.sample(strict, b"HEAD") is None
    capture = traffic.sample(strict, b"GET")
    assert capture is not None and capture.route == "strict" and capture.config.pool == "canary"


def test_a_capture_keeps_the_status_the_binary_header_and_a_bounded_body(shadows):
    traffic, runtime = shadows
    capture = next(c for c in iter(lambda: traffic.sample(runtime.pools["web"], b"POST"), 0) if c is not None)
    capture.head(200, [(b"Content-Type", b"application/octet-stream"), (b"Inference-Header-Content-Length", b"42")])
    assert (capture.status, capture.header_length) == (200, "42")
    capture.body(b"12345")
    capture.body(b"67890")
    assert capture.parts == [b"12345", b"67890"]
    capture.body(b"x")  # over compare.max_body_size (10): not compared
    assert capture.parts is None
