"""Runs queued jobs: per pool, up to ``concurrency`` at once on this instance, highest
priority first, each through the same pipeline as a client's request.

Per pool, one *lane* claims jobs from the store when it has a free slot and starts a run for
each. Beside the lanes, this instance's runner

- renews every claim it holds every third of the visibility timeout (a run longer than the
  timeout keeps its job; a claim it lost, taken over by another instance, is cancelled here);
- takes over claims idle past the visibility timeout (their instance died), queues jobs whose
  retry backoff is over, and samples each pool's queue depth for the metrics.

A run's outcome: ``succeeded`` (an answer below 400), ``failed`` (another final answer, or
``max_attempts`` runs used up), or queued again after a backoff when it is retriable (no
answer, 408, 429, 502, 503, 504). On stop, runs get ``grace`` seconds to finish; the rest,
and the claims not yet started, are handed back to the queue at once.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from lbd.aio import cancel_until_done
from lbd.config.jobs import JobsConfig, PoolJobsConfig
from lbd.jobs.base import FAILED, SUCCEEDED, WALL, Claim, Clock, JobStore, Response, Run, StoreError

__all__ = ["Runner", "RunError", "JobEvents", "RETRIABLE_STATUS", "Execute"]

log = logging.getLogger("lbd.jobs")
RETRIABLE_STATUS = frozenset({408, 429, 502, 503, 504})
_BLOCK = 1.0
_DEPTH_EVERY = 2.0
_STOP_WAIT = 5.0
"""Longest a stop waits for a cancelled task (a store call stuck on a dead connection)."""


class RunError(RuntimeError):
    """No answer could be read for a run (retriable)."""


Execute = Callable[[Run], Awaitable[Response]]


class JobEvents(Protocol):
    """What the runner reports (``lbd.metrics.Metrics`` implements it)."""

    def job_event(self, pool: str, event: str) -> None:
        """``submitted``, ``succeeded``, ``failed``, ``retried``, ``cancelled``, ``rejected``."""

    def job_waited(self, pool: str, seconds: float) -> None:
        """A job's first run began ``seconds`` after its submission."""


class _NoEvents:
    def job_event(self, pool: str, event: str) -> None: ...

    def job_waited(self, pool: str, seconds: float) -> None: ...


@dataclass
class _Lane:
    name: str
    config: PoolJobsConfig
    buffer: list[Claim] = field(default_factory=list)
    running: dict[str, tuple[Claim, asyncio.Task]] = field(default_factory=dict)
    free: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None
    next_start: float = 0.0
    """With a ``rate``: the monotonic time the next run may start."""
    retired: bool = False
    """Its pool was removed: it claims no more."""

    def has_room(self) -> bool:
        return len(self.running) < self.config.concurrency

    def held(self) -> list[Claim]:
        return [*self.buffer, *(claim for claim, _ in self.running.values())]


class Runner:
    """The job runner of one lbd instance (its consumer name is unique per start)."""

    def __init__(self, store: JobStore, config: JobsConfig, execute: Execute, *, events: JobEvents | None = None,
                 clock: Clock = WALL, rng: random.Random | None = None, consumer: str | None = None) -> None:
        self._store, self._config, self._execute = store, config, execute
        self._events = events or _NoEvents()
        self._clock, self._rng = clock, rng or random.Random()
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self._lanes: dict[str, _Lane] = {}
        self._retired: list[_Lane] = []
        """Lanes of pools a reload removed, until their runs are over."""
        self._tokens = itertools.count(1)
        self._stopping = False
        self._closed = False
        """Set by :meth:`stop` once claims are handed back: the renew and maintain loops end."""
        self._store_down = False
        self._tasks: list[asyncio.Task] = []
        self.depths: dict[str, int] = {}
        """Jobs waiting per pool, as last sampled (for the metrics)."""

    # -- life cycle ------------------------------------------------------------------------------------
    def start(self, pools: Mapping[str, PoolJobsConfig]) -> None:
        self.apply(pools)
        self._tasks = [asyncio.ensure_future(self._renew_loop()), asyncio.ensure_future(self._maintain_loop())]

    def apply(self, pools: Mapping[str, PoolJobsConfig]) -> None:
        """Follow a reload: lanes for new pools, new limits for kept ones; a removed pool's
        lane stops claiming (its runs finish)."""
        self._retired = [lane for lane in self._retired if lane.running]
        for name, lane in list(self._lanes.items()):
            if name not in pools or not pools[name].enabled:
                lane.retired = True  # besides the cancellation, which can be lost
                if lane.task is not None:
                    lane.task.cancel()
                self._retired.append(self._lanes.pop(name))
        for name, config in pools.items():
            if not config.enabled:
                continue
            lane = self._lanes.get(name)
            if lane is None:
                lane = self._lanes[name] = _Lane(name, config)
                lane.task = asyncio.ensure_future(self._lane_loop(lane))
            lane.config = config
            lane.free.set()

    def _all_lanes(self) -> list[_Lane]:
        return [*self._lanes.values(), *self._retired]

    def running(self) -> dict[str, int]:
        """Runs in progress per pool."""
        return {name: len(lane.running) for name, lane in self._lanes.items()}

    async def stop(self, grace: float) -> None:
        """Stop claiming, let runs finish for ``grace`` seconds, hand the rest back.

        Every task is cancelled until it has stopped (:func:`lbd.aio.cancel_until_done`),
        each group within ``_STOP_WAIT``: one cancellation can be lost (``wait_for`` on Python
        3.11, in redis-py or in a run's data plane), and a lane or loop that missed it would go
        on claiming or renewing after the stop."""
        self._stopping = True
        lanes = self._all_lanes()
        lane_tasks = [lane.task for lane in lanes if lane.task is not None]
        if lane_tasks and not await cancel_until_done(lane_tasks, _STOP_WAIT):
            log.warning("jobs: a lane did not stop claiming within %ss", _STOP_WAIT)
        tasks = [task for lane in lanes for _, task in lane.running.values()]
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        held = [claim for lane in lanes for claim in lane.held()]
        if tasks and not await cancel_until_done(tasks, _STOP_WAIT):
            log.warning("jobs: a run did not stop within %ss", _STOP_WAIT)
        for claim in held:
            try:
                await self._store.release(claim)
            except StoreError as error:  # its claim idles out and another instance takes it
                log.warning("jobs: could not hand back job %s: %s", claim.job_id, error)
        self._closed = True
        if self._tasks and not await cancel_until_done(self._tasks, _STOP_WAIT):
            log.warning("jobs: the runner's loops did not stop within %ss", _STOP_WAIT)
        if held:
            log.info("jobs: handed back to the queue", extra={"jobs": len(held)})

    # -- claiming --------------------------------------------------------------------------------------
    async def _lane_loop(self, lane: _Lane) -> None:
        while not self._stopping and not lane.retired:
            if not lane.has_room():
                lane.free.clear()
                await lane.free.wait()
                continue
            if lane.buffer:
                await self._paced(lane)
                if lane.buffer and lane.has_room():
                    self._spawn(lane, lane.buffer.pop(0))
                continue
            try:
                room = lane.config.concurrency - len(lane.running)
                claims = await self._store.claim(lane.name, self.consumer, max(1, room), _BLOCK)
            except StoreError as error:
                self._store_failed("claim", error)
                await asyncio.sleep(1.0)
                continue
            self._store_back()
            lane.buffer.extend(claims)
            lane.buffer.sort(key=lambda claim: claim.priority)

    @staticmethod
    async def _paced(lane: _Lane) -> None:
        """Wait for the pool's next start slot when it has a ``rate``."""
        rate = lane.config.rate
        if rate is None:
            return
        now = time.monotonic()
        if lane.next_start > now:
            await asyncio.sleep(lane.next_start - now)
        lane.next_start = max(lane.next_start, now) + 1.0 / rate

    def _spawn(self, lane: _Lane, claim: Claim) -> None:
        token = f"{self.consumer}/{next(self._tokens)}"
        task = asyncio.ensure_future(self._run(lane, claim, token))
        lane.running[claim.entry] = (claim, task)

        def done(_: asyncio.Task) -> None:
            lane.running.pop(claim.entry, None)
            lane.free.set()

        task.add_done_callback(done)

    # -- one run -----------------------------------------------------------------------------------------
    async def _run(self, lane: _Lane, claim: Claim, token: str) -> None:
        config = self._config
        try:
            run = await self._store.begin(claim, token, config.max_attempts, config.result_ttl)
        except StoreError as error:
            log.warning("jobs: cannot start job %s: %s", claim.job_id, error)
            return
        if run is None:
            return
        claim.token = token
        if run.attempt == 1:
            self._events.job_waited(lane.name, max(0.0, self._clock.now() - run.submitted_at))
        response, reason = await self._attempt(run)
        try:
            await self._record(lane.name, claim, run, response, reason)
        except StoreError as error:  # the claim idles out and the job runs again: at least once
            log.warning("jobs: cannot record the result of job %s: %s", claim.job_id, error)

    async def _attempt(self, run: Run) -> tuple[Response | None, str | None]:
        """The answer, and why the run failed (``None`` when it succeeded)."""
        started = time.monotonic()
        try:
            response = await self._execute(run)
        except RunError as error:
            return None, f"no answer: {error}"
        except asyncio.CancelledError:
            raise
        except Exception as error:  # a bug must not lose the job: it is retried, then fails
            log.exception("jobs: running job %s failed", run.job.id)
            return None, f"internal error: {error!r}"
        if response.status < 400:
            return response, None
        log.debug("job run answered %d", response.status, extra={"job": run.job.id,
                                                                   "seconds": time.monotonic() - started})
        return response, f"answered {response.status}{_code_of(response)}"

    async def _record(self, pool: str, claim: Claim, run: Run, response: Response | None, reason: str | None) -> None:
        config = self._config
        retriable = reason is not None and (response is None or response.status in RETRIABLE_STATUS)
        if retriable and self._stopping:
            await self._store.release(claim)
        elif retriable and run.attempt < config.max_attempts:
            due = self._clock.now() + self._backoff(run.attempt)
            if await self._store.requeue(claim, due, reason):  # type: ignore[arg-type]
                self._events.job_event(pool, "retried")
        else:
            if retriable and run.attempt >= config.max_attempts:
                reason = f"gave up after {run.attempt} attempts: {reason}"
            state = SUCCEEDED if reason is None else FAILED
            if await self._store.finish(claim, state, response, reason, config.result_ttl):
                self._events.job_event(pool, state)

    def _backoff(self, attempt: int) -> float:
        backoff = self._config.backoff
        return self._rng.uniform(0, min(backoff.max, backoff.base * 2 ** min(attempt - 1, 30)))

    def _store_failed(self, what: str, error: StoreError) -> None:
        """Say once that the store is away (every lane and loop retries each second)."""
        if not self._store_down:
            self._store_down = True
            log.warning("jobs: the store is unavailable; retrying", extra={"step": what, "error": str(error)})

    def _store_back(self) -> None:
        if self._store_down:
            self._store_down = False
            log.info("jobs: the store is reachable again")

    # -- keeping claims -----------------------------------------------------------------------------------
    async def _renew_loop(self) -> None:
        while not self._closed:  # besides the cancellation: stop() ends it even if one is lost
            await asyncio.sleep(self._config.visibility_timeout / 3)
            claims = [claim for lane in self._all_lanes() for claim in lane.held()]
            try:
                lost = await self._store.renew(self.consumer, claims)
            except StoreError as error:
                self._store_failed("renew claims", error)
                continue
            for claim in lost:
                self._drop(claim)

    def _drop(self, claim: Claim) -> None:
        """Another instance took this claim over (ours went idle too long): stop our run."""
        lane = next((lane for lane in self._all_lanes() if lane.name == claim.pool), None)
        if lane is None:
            return
        if claim in lane.buffer:
            lane.buffer.remove(claim)
        running = lane.running.get(claim.entry)
        if running is not None and running[0] is claim:
            log.warning("jobs: lost the claim on job %s; another instance runs it", claim.job_id)
            running[1].cancel()

    async def _maintain_loop(self) -> None:
        tick = min(1.0, self._config.visibility_timeout / 4)
        next_reclaim = next_depth = 0.0
        while not self._closed:
            await asyncio.sleep(tick)
            now = time.monotonic()
            try:
                for lane in list(self._lanes.values()):
                    await self._store.promote(lane.name)
                    if now >= next_reclaim:
                        await self._reclaim(lane)
                    if now >= next_depth:
                        self.depths[lane.name] = await self._store.depth(lane.name)
            except StoreError as error:
                self._store_failed("maintain the queues", error)
            if now >= next_reclaim:
                next_reclaim = now + self._config.visibility_timeout / 2
            if now >= next_depth:
                next_depth = now + _DEPTH_EVERY

    async def _reclaim(self, lane: _Lane) -> None:
        room = lane.config.concurrency - len(lane.running) - len(lane.buffer)
        if room <= 0 or self._stopping:
            return
        claims = await self._store.reclaim(lane.name, self.consumer, self._config.visibility_timeout, room)
        if claims:
            log.info("jobs: took over jobs whose runner went quiet", extra={"pool": lane.name, "jobs": len(claims)})
            lane.buffer.extend(claims)
            lane.buffer.sort(key=lambda claim: claim.priority)


def _code_of(response: Response) -> str:
    """`` (no_backend)`` from lbd's own JSON error answers; empty for a backend's."""
    import orjson

    if not response.body.startswith(b"{") or len(response.body) > 4096:
        return ""
    try:
        code = orjson.loads(response.body).get("code")
    except (orjson.JSONDecodeError, AttributeError):
        return ""
    return f" ({code})" if isinstance(code, str) else ""
