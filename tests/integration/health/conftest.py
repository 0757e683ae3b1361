"""A KServe-shaped HTTP server on loopback whose answers a test changes while it runs."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest
from aiohttp import web

from lbd.config.model import UpstreamConfig
from lbd.proxy.pool import Backend
from tests.support.procs import free_port


class LoopbackServer:
    """``ready_status`` answers ``/v2/health/ready``; ``model_status[m]`` answers
    ``/v2/models/m/ready`` (404 for unknown models); ``infer_hangs`` makes inference never
    answer; ``served`` counts answers by (path, status)."""

    def __init__(self, models: tuple[str, ...] = ("m",)) -> None:
        self.ready_status = 200
        self.model_status = {model: 200 for model in models}
        self.infer_status = 200
        self.infer_hangs = False
        self.infer_bodies: list[bytes] = []
        self.served: Counter[tuple[str, int]] = Counter()
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    def _answer(self, request: web.Request, status: int) -> web.Response:
        self.served[(request.path, status)] += 1
        return web.json_response({"status": status}, status=status)

    async def _ready(self, request: web.Request) -> web.Response:
        return self._answer(request, self.ready_status)

    async def _model_ready(self, request: web.Request) -> web.Response:
        return self._answer(request, self.model_status.get(request.match_info["model"], 404))

    async def _infer(self, request: web.Request) -> web.Response:
        self.infer_bodies.append(await request.read())
        if self.infer_hangs:
            await self._release.wait()
        return self._answer(request, self.infer_status)

    async def __aenter__(self) -> LoopbackServer:
        app = web.Application()
        app.router.add_get("/v2/health/ready", self._ready)
        app.router.add_get("/v2/models/{model}/ready", self._model_ready)
        app.router.add_post("/v2/models/{model}/infer", self._infer)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._release.set()
        await self._runner.cleanup()  # type: ignore[union-attr]

    def backend(self, name: str = "b") -> Backend:
        return Backend(name, "127.0.0.1", self.port, 2.0, UpstreamConfig())


async def wait_for(condition, timeout: float = 5.0, what: str = "condition") -> None:
    """Poll ``condition()`` until true, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


@pytest.fixture
def loopback() -> type[LoopbackServer]:
    return LoopbackServer


@pytest.fixture
def poll():
    return wait_for


@pytest.fixture
def closed_backend() -> Backend:
    """A backend on a loopback port nothing listens on."""
    return Backend("closed", "127.0.0.1", free_port(), 1.0, UpstreamConfig())
