"""Lookup tables for ``consistent_hash``: a ring of virtual nodes, and Maglev's table.

Both are a list of owners (backend indices) that a key's hash enters at one position and
walks forward from, so the balancer treats them alike. Placement depends only on backend
names (a stable hash, the same in every process and on every host), never on list order.
"""

from __future__ import annotations

from collections.abc import Sequence
from hashlib import blake2b

__all__ = ["hash64", "ring", "maglev"]


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
