"""HTTP probes on an aiohttp session: readiness (plain or KServe v2) and canary inference.

Each probe is bounded by its own timeout and turns every fault of the backend (refused,
reset, silent, wrong status) into a failed :class:`ProbeResult`; it never raises for them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Sequence
from urllib.parse import quote

import aiohttp

from lbd.clock import MONOTONIC, Clock
from lbd.config.resilience import CanaryConfig, HealthConfig
from lbd.health.base import ProbeResult, Target

__all__ = ["HttpProbe", "CanaryProbe", "kserve_paths", "readiness_probe", "base_url"]

KSERVE_READY = "/v2/health/ready"


def base_url(backend: Target) -> str:
    host = backend.host
    return f"http://[{host}]:{backend.port}" if ":" in host else f"http://{host}:{backend.port}"


def kserve_paths(models: Iterable[str]) -> list[str]:
    """The server's readiness, then each model's (KServe v2 / Open Inference Protocol)."""
    return [KSERVE_READY, *(f"/v2/models/{quote(model, safe='')}/ready" for model in models)]


def _fault(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect: {exc.os_error or exc}"
    if isinstance(exc, (aiohttp.ServerDisconnectedError, ConnectionResetError)):
        return "connection closed before the answer"
    return f"{type(exc).__name__}: {exc}"


class HttpProbe:
    """GETs each path in turn; passes when every one answers an expected status, all within
    ``timeout`` seconds in total."""

    __slots__ = ("_session", "paths", "_expected", "timeout", "_clock")

    def __init__(self, session: aiohttp.ClientSession, paths: Sequence[str], expected_status: Iterable[int],
                 timeout: float, clock: Clock = MONOTONIC) -> None:
        if not paths:
            raise ValueError("a probe needs at least one path")
        self._session = session
        self.paths = tuple(paths)
        self._expected = frozenset(expected_status)
        self.timeout = timeout
        self._clock = clock

    async def check(self, backend: Target) -> ProbeResult:
        started = self._clock.now()
        try:
            async with asyncio.timeout(self.timeout):
                detail = await self._get_all(base_url(backend))
        except TimeoutError:
            detail = f"no answer within {self.timeout:g}s"
        except (aiohttp.ClientError, OSError) as exc:
            detail = _fault(exc)
        latency = self._clock.now() - started
        return ProbeResult(detail is None, latency, detail or f"ready ({len(self.paths)} checked)")

    async def _get_all(self, url: str) -> str | None:
        """``None`` when every path passed, else what the first failing one said."""
        for path in self.paths:
            async with self._session.get(url + path, allow_redirects=False) as response:
                await response.read()
                if response.status not in self._expected:
                    return f"GET {path}: {response.status}"
        return None


def readiness_probe(session: aiohttp.ClientSession, config: HealthConfig, models: Iterable[str] = (),
                    clock: Clock = MONOTONIC) -> HttpProbe:
    """``config.path`` when given, else KServe readiness of the server and of ``models``."""
    paths = [config.path] if config.path is not None else kserve_paths(models)
    return HttpProbe(session, paths, config.expected_status, config.timeout, clock)


class CanaryProbe:
    """POSTs a real inference request; fails when the answer is not 2xx or comes later than
    ``latency_limit`` (which also bounds the wait). Catches a backend whose readiness answers
    while inference hangs."""

    __slots__ = ("_session", "config", "_body", "_clock")

    def __init__(self, session: aiohttp.ClientSession, config: CanaryConfig, clock: Clock = MONOTONIC) -> None:
        self._session = session
        self.config = config
        body = config.body
        self._body = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self._clock = clock

    async def check(self, backend: Target) -> ProbeResult:
        config, started = self.config, self._clock.now()
        try:
            async with asyncio.timeout(config.latency_limit):
                status = await self._post(base_url(backend) + config.path)
        except TimeoutError:
            return self._result(False, started, f"canary: no answer within {config.latency_limit:g}s")
        except (aiohttp.ClientError, OSError) as exc:
            return self._result(False, started, f"canary: {_fault(exc)}")
        if not 200 <= status <= 299:
            return self._result(False, started, f"canary: POST {config.path}: {status}")
        latency = self._clock.now() - started
        if latency > config.latency_limit:
            return ProbeResult(False, latency, f"canary: took {latency:.3f}s, limit {config.latency_limit:g}s")
        return ProbeResult(True, latency, f"canary: {status} in {latency * 1e3:.0f}ms")

    async def _post(self, url: str) -> int:
        headers = {"content-type": self.config.content_type}
        async with self._session.post(url, data=self._body, headers=headers, allow_redirects=False) as response:
            await response.read()
            return response.status

    def _result(self, ok: bool, started: float, detail: str) -> ProbeResult:
        return ProbeResult(ok, self._clock.now() - started, detail)
