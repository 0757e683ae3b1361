"""The in-process job store: the embedded default. Not durable: a restart loses every job,
queued or finished, and nothing is shared with other lbd instances (use Redis for that).

It keeps the Redis store's semantics, so the runner and the tests treat both alike: claims
are "pending entries" with an idle time that :meth:`renew` resets and :meth:`reclaim` takes
over; a run's token decides whether its result is kept. Time is the injected clock's, so the
visibility timeout, retry backoff and result expiry are exact in tests.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from dataclasses import dataclass, replace

from lbd.jobs.base import (
    CANCELLED, FAILED, QUEUED, RUNNING, WALL, BatchRecord, Claim, Clock, JobRecord, NewJob, Response, Run,
    WebhookStatus,
)

__all__ = ["MemoryStore"]

_SWEEP_EVERY = 10.0


@dataclass
class _Job:
    job: NewJob
    record: JobRecord
    entry: str = ""
    token: str = ""
    expires: float | None = None


@dataclass
class _Pending:
    job_id: str
    priority: int
    consumer: str
    seen: float


class MemoryStore:
    """:class:`lbd.jobs.base.JobStore` in this process's memory."""

    def __init__(self, clock: Clock = WALL) -> None:
        self._clock = clock
        self._jobs: dict[str, _Job] = {}
        self._batches: dict[str, tuple[BatchRecord, list[float | None]]] = {}
        self._queues: dict[str, tuple[deque[tuple[str, str]], ...]] = {}
        self._pending: dict[str, dict[str, _Pending]] = {}
        self._delayed: dict[str, dict[str, float]] = {}
        self._hooks: dict[str, float] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._entries = itertools.count(1)
        self._next_sweep = 0.0

    async def start(self, pools: list[str]) -> None:
        for pool in pools:
            self._queue(pool)

    async def close(self) -> None:
        for event in self._wake.values():
            event.set()

    # -- submitting and reading -----------------------------------------------------------------
    async def submit(self, jobs: list[NewJob], max_queue: int | None, batch: BatchRecord | None = None,
                     counted: int | None = None) -> bool:
        if not jobs:
            return True
        pool = jobs[0].pool
        if max_queue is not None and self._depth(pool) + (len(jobs) if counted is None else counted) > max_queue:
            return False
        now = self._clock.now()
        for job in jobs:
            record = JobRecord(job.id, job.pool, job.tenant, QUEUED, job.priority, job.method, job.target, now,
                               batch=job.batch, webhook=WebhookStatus(job.callback) if job.callback else None)
            stored = self._jobs[job.id] = _Job(job, record)
            self._enqueue(stored)
        if batch is not None:
            self._batches[batch.id] = (replace(batch, jobs=list(batch.jobs)), [None])
        return True

    async def get(self, job_id: str) -> JobRecord | None:
        stored = self._live(job_id)
        return None if stored is None else replace(stored.record, webhook=replace(stored.record.webhook)
                                                    if stored.record.webhook else None)

    async def get_batch(self, batch_id: str) -> BatchRecord | None:
        found = self._batches.get(batch_id)
        if found is None:
            return None
        batch, (expires,) = found
        if expires is not None and expires <= self._clock.now():
            del self._batches[batch_id]
            return None
        return replace(batch, jobs=list(batch.jobs))

    async def states(self, job_ids: list[str]) -> list[str | None]:
        found = [self._live(job_id) for job_id in job_ids]
        return [None if stored is None else stored.record.state for stored in found]

    async def cancel(self, job_id: str, result_ttl: float) -> str | None:
        stored = self._live(job_id)
        if stored is None:
            return None
        if stored.record.state != QUEUED:
            return stored.record.state
        job = stored.job
        queue = self._queue(job.pool)[job.priority]
        if (stored.entry, job.id) in queue:
            queue.remove((stored.entry, job.id))
        self._delayed.get(job.pool, {}).pop(job.id, None)
        self._close(stored, CANCELLED, result_ttl)
        return CANCELLED

    async def depth(self, pool: str) -> int:
        return self._depth(pool)

    # -- running ----------------------------------------------------------------------------------
    async def claim(self, pool: str, consumer: str, count: int, block: float) -> list[Claim]:
        claims = self._take(pool, consumer, count)
        if claims or block <= 0:
            return claims
        event = self._wake.setdefault(pool, asyncio.Event())
        event.clear()
        try:
            await asyncio.wait_for(event.wait(), block)
        except asyncio.TimeoutError:
            pass
        return self._take(pool, consumer, count)

    async def reclaim(self, pool: str, consumer: str, min_idle: float, count: int) -> list[Claim]:
        now, taken = self._clock.now(), []
        pending = self._pending.setdefault(pool, {})
        for entry, held in list(pending.items()):
            if len(taken) >= count:
                break
            if now - held.seen < min_idle:
                continue
            stored = self._live(held.job_id)
            if stored is None or stored.entry != entry:
                del pending[entry]  # as XAUTOCLAIM drops entries deleted from the stream
                continue
            held.consumer, held.seen = consumer, now
            taken.append(Claim(held.job_id, pool, held.priority, entry))
        return taken

    async def renew(self, consumer: str, claims: list[Claim]) -> list[Claim]:
        now, lost = self._clock.now(), []
        for claim in claims:
            held = self._pending.get(claim.pool, {}).get(claim.entry)
            if held is None or held.consumer != consumer:
                lost.append(claim)
            else:
                held.seen = now
        return lost

    async def begin(self, claim: Claim, token: str, max_attempts: int, result_ttl: float) -> Run | None:
        stored = self._live(claim.job_id)
        if stored is None or stored.record.state not in (QUEUED, RUNNING) or stored.entry != claim.entry:
            self._ack(claim)
            return None
        record = stored.record
        if record.attempts >= max_attempts:
            reason = record.error or "its runs did not finish (the instances running it stopped)"
            record.error = f"gave up after {record.attempts} attempts: {reason}"
            stored.token = ""
            self._close(stored, FAILED, result_ttl)
            return None
        record.attempts += 1
        record.state, record.started_at = RUNNING, self._clock.now()
        stored.token = token
        return Run(stored.job, record.attempts, record.submitted_at)

    async def finish(self, claim: Claim, state: str, response: Response | None, error: str | None,
                     result_ttl: float) -> bool:
        stored = self._live(claim.job_id)
        if stored is None or not claim.token or stored.token != claim.token:
            return False
        stored.record.response, stored.record.error = response, error
        stored.token = ""
        self._close(stored, state, result_ttl)
        return True

    async def requeue(self, claim: Claim, due: float, error: str) -> bool:
        stored = self._live(claim.job_id)
        if stored is None or not claim.token or stored.token != claim.token:
            return False
        self._ack(claim)
        stored.record.state, stored.record.error, stored.token, stored.entry = QUEUED, error, "", ""
        self._delayed.setdefault(claim.pool, {})[claim.job_id] = due
        return True

    async def release(self, claim: Claim) -> None:
        stored = self._live(claim.job_id)
        if stored is not None:
            if claim.token and stored.token != claim.token:
                return  # the job is another run's now: its claim is not ours to drop
            if not claim.token and (stored.record.state != QUEUED or stored.entry != claim.entry):
                if stored.entry != claim.entry:
                    self._ack(claim)
                return
        self._ack(claim)
        if stored is not None:
            stored.record.state, stored.token = QUEUED, ""
            self._enqueue(stored)

    async def promote(self, pool: str) -> int:
        delayed = self._delayed.get(pool, {})
        now = self._clock.now()
        if now >= self._next_sweep:  # the runner calls this every second: expire what is over
            self._sweep(now)
        due = [job_id for job_id, at in delayed.items() if at <= now]
        for job_id in due:
            del delayed[job_id]
            stored = self._live(job_id)
            if stored is not None and stored.record.state == QUEUED:
                self._enqueue(stored)
        return len(due)

    # -- callbacks ------------------------------------------------------------------------------------
    async def due_callbacks(self, lease: float, count: int) -> list[str]:
        now = self._clock.now()
        due = sorted((at, job_id) for job_id, at in self._hooks.items() if at <= now)[:count]
        for _, job_id in due:
            self._hooks[job_id] = now + lease
        return [job_id for _, job_id in due]

    async def webhook(self, job_id: str) -> tuple[JobRecord, WebhookStatus] | None:
        stored = self._live(job_id)
        if stored is None or stored.record.webhook is None:
            self._hooks.pop(job_id, None)
            return None
        return await self.get(job_id), replace(stored.record.webhook)  # type: ignore[return-value]

    async def callback_done(self, job_id: str, status: WebhookStatus, retry_at: float | None) -> None:
        stored = self._live(job_id)
        if stored is None:
            self._hooks.pop(job_id, None)
            return
        stored.record.webhook = replace(status)
        if retry_at is None:
            self._hooks.pop(job_id, None)
        else:
            self._hooks[job_id] = retry_at

    # -- internals ------------------------------------------------------------------------------------
    def _queue(self, pool: str) -> tuple[deque[tuple[str, str]], ...]:
        queue = self._queues.get(pool)
        if queue is None:
            queue = self._queues[pool] = (deque(), deque(), deque())
        return queue

    def _depth(self, pool: str) -> int:
        return sum(map(len, self._queue(pool))) + len(self._delayed.get(pool, {}))

    def _enqueue(self, stored: _Job) -> None:
        stored.entry = str(next(self._entries))
        self._queue(stored.job.pool)[stored.job.priority].append((stored.entry, stored.job.id))
        event = self._wake.get(stored.job.pool)
        if event is not None:
            event.set()

    def _take(self, pool: str, consumer: str, count: int) -> list[Claim]:
        claims: list[Claim] = []
        now = self._clock.now()
        pending = self._pending.setdefault(pool, {})
        for priority, queue in enumerate(self._queue(pool)):
            while queue and len(claims) < count:
                entry, job_id = queue.popleft()
                pending[entry] = _Pending(job_id, priority, consumer, now)
                claims.append(Claim(job_id, pool, priority, entry))
        return claims

    def _ack(self, claim: Claim) -> None:
        self._pending.get(claim.pool, {}).pop(claim.entry, None)

    def _close(self, stored: _Job, state: str, result_ttl: float) -> None:
        """A job is over: its record expires ``result_ttl`` from now, its batch no sooner,
        and its callback (if any) is due."""
        now = self._clock.now()
        record = stored.record
        record.state, record.finished_at = state, now
        self._ack(Claim(record.id, record.pool, record.priority, stored.entry))
        stored.expires = now + result_ttl
        if record.batch is not None and record.batch in self._batches:
            self._batches[record.batch][1][0] = now + result_ttl
        if record.webhook is not None and state != CANCELLED:
            self._hooks[record.id] = now

    def _sweep(self, now: float) -> None:
        """Drop expired records (reads drop them too; this bounds what nobody reads)."""
        self._next_sweep = now + _SWEEP_EVERY
        for job_id in [job_id for job_id, stored in self._jobs.items()
                       if stored.expires is not None and stored.expires <= now]:
            self._live(job_id)
        for batch_id in [batch_id for batch_id, (_, (expires,)) in self._batches.items()
                         if expires is not None and expires <= now]:
            del self._batches[batch_id]

    def _live(self, job_id: str) -> _Job | None:
        stored = self._jobs.get(job_id)
        if stored is not None and stored.expires is not None and stored.expires <= self._clock.now():
            del self._jobs[job_id]
            self._hooks.pop(job_id, None)
            return None
        return stored
