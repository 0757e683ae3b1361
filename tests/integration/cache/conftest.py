"""Real Redis for the cache's integration tests: ``$REDIS_URL`` when set, else a
``redis-server`` of our own on a free port (no persistence), one per session."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.redis_server import RedisServer


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server.url
    server.kill()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A server only this test uses (it gets killed)."""
    server = RedisServer(tmp_path).start()
    yield server
    server.kill()


@pytest.fixture
def prefix() -> str:
    """Keys of one test, apart from every other test's on a shared server."""
    return f"lbdtest:{uuid.uuid4().hex[:10]}:"


@pytest.fixture(scope="session")
def embedder(tmp_path_factory: pytest.TempPathFactory):
    from lbd.cache.embedder import InProcessEmbedder

    configured = os.environ.get("LBD_MODEL_DIR")
    folder = Path(configured) if configured else tmp_path_factory.getbasetemp().parent / "lbd-models"
    return InProcessEmbedder(model_dir=folder)


@pytest.fixture(scope="session")
def minilm_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``lbd-worker`` serving the built-in MiniLM on the CPU; yields its base URL."""
    import json
    import sys

    from lbd_worker.cli import READY_LINE

    configured = os.environ.get("LBD_MODEL_DIR")
    models = Path(configured) if configured else tmp_path_factory.getbasetemp().parent / "lbd-models"
    config = {"listen": "127.0.0.1:0", "device": "cpu", "model_dir": str(models), "models": {"minilm": {}}}
    log = open(tmp_path_factory.mktemp("worker") / "worker.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "lbd_worker", "--config-json", json.dumps(config)],
                               stdout=subprocess.PIPE, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    prefix = READY_LINE.split("{", 1)[0]
    try:
        for raw in process.stdout:  # the worker prints its ready line once the model is warm
            line = raw.decode().rstrip()
            if line.startswith(prefix):
                yield f"http://127.0.0.1:{int(line.rsplit(':', 1)[1])}"
                break
        else:
            pytest.fail(f"the worker exited with {process.wait()} before it was ready")
    finally:
        process.terminate()
        process.wait(15)
        log.close()
