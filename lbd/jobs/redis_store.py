"""The shared, durable job store: Redis Streams with one consumer group per pool queue.

A job is a hash (``Pjob:ID``: the request as admitted, its state, attempts, result and
callback status) and an entry in its pool's stream for its priority (``Pq:POOL:PRIORITY``).
Runners read new entries with ``XREADGROUP`` (blocking while the queue is empty), keep the
claims they hold alive with ``XCLAIM ... JUSTID`` (the heartbeat), and take over claims idle
past the visibility timeout with ``XAUTOCLAIM``: a runner that died mid-run leaves its jobs to
the others. Each step that changes a record and its entry together is one Lua script
(:mod:`lbd.jobs.lua`). A finished job's hash expires after the result TTL.

Durable as Redis is: run it with ``appendonly yes`` (``appendfsync everysec`` loses at most
a second of submissions on a crash of Redis itself, ``always`` none) and
``maxmemory-policy noeviction`` (an LRU policy, right for a cache, would evict queued jobs). Every call is bounded
by ``timeout`` and raises :class:`~lbd.jobs.base.StoreError` when Redis is away.

Every call goes through :func:`lbd.aio.bounded`, not ``asyncio.wait_for``: on Python 3.11
``wait_for`` can turn a cancellation into a result (redis-py wraps each socket write in one),
and the runner's loops and runs, cancelled on stop, must stop. :meth:`RedisStore.close`
cancels what those calls left running.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from lbd.aio import bounded, finish_off
from lbd.jobs import lua
from lbd.jobs.base import (
    WALL, BatchRecord, Claim, Clock, JobRecord, NewJob, Response, Run, StoreError, WebhookStatus,
)

__all__ = ["RedisStore", "GROUP"]

log = logging.getLogger("lbd.jobs.redis")
GROUP = "runners"
_T = TypeVar("_T")
_PRUNE_EVERY = 600.0
_FORGET_AFTER = 3600.0
_CLOSE_TIMEOUT = 2.0
"""The most :meth:`RedisStore.close` waits for the calls still running and the connections."""
_RECORD = ("id", "pool", "tenant", "state", "priority", "method", "target", "submitted", "attempts", "started",
           "finished", "error", "status", "response_headers", "response_body", "batch", "hook_url", "hook_state",
           "hook_attempts", "hook_status", "hook_error", "hook_at")


class RedisStore:
    """:class:`lbd.jobs.base.JobStore` on Redis."""

    def __init__(self, url: str, *, prefix: str = "lbd:jobs:", timeout: float = 2.0, clock: Clock = WALL) -> None:
        no_retry = Retry(NoBackoff(), 0)
        self._redis = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=no_retry)
        self._blocking = redis.Redis.from_url(url, socket_timeout=None, socket_connect_timeout=timeout, retry=no_retry)
        self._prefix, self._timeout, self._clock = prefix, timeout, clock
        self._next_prune: dict[str, float] = {}
        self._abandoned: set[asyncio.Future] = set()
        self._scripts = {name: self._redis.register_script(getattr(lua, name))
                         for name in ("SUBMIT", "BEGIN", "FINISH", "REQUEUE", "RELEASE", "PROMOTE", "CANCEL",
                                      "RENEW", "DUE_HOOKS", "HOOK_DONE", "DEPTH")}

    # -- plumbing -----------------------------------------------------------------------------------
    async def _call(self, operation: Callable[[], Awaitable[_T]], timeout: float | None = None) -> _T:
        try:
            return await bounded(operation(), timeout or self._timeout, self._abandoned, what="redis")
        except (RedisError, OSError, asyncio.TimeoutError) as error:
            raise StoreError(f"redis: {error!r}") from error

    def _script(self, name: str, keys: list[str], args: list[Any]) -> Awaitable[Any]:
        return self._scripts[name](keys=keys, args=args)

    def _job(self, job_id: str) -> str:
        return f"{self._prefix}job:{job_id}"

    def _stream(self, pool: str, priority: int) -> str:
        return f"{self._prefix}q:{pool}:{priority}"

    def _streams(self, pool: str) -> list[str]:
        return [self._stream(pool, priority) for priority in range(3)]

    def _delayed(self, pool: str) -> str:
        return f"{self._prefix}delayed:{pool}"

    def _now_ms(self) -> int:
        return int(self._clock.now() * 1000)

    async def start(self, pools: list[str]) -> None:
        for pool in pools:
            await self.depth(pool)  # creates the streams and the group

    async def close(self) -> None:
        """Cancels the calls still running and closes the connections; returns within
        ``_CLOSE_TIMEOUT`` seconds or very little more, whatever Redis does."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _CLOSE_TIMEOUT
        await finish_off(self._abandoned, deadline - loop.time())
        for client in (self._redis, self._blocking):
            try:
                await bounded(client.aclose(), max(deadline - loop.time(), 0.1), self._abandoned, what="redis")
            except (RedisError, OSError, asyncio.TimeoutError) as error:
                log.debug("closing the jobs store's connections failed: %r", error)

    # -- submitting and reading --------------------------------------------------------------------
    async def submit(self, jobs: list[NewJob], max_queue: int | None, batch: BatchRecord | None = None,
                     counted: int | None = None) -> bool:
        if not jobs:
            return True
        pool, now = jobs[0].pool, self._now_ms()
        args: list[Any] = [GROUP, "" if max_queue is None else max_queue, self._prefix, batch.id if batch else "",
                           len(jobs) if counted is None else counted]
        if batch is None:
            args.append(0)
        else:
            fields = ["id", batch.id, "pool", batch.pool, "tenant", batch.tenant or "", "created", now,
                      "jobs", orjson.dumps(batch.jobs)]
            args += [len(fields) // 2, *fields]
        args.append(len(jobs))
        encoded: dict[int, bytes] = {}  # a batch's jobs share one headers tuple: encode it once
        for job in jobs:
            headers = encoded.get(id(job.headers))
            if headers is None:
                headers = encoded[id(job.headers)] = orjson.dumps(job.headers)
            fields = ["id", job.id, "pool", job.pool, "tenant", job.tenant or "", "priority", job.priority,
                      "method", job.method, "target", job.target, "headers", headers, "body", job.body,
                      "client_ip", job.client_ip, "submitted", now, "batch", job.batch or "",
                      "hook_url", job.callback or "", "hook_state", "pending" if job.callback else ""]
            args += [job.id, job.priority, len(fields) // 2, *fields]
        keys = [*self._streams(pool), self._delayed(pool)]
        return bool(await self._call(lambda: self._script("SUBMIT", keys, args), max(self._timeout, 0.01 * len(jobs))))

    async def get(self, job_id: str) -> JobRecord | None:
        values = await self._call(lambda: self._redis.hmget(self._job(job_id), _RECORD))
        if values[0] is None:
            return None
        return _record(dict(zip(_RECORD, values)))

    async def get_batch(self, batch_id: str) -> BatchRecord | None:
        found = await self._call(lambda: self._redis.hgetall(f"{self._prefix}batch:{batch_id}"))
        if not found:
            return None
        text = {k.decode(): v for k, v in found.items()}
        return BatchRecord(text["id"].decode(), text["pool"].decode(), text["tenant"].decode() or None,
                           int(text["created"]) / 1000, orjson.loads(text["jobs"]))

    async def states(self, job_ids: list[str]) -> list[str | None]:
        async def read() -> list[Any]:
            async with self._redis.pipeline(transaction=False) as pipe:
                for job_id in job_ids:
                    pipe.hget(self._job(job_id), "state")
                return await pipe.execute()

        values = await self._call(read, max(self._timeout, 0.001 * len(job_ids)))
        return [value.decode() if value is not None else None for value in values]

    async def cancel(self, job_id: str, result_ttl: float) -> str | None:
        args = [GROUP, self._now_ms(), int(result_ttl * 1000), self._prefix]
        state = await self._call(lambda: self._script("CANCEL", [self._job(job_id)], args))
        state = state.decode() if isinstance(state, bytes) else state
        return state or None

    async def depth(self, pool: str) -> int:
        keys = [*self._streams(pool), self._delayed(pool)]
        return int(await self._call(lambda: self._script("DEPTH", keys, [GROUP])))

    # -- running -----------------------------------------------------------------------------------
    async def claim(self, pool: str, consumer: str, count: int, block: float) -> list[Claim]:
        streams = {stream: ">" for stream in self._streams(pool)}
        block_ms = int(block * 1000) if block > 0 else None
        try:
            replies = await self._call(lambda: self._blocking.xreadgroup(GROUP, consumer, streams, count=count,
                                                                        block=block_ms), block + self._timeout)
        except StoreError as error:
            if isinstance(error.__cause__, ResponseError) and "NOGROUP" in str(error.__cause__):
                await self.start([pool])
                return []
            raise
        claims = []
        for stream, entries in replies or ():
            priority = int(stream.rsplit(b":", 1)[1])
            for entry, fields in entries:
                if fields:  # an entry deleted (cancelled) after it was delivered has none
                    claims.append(Claim(fields[b"job"].decode(), pool, priority, entry.decode()))
        claims.sort(key=lambda claim: claim.priority)
        return claims

    async def reclaim(self, pool: str, consumer: str, min_idle: float, count: int) -> list[Claim]:
        if self._clock.now() >= self._next_prune.get(pool, 0.0):
            await self._prune(pool, max(_FORGET_AFTER, min_idle * 10))
        claims: list[Claim] = []
        for priority, stream in enumerate(self._streams(pool)):
            if len(claims) >= count:
                break
            reply = await self._call(lambda: self._redis.xautoclaim(stream, GROUP, consumer, int(min_idle * 1000),
                                                                    "0-0", count=count - len(claims)))
            for entry, fields in reply[1]:
                if fields:
                    claims.append(Claim(fields[b"job"].decode(), pool, priority, entry.decode()))
        return claims

    async def _prune(self, pool: str, idle: float) -> None:
        """Forget consumers (instances gone, each start names a new one) that hold nothing
        and were not heard of for ``idle`` seconds, so the group does not grow forever."""
        self._next_prune[pool] = self._clock.now() + _PRUNE_EVERY
        for stream in self._streams(pool):
            consumers = await self._call(lambda: self._redis.xinfo_consumers(stream, GROUP))
            for consumer in consumers:
                if consumer["pending"] == 0 and consumer["idle"] > idle * 1000:
                    name = consumer["name"]
                    await self._call(lambda: self._redis.xgroup_delconsumer(stream, GROUP, name))

    async def renew(self, consumer: str, claims: list[Claim]) -> list[Claim]:
        if not claims:
            return []
        keys = [self._stream(claim.pool, claim.priority) for claim in claims]
        lost = await self._call(lambda: self._script("RENEW", keys, [GROUP, consumer, *(c.entry for c in claims)]))
        return [claims[int(index) - 1] for index in lost]

    async def begin(self, claim: Claim, token: str, max_attempts: int, result_ttl: float) -> Run | None:
        keys = [self._job(claim.job_id), self._stream(claim.pool, claim.priority)]
        args = [GROUP, claim.entry, token, max_attempts, self._now_ms(), int(result_ttl * 1000), self._prefix]
        reply = await self._call(lambda: self._script("BEGIN", keys, args))
        if reply[0] != b"run":
            return None
        attempt = int(reply[1])
        pool, method, target, headers, body, tenant, priority, client_ip, callback, batch, submitted = reply[2:]
        job = NewJob(claim.job_id, pool.decode(), method.decode(), target.decode(),
                     tuple(tuple(pair) for pair in orjson.loads(headers)), body or b"", tenant.decode() or None,
                     int(priority), client_ip.decode(), callback.decode() or None, batch.decode() or None)
        return Run(job, attempt, int(submitted) / 1000)

    async def finish(self, claim: Claim, state: str, response: Response | None, error: str | None,
                     result_ttl: float) -> bool:
        keys = [self._job(claim.job_id), self._stream(claim.pool, claim.priority)]
        args: list[Any] = [GROUP, claim.entry, claim.token, state, self._now_ms(), int(result_ttl * 1000),
                           self._prefix, "error", error or ""]
        if response is not None:
            args += ["status", response.status, "response_headers", orjson.dumps(response.headers),
                     "response_body", response.body]
        return bool(await self._call(lambda: self._script("FINISH", keys, args)))

    async def requeue(self, claim: Claim, due: float, error: str) -> bool:
        keys = [self._job(claim.job_id), self._stream(claim.pool, claim.priority), self._delayed(claim.pool)]
        args = [GROUP, claim.entry, claim.token, int(due * 1000), error]
        return bool(await self._call(lambda: self._script("REQUEUE", keys, args)))

    async def release(self, claim: Claim) -> None:
        keys = [self._job(claim.job_id), self._stream(claim.pool, claim.priority)]
        await self._call(lambda: self._script("RELEASE", keys, [GROUP, claim.entry, claim.token]))

    async def promote(self, pool: str) -> int:
        keys = [self._delayed(pool), *self._streams(pool)]
        return int(await self._call(lambda: self._script("PROMOTE", keys, [self._now_ms(), self._prefix, 100])))

    # -- callbacks -----------------------------------------------------------------------------------
    async def due_callbacks(self, lease: float, count: int) -> list[str]:
        now = self._now_ms()
        due = await self._call(lambda: self._script("DUE_HOOKS", [self._prefix + "hooks"],
                                                    [now, now + int(lease * 1000), count]))
        return [job_id.decode() for job_id in due]

    async def webhook(self, job_id: str) -> tuple[JobRecord, WebhookStatus] | None:
        record = await self.get(job_id)
        if record is None or record.webhook is None:
            await self._call(lambda: self._redis.zrem(self._prefix + "hooks", job_id))
            return None
        return record, record.webhook

    async def callback_done(self, job_id: str, status: WebhookStatus, retry_at: float | None) -> None:
        fields = ["hook_state", status.state, "hook_attempts", status.attempts,
                  "hook_status", status.last_status or "", "hook_error", status.last_error or "",
                  "hook_at", int(status.delivered_at * 1000) if status.delivered_at else ""]
        args = [job_id, int(retry_at * 1000) if retry_at is not None else "", *fields]
        await self._call(lambda: self._script("HOOK_DONE", [self._job(job_id), self._prefix + "hooks"], args))


def _text(value: bytes | None) -> str | None:
    return value.decode() if value else None


def _seconds(value: bytes | None) -> float | None:
    return int(value) / 1000 if value else None


def _record(raw: dict[str, bytes | None]) -> JobRecord:
    response = None
    if raw["status"]:
        headers = tuple(tuple(pair) for pair in orjson.loads(raw["response_headers"] or b"[]"))
        response = Response(int(raw["status"]), headers, raw["response_body"] or b"")  # type: ignore[arg-type]
    webhook = None
    if raw["hook_url"]:
        webhook = WebhookStatus(raw["hook_url"].decode(), _text(raw["hook_state"]) or "pending",
                                int(raw["hook_attempts"] or 0), int(raw["hook_status"]) if raw["hook_status"] else None,
                                _text(raw["hook_error"]), _seconds(raw["hook_at"]))
    return JobRecord(
        id=raw["id"].decode(), pool=raw["pool"].decode(), tenant=_text(raw["tenant"]),  # type: ignore[union-attr]
        state=raw["state"].decode(), priority=int(raw["priority"] or 1),  # type: ignore[union-attr]
        method=raw["method"].decode(), target=raw["target"].decode(),  # type: ignore[union-attr]
        submitted_at=_seconds(raw["submitted"]) or 0.0, attempts=int(raw["attempts"] or 0),
        started_at=_seconds(raw["started"]), finished_at=_seconds(raw["finished"]), error=_text(raw["error"]),
        response=response, batch=_text(raw["batch"]), webhook=webhook)
