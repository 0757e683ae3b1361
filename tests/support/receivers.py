"""Real HTTP servers the jobs' tests talk to, each on a free port in a thread of its own (so
they outlive an lbd that is killed): a recording upstream and a webhook receiver.

The webhook receiver checks what a real one must, written out here rather than calling lbd's
own helper: the HMAC-SHA256 over ``"{t}.{body}"`` in ``x-lbd-signature``, a timestamp within
its tolerance (an old one is a replay), and a job it has already accepted is acknowledged
but not counted twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
from collections import Counter

from aiohttp import web

from tests.support.procs import free_port

__all__ = ["ThreadServer", "Recorder", "WebhookReceiver"]


class ThreadServer:
    """An aiohttp application served from a thread with its own event loop."""

    def __init__(self, app: web.Application) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._app, self._ready = app, threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the test server did not start")

    def _serve(self) -> None:
        self._loop = loop = asyncio.new_event_loop()
        runner = web.AppRunner(self._app, access_log=None)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self._ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)


class Recorder(ThreadServer):
    """``POST /work`` with ``{"token": T, "delay": S}``: answers ``{"token": T}`` after S
    seconds, counting each execution of T as it starts and as it completes."""

    def __init__(self) -> None:
        self.started: Counter[str] = Counter()
        self.completed: Counter[str] = Counter()
        self.most_at_once = 0
        self._at_once = 0
        self._lock = threading.Lock()
        app = web.Application()
        app.router.add_post("/work", self._work)
        super().__init__(app)

    async def _work(self, request: web.Request) -> web.Response:
        payload = await request.json()
        token = payload["token"]
        with self._lock:
            self.started[token] += 1
            self._at_once += 1
            self.most_at_once = max(self.most_at_once, self._at_once)
        try:
            await asyncio.sleep(float(payload.get("delay", 0)))
        finally:
            with self._lock:
                self._at_once -= 1
        with self._lock:
            self.completed[token] += 1
        return web.json_response({"token": token})

    def in_flight(self) -> set[str]:
        with self._lock:
            return {token for token, count in self.started.items() if count > self.completed[token]}


class WebhookReceiver(ThreadServer):
    """``POST /hook``: verifies each delivery; answers 500 to the first ``fail_first`` tries of
    jobs whose id is in ``flaky`` (or of every job with ``flaky=None``)."""

    def __init__(self, secret: bytes, *, fail_first: int = 0, tolerance: float = 300.0) -> None:
        self.secret, self.fail_first, self.tolerance = secret, fail_first, tolerance
        self.flaky: set[str] | None = None
        self.tries: Counter[str] = Counter()
        self.accepted: dict[str, dict] = {}
        self.duplicates: Counter[str] = Counter()
        self.rejected: list[str] = []
        self._lock = threading.Lock()
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        super().__init__(app)

    def check(self, headers, body: bytes) -> str | None:
        """Why a delivery is refused (``None``: it is genuine and fresh)."""
        fields = dict(part.partition("=")[::2] for part in headers.get("x-lbd-signature", "").split(","))
        if not fields.get("t", "").isdigit():
            return "unsigned"
        expected = hmac.new(self.secret, fields["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, fields.get("v1", "")):
            return "bad signature"
        if abs(time.time() - int(fields["t"])) > self.tolerance:
            return "replayed (too old)"
        return None

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        problem = self.check(request.headers, body)
        if problem is not None:
            with self._lock:
                self.rejected.append(problem)
            return web.json_response({"error": problem}, status=400)
        job = json.loads(body)
        job_id = job["id"]
        with self._lock:
            self.tries[job_id] += 1
            if (self.flaky is None or job_id in self.flaky) and self.tries[job_id] <= self.fail_first:
                return web.json_response({"error": "not now"}, status=500)
            if job_id in self.accepted:
                self.duplicates[job_id] += 1
            else:
                self.accepted[job_id] = job
        return web.json_response({"ok": True})
