"""Fallback order shared by the algorithms: the backends after the pick, in rotation.

Fallbacks are consumed only when the pick is filtered out or fails, so they favour
simplicity over cleverness; they never touch the algorithm's state or its ``rng``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from lbd.balancing.base import Backend

__all__ = ["after"]


def after(backends: Sequence[Backend], index: int, skip: int = -1) -> Iterator[Backend]:
    """Every backend but ``backends[index]`` (and ``backends[skip]``), starting after ``index``."""
    count = len(backends)
    for step in range(1, count):
        other = index + step
        if other >= count:
            other -= count
        if other != skip:
            yield backends[other]
