"""``consistent_hash``: the same key goes to the same backend, with bounded loads.

Options (defaults):

- ``hash_on: client_ip``: what the key is: ``client_ip``, ``header``, ``cookie`` or ``path``.
- ``key``: the header or cookie name; required for ``header`` and ``cookie``, refused otherwise.
- ``method: ring``: ``ring`` (virtual nodes, ``virtual_nodes: 160`` for a backend of mean
  weight) or ``maglev`` (``table_size: 65537``, a prime well above the number of backends).
- ``bounded_load: 1.25``: Mirrokni, Thorup and Zadimoghaddam's "consistent hashing with
  bounded loads". A backend is passed over while ``inflight + 1`` would exceed
  ``ceil(bounded_load * (total_inflight + 1) * weight / total_weight)``, and the walk goes
  on. Must be >= 1.0 (capacities then sum to more than the load, so some backend always
  fits); ``0`` or ``null`` turns it off.

Placement uses the weights read when the balancer is built: moving keys whenever a weight
changes would defeat affinity. Capacities use live weights and in-flight counts. A request
without a key (header absent) enters the table at a random point, so such requests spread
by weight and still respect the bound.
"""

from __future__ import annotations

import math
import random
from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence
from typing import Literal

from pydantic import Field, field_validator, model_validator

from lbd.balancing import _hash_tables
from lbd.balancing.base import Backend, BalancerOptions, RequestView
from lbd.clock import Clock

__all__ = ["ConsistentHash", "ConsistentHashOptions"]

# ceil() of a float such as 1.25 * 8 / 4 may land a hair above an integer; this keeps it there.
_ROUNDING = 1e-9


class ConsistentHashOptions(BalancerOptions):
    hash_on: Literal["client_ip", "header", "cookie", "path"] = "client_ip"
    key: str | None = Field(None, min_length=1)
    method: Literal["ring", "maglev"] = "ring"
    virtual_nodes: int = Field(160, ge=1, le=10_000)
    table_size: int = Field(65537, ge=3, le=16_777_259)
    bounded_load: float | None = 1.25

    @field_validator("table_size")
    @classmethod
    def _prime(cls, size: int) -> int:
        if any(size % divisor == 0 for divisor in range(2, math.isqrt(size) + 1)):
            raise ValueError(f"must be a prime (Maglev needs one), such as 65537; got {size}")
        return size

    @field_validator("bounded_load")
    @classmethod
    def _factor(cls, factor: float | None) -> float | None:
        if factor is None or factor == 0:
            return None
        if factor < 1.0:
            raise ValueError("must be >= 1.0, or 0 or null to turn bounded load off")
        return factor

    @model_validator(mode="after")
    def _key_matches_hash_on(self) -> ConsistentHashOptions:
        needs_key = self.hash_on in ("header", "cookie")
        if needs_key and self.key is None:
            raise ValueError(f"key: required when hash_on is {self.hash_on} (the {self.hash_on} name)")
        if not needs_key and self.key is not None:
            raise ValueError(f"key: only for hash_on header or cookie, not {self.hash_on}")
        return self


def _key_reader(options: ConsistentHashOptions) -> Callable[[RequestView], str | None]:
    if options.hash_on == "header":
        name = options.key.lower()  # RequestView.header takes lower-case names
        return lambda request: request.header(name)
    if options.hash_on == "cookie":
        name = options.key
        return lambda request: request.cookie(name)
    if options.hash_on == "path":
        return lambda request: request.path
    return lambda request: request.client_ip


class ConsistentHash:
    """Ring or Maglev placement; the pick is O(log n) (ring) or O(1) (Maglev) while the
    hashed backend is idle, and O(n) to read the pool's load once it is busy."""

    Options = ConsistentHashOptions
    __slots__ = ("_backends", "_rng", "_read_key", "_points", "_owners", "_factor", "_walk_limit")

    def __init__(
        self, backends: Sequence[Backend], options: ConsistentHashOptions, *,
        rng: random.Random, clock: Clock,
    ) -> None:
        self._backends = tuple(backends)
        self._rng = rng
        self._read_key = _key_reader(options)
        self._factor = options.bounded_load
        names = [backend.name for backend in self._backends]
        weights = [backend.weight for backend in self._backends]
        if options.method == "ring":
            self._points, self._owners = _hash_tables.ring(names, weights, options.virtual_nodes)
        else:
            self._points, self._owners = None, _hash_tables.maglev(names, weights, options.table_size)
        # Positions walked to collect distinct fallbacks before taking the rest in list
        # order: a few times the coupon collector's n * H(n), and never a whole Maglev table.
        self._walk_limit = min(len(self._owners), 8 * len(self._backends) + 64)

    def candidates(self, request: RequestView) -> Iterator[Backend]:
        start = self._start(request)
        first = self._owners[start]
        if self._factor is not None and self._backends[first].inflight:
            yield from self._bounded(start)  # only a busy backend can be over its bound
            return
        yield self._backends[first]
        for index in self._walk(start + 1, {first}):
            yield self._backends[index]

    def _start(self, request: RequestView) -> int:
        key = self._read_key(request)
        point = _hash_tables.hash64(key) if key else self._rng.getrandbits(64)
        if self._points is None:
            return point % len(self._owners)
        position = bisect_right(self._points, point)
        return position if position < len(self._points) else 0

    def _walk(self, position: int, seen: set[int]) -> Iterator[int]:
        """Distinct owners from ``position`` on, then any not met, in list order."""
        owners = self._owners
        for step in range(self._walk_limit):
            index = owners[(position + step) % len(owners)]
            if index not in seen:
                seen.add(index)
                yield index
                if len(seen) == len(self._backends):
                    return
        yield from (index for index in range(len(self._backends)) if index not in seen)

    def _bounded(self, start: int) -> Iterator[Backend]:
        """The first backend on the walk under its bound, then the rest of the walk, then
        the backends passed over. If none fits (rounding), the hashed owner is the pick."""
        backends = self._backends
        scale = self._capacity_scale()
        walk = self._walk(start, set())
        passed_over = []
        for index in walk:
            backend = backends[index]
            if backend.inflight + 1 <= math.ceil(scale * backend.weight - _ROUNDING):
                yield backend
                break
            passed_over.append(backend)
        for index in walk:
            yield backends[index]
        yield from passed_over

    def _capacity_scale(self) -> float:
        """``bounded_load * (total_inflight + 1) / total_weight``; times a weight, a capacity."""
        total_inflight = 0
        total_weight = 0.0
        for backend in self._backends:
            total_inflight += backend.inflight
            total_weight += backend.weight
        return self._factor * (total_inflight + 1) / total_weight

    def observe(self, backend: Backend, latency: float, ok: bool) -> None:
        """Consistent hashing reads in-flight counts; it does not learn from latency."""
