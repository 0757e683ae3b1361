"""Canonical cache keys: equal requests get equal keys, different tenants never share one.

The exact key hashes (blake2b, 128 bits) the pool, model, model version, tenant, method, path
with its query sorted, the configured vary headers and the canonical body:

- KServe v2 inference bodies are decoded with the worker's own codec, JSON or binary tensor
  extension (``Inference-Header-Content-Length``). Each tensor is hashed as datatype, shape
  and its values in little-endian binary (``BYTES``: 4-byte length-prefixed elements), so
  ``[1.5, 2]`` as JSON and the same FP32 values as binary give one key. ``id`` is left out
  (it names the request, not the question); ``binary_data_size`` too (an encoding detail);
  output and ``binary_data_output`` settings stay in (they shape the answer).
- Other JSON bodies are re-serialized with sorted keys, no whitespace, and numbers normalized
  (``1.0`` is ``1``, ``1e2`` is ``100``: JSON has one number type, as in RFC 8785).
- Anything else is hashed as sent.

Keys read ``{pool}:{model}:{tenant}:{digest}``; names outside ``[A-Za-z0-9_.-]`` are hashed so
a key is safe in a Redis glob. The tenant is a hash of its id, never the API key itself.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

import numpy as np
import orjson

__all__ = [
    "RequestInfo", "ParsedBody", "parse_body", "canonical_json", "exact_key", "tenant_of",
    "tenant_label", "label", "key_fields", "digest", "ANONYMOUS",
]

ANONYMOUS = "-"
"""The tenant label of requests that carry no tenant and no API key."""
_SAFE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_API_KEY_HEADERS = ("authorization", "x-api-key", "api-key")
_HEADER_LENGTH = "inference-header-content-length"
_KEY_FORMAT = b"lbd-cache-key-1"


@dataclass(frozen=True)
class RequestInfo:
    """What the cache needs of a request. ``headers`` has lower-case names (repeated headers
    joined with ``", "``); ``version`` is the model version in the config ("" if none)."""

    pool: str
    model: str
    version: str
    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes
    deadline: float | None = field(default=None, compare=False)
    """Loop time (``loop.time()``) past which a coalesced follower stops waiting."""
    principal: str | None = None
    """The tenant the proxy authenticated (the pool's API keys); it outranks the headers."""


@dataclass(frozen=True)
class ParsedBody:
    """The body, decoded once: ``kind`` is ``kserve``, ``json`` or ``raw``."""

    kind: str
    document: Any = None
    request: Any = None
    """``lbd_worker.protocol.InferRequest`` for a KServe body."""
    raw: bytes = b""


def digest(*parts: bytes) -> str:
    hasher = hashlib.blake2b(digest_size=16)
    for part in parts:
        hasher.update(len(part).to_bytes(8, "little"))  # length-framed: no two splits collide
        hasher.update(part)
    return hasher.hexdigest()


def label(name: str) -> str:
    """``name`` itself when glob-safe and short, else ``~`` and a hash of it."""
    return name if _SAFE.match(name) else "~" + hashlib.blake2b(name.encode(), digest_size=8).hexdigest()


def tenant_label(tenant: str) -> str:
    return ANONYMOUS if not tenant else "t" + hashlib.blake2b(tenant.encode(), digest_size=10).hexdigest()


def key_fields(key: str) -> tuple[str, str, str]:
    """``(pool, model, tenant)`` labels of a key or partition made here."""
    pool, model, tenant, _ = key.split(":", 3)
    return pool, model, tenant


def tenant_of(headers: Mapping[str, str], header: str | None, from_api_key: bool,
              principal: str | None = None) -> str:
    """The tenant id: the principal the proxy authenticated (``a:``), else the configured
    header's value (``h:``), else the API key (``k:``), else "" (anonymous)."""
    if principal:
        return "a:" + principal
    if header is not None and headers.get(header):
        return "h:" + headers[header].strip()
    if from_api_key:
        for name in _API_KEY_HEADERS:
            value = headers.get(name)
            if value:
                return "k:" + value.strip()
    return ""


def parse_body(body: bytes, headers: Mapping[str, str]) -> ParsedBody:
    """Decodes a KServe inference body (JSON or binary) or any JSON body; else ``raw``."""
    header_length = _header_length(headers)
    if header_length is not None or body[:1] == b"{":
        from lbd_worker.protocol import BadRequest, decode_request

        try:
            request = decode_request(body, header_length)
            document = orjson.loads(body[:header_length] if header_length else body)
            return ParsedBody("kserve", document, request)
        except (BadRequest, orjson.JSONDecodeError, ValueError):
            pass
    try:
        return ParsedBody("json", orjson.loads(body)) if body[:1] in (b"{", b"[") else ParsedBody("raw", raw=body)
    except orjson.JSONDecodeError:
        return ParsedBody("raw", raw=body)


def _header_length(headers: Mapping[str, str]) -> int | None:
    value = headers.get(_HEADER_LENGTH)
    return int(value) if value is not None and value.strip().isdigit() else None


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no whitespace, integral floats as integers."""
    try:
        return orjson.dumps(_normalize(value), option=orjson.OPT_SORT_KEYS)
    except (TypeError, orjson.JSONEncodeError):
        return repr(value).encode()


def _normalize(value: Any) -> Any:
    if isinstance(value, float):
        return int(value) if value.is_integer() and abs(value) < 2**63 else value
    if isinstance(value, dict):
        return {key: _normalize(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_normalize(item) for item in value]
    return value


def canonical_body(parsed: ParsedBody, skip_data_of: str | None = None) -> bytes:
    """The body in canonical form; ``skip_data_of`` leaves one tensor's values out (the text
    the semantic cache compares, so the rest of the request forms its context)."""
    if parsed.kind == "kserve":
        return _kserve_canonical(parsed, skip_data_of)
    if parsed.kind == "json":
        return b"json:" + canonical_json(parsed.document)
    return b"raw:" + parsed.raw


def _kserve_canonical(parsed: ParsedBody, skip_data_of: str | None) -> bytes:
    from lbd_worker.protocol.codec import encode_bytes_tensor

    parts = [b"kserve"]
    raw_inputs = parsed.document.get("inputs", [])
    for tensor, raw in zip(parsed.request.inputs, raw_inputs):
        parameters = {k: v for k, v in (raw.get("parameters") or {}).items() if k != "binary_data_size"}
        parts.append(canonical_json([tensor.name, tensor.datatype, list(tensor.shape), parameters]))
        if tensor.name == skip_data_of:
            parts.append(b"<text>")
        elif tensor.datatype == "BYTES":
            parts.append(encode_bytes_tensor(tensor.array))
        else:
            parts.append(np.ascontiguousarray(tensor.array, dtype=tensor.array.dtype.newbyteorder("<")).tobytes())
    rest = {k: v for k, v in parsed.document.items() if k not in ("id", "inputs")}
    parts.append(canonical_json(rest))
    return b"\x00".join(len(part).to_bytes(8, "little") + part for part in parts)


def _canonical_path(path: str) -> bytes:
    base, _, query = path.partition("?")
    return (base + ("?" + urlencode(sorted(parse_qsl(query, keep_blank_values=True))) if query else "")).encode()


def exact_key(info: RequestInfo, tenant: str, vary_headers: Iterable[str], body: bytes) -> str:
    """The exact key of ``info`` for ``tenant`` given its canonical ``body``."""
    vary = canonical_json({name: info.headers.get(name) for name in vary_headers})
    hashed = digest(_KEY_FORMAT, info.pool.encode(), info.model.encode(), info.version.encode(),
                    tenant.encode(), info.method.upper().encode(), _canonical_path(info.path), vary, body)
    return f"{label(info.pool)}:{label(info.model)}:{tenant_label(tenant)}:{hashed}"
