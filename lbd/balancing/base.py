"""The balancer interface.

A balancer orders backends for one request; it never decides whether a backend may be
used. Health, outlier ejection, the circuit breaker, admission limits and "already tried"
filter the candidates outside the algorithm (``lbd.proxy``), so every algorithm gets them
for free and stays small.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict


__all__ = ["Backend", "RequestView", "Balancer", "BalancerOptions", "NoOptions", "needs_body"]


class Backend(Protocol):
    """What a balancer may read of a backend. The proxy owns and updates these fields."""

    name: str
    """Stable identity (``host:port`` or the worker's name); unique within a pool."""

    @property
    def weight(self) -> float:
        """Effective weight, > 0. May change between calls (slow start ramps it up after a
        recovery), so algorithms read it at pick time rather than caching it."""
        ...

    @property
    def inflight(self) -> int:
        """Requests sent to this backend and not yet answered."""
        ...


class RequestView(Protocol):
    """What a balancer may read of a request (hash keys, affinity)."""

    @property
    def client_ip(self) -> str: ...

    @property
    def path(self) -> str: ...

    def header(self, name: str) -> str | None:
        """The first value of a header, by lower-case name; ``None`` when absent."""
        ...

    def cookie(self, name: str) -> str | None:
        """A cookie's value from the ``Cookie`` header; ``None`` when absent."""
        ...

    def body_prefix(self, size: int) -> bytes:
        """Up to ``size`` bytes of the request body as received so far, without transfer
        framing; ``b""`` when there is none. Only a balancer with ``needs_body = True`` is
        sure to see it whole (or its first 64 KiB); others are asked before it arrives."""
        ...


class BalancerOptions(BaseModel):
    """Base of each algorithm's own options: frozen, and unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class NoOptions(BalancerOptions):
    """For algorithms that take no options."""


@runtime_checkable
class Balancer(Protocol):
    """One algorithm over one pool's backends.

    Built once per runtime (every reload builds a new one) as
    ``cls(backends, options, rng=..., clock=...)``. Randomness and time come only from the
    injected ``rng`` and ``clock`` so tests are exact.

    A balancer that reads the request body declares the class attribute ``needs_body =
    True`` (absent means ``False``; see :func:`needs_body`): the proxy then asks it only once
    the body is complete or 64 KiB of it is buffered, which holds the request that long.
    """

    Options: ClassVar[type[BalancerOptions]]
    """The pydantic model of this algorithm's keys under ``balancer:`` (besides ``algorithm``)."""

    def candidates(self, request: RequestView) -> Iterator[Backend]:
        """Backends in order of preference for this request, each at most once.

        The first one yielded is the algorithm's pick; the rest are fallbacks the proxy tries
        when the pick is filtered out or fails. The generator is consumed lazily, so the pick
        must be cheap and the algorithm's state (a counter, a score) must advance once per
        call, when the first candidate is produced, not per candidate.
        """
        ...

    def observe(self, backend: Backend, latency: float, ok: bool) -> None:
        """Feedback after each attempt: seconds from send to response head (or failure),
        and whether it succeeded. Algorithms that do not learn ignore it."""
        ...


def needs_body(balancer: object) -> bool:
    """Whether ``balancer`` (a class or an instance) must see the request body to choose."""
    return bool(getattr(balancer, "needs_body", False))


def default_rng() -> random.Random:
    """A fresh unseeded generator, for production wiring."""
    return random.Random()
