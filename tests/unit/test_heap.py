"""The collector's tuning: what is alive at settle() is left out of later walks, and thaw()
lets a replaced runtime's cycles be collected."""

from __future__ import annotations

import gc
import weakref

import pytest

from lbd import heap


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


@pytest.fixture
def restored_gc():
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def cycle() -> tuple[Node, weakref.ref]:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return a, weakref.ref(a)


def test_settle_freezes_the_live_heap_and_raises_the_young_threshold(restored_gc):
    kept, _ = cycle()
    heap.settle()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold()[0] == heap.YOUNG_THRESHOLD
    assert not any(obj is kept for obj in gc.get_objects())  # no longer walked


def test_a_frozen_cycle_is_collected_only_after_thaw(restored_gc):
    runtime, alive = cycle()
    heap.settle()
    del runtime  # the runtime a reload replaced
    gc.collect()
    assert alive() is not None  # frozen: a collection does not see it
    heap.thaw()
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert alive() is None
