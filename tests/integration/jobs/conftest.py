"""Fixtures of the jobs' integration tests: a real Redis, and key prefixes apart per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.redis_server import RedisServer


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``$REDIS_URL`` when set, else one redis-server for the session with an append-only
    file (as a durable setup runs)."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    server = RedisServer(tmp_path_factory.mktemp("jobs-redis"), appendonly=True).start()
    yield server.url
    server.kill()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A server only this test uses (it gets killed)."""
    server = RedisServer(tmp_path).start()
    yield server
    server.kill()


@pytest.fixture
def key_prefix() -> str:
    return f"lbdtest:jobs:{uuid.uuid4().hex[:10]}:"
