"""Callbacks: a POST of the finished job's status to the URL its submission named, signed so
the receiver can trust it and reject a replay.

The signature (as Stripe's): ``x-lbd-signature: t=TIMESTAMP,v1=HEX`` where ``HEX`` is
HMAC-SHA256 with the configured secret over ``b"%d." % TIMESTAMP + body``. A receiver
recomputes it (:func:`verify`), rejects a timestamp older than its tolerance (a replay of an
old delivery) and, since delivery is at least once, treats a job id it has already handled
as done. ``x-lbd-job`` names the job, ``x-lbd-delivery`` the try (``JOB.N``).

Deliveries are due in the store (a sorted set in Redis), leased while one instance sends
them: one that dies mid-delivery leaves it to another. A failed try (no answer in
``timeout``, or not 2xx) is retried after an exponential backoff with full jitter, up to
``retries`` times; the job shows each outcome under ``webhook``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
from collections.abc import Callable
from urllib.parse import urlsplit

import aiohttp

from lbd.config.jobs import WebhookConfig
from lbd.jobs.base import JobRecord, JobStore, StoreError, WebhookStatus

__all__ = ["sign", "verify", "check_url", "Deliverer", "SIGNATURE_HEADER"]

log = logging.getLogger("lbd.jobs.webhook")
SIGNATURE_HEADER = "x-lbd-signature"
_POLL = 0.2
_BATCH = 16


def sign(secret: bytes, body: bytes, timestamp: int) -> str:
    """The ``x-lbd-signature`` value for ``body`` sent at ``timestamp`` (Unix seconds)."""
    digest = hmac.new(secret, b"%d." % timestamp + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(secret: bytes, header: str | None, body: bytes, now: float, tolerance: float = 300.0) -> bool:
    """Whether ``header`` signs ``body`` with ``secret`` at a time within ``tolerance``
    seconds of ``now`` (what a receiver checks)."""
    if not header:
        return False
    parts = dict(part.partition("=")[::2] for part in header.split(","))
    try:
        timestamp = int(parts.get("t", ""))
    except ValueError:
        return False
    if abs(now - timestamp) > tolerance:
        return False
    expected = hmac.new(secret, b"%d." % timestamp + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts.get("v1", ""))


def check_url(url: str, config: WebhookConfig) -> str | None:
    """Why ``url`` may not be a callback (``None``: it may)."""
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        parts.port  # noqa: B018  a bad port raises here
    except ValueError:
        return f"not a URL: {url!r}"
    if parts.scheme not in ("http", "https") or not host:
        return f"a callback must be an http:// or https:// URL, not {url!r}"
    allowed = config.allowed_hosts
    if allowed and not any(host == name or (name.startswith("*.") and host.endswith(name[1:])) for name in allowed):
        return f"callbacks to {host!r} are not allowed here (jobs.webhook.allowed_hosts)"
    return None


class Deliverer:
    """Sends due callbacks until stopped. ``payload`` renders a job as the body (the same
    JSON the jobs API answers); ``on_result`` counts ``delivered`` / ``retried`` / ``failed``."""

    def __init__(self, store: JobStore, config: WebhookConfig, secret: bytes | None,
                 payload: Callable[[JobRecord], bytes], on_result: Callable[[str], None] = lambda result: None,
                 *, clock=None, rng: random.Random | None = None) -> None:
        from lbd.jobs.base import WALL

        self._store, self._config, self._secret = store, config, secret
        self._payload, self._on_result = payload, on_result
        self._clock, self._rng = clock or WALL, rng or random.Random()
        self._session: aiohttp.ClientSession | None = None
        self._sending: set[asyncio.Task] = set()
        self._store_down = False

    async def run(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._config.timeout))
        try:
            while True:
                try:
                    due = await self._store.due_callbacks(self._config.timeout * 2 + 1.0, _BATCH)
                    self._store_down = False
                except StoreError as error:
                    if not self._store_down:  # said once; the loop retries every 0.2 s
                        log.warning("webhooks: the job store is unavailable: %s", error)
                    self._store_down = True
                    due = []
                for job_id in due:
                    task = asyncio.ensure_future(self.deliver(job_id))
                    self._sending.add(task)
                    task.add_done_callback(self._sending.discard)
                if len(due) < _BATCH:
                    await asyncio.sleep(_POLL)
        finally:
            for task in list(self._sending):
                task.cancel()
            await self._session.close()

    async def deliver(self, job_id: str) -> None:
        """One try of one job's callback, and its outcome recorded."""
        try:
            found = await self._store.webhook(job_id)
            if found is None:
                return
            record, status = found
            status.attempts += 1
            ok = await self._post(record, status)
            retry_at = None
            if ok:
                status.state, status.delivered_at = "delivered", self._clock.now()
            elif status.attempts > self._config.retries:
                status.state = "failed"
            else:
                retry_at = self._clock.now() + self._backoff(status.attempts)
            self._on_result("delivered" if ok else "retried" if retry_at is not None else "failed")
            await self._store.callback_done(job_id, status, retry_at)
        except StoreError as error:
            log.warning("webhook of job %s: the job store is unavailable: %s", job_id, error)
        except Exception:  # one bad delivery must not stop the others
            log.exception("webhook of job %s failed unexpectedly", job_id)

    async def _post(self, record: JobRecord, status: WebhookStatus) -> bool:
        if self._secret is None:
            status.last_status, status.last_error = None, "no jobs.webhook secret is configured"
            return False
        body = self._payload(record)
        timestamp = int(self._clock.now())
        headers = {"content-type": "application/json", SIGNATURE_HEADER: sign(self._secret, body, timestamp),
                   "x-lbd-job": record.id, "x-lbd-delivery": f"{record.id}.{status.attempts}",
                   "user-agent": "lbd-webhook"}
        try:
            assert self._session is not None
            async with self._session.post(status.url, data=body, headers=headers, allow_redirects=False) as response:
                await response.read()
                status.last_status = response.status
                status.last_error = None if 200 <= response.status < 300 else f"answered {response.status}"
                return 200 <= response.status < 300
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as error:
            status.last_status, status.last_error = None, f"{type(error).__name__}: {error}"[:300]
            return False

    def _backoff(self, attempts: int) -> float:
        backoff = self._config.backoff
        return self._rng.uniform(0, min(backoff.max, backoff.base * 2 ** min(attempts - 1, 30)))
