"""The jobs package's interface: what a job is, and the store that queues and keeps them.

A job goes ``queued`` -> ``running`` -> ``succeeded`` | ``failed``, or ``queued`` ->
``cancelled``. A run that ends in a retriable failure (no answer, 408, 429, 502, 503, 504)
sends it back to ``queued`` after a backoff, until ``max_attempts`` runs were started.

At-least-once: a runner *claims* a job (a stream entry pending to it), *begins* a run (the
attempt is counted and a run token written), keeps the claim alive with *renew*, and
*finishes* it with the token. A claim not renewed for the visibility timeout is *reclaimed*
by any runner; the first run's token is then stale and its result, should it still come, is
dropped. So a client sees one result per job, and a run duplicated because an instance died
mid-run shows as one more attempt.

Two stores implement :class:`JobStore`: :mod:`lbd.jobs.memory` (this process, not durable)
and :mod:`lbd.jobs.redis_store` (Redis Streams and a consumer group; durable as Redis is).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

__all__ = [
    "QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", "FINISHED", "HIGH", "NORMAL", "LOW", "PRIORITY_NAMES",
    "NewJob", "Claim", "Response", "Run", "WebhookStatus", "JobRecord", "BatchRecord", "JobStore", "StoreError",
    "Clock", "WALL",
]

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
FINISHED = frozenset({SUCCEEDED, FAILED, CANCELLED})
HIGH, NORMAL, LOW = 0, 1, 2
PRIORITY_NAMES = ("high", "normal", "low")


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch (timestamps are shared between instances)."""
        ...


class _Wall:
    __slots__ = ()

    def now(self) -> float:
        return time.time()


WALL = _Wall()


class StoreError(RuntimeError):
    """The store could not be reached or answered in time (the caller decides: 503, retry)."""


@dataclass(frozen=True)
class NewJob:
    """A request to run later, as admitted: no API key in ``headers`` (the tenant stands for it)."""

    id: str
    pool: str
    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    tenant: str | None = None
    priority: int = NORMAL
    client_ip: str = "127.0.0.1"
    callback: str | None = None
    batch: str | None = None


@dataclass
class Claim:
    """A job this runner holds. ``entry`` is the store's handle for the queued copy (a stream
    id); ``token`` is set once a run began and proves the run is still the job's current one."""

    job_id: str
    pool: str
    priority: int
    entry: str
    token: str = ""


@dataclass(frozen=True)
class Response:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


@dataclass(frozen=True)
class Run:
    """What a runner needs to run a job (its request) and to count it."""

    job: NewJob
    attempt: int
    submitted_at: float


@dataclass
class WebhookStatus:
    """A callback's delivery: ``pending`` (not yet, or retrying), ``delivered`` or ``failed``."""

    url: str
    state: str = "pending"
    attempts: int = 0
    last_status: int | None = None
    last_error: str | None = None
    delivered_at: float | None = None


@dataclass
class JobRecord:
    """What the jobs API shows of a job (its request body is not read back)."""

    id: str
    pool: str
    tenant: str | None
    state: str
    priority: int
    method: str
    target: str
    submitted_at: float
    attempts: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    response: Response | None = None
    batch: str | None = None
    webhook: WebhookStatus | None = None


@dataclass
class BatchRecord:
    id: str
    pool: str
    tenant: str | None
    created_at: float
    jobs: list[str] = field(default_factory=list)


class JobStore(Protocol):
    """A durable (or not) queue of jobs per pool and priority, and their records.

    Every method may raise :class:`StoreError`; times are the store clock's (epoch seconds).
    """

    async def start(self, pools: list[str]) -> None:
        """Connect, and make sure each pool's queues exist."""

    async def close(self) -> None:
        """Release connections; jobs stay where they are."""

    async def submit(self, jobs: list[NewJob], max_queue: int | None, batch: BatchRecord | None = None,
                     counted: int | None = None) -> bool:
        """Store the jobs (and the batch) and queue them, all or none; False when the pool's
        waiting jobs and ``counted`` more (default: these) would exceed ``max_queue``
        (``None``: no bound; the later parts of a batch whose first part was counted whole)."""

    async def get(self, job_id: str) -> JobRecord | None:
        """The job's record, or ``None`` (unknown, or expired after ``result_ttl``)."""

    async def get_batch(self, batch_id: str) -> BatchRecord | None:
        """The batch and its job ids, or ``None``."""

    async def states(self, job_ids: list[str]) -> list[str | None]:
        """Each job's state (``None``: expired or unknown), in order."""

    async def cancel(self, job_id: str, result_ttl: float) -> str | None:
        """Cancel a queued job; the state it is in after the call (``cancelled``, or
        ``running`` / a finished state, unchanged); ``None`` when there is no such job."""

    async def claim(self, pool: str, consumer: str, count: int, block: float) -> list[Claim]:
        """Up to ``count`` queued jobs of ``pool`` for ``consumer``, highest priority first,
        waiting up to ``block`` seconds for one when none is queued."""

    async def reclaim(self, pool: str, consumer: str, min_idle: float, count: int) -> list[Claim]:
        """Claims of other consumers not renewed for ``min_idle`` seconds, taken over."""

    async def renew(self, consumer: str, claims: list[Claim]) -> list[Claim]:
        """Reset the idle time of claims ``consumer`` still holds; those it lost are returned."""

    async def begin(self, claim: Claim, token: str, max_attempts: int, result_ttl: float) -> Run | None:
        """Start a run of a claimed job: count the attempt and write ``token``. ``None`` when
        there is nothing to run (cancelled, gone, or failed now for having used up
        ``max_attempts``); the claim is then released."""

    async def finish(self, claim: Claim, state: str, response: Response | None, error: str | None,
                     result_ttl: float) -> bool:
        """Record the run's result (``succeeded`` / ``failed``) and drop the job from the queue;
        the record expires ``result_ttl`` later and a callback is scheduled. False (nothing
        written) when the run is no longer the job's current one."""

    async def requeue(self, claim: Claim, due: float, error: str) -> bool:
        """Queue the job again, to be claimable from ``due`` on; False as for :meth:`finish`."""

    async def release(self, claim: Claim) -> None:
        """Hand a claimed job back to the queue at once (a runner stopping)."""

    async def promote(self, pool: str) -> int:
        """Queue the jobs of ``pool`` whose retry backoff is over; how many."""

    async def depth(self, pool: str) -> int:
        """Jobs of ``pool`` waiting to run (not the ones running)."""

    async def due_callbacks(self, lease: float, count: int) -> list[str]:
        """Ids of jobs whose callback is due, leased for ``lease`` seconds (an instance that
        dies mid-delivery leaves it to another once the lease ends)."""

    async def webhook(self, job_id: str) -> tuple[JobRecord, WebhookStatus] | None:
        """A job and its callback's status, to deliver it."""

    async def callback_done(self, job_id: str, status: WebhookStatus, retry_at: float | None) -> None:
        """Record a delivery; ``retry_at``: try again then, else it is over."""
