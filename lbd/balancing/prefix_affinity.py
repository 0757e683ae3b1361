"""``prefix_affinity``: requests whose prompts begin alike go to the same backend, so a
generative backend can reuse the KV cache of that beginning (vLLM's router does the same).

The key is the beginning of the prompt read from the request body (see
:mod:`lbd.balancing._prompt`: OpenAI ``messages`` or ``prompt``, KServe v2 ``BYTES``). A
body that is not JSON (plain text, or JSON cut short at the proxy's 64 KiB) is its own
prompt; a request without a body, or whose JSON holds no prompt, is keyed by its path. The
key is hashed onto a ring or Maglev table with bounded loads, as in ``consistent_hash``: a
hot prefix fills its backend up to the bound and then moves on along the table, to the
same next backend every time, so it spills to a second cache rather than to all of them.

The balancer reads the body, so the proxy holds each request until its body is complete
(or 64 KiB of it has arrived) before asking for a backend.

Options (defaults):

- ``prefix_chars: 256``: the key is the prompt's first 256 characters; or
- ``prefix_tokens``: the key is its first N whitespace-separated tokens (given instead of
  ``prefix_chars``, not with it).
- ``method: ring``: ``ring`` (``virtual_nodes: 160`` for a backend of mean weight) or
  ``maglev`` (``table_size: 65537``, a prime).
- ``load_factor: 1.25``: no backend takes a request that would put it above
  ``ceil(load_factor * (total_inflight + 1) * weight / total_weight)``; must be >= 1.0;
  ``0`` or ``null`` turns the bound off.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from lbd.balancing import _hash_tables, _prompt
from lbd.balancing.base import Backend, BalancerOptions, RequestView
from lbd.clock import Clock

__all__ = ["PrefixAffinity", "PrefixAffinityOptions"]

# What the proxy keeps of a request body before it must forward it (its replay limit).
_BODY_LIMIT = 64 * 1024
_HEADER_LENGTH = "inference-header-content-length"


class PrefixAffinityOptions(BalancerOptions):
    prefix_chars: int = Field(256, ge=1, le=_BODY_LIMIT)
    prefix_tokens: int | None = Field(None, ge=1, le=_BODY_LIMIT)
    method: Literal["ring", "maglev"] = "ring"
    virtual_nodes: int = Field(160, ge=1, le=10_000)
    table_size: int = Field(65537, ge=3, le=16_777_259)
    load_factor: float | None = 1.25

    @field_validator("table_size")
    @classmethod
    def _prime(cls, size: int) -> int:
        return _hash_tables.require_prime(size)

    @field_validator("load_factor")
    @classmethod
    def _factor(cls, factor: float | None) -> float | None:
        if factor is None or factor == 0:
            return None
        if factor < 1.0:
            raise ValueError("must be >= 1.0, or 0 or null to turn the load bound off")
        return factor

    @model_validator(mode="after")
    def _one_length(self) -> PrefixAffinityOptions:
        if self.prefix_tokens is not None and "prefix_chars" in self.model_fields_set:
            raise ValueError("prefix_tokens: give prefix_chars or prefix_tokens, not both")
        return self


class PrefixAffinity:
    """Consistent hashing on the prompt's prefix; the pick parses the body once (orjson, up
    to 64 KiB) and is then O(log n) (ring) or O(1) (Maglev) while the owner is idle, O(n)
    once it is busy. No state and no randomness: every proxy sends a prefix to one place."""

    Options = PrefixAffinityOptions
    needs_body: ClassVar[bool] = True
    __slots__ = ("_chars", "_tokens", "_table")

    def __init__(
        self, backends: Sequence[Backend], options: PrefixAffinityOptions, *,
        rng: random.Random, clock: Clock,
    ) -> None:
        self._chars = options.prefix_chars
        self._tokens = options.prefix_tokens
        self._table = _hash_tables.HashTable(backends, options.method, virtual_nodes=options.virtual_nodes,
                                             table_size=options.table_size, bounded_load=options.load_factor)

    def candidates(self, request: RequestView) -> Iterator[Backend]:
        yield from self._table.candidates(_hash_tables.hash64(self.key(request)))

    def key(self, request: RequestView) -> str:
        """What is hashed: ``prompt:`` and the prompt's prefix, ``body:`` and the raw body's
        (not JSON), or ``path:`` and the path (no body, or JSON without a prompt)."""
        body = request.body_prefix(_BODY_LIMIT)
        if not body:
            return "path:" + request.path
        try:
            text = _prompt.prompt_text(body, _header_length(request))
        except _prompt.NotJson:
            return "body:" + self._prefix(body.decode("latin-1"))
        return "path:" + request.path if text is None else "prompt:" + self._prefix(text)

    def _prefix(self, text: str) -> str:
        if self._tokens is None:
            return text[:self._chars]
        return " ".join(text.split(None, self._tokens)[:self._tokens])

    def observe(self, backend: Backend, latency: float, ok: bool) -> None:
        """Prefix affinity reads in-flight counts; it does not learn from latency."""


def _header_length(request: RequestView) -> int | None:
    value = request.header(_HEADER_LENGTH)
    return int(value) if value is not None and value.strip().isdigit() else None
