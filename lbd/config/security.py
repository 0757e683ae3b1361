"""Config of who may use a pool and how fast: API keys and rate limits (per pool)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lbd.units import Duration

__all__ = ["ApiKeyConfig", "AuthConfig", "RateLimitConfig"]

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ApiKeyConfig(_Strict):
    """One key, stored as its SHA-256 (``lbd hash-key`` prints it), and the tenant it names."""

    tenant: str = Field(min_length=1)
    sha256: str

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str) -> str:
        value = value.strip().lower()
        if not _SHA256.match(value):
            raise ValueError("not a SHA-256 in hex (64 characters); `lbd hash-key KEY` prints one")
        return value


class AuthConfig(_Strict):
    """API keys for a pool. Defaults: the key comes as ``Authorization: Bearer KEY`` (or in
    ``header`` if set to another field, as the bare value); it is not forwarded upstream.

    ``key_file``: a YAML list of ``{tenant, sha256}`` entries, read at start and on reload.
    """

    keys: list[ApiKeyConfig] = []
    key_file: str | None = None
    header: str = "authorization"
    forward: bool = False

    @field_validator("header")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower()

    @model_validator(mode="after")
    def _some_keys(self) -> AuthConfig:
        if not self.keys and self.key_file is None:
            raise ValueError("give 'keys' or a 'key_file'")
        return self


class RateLimitConfig(_Strict):
    """A token bucket per key: ``rate`` requests a second on average, up to ``burst`` at once.

    ``by``: ``tenant`` (from the API key; the client address when the pool has no auth),
    ``client_ip``, or ``pool`` (one bucket for everyone). ``store``: ``local`` (this process)
    or a ``redis://`` URL (shared by every lbd instance, atomic in a Lua script; if Redis is
    down or slower than ``redis_timeout`` the limiter fails open). Defaults: by tenant,
    burst = rate, local, 50ms.
    """

    rate: float = Field(gt=0)
    burst: int | None = Field(None, ge=1)
    by: Literal["tenant", "client_ip", "pool"] = "tenant"
    store: str = "local"
    redis_timeout: Duration = Field(0.05, gt=0)

    @field_validator("store")
    @classmethod
    def _store(cls, value: str) -> str:
        if value != "local" and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("'local' or a redis:// URL")
        return value

    @property
    def capacity(self) -> int:
        return self.burst if self.burst is not None else max(1, int(self.rate))
