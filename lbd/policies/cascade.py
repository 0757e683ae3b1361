"""A model cascade: ask each stage's pool in turn, through lbd's own data plane, until one
answers well enough by the pool's accept rule.

- A stage that answers 2xx and passes the rule answers the request; the last stage's
  answer is returned whatever it is.
- A stage the rule turns down, or that fails (not 2xx, or no answer at all), is passed
  over (``lbd_cascade_escalations``). When every later stage fails, the last answer the
  rule turned down beats an error.
- Each stage gets what is left of the request's deadline (``x-lbd-timeout-ms``).

The stage requests are internal (:func:`lbd.proxy.internal.dispatch`, tag ``cascade``): they
get the stage pool's balancer, retries, fallback chain and cache, and never its cascade.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson

from lbd.policies.answers import HEADER_LENGTH
from lbd.policies.rules import accepts
from lbd.proxy.internal import Internal, InternalError, InternalResponse, dispatch

if TYPE_CHECKING:
    from lbd.config.policies import CascadeConfig
    from lbd.policies.copies import Copy
    from lbd.proxy.server import ProxyServer

__all__ = ["run_cascade", "CascadeAnswer"]


@dataclass(frozen=True)
class CascadeAnswer:
    stage: int
    """1-based; 0 when no stage could be asked (the deadline had passed)."""
    response: InternalResponse


async def run_cascade(server: ProxyServer, route: str, config: CascadeConfig, copy: Copy) -> CascadeAnswer:
    """The answer of the first stage good enough, as above. Never raises (but when cancelled)."""
    counts = server.metrics.policies
    loop = asyncio.get_running_loop()
    turned_down: CascadeAnswer | None = None
    last: CascadeAnswer | None = None
    stages = config.stages
    for stage, spec in enumerate(stages, 1):
        left = copy.deadline - loop.time() if copy.deadline is not None else None
        if left is not None and left <= 0:
            break
        target, body = copy.as_model(spec.model)
        internal = Internal(pool=spec.pool, tenant=copy.tenant, client_ip=copy.client_ip, tag="cascade")
        try:
            response = await dispatch(server, copy.method, target, copy.headers_within(left), body, internal=internal)
        except InternalError as exc:
            response = _error(502, "cascade_stage_failed", f"stage {stage} (pool {spec.pool!r}): {exc}")
        last = CascadeAnswer(stage, response)
        final = stage == len(stages)
        if 200 <= response.status < 300:
            if final or accepts(config.accept, response.body, response.header(HEADER_LENGTH)):
                counts.cascade_answered(route, stage, spec.pool)
                return last
            turned_down = last
            counts.cascade_escalated(route, stage, "rejected")
        elif not final:
            counts.cascade_escalated(route, stage, "error")
    chosen = turned_down or last
    if chosen is None:
        return CascadeAnswer(0, _error(504, "timeout", "the request's deadline passed before the cascade could start"))
    counts.cascade_answered(route, chosen.stage, stages[chosen.stage - 1].pool)
    return chosen


def _error(status: int, code: str, message: str) -> InternalResponse:
    body = orjson.dumps({"error": message, "code": code, "status": status})
    return InternalResponse(status, (("content-type", "application/json"),), body)
