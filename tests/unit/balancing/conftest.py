"""Fakes for balancer tests: backends and requests as plain attributes, seeded builds.

Only time and randomness are faked elsewhere in lbd's tests; a balancer reads nothing but
these few attributes, so plain objects are the real thing for it.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from lbd.balancing import Balancer, build
from lbd.clock import ManualClock

SEED = 20240601


class FakeBackend:
    """A backend whose weight and in-flight count a test sets directly."""

    def __init__(self, name: str, weight: float = 1.0, inflight: int = 0) -> None:
        self.name = name
        self.weight = weight
        self.inflight = inflight

    def __repr__(self) -> str:
        return f"FakeBackend({self.name!r}, weight={self.weight}, inflight={self.inflight})"


class FakeRequest:
    """What a balancer may read of a request."""

    def __init__(
        self,
        client_ip: str = "192.0.2.1",
        path: str = "/",
        headers: Mapping[str, str] | None = None,
        cookies: Mapping[str, str] | None = None,
        body: bytes = b"",
    ) -> None:
        self.client_ip = client_ip
        self.path = path
        self._headers = dict(headers or {})
        self._cookies = dict(cookies or {})
        self.body = body

    def header(self, name: str) -> str | None:
        return self._headers.get(name)

    def cookie(self, name: str) -> str | None:
        return self._cookies.get(name)

    def body_prefix(self, size: int) -> bytes:
        return self.body[:size]


def make_backends(*weights: float) -> list[FakeBackend]:
    """Backends ``b0``, ``b1``, ... with the given weights."""
    return [FakeBackend(f"b{index}", weight) for index, weight in enumerate(weights)]


def build_balancer(
    name: str,
    backends: Sequence[FakeBackend],
    options: Mapping[str, Any] | None = None,
    *,
    seed: int = SEED,
    clock: ManualClock | None = None,
) -> Balancer:
    return build(name, backends, options, rng=random.Random(seed), clock=clock or ManualClock())


def pick(balancer: Balancer, request: FakeRequest | None = None) -> FakeBackend:
    """The first candidate only, as the proxy takes it when the pick is usable."""
    return next(iter(balancer.candidates(request or FakeRequest())))
