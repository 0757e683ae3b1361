"""What may be looked up and stored: client directives, backend Cache-Control, kept headers."""

from __future__ import annotations

import pytest

from lbd.cache.base import Entry
from lbd.cache.exact import Hit, kept_headers, request_directives, storable_ttl


@pytest.mark.parametrize("headers, skip_lookup, skip_store", [
    ({}, False, False),
    ({"cache-control": "no-cache"}, True, False),
    ({"cache-control": "max-age=0"}, True, False),
    ({"pragma": "no-cache"}, True, False),
    ({"cache-control": "no-store"}, False, True),
    ({"cache-control": "No-Cache, no-store"}, True, True),
])
def test_request_directives(headers: dict, skip_lookup: bool, skip_store: bool) -> None:
    found = request_directives(headers)
    assert (found.skip_lookup, found.skip_store) == (skip_lookup, skip_store)


@pytest.mark.parametrize("status, headers, expected", [
    (200, [], 60.0),
    (204, [], 60.0),
    (206, [], None),
    (304, [], None),
    (500, [], None),
    (503, [("retry-after", "1")], None),
    (200, [("Cache-Control", "no-store")], None),
    (200, [("cache-control", "private, max-age=100")], None),
    (200, [("cache-control", "no-cache")], None),
    (200, [("set-cookie", "a=b")], None),
    (200, [("vary", "*")], None),
    (200, [("cache-control", "max-age=10")], 10.0),
    (200, [("cache-control", "max-age=1000")], 60.0),
    (200, [("cache-control", "max-age=1000, s-maxage=5")], 5.0),
    (200, [("cache-control", "max-age=0")], None),
])
def test_storable_ttl(status: int, headers: list, expected: float | None) -> None:
    assert storable_ttl(status, headers, 60.0) == expected


def test_kept_headers_drop_hop_by_hop_and_lbd_headers() -> None:
    headers = [("Content-Type", "application/json"), ("Connection", "keep-alive"), ("Date", "x"),
               ("Content-Length", "5"), ("x-lbd-backend", "a"), ("x-model", "m"), ("Transfer-Encoding", "chunked")]
    assert kept_headers(headers) == (("Content-Type", "application/json"), ("x-model", "m"))


def test_hit_describes_itself() -> None:
    entry = Entry(200, (), b"b", 100.0, 60.0)
    assert Hit(entry, "hit", "k").header_value == "hit"
    assert Hit(entry, "hit-semantic", "k", 0.93456).header_value == "hit-semantic; similarity=0.935"
    assert Hit(entry, "stale", "k").age(130.9) == 30
