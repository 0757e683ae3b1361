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

import random
from collections.abc import Callable, Iterator, Sequence
from typing import Literal

from pydantic import Field, field_validator, model_validator

from lbd.balancing import _hash_tables
from lbd.balancing.base import Backend, BalancerOptions, RequestView
from lbd.clock import Clock

__all__ = ["ConsistentHash", "ConsistentHashOptions"]


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
        return _hash_tables.require_prime(size)

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
    """Ring or Maglev placement (:class:`~lbd.balancing._hash_tables.HashTable`); the pick is
    O(log n) (ring) or O(1) (Maglev) while the hashed backend is idle, and O(n) to read the
    pool's load once it is busy."""

    Options = ConsistentHashOptions
    __slots__ = ("_rng", "_read_key", "_table")

    def __init__(
        self, backends: Sequence[Backend], options: ConsistentHashOptions, *,
        rng: random.Random, clock: Clock,
    ) -> None:
        self._rng = rng
        self._read_key = _key_reader(options)
        self._table = _hash_tables.HashTable(backends, options.method, virtual_nodes=options.virtual_nodes,
                                             table_size=options.table_size, bounded_load=options.bounded_load)

    def candidates(self, request: RequestView) -> Iterator[Backend]:
        # A generator, so the key is read (and a keyless request's random point drawn) only
        # when the first candidate is asked for.
        key = self._read_key(request)
        yield from self._table.candidates(_hash_tables.hash64(key) if key else self._rng.getrandbits(64))

    def observe(self, backend: Backend, latency: float, ok: bool) -> None:
        """Consistent hashing reads in-flight counts; it does not learn from latency."""
