"""The prompt text of a generative request, for ``prefix_affinity``.

The fields are those :mod:`lbd.cache.text` reads, but the whole prompt is kept, in order,
because what a backend's KV cache can reuse is the beginning of the prompt:

- OpenAI chat: ``messages``, each as ``role: text`` on its own line (a conversation's later
  turns begin with its earlier ones, so they share its prefix);
- OpenAI completions and embeddings: ``prompt``, else ``input``: a string, strings (one
  per line) or token ids (separated by spaces);
- KServe v2: the elements of the first ``BYTES`` input, one per line, from JSON ``data`` or
  from the binary tensor extension (``Inference-Header-Content-Length``; each element a
  4-byte little-endian length and its bytes).

Parsed here with orjson alone: the cache's own parser decodes every tensor with the worker's
codec, and importing the cache package would bring its index and embedder into the proxy.
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["NotJson", "prompt_text"]


class NotJson(ValueError):
    """The body (or the JSON part of a KServe binary body) does not parse as JSON: it is not
    JSON at all, or it was cut short at the proxy's 64 KiB."""


def prompt_text(body: bytes, header_length: int | None = None) -> str | None:
    """The prompt of ``body``; ``None`` when it is JSON without one. Raises :class:`NotJson`."""
    try:
        document = orjson.loads(body[:header_length] if header_length is not None else body)
    except orjson.JSONDecodeError:
        raise NotJson("not JSON") from None
    if not isinstance(document, dict):
        return None
    messages = document.get("messages")
    if isinstance(messages, list):
        return _chat_text(messages)
    for field in ("prompt", "input"):
        if field in document:
            return _prompt_field(document[field])
    inputs = document.get("inputs")
    if isinstance(inputs, list):
        binary = memoryview(body)[header_length:] if header_length is not None else None
        return _kserve_text(inputs, binary)
    return None


def _chat_text(messages: list[Any]) -> str | None:
    lines = []
    for message in messages:
        if isinstance(message, dict):
            lines.append(f"{message.get('role')}: {_content_text(message.get('content'))}")
    return "\n".join(lines) or None


def _content_text(content: Any) -> str:
    """A message's text: a string, or the text parts of a list (images and audio left out)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(part["text"] for part in content
                         if isinstance(part, dict) and isinstance(part.get("text"), str))
    return ""


def _prompt_field(value: Any) -> str | None:
    if isinstance(value, str):
        return value or None
    if isinstance(value, list) and value:
        if all(isinstance(item, str) for item in value):
            return "\n".join(value)
        if all(isinstance(item, int) for item in value):
            return " ".join(map(str, value))  # token ids: each one a whitespace token
    return None


def _kserve_text(inputs: list[Any], binary: memoryview | None) -> str | None:
    offset = 0  # where the next binary tensor starts
    for tensor in inputs:
        if not isinstance(tensor, dict):
            return None
        parameters = tensor.get("parameters")
        size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
        if tensor.get("datatype") == "BYTES":
            if size is None:
                return "\n".join(_json_strings(tensor.get("data"))) or None
            if binary is None or not isinstance(size, int):
                return None
            return "\n".join(_binary_strings(binary[offset:offset + size])) or None
        if isinstance(size, int):
            offset += size
    return None


def _json_strings(data: Any) -> list[str]:
    """The strings of a (possibly nested) JSON ``data`` list, flattened in order."""
    if isinstance(data, str):
        return [data]
    if isinstance(data, list):
        return [text for item in data for text in _json_strings(item)]
    return []


def _binary_strings(blob: memoryview) -> list[str]:
    """Length-prefixed elements; one cut short (at 64 KiB) is kept as far as it goes."""
    texts = []
    position = 0
    while position + 4 <= len(blob):
        length = int.from_bytes(blob[position:position + 4], "little")
        texts.append(bytes(blob[position + 4:position + 4 + length]).decode("utf-8", "replace"))
        position += 4 + length
    return texts
