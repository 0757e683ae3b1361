"""The shared store: entries and the semantic index in Redis, for every lbd instance.

Layout under ``prefix`` (default ``lbd:cache:``):

- ``e:{pool}:{model}:{tenant}:{digest}``: an entry (:meth:`Entry.to_bytes`), expiring with
  it (``PX``): Redis enforces the TTL, stale grace included.
- ``v:{partition}:{digest}``: a semantic index record, expiring with its entry (``PXAT``).
- ``feed``: a stream of additions and purges (``MAXLEN ~ stream_max_len``). Each instance
  follows it with a blocking ``XREAD`` (1 s), so a text one instance caches is searchable on
  the others within about a second; an instance that starts, or comes back after Redis was
  away, reads the latest stream id, scans ``v:*`` into a fresh index, then follows from that
  id (an update seen twice is harmless: adding replaces).

Failing open: each call is bounded by ``operation_timeout``; an error or timeout is counted
and marks Redis down, after which calls return a miss at once until a backoff (full jitter,
``base`` doubling to ``max``) has passed; the next call then tries again. Nothing here raises
into the request path.

Every await on Redis here, the follower's included, goes through :func:`lbd.aio.bounded`,
not ``asyncio.wait_for``: on Python 3.11, ``wait_for`` returns the result instead of raising
when its task is cancelled just as the awaited operation finishes, and redis-py wraps each
socket write in one, so a single ``cancel()`` of a task that talks to Redis can be lost.
:meth:`RedisStore.close` therefore also tells the follower to stop (a flag it checks each
round) and cancels it until it has stopped, within ``_CLOSE_TIMEOUT``.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from lbd.aio import bounded, cancel_until_done, finish_off
from lbd.cache.base import Entry, EntryFormatError, PurgeListener, Scope, SystemClock, VectorListener, VectorRecord, \
    WallClock
from lbd.cache.keys import digest, label, tenant_label

__all__ = ["RedisStore", "RedisStats"]

_log = logging.getLogger("lbd.cache.redis")
_T = TypeVar("_T")
_BLOCK_MS = 1000
_BATCH = 500
_CLOSE_TIMEOUT = 2.0
"""The most :meth:`RedisStore.close` waits for the follower and for calls still running."""


@dataclass
class RedisStats:
    errors: int = 0
    """Calls that failed or timed out."""
    skipped: int = 0
    """Calls answered as a miss without trying, while Redis was down."""
    reconnects: int = 0
    up: bool = True


class RedisStore:
    """:class:`lbd.cache.base.Store` and :class:`lbd.cache.base.VectorFeed` on Redis."""

    def __init__(self, url: str, *, prefix: str = "lbd:cache:", timeout: float = 0.05,
                 backoff_base: float = 0.1, backoff_max: float = 5.0, stream_max_len: int = 100_000,
                 clock: WallClock | None = None, rng: random.Random | None = None) -> None:
        no_retry = Retry(NoBackoff(), 0)  # retrying is this class's job, within its timeout
        self._redis = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=no_retry)
        self._reader = redis.Redis.from_url(url, socket_timeout=_BLOCK_MS / 1000 + 1.0,
                                            socket_connect_timeout=max(timeout, 0.5), retry=no_retry)
        self._prefix, self._feed = prefix, prefix + "feed"
        self._timeout, self._bulk_timeout = timeout, max(2.0, timeout * 40)
        self._backoff = (backoff_base, backoff_max)
        self._stream_max_len = stream_max_len
        self._clock, self._rng = clock or SystemClock(), rng or random.Random()
        self._failures, self._retry_at = 0, 0.0
        self._origin = digest(str(id(self)).encode(), str(self._rng.random()).encode())[:12]
        self._follower: asyncio.Task | None = None
        self._closing = False
        self._abandoned: set[asyncio.Future] = set()
        self.stats = RedisStats()

    # -- fail-open plumbing -------------------------------------------------------------
    async def _call(self, operation: Callable[[], Awaitable[_T]], default: _T, *, bulk: bool = False) -> _T:
        loop_now = asyncio.get_running_loop().time()
        if self._failures and loop_now < self._retry_at:
            self.stats.skipped += 1
            return default
        try:
            result = await self._bounded(operation(), self._bulk_timeout if bulk else self._timeout)
        except (RedisError, OSError, asyncio.TimeoutError, EntryFormatError) as error:
            self._failed(error, loop_now)
            return default
        self._succeeded()
        return result

    async def _bounded(self, operation: Awaitable[_T], timeout: float) -> _T:
        """``operation``'s result, or :class:`TimeoutError` once ``timeout`` has passed
        (:func:`lbd.aio.bounded`: the caller's cancellation is never turned into a result;
        what is given up on runs on in the background, bounded by the clients' socket
        timeouts, and :meth:`close` cancels what is left of it)."""
        return await bounded(operation, timeout, self._abandoned, what="redis")

    def _failed(self, error: BaseException, loop_now: float) -> None:
        self.stats.errors += 1
        self.stats.up = False
        self._failures += 1
        base, cap = self._backoff
        self._retry_at = loop_now + self._rng.uniform(0, min(cap, base * 2 ** min(self._failures - 1, 30)))
        if self._failures == 1:
            _log.warning("redis cache unavailable, serving without it: %r", error)

    def _succeeded(self) -> None:
        if self._failures:
            self.stats.reconnects += 1
            _log.info("redis cache reachable again")
        self._failures = 0
        self.stats.up = True

    @property
    def available(self) -> bool:
        return not self._failures

    # -- Store ----------------------------------------------------------------------------
    async def get(self, key: str) -> Entry | None:
        data = await self._call(lambda: self._redis.get(self._prefix + "e:" + key), None)
        if data is None:
            return None
        try:
            entry = Entry.from_bytes(data)
        except EntryFormatError:
            return None
        return entry if entry.lifetime_left(self._clock.now()) > 0 else None

    async def set(self, key: str, entry: Entry) -> None:
        milliseconds = int(entry.lifetime_left(self._clock.now()) * 1000)
        if milliseconds > 0:
            await self._call(lambda: self._redis.set(self._prefix + "e:" + key, entry.to_bytes(), px=milliseconds),
                             None)

    async def delete(self, key: str) -> None:
        await self._call(lambda: self._redis.unlink(self._prefix + "e:" + key), None)

    async def purge(self, scope: Scope) -> int:
        fields = ":".join("*" if value is None else value for value in _labels(scope))
        removed = await self._call(lambda: self._unlink_matching(f"{self._prefix}e:{fields}:*"), 0, bulk=True)
        await self._call(lambda: self._unlink_matching(f"{self._prefix}v:{fields}:*"), 0, bulk=True)
        scope_json = orjson.dumps([scope.pool, scope.model, scope.tenant])
        await self._call(lambda: self._xadd({"op": "purge", "s": scope_json}), None)
        return removed

    async def _unlink_matching(self, pattern: str) -> int:
        removed, batch = 0, []
        async for key in self._redis.scan_iter(match=pattern, count=_BATCH):
            batch.append(key)
            if len(batch) >= _BATCH:
                removed += await self._redis.unlink(*batch)
                batch = []
        if batch:
            removed += await self._redis.unlink(*batch)
        return removed

    async def close(self) -> None:
        """Stops the follower, cancels the calls still running and closes the connections;
        returns within ``_CLOSE_TIMEOUT`` seconds or very little more, whatever Redis does
        (in practice at once)."""
        self._closing = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _CLOSE_TIMEOUT
        follower, self._follower = self._follower, None
        if follower is not None and not await cancel_until_done(follower, _CLOSE_TIMEOUT):
            _log.warning("the redis cache feed follower did not stop within %ss", _CLOSE_TIMEOUT)
        await finish_off(self._abandoned, deadline - loop.time())
        for client in (self._redis, self._reader):
            try:
                await self._bounded(client.aclose(), max(deadline - loop.time(), 0.1))
            except (RedisError, OSError, asyncio.TimeoutError) as error:
                _log.warning("closing the redis cache connections failed: %r", error)

    # -- VectorFeed -----------------------------------------------------------------------
    async def publish(self, record: VectorRecord) -> None:
        at_ms = int(record.expires_at * 1000)
        if record.expires_at <= self._clock.now():
            return
        data = record.to_bytes()
        key = f"{self._prefix}v:{record.partition}:{digest(record.text.encode())}"

        async def write() -> None:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.set(key, data, pxat=at_ms)
                pipe.xadd(self._feed, {"op": "add", "o": self._origin, "r": data},
                          maxlen=self._stream_max_len, approximate=True)
                await pipe.execute()
        await self._call(write, None)

    def _xadd(self, fields: dict[str, Any]) -> Awaitable[Any]:
        return self._redis.xadd(self._feed, {**fields, "o": self._origin}, maxlen=self._stream_max_len,
                                approximate=True)

    async def load(self) -> list[VectorRecord]:
        """Raises when Redis cannot answer (unlike the request-path calls): the caller, the
        feed follower, then keeps its index and tries again after a backoff."""
        return await self._bounded(self._load_all(), self._bulk_timeout * 10)

    async def _load_all(self) -> list[VectorRecord]:
        records, batch = [], []
        async for key in self._redis.scan_iter(match=self._prefix + "v:*", count=_BATCH):
            batch.append(key)
            if len(batch) >= _BATCH:
                records += _decode_records(await self._redis.mget(batch))
                batch = []
        if batch:
            records += _decode_records(await self._redis.mget(batch))
        return records

    def follow(self, on_add: VectorListener, on_purge: PurgeListener,
               on_resync: Callable[[], Awaitable[None]], on_failure: Callable[[], None] | None = None) -> None:
        self._follower = asyncio.get_running_loop().create_task(
            self._follow(on_add, on_purge, on_resync, on_failure))

    async def _follow(self, on_add: VectorListener, on_purge: PurgeListener,
                      on_resync: Callable[[], Awaitable[None]], on_failure: Callable[[], None] | None) -> None:
        failures = 0
        while not self._closing:  # besides the cancellation: close() stops it even if one is lost
            try:
                last = await self._latest_id()
                await on_resync()
                failures = 0
                while not self._closing:
                    last = await self._read_feed(last, on_add, on_purge)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - the follower must outlive any one failure
                failures += 1
                if failures == 1:
                    _log.warning("redis cache feed interrupted: %r", error)
                if on_failure is not None:
                    on_failure()
                base, cap = self._backoff
                await asyncio.sleep(self._rng.uniform(base / 2, min(cap, base * 2 ** min(failures, 30))))

    async def _latest_id(self) -> bytes:
        newest = await self._bounded(self._reader.xrevrange(self._feed, count=1), self._bulk_timeout)
        return newest[0][0] if newest else b"0-0"

    async def _read_feed(self, last: bytes, on_add: VectorListener, on_purge: PurgeListener) -> bytes:
        answer = await self._bounded(self._reader.xread({self._feed: last}, count=_BATCH, block=_BLOCK_MS),
                                     _BLOCK_MS / 1000 + self._bulk_timeout)
        for _, messages in answer or ():
            for message_id, fields in messages:
                last = message_id
                if fields.get(b"o") != self._origin.encode():
                    _dispatch(fields, on_add, on_purge)
        return last


def _dispatch(fields: dict[bytes, bytes], on_add: VectorListener, on_purge: PurgeListener) -> None:
    try:
        if fields.get(b"op") == b"add":
            on_add(VectorRecord.from_bytes(fields[b"r"]))
        elif fields.get(b"op") == b"purge":
            on_purge(Scope(*orjson.loads(fields[b"s"])))
    except (EntryFormatError, KeyError, TypeError, orjson.JSONDecodeError):
        _log.debug("skipped a malformed cache feed message")


def _decode_records(values: list[bytes | None]) -> list[VectorRecord]:
    records = []
    for value in values:
        if value is None:
            continue  # expired between SCAN and MGET
        try:
            records.append(VectorRecord.from_bytes(value))
        except EntryFormatError:
            continue
    return records


def _labels(scope: Scope) -> tuple[str | None, str | None, str | None]:
    return (None if scope.pool is None else label(scope.pool), None if scope.model is None else label(scope.model),
            None if scope.tenant is None else tenant_label(scope.tenant))
