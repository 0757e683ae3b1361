"""Lookup tables for ``consistent_hash`` and ``prefix_affinity``: a ring of virtual nodes,
Maglev's table, and :class:`HashTable`, the walk over either with bounded loads.

Both tables are a list of owners (backend indices) that a key's hash enters at one position
and walks forward from, so the balancers treat them alike. Placement depends only on backend
names (a stable hash, the same in every process and on every host), never on list order.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from hashlib import blake2b
from typing import Literal

from lbd.balancing.base import Backend

__all__ = ["hash64", "ring", "maglev", "require_prime", "HashTable"]

# ceil() of a float such as 1.25 * 8 / 4 may land a hair above an integer; this keeps it there.
_ROUNDING = 1e-9


def hash64(text: str) -> int:
    """A stable 64-bit hash. Python's ``hash()`` is salted per process, and proxies that
    share a fleet must agree on where a key goes."""
    return int.from_bytes(blake2b(text.encode(), digest_size=8).digest(), "little")


def ring(names: Sequence[str], weights: Sequence[float], virtual_nodes: int) -> tuple[list[int], list[int]]:
    """Sorted points and their owners; a backend of mean weight gets ``virtual_nodes`` points.

    Point ``r`` of a backend is ``hash64(f"{name}#{r}")``, whatever its count, so a change of
    count (a weight, or the mean after a removal) adds or drops only that backend's last points.
    """
    mean = sum(weights) / len(weights)
    points: list[tuple[int, int]] = []
    for index, (name, weight) in enumerate(zip(names, weights)):
        count = max(1, round(virtual_nodes * weight / mean))
        points.extend((hash64(f"{name}#{replica}"), index) for replica in range(count))
    points.sort()
    return [point for point, _ in points], [owner for _, owner in points]


def require_prime(size: int) -> int:
    """``size`` if it is a prime (a Maglev table's must be), else ``ValueError``."""
    if any(size % divisor == 0 for divisor in range(2, math.isqrt(size) + 1)):
        raise ValueError(f"must be a prime (Maglev needs one), such as 65537; got {size}")
    return size


def maglev(names: Sequence[str], weights: Sequence[float], size: int) -> list[int]:
    """Maglev's lookup table (Eisenbud et al., NSDI 2016) of prime ``size``, weighted.

    Each backend walks its own permutation of the slots (``offset + j * skip`` mod ``size``)
    and claims its next free slot when its turn comes. The heaviest backend has a turn every
    round; a lighter one in proportion to its weight, so slots follow weights. Turns are
    taken in name order, so the table does not depend on the order of the list.
    """
    if size <= len(names):
        raise ValueError(f"maglev table_size {size} must exceed the number of backends ({len(names)})")
    position = [hash64(f"offset:{name}") % size for name in names]
    skip = [hash64(f"skip:{name}") % (size - 1) + 1 for name in names]
    heaviest = max(weights)
    share = [weight / heaviest for weight in weights]
    credit = [0.0] * len(names)
    table = [-1] * size
    filled = 0
    turns = sorted(range(len(names)), key=names.__getitem__)
    while True:
        for index in turns:
            credit[index] += share[index]
            if credit[index] < 1.0:
                continue
            credit[index] -= 1.0
            slot = position[index]
            while table[slot] >= 0:
                slot = (slot + skip[index]) % size
            table[slot] = index
            position[index] = (slot + skip[index]) % size
            filled += 1
            if filled == size:
                return table


class HashTable:
    """A ring or a Maglev table over ``backends``, walked from a key's 64-bit hash.

    Placement uses the weights read when the table is built: moving keys whenever a weight
    changes would defeat affinity. With ``bounded_load`` (Mirrokni, Thorup and
    Zadimoghaddam's "consistent hashing with bounded loads"), a backend is passed over while
    ``inflight + 1`` would exceed ``ceil(bounded_load * (total_inflight + 1) * weight /
    total_weight)``, read live, and the walk goes on; ``bounded_load`` must be >= 1.0 (the
    capacities then sum to more than the load, so some backend always fits) or ``None``.
    """

    __slots__ = ("_backends", "_points", "_owners", "_factor", "_walk_limit")

    def __init__(self, backends: Sequence[Backend], method: Literal["ring", "maglev"], *, virtual_nodes: int,
                 table_size: int, bounded_load: float | None) -> None:
        self._backends = tuple(backends)
        self._factor = bounded_load
        names = [backend.name for backend in self._backends]
        weights = [backend.weight for backend in self._backends]
        if method == "ring":
            self._points, self._owners = ring(names, weights, virtual_nodes)
        else:
            self._points, self._owners = None, maglev(names, weights, table_size)
        # Positions walked to collect distinct fallbacks before taking the rest in list
        # order: a few times the coupon collector's n * H(n), and never a whole Maglev table.
        self._walk_limit = min(len(self._owners), 8 * len(self._backends) + 64)

    def candidates(self, point: int) -> Iterator[Backend]:
        """Every backend once: the owner of ``point``, or with a bound the first one on the
        walk under it; O(log n) (ring) or O(1) (Maglev) while the owner is idle, and O(n) to
        read the pool's load once it is busy."""
        start = self._start(point)
        first = self._owners[start]
        if self._factor is not None and self._backends[first].inflight:
            yield from self._bounded(start)  # only a busy backend can be over its bound
            return
        yield self._backends[first]
        for index in self._walk(start + 1, {first}):
            yield self._backends[index]

    def _start(self, point: int) -> int:
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
        return self._factor * (total_inflight + 1) / total_weight  # type: ignore[operator]
