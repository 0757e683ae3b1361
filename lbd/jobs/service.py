"""The jobs of one lbd instance: the store, the runner, the webhook deliverer, and what the data
plane asks of them (submit, look up, cancel), answered as values, never raised.

The daemon builds one :class:`Jobs` from the ``jobs:`` section, sets it as the proxy's
``jobs`` and starts it; a reload that changes the section builds a new one (the old one hands
its running jobs back). Runs go through the proxy's own data plane
(:func:`lbd.proxy.internal.dispatch`) with the pool pinned and the tenant known, tagged
``job`` so they are not submitted again.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from lbd.config.jobs import JobsConfig, PoolJobsConfig
from lbd.jobs.api import batch_view, job_view
from lbd.jobs.base import CANCELLED, WALL, BatchRecord, Clock, JobRecord, JobStore, NewJob, Response, Run, StoreError
from lbd.jobs.runner import JobEvents, Runner, RunError
from lbd.jobs.webhook import Deliverer

if TYPE_CHECKING:
    from lbd.proxy.server import ProxyServer

__all__ = ["Jobs", "Accepted", "Refused", "Found", "build_store", "new_id"]

log = logging.getLogger("lbd.jobs")
SUBMIT_PART = 200
"""Jobs stored per store call: a part costs the event loop a few milliseconds."""
_RESPONSE_FRAMING = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})


def new_id(kind: str = "j") -> str:
    """``j`` (a job) or ``b`` (a batch) and 128 random bits, URL-safe: unguessable, so an id
    is as good as a capability on pools without API keys."""
    return kind + secrets.token_urlsafe(16)


def build_store(config: JobsConfig, clock: Clock = WALL) -> JobStore:
    if config.is_redis:
        from lbd.jobs.redis_store import RedisStore

        return RedisStore(config.store, prefix=config.key_prefix, timeout=config.operation_timeout, clock=clock)
    from lbd.jobs.memory import MemoryStore

    return MemoryStore(clock)


@dataclass(frozen=True)
class Accepted:
    ids: list[str]
    batch: str | None = None


@dataclass(frozen=True)
class Refused:
    status: int
    code: str
    message: str
    retry_after: int | None = None


@dataclass(frozen=True)
class Found:
    """What a lookup found: a job, or a batch and its jobs' states (``None``: nothing)."""

    job: JobRecord | None = None
    batch: BatchRecord | None = None
    states: list[str | None] | None = None

    @property
    def pool(self) -> str:
        return self.job.pool if self.job is not None else self.batch.pool  # type: ignore[union-attr]

    @property
    def tenant(self) -> str | None:
        return self.job.tenant if self.job is not None else self.batch.tenant  # type: ignore[union-attr]


class Jobs:
    """One instance's jobs. ``store``: an existing store to keep (a reload that changed other
    keys); default: built from ``config``."""

    def __init__(self, config: JobsConfig, *, events: JobEvents | None = None, clock: Clock = WALL,
                 base_dir: Path | None = None, store: JobStore | None = None) -> None:
        self.config = config
        self.prefix = config.path_prefix
        self.prefix_bytes = config.path_prefix.encode()
        self.store = store if store is not None else build_store(config, clock)
        self.events = events
        self._clock, self._base_dir = clock, base_dir
        self.runner: Runner | None = None
        self._deliverer_task = None
        self.secret = self._read_secret()

    def _read_secret(self) -> bytes | None:
        try:
            return self.config.webhook.secret_bytes(self._base_dir)
        except OSError as error:
            log.error("jobs: cannot read webhook.secret_file; callbacks are refused", extra={"error": str(error)})
            return None

    # -- life cycle --------------------------------------------------------------------------------------
    async def start(self, server: ProxyServer, pools: Mapping[str, PoolJobsConfig]) -> None:
        import asyncio

        try:
            await self.store.start([name for name, config in pools.items() if config.enabled])
        except StoreError as error:  # serve anyway: submissions get 503 and the runner retries
            log.error("jobs: the store is unavailable at start", extra={"error": str(error)})
        self.runner = Runner(self.store, self.config, _executor(server), events=self.events, clock=self._clock)
        self.runner.start(pools)
        deliverer = Deliverer(self.store, self.config.webhook, self.secret, self.payload,
                              on_result=self._webhook_result, clock=self._clock)
        self._deliverer_task = asyncio.ensure_future(deliverer.run())

    def apply(self, pools: Mapping[str, PoolJobsConfig]) -> None:
        if self.runner is not None:
            self.runner.apply(pools)

    async def stop(self, grace: float, *, close_store: bool = True) -> None:
        """Stop running and delivering (runs get ``grace`` seconds, then go back to the queue)."""
        import asyncio

        from lbd.aio import bounded, cancel_until_done

        if self._deliverer_task is not None:
            self._deliverer_task.cancel()
        if self.runner is not None:
            await self.runner.stop(grace)
        # cancelled until it has stopped, and the store's close bounded without wait_for: one
        # cancellation can be lost on Python 3.11 (lbd.aio)
        if self._deliverer_task is not None and not await cancel_until_done(self._deliverer_task, 5.0):
            log.warning("jobs: the webhook deliverer did not stop in time")
        if close_store:
            try:
                await bounded(self.store.close(), 5.0)
            except asyncio.TimeoutError:
                log.warning("jobs: the store did not close in time")

    def _webhook_result(self, result: str) -> None:
        if self.events is not None and hasattr(self.events, "webhook_delivery"):
            self.events.webhook_delivery(result)  # type: ignore[attr-defined]

    # -- what the data plane asks -----------------------------------------------------------------------------
    async def submit(self, jobs: list[NewJob], max_queue: int, batch: BatchRecord | None = None) -> Accepted | Refused:
        """Store and queue the jobs. A large batch goes in parts of ``SUBMIT_PART`` jobs (the
        first counted whole against ``max_queue``), letting the event loop serve other requests
        between parts; if a later part fails, the parts stored are cancelled."""
        import asyncio

        pool = jobs[0].pool
        try:
            stored = await self.store.submit(jobs[:SUBMIT_PART], max_queue, batch, counted=len(jobs))
            if stored:
                for start in range(SUBMIT_PART, len(jobs), SUBMIT_PART):
                    await asyncio.sleep(0)
                    await self._submit_part(jobs, start)
        except StoreError as error:
            log.error("jobs: cannot store a submission", extra={"pool": pool, "error": str(error)})
            self._count(pool, "rejected")
            return Refused(503, "jobs_unavailable", "the job store is unavailable; try again", 5)
        if not stored:
            self._count(pool, "rejected")
            return Refused(503, "job_queue_full", f"pool {pool!r} has {max_queue} jobs waiting; try again later", 5)
        for _ in jobs:
            self._count(pool, "submitted")
        return Accepted([job.id for job in jobs], batch.id if batch else None)

    async def submit_batch(self, template: NewJob, body: bytes, max_queue: int) -> Accepted | Refused:
        """A batch ``{"requests": [BODY, ...]}``: one job like ``template`` per BODY (sent as
        JSON), built a part at a time so a large batch does not hold up the event loop."""
        import asyncio

        from lbd.jobs.api import batch_bodies

        bodies = batch_bodies(body)
        if isinstance(bodies, str):
            return Refused(400, "bad_batch", bodies)
        batch_id = new_id("b")
        jobs: list[NewJob] = []
        t = template
        for start in range(0, len(bodies), SUBMIT_PART):
            if start:
                await asyncio.sleep(0)
            jobs += [NewJob(new_id(), t.pool, t.method, t.target, t.headers, item, t.tenant, t.priority, t.client_ip,
                            t.callback, batch_id) for item in bodies[start:start + SUBMIT_PART]]
        batch = BatchRecord(batch_id, t.pool, t.tenant, self._clock.now(), [job.id for job in jobs])
        return await self.submit(jobs, max_queue, batch)

    async def _submit_part(self, jobs: list[NewJob], start: int) -> None:
        try:
            await self.store.submit(jobs[start:start + SUBMIT_PART], None)
        except StoreError:
            for job in jobs[:start]:  # not accepted: what was stored must not run
                try:
                    await self.store.cancel(job.id, self.config.result_ttl)
                except StoreError:
                    break
            raise

    async def lookup(self, item_id: str) -> Found | Refused:
        try:
            if item_id.startswith("b"):
                batch = await self.store.get_batch(item_id)
                return Found(batch=batch, states=await self.store.states(batch.jobs)) if batch else Found()
            return Found(job=await self.store.get(item_id))
        except StoreError as error:
            log.error("jobs: cannot read the store", extra={"error": str(error)})
            return Refused(503, "jobs_unavailable", "the job store is unavailable; try again", 5)

    async def cancel(self, found: Found) -> Found | Refused:
        """Cancel the job (or the batch's queued jobs); the record(s) as they are after."""
        ids = [found.job.id] if found.job is not None else list(found.batch.jobs)  # type: ignore[union-attr]
        try:
            for job_id in ids:
                if await self.store.cancel(job_id, self.config.result_ttl) == CANCELLED:
                    self._count(found.pool, "cancelled")
            if found.job is not None:
                return Found(job=await self.store.get(found.job.id))
            return Found(batch=found.batch, states=await self.store.states(ids))
        except StoreError as error:
            log.error("jobs: cannot cancel", extra={"error": str(error)})
            return Refused(503, "jobs_unavailable", "the job store is unavailable; try again", 5)

    def view(self, found: Found) -> dict[str, Any]:
        if found.job is not None:
            return job_view(found.job, self.prefix)
        return batch_view(found.batch, found.states or [], self.prefix)  # type: ignore[arg-type]

    def payload(self, record: JobRecord) -> bytes:
        """A callback's body: the job as the API shows it."""
        return orjson.dumps(job_view(record, self.prefix))

    def _count(self, pool: str, event: str) -> None:
        if self.events is not None:
            self.events.job_event(pool, event)


def _executor(server: ProxyServer):
    """Runs a job through ``server``'s data plane, as its tenant, on its pool."""
    from lbd.proxy.internal import Internal, InternalError, dispatch

    async def execute(run: Run) -> Response:
        job = run.job
        headers = [*job.headers, ("x-request-id", f"{job.id}.{run.attempt}")]
        pool = server.runtime.config.pools.get(job.pool)
        if pool is not None and pool.jobs.timeout is not None:
            headers.append(("x-lbd-timeout-ms", str(int(pool.jobs.timeout * 1000))))
        internal = Internal(pool=job.pool, tenant=job.tenant, client_ip=job.client_ip, tag="job")
        try:
            answer = await dispatch(server, job.method, job.target, headers, job.body, internal=internal)
        except InternalError as error:
            raise RunError(str(error)) from None
        kept = tuple(pair for pair in answer.headers if pair[0] not in _RESPONSE_FRAMING)
        return Response(answer.status, kept, answer.body)

    return execute
