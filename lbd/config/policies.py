"""Typed config of a pool's routing policies: a fallback chain (``fallback:``), a model
cascade (``cascade:``) and shadow traffic (``shadow:``).

Each model is frozen and forbids unknown keys; defaults are filled first, then checked, and
every error names the key. Which pools exist is checked on the whole tree
(``Config._cross_references``). JSON paths (``outputs[name=probabilities].data``) are parsed
here, once, so a bad one is an error of the file, not of a request.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from lbd.policies.paths import Path, parse_path
from lbd.units import Duration, Size

__all__ = [
    "FallbackConfig", "FallbackTarget", "FALLBACK_ERRORS", "CascadeConfig", "CascadeStage", "AcceptConfig",
    "ShadowConfig", "ShadowCompareConfig",
]

FallbackError = Literal["no_backend", "saturated", "queue_full", "queue_timeout", "connect_failed",
                        "connect_timeout", "upstream_reset", "protocol", "timeout"]
FALLBACK_ERRORS: tuple[str, ...] = ("no_backend", "saturated", "queue_full", "queue_timeout", "connect_failed",
                                    "connect_timeout", "upstream_reset", "protocol", "timeout")
"""The failures lbd answers itself (the ``code`` of its JSON errors) that may fall over."""


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FallbackTarget(_Strict):
    """One pool of a fallback chain. ``model``: the model name it serves the request as
    (rewritten in a KServe path and in a JSON body's ``"model"`` field; a path's
    ``/versions/N`` is dropped with it); default null keeps the name."""

    pool: str
    model: str | None = None


class FallbackConfig(_Strict):
    """Where a request goes when its pool cannot answer, before any byte of an answer went
    out: each pool of ``chain`` in turn, within the request's deadline.

    A pool cannot answer when lbd would answer one of ``on_errors`` itself (default: all of
    them: no backend available or every breaker open, saturated, queue full or timed out,
    connect failures, resets, malformed answers, timeouts), retries and budget included, or
    when the last try's answer has a status in ``on_status`` (default 429, 502, 503, 504).
    The chain is the route's own: the fallback pools' chains are not followed. A request
    whose body was too large to keep (64KiB) does not fall over.
    """

    chain: list[FallbackTarget] = Field(min_length=1)
    on_status: list[int] = Field(default_factory=lambda: [429, 502, 503, 504])
    on_errors: list[FallbackError] = Field(default_factory=lambda: list(FALLBACK_ERRORS))

    @field_validator("on_status")
    @classmethod
    def _error_statuses(cls, value: list[int]) -> list[int]:
        for status in value:
            if not 400 <= status <= 599:
                raise ValueError(f"not an error status: {status}; use 400..599")
        return value


class CascadeStage(_Strict):
    """One stage of a cascade: a pool (the cascade's own pool too: its backends answer) and
    the model name it serves the request as (default: unchanged)."""

    pool: str
    model: str | None = None


Op = Literal["==", "!=", "<", "<=", ">", ">=", "in", "not_in"]
Reduce = Literal["max", "min", "mean", "sum", "length", "first", "last"]


class AcceptConfig(_Strict):
    """When a stage's answer is good enough to return: a 2xx whose rule holds.

    Either ``top_probability`` (a classifier: in the KServe output ``output``, default the
    first floating-point one, every row's largest probability is at least this), or a JSON
    ``field`` (``outputs[0].data``, ``outputs[name=probabilities].data``,
    ``choices[0].finish_reason``), optionally ``reduce``\\ d (a list to ``max``, ``min``,
    ``mean``, ``sum``, ``length``, ``first``, ``last``), compared with ``op`` (default
    ``>=``) to ``value``. Binary tensor answers are read too. A missing field, or a value
    that cannot be compared, is not good enough.
    """

    top_probability: float | None = Field(None, gt=0, le=1)
    output: str | None = None
    field: str | None = None
    reduce: Reduce | None = None
    op: Op = ">="
    value: float | bool | str | list[float | bool | str] | None = None
    _path: Path | None = PrivateAttr(None)

    @field_validator("field")
    @classmethod
    def _path_syntax(cls, value: str | None) -> str | None:
        if value is not None:
            parse_path(value)
        return value

    @model_validator(mode="after")
    def _one_rule(self) -> AcceptConfig:
        if (self.top_probability is None) == (self.field is None):
            raise ValueError("give exactly one of 'top_probability' or 'field'")
        if self.field is not None:
            if self.value is None:
                raise ValueError("'field' needs a 'value' to compare with")
            if (self.op in ("in", "not_in")) != isinstance(self.value, list):
                raise ValueError(f"op {self.op!r} needs a {'list' if self.op in ('in', 'not_in') else 'single'} value")
            self._path = parse_path(self.field)
        elif self.reduce is not None or self.value is not None:
            raise ValueError("'reduce' and 'value' go with 'field', not with 'top_probability'")
        return self

    @property
    def path(self) -> Path | None:
        return self._path


class CascadeConfig(_Strict):
    """Ask the cheap model first: each stage in turn, until one's answer is accepted; the
    last stage's answer is returned as it is. A stage that fails (not 2xx) is passed over;
    when every later stage fails, the last answer the rule turned down is returned rather
    than an error. Responses say ``x-lbd-cascade-stage: N`` (1-based). Needs the whole
    request body (up to 64KiB; larger: 413)."""

    stages: list[CascadeStage] = Field(min_length=2)
    accept: AcceptConfig


class ShadowCompareConfig(_Strict):
    """How a shadow answer is compared with the primary's, when both are 2xx.

    ``field`` (default ``outputs``, the KServe output tensors; null: the whole body) is
    compared as JSON, numbers equal within ``tolerance`` (default 1e-6, relative to the
    larger magnitude, absolute below 1); a body that is not JSON is compared byte for byte.
    A primary answer larger than ``max_body_size`` (default 256KiB) is not compared.
    """

    enabled: bool = True
    field: str | None = "outputs"
    tolerance: float = Field(1e-6, ge=0)
    max_body_size: Size = Field(256 * 1024, ge=0)
    _path: Path | None = PrivateAttr(None)

    @field_validator("field")
    @classmethod
    def _path_syntax(cls, value: str | None) -> str | None:
        if value is not None:
            parse_path(value)
        return value

    @model_validator(mode="after")
    def _parse(self) -> ShadowCompareConfig:
        self._path = parse_path(self.field) if self.field is not None else None
        return self

    @property
    def path(self) -> Path | None:
        return self._path


class ShadowConfig(_Strict):
    """Copy a ``share`` (default 0.1) of the pool's answered requests to another ``pool``
    (as ``model``, default unchanged), discard its answers, and record their latency,
    status and how often they differ from the primary's.

    The copy is sent once the primary's answer is complete, so it never delays or fails
    it. At most ``max_inflight`` (default 16) copies run at once; beyond that they are
    dropped and counted. A copy still running after ``timeout`` (default 10s) is cancelled.
    Only requests the pool may send again are copied (``retry.idempotent``, or an
    idempotent method), and only when their body was kept (up to 64KiB).
    """

    pool: str
    model: str | None = None
    share: float = Field(0.1, ge=0, le=1)
    max_inflight: int = Field(16, ge=1)
    timeout: Duration = Field(10.0, gt=0)
    compare: ShadowCompareConfig = ShadowCompareConfig()


def policy_errors(name: str, pool: Any, pools: dict[str, Any]) -> list[tuple[tuple[str | int, ...], str]]:
    """Where pool ``name``'s policies name pools that do not exist, or itself where it
    must not: ``(path, message)`` for each."""
    errors: list[tuple[tuple[str | int, ...], str]] = []
    known = ", ".join(pools)

    def check(loc: tuple[str | int, ...], target: str, *, itself: bool) -> None:
        if target not in pools:
            errors.append((("pools", name, *loc, "pool"), f"no pool named {target!r}; pools: {known}"))
        elif target == name and not itself:
            errors.append((("pools", name, *loc, "pool"), f"pool {name!r} cannot be its own {loc[0]}"))

    if pool.fallback is not None:
        seen: set[str] = set()
        for index, target in enumerate(pool.fallback.chain):
            check(("fallback", "chain", index), target.pool, itself=False)
            if target.pool in seen:
                errors.append((("pools", name, "fallback", "chain", index, "pool"),
                               f"pool {target.pool!r} is already in the chain"))
            seen.add(target.pool)
    if pool.cascade is not None:
        for index, stage in enumerate(pool.cascade.stages):
            check(("cascade", "stages", index), stage.pool, itself=True)
    if pool.shadow is not None:
        check(("shadow",), pool.shadow.pool, itself=False)
    return errors
