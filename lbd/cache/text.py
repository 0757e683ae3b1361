"""The text a semantic lookup compares, and the context it must match exactly.

- KServe v2: a request whose only ``BYTES`` element (JSON ``data`` or binary, 4-byte
  little-endian length-prefixed) is UTF-8 text. Other tensors, parameters and outputs are
  context. A batch of several strings is not looked up by meaning (its answer is a batch).
- OpenAI-style JSON: ``messages`` (chat) when the last message is the user's: its text is
  compared, every earlier turn is context, so a follow-up in one conversation never gets the
  answer from another; else ``prompt`` or ``input`` (a string, or a list of one string).
  Every other field (``temperature``, ``max_tokens``, ``stream``...) is context.

The context is hashed into the partition (see :func:`partition_of`): a semantic hit needs
the same pool, model, version, tenant, embedder and context.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lbd.cache.keys import ParsedBody, canonical_body, canonical_json, digest, label, tenant_label

__all__ = ["SemanticText", "extract_text", "partition_of"]


@dataclass(frozen=True)
class SemanticText:
    text: str
    context: bytes
    """Canonical form of everything but the text."""


def extract_text(parsed: ParsedBody) -> SemanticText | None:
    """The comparable text of a request and its context, or ``None`` when there is none."""
    if parsed.kind == "kserve":
        return _kserve_text(parsed)
    if parsed.kind == "json" and isinstance(parsed.document, dict):
        return _openai_text(parsed.document)
    return None


def _kserve_text(parsed: ParsedBody) -> SemanticText | None:
    texts = [tensor for tensor in parsed.request.inputs if tensor.datatype == "BYTES"]
    if len(texts) != 1 or texts[0].array.size != 1:
        return None
    try:
        text = texts[0].array.reshape(-1)[0].decode()
    except (UnicodeDecodeError, AttributeError):
        return None
    return _made(text, b"kserve:" + canonical_body(parsed, skip_data_of=texts[0].name))


def _openai_text(document: dict) -> SemanticText | None:
    messages = document.get("messages")
    if isinstance(messages, list) and messages:
        last = messages[-1]
        if not isinstance(last, dict) or last.get("role") != "user":
            return None
        text = _content_text(last.get("content"))
        rest = {**document, "messages": messages[:-1], "<last>": {k: v for k, v in last.items() if k != "content"}}
        return None if text is None else _made(text, b"chat:" + canonical_json(rest))
    for field in ("prompt", "input"):
        if field in document:
            text = _single_string(document[field])
            rest = {k: v for k, v in document.items() if k != field}
            return None if text is None else _made(text, field.encode() + b":" + canonical_json(rest))
    return None


def _content_text(content: Any) -> str | None:
    """A message's text: a string, or a list of parts that are all ``{"type": "text"}``."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content and all(
            isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
            for part in content):
        return "\n".join(part["text"] for part in content)
    return None  # images, audio, tool results: no text to compare by meaning


def _single_string(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        return value[0]
    return None


def _made(text: str, context: bytes) -> SemanticText | None:
    text = text.strip()
    return SemanticText(text, context) if text else None


def partition_of(pool: str, model: str, version: str, tenant: str, embedder: str, context: bytes) -> str:
    """Where a text's vector lives: ``{pool}:{model}:{tenant}:{hash}``; one partition never
    serves another (tenants, conversations, parameters, embedders all differ in it)."""
    hashed = digest(b"lbd-partition-1", pool.encode(), model.encode(), version.encode(), tenant.encode(),
                    embedder.encode(), context)
    return f"{label(pool)}:{label(model)}:{tenant_label(tenant)}:{hashed}"
