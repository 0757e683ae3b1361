"""Typed config of asynchronous jobs: where they are queued (top-level ``jobs:``) and how
each pool runs them (``pools.NAME.jobs:``).

Each model is frozen and forbids unknown keys; defaults are filled first, then checked, and
every error names the key. Jobs are on by default, queued in this process's memory (not
durable: a restart loses them); name a Redis URL in ``store`` to keep them across restarts
and share one queue between lbd instances.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lbd.units import Duration, Size

__all__ = ["JobsConfig", "PoolJobsConfig", "WebhookConfig", "BackoffConfig", "PRIORITIES"]

PRIORITIES = ("high", "normal", "low")
"""Job priorities, highest first; a pool's runner always takes the highest waiting one."""

_HOST = re.compile(r"^(\*\.)?[a-z0-9]([a-z0-9.-]*[a-z0-9])?$|^\[[0-9a-f:.]+\]$")


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BackoffConfig(_Strict):
    """Exponential backoff with full jitter: ``base`` doubling up to ``max``."""

    base: Duration = Field(1.0, gt=0)
    max: Duration = 60.0

    @model_validator(mode="after")
    def _check(self) -> BackoffConfig:
        if self.max < self.base:
            raise ValueError(f"max ({self.max:g}s) must be >= base ({self.base:g}s)")
        return self


class WebhookConfig(_Strict):
    """Callbacks (``x-lbd-callback: URL`` on a submission) when a job finishes.

    Each is a POST of the job's status (JSON), signed with HMAC-SHA256 over
    ``"{timestamp}.{body}"`` in ``x-lbd-signature: t=TIMESTAMP,v1=HEX`` so the receiver can
    check it and reject replays (an old timestamp, or a job id it has seen). ``secret`` or
    ``secret_file`` (one is required before a job may name a callback; default none).
    ``timeout`` 5s per delivery; ``retries`` 5 after the first try, ``backoff`` {base 1s,
    max 1m}; ``allowed_hosts`` [] (any host; else exact names or ``*.suffix``: callbacks
    elsewhere are refused at submission, since a callback makes lbd send a request where a
    client says).
    """

    secret: str | None = None
    secret_file: str | None = None
    timeout: Duration = Field(5.0, gt=0)
    retries: int = Field(5, ge=0, le=100)
    backoff: BackoffConfig = BackoffConfig()
    allowed_hosts: list[str] = []

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        lowered = [host.lower() for host in value]
        for host in lowered:
            if not _HOST.match(host):
                raise ValueError(f"not a host name or *.suffix: {host!r}")
        return lowered

    @model_validator(mode="after")
    def _one_secret(self) -> WebhookConfig:
        if self.secret is not None and self.secret_file is not None:
            raise ValueError("give 'secret' or 'secret_file', not both")
        if self.secret is not None and len(self.secret) < 16:
            raise ValueError("secret: at least 16 characters")
        return self

    def secret_bytes(self, base_dir: Path | None = None) -> bytes | None:
        """The signing key; ``None`` when none is set. The jobs read it when they start (and
        on a reload that changes the ``jobs:`` section)."""
        if self.secret is not None:
            return self.secret.encode()
        if self.secret_file is None:
            return None
        path = Path(self.secret_file) if base_dir is None else base_dir / self.secret_file
        return path.read_bytes().strip() or None


class JobsConfig(_Strict):
    """The top-level ``jobs:`` section.

    ``enabled`` true; ``store``: ``memory`` (default: this process only, lost on restart)
    or a Redis URL (Streams with a consumer group: durable as Redis is, shared by every lbd
    that names it); ``key_prefix`` ``lbd:jobs:``; ``path_prefix`` ``/v1/jobs`` (the jobs API
    on the proxy port); ``visibility_timeout`` 30s (a job whose runner stopped renewing its
    claim this long is run again elsewhere); ``result_ttl`` 24h (finished jobs are kept this
    long); ``max_queue`` 10000 waiting jobs per pool (503 beyond); ``max_attempts`` 3 runs per
    job; ``backoff`` {base 1s, max 1m} between a job's runs after a retriable failure;
    ``max_body_size`` 16MiB per submission; ``operation_timeout`` 2s per Redis call.
    """

    enabled: bool = True
    store: str = "memory"
    key_prefix: str = Field("lbd:jobs:", min_length=1)
    path_prefix: str = "/v1/jobs"
    visibility_timeout: Duration = Field(30.0, ge=1.0)
    result_ttl: Duration = Field(86400.0, gt=0)
    max_queue: int = Field(10_000, ge=1)
    max_attempts: int = Field(3, ge=1, le=100)
    backoff: BackoffConfig = BackoffConfig()
    max_body_size: Size = Field(16 * 1024**2, ge=1024)
    operation_timeout: Duration = Field(2.0, gt=0)
    webhook: WebhookConfig = WebhookConfig()

    @field_validator("store")
    @classmethod
    def _known_store(cls, value: str) -> str:
        if value != "memory" and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"store must be 'memory' or a redis:// URL, not {value!r}")
        return value

    @field_validator("path_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value.startswith("/") or value == "/" or value.endswith("/") or any(c in value for c in "?# "):
            raise ValueError(f"a path such as /v1/jobs (leading slash, none at the end): {value!r}")
        return value

    @field_validator("key_prefix")
    @classmethod
    def _no_glob(cls, value: str) -> str:
        if any(c in value for c in "*?[]\\ "):
            raise ValueError(f"a key prefix may not hold glob characters or spaces: {value!r}")
        return value

    @property
    def is_redis(self) -> bool:
        return self.store != "memory"


class PoolJobsConfig(_Strict):
    """How a pool runs jobs (``pools.NAME.jobs``).

    ``enabled`` true (false: submissions to this pool get 403; ``Prefer: respond-async`` is
    then ignored and the request answered at once); ``concurrency`` 4 jobs of this pool
    running at once per lbd instance (0: this instance queues but does not run them) and
    ``rate`` null (else at most this many runs started per second per instance), which bound
    what jobs take from interactive traffic; ``priority`` ``normal`` for submissions
    without a priority header (``high`` | ``normal`` | ``low``); ``max_queue`` null (the
    top-level one); ``timeout`` null (the pool's ``timeouts.total``; a job's deadline
    across its tries).
    """

    enabled: bool = True
    concurrency: int = Field(4, ge=0, le=10_000)
    rate: float | None = Field(None, gt=0)
    priority: Literal["high", "normal", "low"] = "normal"
    max_queue: int | None = Field(None, ge=1)
    timeout: Duration | None = Field(None, gt=0)
