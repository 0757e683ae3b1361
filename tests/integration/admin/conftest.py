"""A real daemon in this process (proxy listener, runtime, health checks) with the admin API
on its own loopback listener; system tools (promtool, chromium) installed with apt when
missing."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from lbd.admin.server import AdminServer
from lbd.config import load_config
from lbd.daemon import Daemon
from lbd.metrics import Metrics
from tests.support.procs import free_port

CONFIG = """
listen: [{{address: "127.0.0.1:{port}"}}]
admin: {{enabled: false, address: "127.0.0.1:{admin_port}"{admin_extra}}}
log: {{access: false}}
pools:
  web:
    health: {{path: /echo, interval: 200ms, timeout: 1s}}
    breaker: {{consecutive_failures: 2, open_for: 30s}}
    limits: {{max_inflight_per_backend: 8, queue: 16}}
    backends:
      - {{url: "http://127.0.0.1:{a}", name: alpha}}
      - {{url: "http://127.0.0.1:{b}", name: beta}}
{extra_pools}
default_pool: web
"""

API_POOL = """
  api:
    match: {path_prefix: /api}
    backends: [{url: "http://127.0.0.1:%d", name: gamma}]
"""


def config_text(upstreams: dict[str, int], port: int, admin_port: int, *, token_file: Path | None = None,
                extra_pools: str = "") -> str:
    admin_extra = f', token_file: "{token_file}"' if token_file else ""
    return CONFIG.format(port=port, admin_port=admin_port, admin_extra=admin_extra, a=upstreams["a"],
                         b=upstreams["b"], extra_pools=extra_pools or API_POOL % upstreams["b"])


@dataclass
class Harness:
    daemon: Daemon
    admin: AdminServer
    metrics: Metrics
    http: aiohttp.ClientSession
    config_path: Path
    port: int

    @property
    def runtime(self):  # noqa: ANN201
        return self.daemon.proxy.runtime  # type: ignore[union-attr]

    async def get_json(self, path: str, status: int = 200, **kwargs) -> dict:
        async with self.http.get(path, **kwargs) as response:
            assert response.status == status, await response.text()
            return await response.json()

    async def post_json(self, path: str, status: int = 200, **kwargs) -> dict:
        async with self.http.post(path, **kwargs) as response:
            assert response.status == status, await response.text()
            return await response.json()

    async def proxy_get(self, path: str) -> tuple[int, dict[str, str]]:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{self.port}{path}") as response:
                await response.read()
                return response.status, {k.lower(): v for k, v in response.headers.items()}


@asynccontextmanager
async def running(text: str, tmp_path: Path, port: int, *, cache: object = None,
                  headers: dict[str, str] | None = None) -> AsyncIterator[Harness]:
    """The daemon run from ``text`` (written to a file, so reloads read it) and the admin
    listener over it."""
    path = tmp_path / "lbd.yaml"
    path.write_text(text)
    daemon = Daemon(load_config(path), path, shutdown_grace=1.0)
    task = asyncio.create_task(daemon.run())
    ready = asyncio.create_task(daemon.ready.wait())
    await asyncio.wait({task, ready}, timeout=15, return_when=asyncio.FIRST_COMPLETED)
    if not daemon.ready.is_set():
        ready.cancel()
        raise AssertionError(f"the daemon did not start: {task.exception() if task.done() else 'timeout'}")
    metrics = getattr(daemon.proxy, "metrics", None)  # the proxy's own, once it has one
    if metrics is None:
        metrics = Metrics(daemon.proxy)
        metrics.follow_reloads(daemon)
    admin = AdminServer(daemon, metrics, cache=lambda: cache)
    await admin.start()
    http = aiohttp.ClientSession(base_url=admin.url, headers=headers)
    try:
        yield Harness(daemon, admin, metrics, http, path, port)
    finally:
        await http.close()
        await admin.stop()
        daemon.stop()
        await asyncio.wait_for(task, 15)


@pytest.fixture
def harness(upstreams: dict[str, int], tmp_path: Path) -> Callable[..., object]:
    """``harness(**config_options)``: an async context manager over a running daemon."""

    def start(cache: object = None, headers: dict[str, str] | None = None, **options: object):
        port = free_port()
        text = config_text(upstreams, port, free_port(), **options)  # type: ignore[arg-type]
        return running(text, tmp_path, port, cache=cache, headers=headers)

    return start


def _ensure_tool(tool: str, package: str) -> str:
    """The tool's path; installs Debian's ``package`` with apt-get when it is missing. Skips
    only when apt-get cannot be used here (not Debian, or not root)."""
    found = shutil.which(tool)
    if found:
        return found
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.fail(f"{tool} is not installed (`make test` installs it: tools/debian-deps.sh)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True, timeout=300)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", package], check=True, env=env,
                   capture_output=True, timeout=600)
    found = shutil.which(tool)
    assert found, f"apt-get installed {package} but {tool} is not on PATH"
    return found


@pytest.fixture(scope="session")
def promtool() -> str:
    return _ensure_tool("promtool", "prometheus")


@pytest.fixture(scope="session")
def chromium() -> str:
    return _ensure_tool("chromium", "chromium")
