"""Serving a request as another model: the KServe path ``/v2/models/{m}[/versions/{v}]/...``
names the new model (without the version, which belongs to the old one), and a JSON body's
top-level ``"model"`` field (OpenAI-style APIs) is replaced. Anything else is left as it is."""

from __future__ import annotations

import orjson

__all__ = ["retarget", "with_model", "with_request_target", "with_content_length"]

_MODELS = b"/v2/models/"


def retarget(url: bytes, model: str) -> bytes:
    """``url`` naming ``model`` if it is a KServe model path; else ``url`` unchanged."""
    if not url.startswith(_MODELS):
        return url
    path, mark, query = url.partition(b"?")
    rest = path[len(_MODELS):].partition(b"/")[2]
    if rest.startswith(b"versions/"):
        rest = rest[len(b"versions/"):].partition(b"/")[2]
    tail = b"/" + rest if rest else b""
    return _MODELS + model.encode() + tail + mark + query


def with_model(body: bytes, model: str) -> bytes | None:
    """``body`` with its top-level ``"model"`` replaced, if it is a JSON object that has one
    as a string; else ``None`` (nothing to rewrite)."""
    if body.lstrip()[:1] != b"{":
        return None
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(document, dict) or not isinstance(document.get("model"), str):
        return None
    document["model"] = model
    return orjson.dumps(document)


def with_request_target(head: bytes, url: bytes) -> bytes:
    """A request head with ``url`` in its request line."""
    line, crlf, rest = head.partition(b"\r\n")
    method, _, after = line.partition(b" ")
    version = after.rpartition(b" ")[2]
    return b"%b %b %b%b%b" % (method, url, version, crlf, rest)


def with_content_length(head: bytes, length: int) -> bytes:
    """A request head whose ``Content-Length`` field says ``length`` (the head has one)."""
    lines = head.split(b"\r\n")
    for index, line in enumerate(lines):
        if index and line.partition(b":")[0].strip().lower() == b"content-length":
            lines[index] = b"content-length: %d" % length
    return b"\r\n".join(lines)
