"""Token buckets: local to this process, or shared by every lbd instance through Redis
(one Lua script, so take-a-token is atomic). Redis trouble never fails a request: the
limiter lets it through and counts the error (fail open)."""

from __future__ import annotations

import asyncio
import logging
import math
from typing import NamedTuple

from lbd.aio import bounded, finish_off
from lbd.clock import MONOTONIC, Clock
from lbd.config.security import RateLimitConfig

__all__ = ["Decision", "LocalLimiter", "RedisLimiter", "rate_limit_headers"]

log = logging.getLogger("lbd.ratelimit")


class Decision(NamedTuple):
    allowed: bool
    remaining: int
    reset: float
    """Seconds until the bucket is full again (allowed) or until one token is there (refused)."""


class LocalLimiter:
    __slots__ = ("config", "_clock", "_rate", "_capacity", "_buckets")

    def __init__(self, config: RateLimitConfig, clock: Clock = MONOTONIC) -> None:
        self.config = config
        self._clock = clock
        self._rate = config.rate
        self._capacity = float(config.capacity)
        self._buckets: dict[str, list[float]] = {}

    def take(self, key: str) -> Decision:
        now = self._clock.now()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) > 100_000:
                self._forget_full(now)
            bucket = self._buckets[key] = [self._capacity, now]
        tokens = min(self._capacity, bucket[0] + (now - bucket[1]) * self._rate)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return Decision(True, int(bucket[0]), (self._capacity - bucket[0]) / self._rate)
        bucket[0] = tokens
        return Decision(False, 0, (1.0 - tokens) / self._rate)

    def _forget_full(self, now: float) -> None:
        """Buckets that refilled completely carry no state worth keeping."""
        capacity, rate = self._capacity, self._rate
        self._buckets = {k: b for k, b in self._buckets.items() if b[0] + (now - b[1]) * rate < capacity}


# KEYS[1] bucket; ARGV: rate, capacity, now (s). Returns {allowed, tokens*1000, reset*1000}.
_SCRIPT = """
local rate, capacity, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 't', 'ts')
local tokens, ts = tonumber(state[1]) or capacity, tonumber(state[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - ts) * rate)
local allowed = 0
if tokens >= 1 then tokens = tokens - 1; allowed = 1 end
redis.call('HSET', KEYS[1], 't', tokens, 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity / rate * 1000) + 1000)
local reset = allowed == 1 and (capacity - tokens) / rate or (1 - tokens) / rate
return {allowed, math.floor(tokens * 1000), math.ceil(reset * 1000)}
"""


class RedisLimiter:
    """The same bucket in Redis. ``take`` is a coroutine bounded by ``redis_timeout``
    (:func:`lbd.aio.bounded`: a request task cancelled while it waits is cancelled, never
    handed a decision, which ``asyncio.wait_for`` could do on Python 3.11)."""

    def __init__(self, config: RateLimitConfig, pool_name: str) -> None:
        import redis.asyncio as redis

        self.config = config
        self._prefix = f"lbd:rl:{pool_name}:"
        self._client = redis.from_url(config.store, socket_connect_timeout=config.redis_timeout,
                                      socket_timeout=config.redis_timeout)
        self._script = self._client.register_script(_SCRIPT)
        self._abandoned: set[asyncio.Future] = set()
        self.errors = 0

    async def take(self, key: str) -> Decision:
        import time

        config = self.config
        try:
            allowed, tokens, reset = await bounded(
                self._script(keys=[self._prefix + key], args=[config.rate, config.capacity, time.time()]),
                config.redis_timeout, self._abandoned, what="redis")
        except Exception as exc:  # noqa: BLE001 - any Redis trouble: let the request through
            self.errors += 1
            if self.errors == 1 or self.errors % 1000 == 0:
                log.warning("rate limiter: Redis unavailable, failing open", extra={"error": repr(exc),
                                                                                  "errors": self.errors})
            return Decision(True, config.capacity, 0.0)
        return Decision(bool(allowed), int(tokens) // 1000, int(reset) / 1000)

    async def close(self) -> None:
        """Cancels the calls still running and closes the connections, within about
        ``redis_timeout`` plus a second whatever Redis does."""
        await finish_off(self._abandoned, self.config.redis_timeout)
        try:
            await bounded(self._client.aclose(), 1.0, self._abandoned, what="redis")
        except Exception as exc:  # noqa: BLE001 - closing: nothing left to protect
            log.debug("rate limiter: closing the Redis connections failed", extra={"error": repr(exc)})


def rate_limit_headers(config: RateLimitConfig, decision: Decision) -> tuple[tuple[bytes, bytes], ...]:
    """IETF RateLimit header fields (draft-ietf-httpapi-ratelimit-headers), plus
    ``Retry-After`` when refused."""
    window = max(1, math.ceil(config.capacity / config.rate))
    fields = (
        (b"ratelimit-policy", b'"default";q=%d;w=%d' % (config.capacity, window)),
        (b"ratelimit", b'"default";r=%d;t=%d' % (decision.remaining, math.ceil(decision.reset))),
    )
    if not decision.allowed:
        fields += ((b"retry-after", b"%d" % max(1, math.ceil(decision.reset))),)
    return fields
