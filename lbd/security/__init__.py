"""Who may use a pool and how fast: API keys and rate limits."""

from lbd.security.auth import Authenticator, hash_key
from lbd.security.ratelimit import Decision, LocalLimiter, RedisLimiter, rate_limit_headers

__all__ = ["Authenticator", "Decision", "LocalLimiter", "RedisLimiter", "hash_key", "rate_limit_headers"]
